"""Raw multi-coil Cartesian k-space from the scanner -> the challenge layout.

``python -m data.formats convert-raw --src FILE_OR_DIR --out OUT --anatomy brain --acceleration 4
[--leaderboard]`` reads raw files and writes what :mod:`data.convert` writes for fastMRI files:
``OUT/kspace/{anatomy}_acc{acc}_{i}.h5`` (fully sampled k-space and the challenge's fixed mask) and
``OUT/image/...`` (zero-filled, GRAPPA and fully sampled RSS, 384 x 384, attr ``max``); with
``--leaderboard`` the names are ``{anatomy}_test{i}.h5`` and the stored k-space is undersampled by the
mask (zeros off the mask), as in ``Data/leaderboard/acc{4,8}``. The output passes ``python -m
data.formats check``.

Formats (the format is read from the file's content, never from its name):

* ISMRMRD HDF5 (``ismrmrd`` package: the XML header and the ``data`` acquisitions);
* MRD v2 binary streams (``mrd-python``; the ``yardl`` stream the MRD 2 tools write);
* Siemens twix ``.dat``, VB and VD/VE (``twixtools.map_twix``; the last measurement's ``image`` scan).

What is kept and how the k-space is assembled (all formats):

* Layout ``(slices, coils, H, W)``: ``H`` is the readout (kx) **with its oversampling** (as acquired,
  e.g. 2 x the image matrix), ``W`` the phase-encoding lines (ky); the challenge mask runs along ``W``.
  Every coil the file holds is kept.
* Only imaging readouts: noise, calibration-only (``PARALLEL_CALIBRATION`` without ``_AND_IMAGING``),
  navigator, phase-correction, feedback, dummy-scan, surface-coil-correction and phase-stabilisation
  acquisitions are dropped by their flags (twix: twixtools' ``image`` category, which applies the same
  rules to the MDH flags). Acquisitions of a second encoding space (``encoding_space_ref`` > 0) are
  dropped too.
* Readouts land on the grid by one scatter (no loop over lines): column ``W//2 + line - line_centre``
  (the header's ky centre), row ``H//2 - centre_sample + sample`` (the readout's echo position), so
  partial Fourier and asymmetric echoes are zero-filled to the encoded matrix (``W``/``H`` are the
  header's encoded matrix, grown to hold every acquired line/sample around the centre). Reversed
  readouts (``IS_REVERSE``, twix ``REFLECT``) are flipped first.
* Readouts that land on the same (slice, partition, line) are **averaged** (complex mean): averages,
  segments, repeated calibration-and-imaging lines and, with ``repetitions="mean"`` (default), the
  repetitions; ``repetitions="first"`` keeps the first repetition only. Of the contrasts (echoes),
  cardiac phases and sets the first (lowest index) is kept; the console line says what was dropped.
* 3-D encodings are split into slices by a centred inverse FFT along the partitions (kz), when the
  partitions are Cartesian and fully sampled; slabs x partitions become the slices.
* Scale: ``scale="challenge"`` (default) multiplies the volume by one factor so that the median of the
  fully sampled RSS over the object is the middle of the simulator's challenge-like range
  (:data:`data.simulate.LABEL_MEDIAN`), so the leaderboard's foreground thresholds mean the same as on
  challenge data; ``scale="none"`` keeps the scanner's units.

Refused, with one line ``<file>: <key>: <reason>`` (a batch goes on with the next file, exit code 1 at
the end): not a raw file (or a GE/DICOM/challenge file), a non-Cartesian trajectory (radial, spiral,
EPI, PROPELLER), k-space lines or partitions missing inside the acquired block (an undersampled
acquisition: a train file needs fully sampled k-space), slices with different lines, readouts of
different lengths or coil counts, no imaging readouts, non-finite data, or a volume above
:data:`data.formats.MAX_DATASET_BYTES`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from data.convert import convert_batch
from data.formats import MAX_DATASET_BYTES, MAX_MATRIX, FormatError, open_h5
from data.masks import make_mask
from data.volumes import rss_image, write_challenge_pair
from utils.physics import ifft2c

RAW_FORMATS = ("ismrmrd", "mrd", "twix")
REPETITION_MODES = ("mean", "first")
SCALE_MODES = ("challenge", "none")
#: File suffixes picked up when ``--src`` is a folder (the format itself is read from the content).
RAW_SUFFIXES = (".h5", ".hdf5", ".ismrmrd", ".mrd", ".bin", ".dat")

# ISMRMRD / MRD acquisition flags (bit ``n - 1`` for flag ``n``; identical in MRD v1 and v2)
_FLAG_PARALLEL_CALIBRATION = 20
_FLAG_REVERSE = 22
_SKIP_FLAGS = {
    19: "noise",
    20: "calibration-only",  # kept when 21 (calibration and imaging) is set as well
    23: "navigator",
    24: "phase-correction",
    26: "feedback",
    27: "dummy-scan",
    28: "feedback",
    29: "coil-correction",
    30: "phase-stabilisation",
    31: "phase-stabilisation",
}
_FLAG_CALIBRATION_AND_IMAGING = 21

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MRD2_MAGIC = b"yardl"
#: Siemens ``ucTrajectory`` (MeasYaps sKSpace) codes
_TWIX_TRAJECTORIES = {1: "Cartesian", 2: "radial", 4: "spiral", 8: "PROPELLER"}
#: Fraction of the 99.9th percentile of the label above which a pixel counts as object (for the scale)
_OBJECT_FRACTION = 0.1


@dataclasses.dataclass
class Readouts:
    """The imaging readouts of one raw file, one row each (``N`` readouts, ``C`` coils, ``Ns`` samples).

    ``data`` complex64 ``(N, C, Ns)``; integer counters ``(N,)``: ``line`` (ky), ``partition`` (kz),
    ``slice``, ``repetition``, ``contrast``, ``phase``, ``set``; ``centre`` ``(N,)`` the sample index of
    kx = 0 in each readout; ``reverse`` bool ``(N,)`` readouts stored in reverse sample order.
    """

    data: np.ndarray
    line: np.ndarray
    partition: np.ndarray
    slice: np.ndarray
    repetition: np.ndarray
    contrast: np.ndarray
    phase: np.ndarray
    set: np.ndarray
    centre: np.ndarray
    reverse: np.ndarray

    def select(self, keep: np.ndarray) -> "Readouts":
        return Readouts(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})


@dataclasses.dataclass
class Encoding:
    """What the header says about the encoded matrix. ``lines``/``line_centre``: ky matrix size and the
    ky counter of the k-space centre; ``partitions``/``partition_centre`` the same for kz (1/0 for 2-D);
    ``readout``: encoded readout samples with oversampling (0 = unknown: taken from the data);
    ``image_readout``: readout matrix of the image without oversampling (0 = unknown)."""

    lines: int
    line_centre: int
    partitions: int = 1
    partition_centre: int = 0
    readout: int = 0
    image_readout: int = 0


@dataclasses.dataclass
class RawVolume:
    """Converted raw file: ``kspace`` complex64 ``(S, C, H, W)`` (H readout with oversampling, W
    phase encoding), fully sampled where acquired (partial Fourier zero-filled); ``info`` what was
    kept (format, oversampling, lines acquired, repetitions, what was dropped)."""

    path: Path
    kspace: np.ndarray
    info: Dict[str, object]

    def summary(self) -> str:
        i = self.info
        S, C, H, W = self.kspace.shape
        parts = [f"{i['format']}", f"{S} slice(s)", f"{C} coil(s)", f"{H} x {W} (readout x phase)"]
        if i.get("readout_oversampling"):
            parts.append(f"readout oversampling {i['readout_oversampling']:g}x kept")
        if i["lines_acquired"] < W:
            parts.append(f"{i['lines_acquired']} of {W} lines acquired (partial Fourier, zero-filled)")
        if i["partitions"] > 1:
            parts.append(f"3-D: {i['partitions']} partitions split into slices")
        if i["readouts_per_line"] > 1:
            parts.append(f"up to {i['readouts_per_line']} readouts per line averaged")
        if i["repetitions"] > 1:
            parts.append(f"{i['repetitions']} repetitions ({i['repetition_mode']})")
        for what, n in i["dropped"].items():
            parts.append(f"{n} {what} readouts dropped")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------- assembly


def _span(counter: np.ndarray, centre: int, size: int) -> int:
    """Smallest even-centred matrix size >= ``size`` holding every ``counter`` with ``centre`` at ``n // 2``."""
    below = int(centre - counter.min())  # counters left of the centre
    above = int(counter.max() - centre)  # counters right of the centre
    need = max(2 * below, 2 * above + 1)
    return max(int(size), need, 1)


def _first_only(r: Readouts, dropped: Dict[str, int]) -> Readouts:
    """Keep the lowest contrast, cardiac phase and set; count what is dropped."""
    keep = np.ones(len(r.line), bool)
    for name, what in (("contrast", "later-contrast (echo)"), ("phase", "later-phase"), ("set", "later-set")):
        values = getattr(r, name)
        if len(values) and values.max() != values.min():
            mine = values == values.min()
            dropped[what] = dropped.get(what, 0) + int((keep & ~mine).sum())
            keep &= mine
    return r.select(keep)


def assemble(
    path, r: Readouts, enc: Encoding, fmt: str, repetitions: str = "mean", dropped: Optional[Dict[str, int]] = None
) -> RawVolume:
    """Grid the imaging readouts ``r`` into k-space complex64 ``(S, C, H, W)`` by one scatter (see the
    module notes for the placement, averaging, missing-line and 3-D rules). ``fmt`` names the format
    for :attr:`RawVolume.info`; ``dropped`` counts readouts the reader already dropped, by kind."""
    if repetitions not in REPETITION_MODES:
        raise ValueError(f"repetitions must be one of {REPETITION_MODES}, got {repetitions!r}")
    dropped = dict(dropped or {})
    if len(r.line) == 0:
        raise FormatError(path, "acquisitions", "no imaging readouts (only noise, calibration or navigator data)")
    r = _first_only(r, dropped)
    reps = np.unique(r.repetition)
    if repetitions == "first" and len(reps) > 1:
        later = r.repetition != reps[0]
        dropped["later-repetition"] = int(later.sum())
        r = r.select(~later)
    N, C, Ns = r.data.shape
    if C < 1 or Ns < 1:
        raise FormatError(path, "acquisitions", f"readouts hold no samples ({C} coils x {Ns} samples)")

    # geometry: readout rows, ky columns, kz partitions, slices
    centre = np.where(r.centre > 0, r.centre, Ns // 2).astype(np.int64)  # 0 = unset: a symmetric echo
    if (centre >= Ns).any():
        raise FormatError(path, "centre_sample", f"echo centre {int(centre.max())} outside the {Ns} samples of a readout")
    H = max(int(enc.readout), int(2 * max(centre.max(), (Ns - centre).max())))
    W = _span(r.line, enc.line_centre, enc.lines)
    if enc.partitions <= 1 and r.partition.max() > 0:
        raise FormatError(path, "header", f"partition (kz) counters up to {int(r.partition.max())} but the header "
                                          "encodes 2-D: 3-D data without partitions to split into slices")
    P = _span(r.partition, enc.partition_centre, enc.partitions) if enc.partitions > 1 else 1
    slices, sidx = np.unique(r.slice, return_inverse=True)
    S = len(slices)
    if max(H, W) > MAX_MATRIX:
        raise FormatError(path, "header", f"matrix {H} x {W} exceeds {MAX_MATRIX} (corrupt header?)")
    nbytes = S * P * C * H * W * 8
    if nbytes > MAX_DATASET_BYTES:
        raise FormatError(path, "acquisitions", f"k-space of {S * P} slices x {C} coils x {H} x {W} is "
                                                f"{nbytes / 2**30:.3g} GiB, above the {MAX_DATASET_BYTES / 2**30:.3g} GiB limit")
    col = (r.line - enc.line_centre + W // 2).astype(np.int64)
    par = (r.partition - enc.partition_centre + P // 2).astype(np.int64) if P > 1 else np.zeros(N, np.int64)
    cell = (sidx * P + par) * W + col  # (slice, partition, line) of each readout

    # samples: flip reversed readouts, shift each to its echo centre (one placement per distinct offset)
    data = r.data
    if r.reverse.any():
        data = data.copy()
        data[r.reverse] = data[r.reverse, :, ::-1]
    offset = H // 2 - centre
    grid = torch.zeros((S * P * W, C, H), dtype=torch.complex64)
    counts = np.bincount(cell, minlength=S * P * W)
    for off in np.unique(offset):  # distinct echo positions: one or a few, not one per line
        rows = offset == off
        target = grid[:, :, off:off + Ns]
        if counts.max() == 1:  # every readout has its own cell: plain scatter
            target[torch.from_numpy(cell[rows])] = torch.from_numpy(np.ascontiguousarray(data[rows]))
        else:  # several readouts per cell: sum, then divide by the count
            target.index_add_(0, torch.from_numpy(cell[rows]), torch.from_numpy(np.ascontiguousarray(data[rows])))
    many = torch.from_numpy(counts > 1)
    if bool(many.any()):
        grid[many] /= torch.from_numpy(counts[counts > 1].astype(np.float32))[:, None, None]

    # every slice/partition must hold one contiguous block of lines around the centre
    occupied = (counts > 0).reshape(S, P, W)
    lines = occupied.any(axis=(0, 1))
    first, last = int(np.argmax(lines)), int(W - 1 - np.argmax(lines[::-1]))
    inside = int(lines[first:last + 1].sum())
    if inside != last - first + 1:
        raise FormatError(path, "acquisitions", f"k-space lines missing: {last - first + 1 - inside} of the "
                                                f"{last - first + 1} lines between ky {first - W // 2} and {last - W // 2} "
                                                "were not acquired (undersampled acquisition?); a train file needs fully sampled k-space")
    if not first <= W // 2 <= last:
        raise FormatError(path, "acquisitions", f"the k-space centre line (ky 0) was not acquired (lines ky {first - W // 2}..{last - W // 2})")
    parts = occupied.any(axis=(0, 2))
    pfirst, plast = int(np.argmax(parts)), int(P - 1 - np.argmax(parts[::-1]))
    if int(parts[pfirst:plast + 1].sum()) != plast - pfirst + 1:
        raise FormatError(path, "acquisitions", f"3-D partitions missing: {plast - pfirst + 1 - int(parts[pfirst:plast + 1].sum())} "
                                                f"of the partitions between kz {pfirst - P // 2} and {plast - P // 2} were not acquired; "
                                                "undersampled 3-D data cannot be split into slices")
    expected = lines[None, None, :] & parts[None, :, None]
    short = (occupied != expected).any(axis=(1, 2))
    if short.any():
        s = int(np.argmax(short))
        have = int(occupied[s].sum())
        raise FormatError(path, "acquisitions", f"k-space lines missing: slice {int(slices[s])} has {have} of the "
                                                f"{int(expected[0].sum())} (partition, line) readouts the other slices have")

    kspace = grid.reshape(S, P, W, C, H).permute(0, 1, 3, 4, 2)  # (S, P, C, H, W)
    if P > 1:  # kz -> z: centred inverse FFT along the partitions
        kspace = ifft2c(kspace.unsqueeze(-1), dim=(1, -1)).squeeze(-1)
    kspace = kspace.reshape(S * P, C, H, W).contiguous().numpy()
    if not np.isfinite(kspace.view(np.float32)).all():
        raise FormatError(path, "acquisitions", "non-finite values (NaN or inf) in the k-space data")
    info: Dict[str, object] = {
        "format": fmt,
        "slices": S * P,
        "coils": C,
        "readout": H,
        "lines": W,
        "partitions": P,
        "readout_oversampling": (H / enc.image_readout) if enc.image_readout else None,
        "lines_acquired": int(lines.sum()),
        "readouts_per_line": int(counts.max()),
        "repetitions": int(len(reps)),
        "repetition_mode": repetitions,
        "dropped": dropped,
    }
    return RawVolume(Path(path), kspace, info)


def _skip_by_flags(flags: np.ndarray) -> Tuple[np.ndarray, Dict[str, int]]:
    """``(keep, dropped)`` for ISMRMRD/MRD acquisition ``flags`` ``(N,)`` uint64."""
    flags = flags.astype(np.uint64)
    bit = lambda n: (flags >> np.uint64(n - 1)) & np.uint64(1) == 1  # noqa: E731
    keep = np.ones(len(flags), bool)
    dropped: Dict[str, int] = {}
    for n, what in _SKIP_FLAGS.items():
        hit = bit(n)
        if n == _FLAG_PARALLEL_CALIBRATION:
            hit &= ~bit(_FLAG_CALIBRATION_AND_IMAGING)
        hit &= keep
        if hit.any():
            dropped[what] = dropped.get(what, 0) + int(hit.sum())
            keep &= ~hit
    return keep, dropped


def _check_cartesian(path, trajectory: str) -> None:
    if trajectory.lower() != "cartesian":
        raise FormatError(path, "trajectory", f"{trajectory} trajectory is not Cartesian: only Cartesian k-space "
                                              "can be converted (non-Cartesian data needs gridding)")


def _require(path, module: str, package: str):
    """Import an optional reader package lazily; a missing one is a clear one-line error."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FormatError(path, "-", f"reading this format needs the '{package}' package "
                                     "(pip install -r requirements.txt)") from None


# --------------------------------------------------------------------------------------------- ISMRMRD


def _ismrmrd_group(f, path) -> str:
    if "dataset" in f and "xml" in f["dataset"]:
        return "dataset"
    groups = [k for k in f.keys() if hasattr(f[k], "keys") and "xml" in f[k] and "data" in f[k]]
    if len(groups) == 1:
        return groups[0]
    if "kspace" in f:
        raise FormatError(path, "-", "a challenge/fastMRI k-space file, not a raw scanner file (use convert-fastmri)")
    if "Acquisition" in f or "ArchiveMetaData" in f:
        raise FormatError(path, "-", "a GE ScanArchive (proprietary), not an ISMRMRD raw file: convert it to ISMRMRD first")
    raise FormatError(path, "-", "HDF5 file is not an ISMRMRD raw file (no group with an 'xml' header and 'data' acquisitions)")


def read_ismrmrd(path, repetitions: str = "mean") -> RawVolume:
    """Read an ISMRMRD HDF5 raw file (encoding 0 of its XML header) into :class:`RawVolume`.

    The acquisition headers and data are read in one pass each (``h5py`` field reads of the compound
    ``data`` dataset); the header's ``encodedSpace``/``encodingLimits`` give the ky/kz matrix and centre.
    """
    path = Path(path)
    ismrmrd = _require(path, "ismrmrd", "ismrmrd")
    with open_h5(path) as f:
        group = f[_ismrmrd_group(f, path)]
        try:
            xml = group["xml"][0]
            header = ismrmrd.xsd.CreateFromDocument(xml.decode() if isinstance(xml, bytes) else xml)
            encoding = header.encoding[0]
        except Exception as exc:  # noqa: BLE001 (any parser failure is the same user-facing problem)
            raise FormatError(path, "xml", f"ISMRMRD header cannot be parsed ({exc.__class__.__name__})") from None
        trajectory = getattr(encoding.trajectory, "value", str(encoding.trajectory))
        _check_cartesian(path, trajectory)
        if "data" not in group:
            raise FormatError(path, "data", "no acquisitions in the file")
        ds = group["data"]
        names = ds.dtype.names or ()
        if not {"head", "data"} <= set(names):
            raise FormatError(path, "data", f"not ISMRMRD acquisitions (fields {names})")
        try:
            head = ds.fields("head")[:]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise FormatError(path, "data", f"acquisition headers cannot be read ({exc.__class__.__name__})") from None
        enc = _ismrmrd_encoding(encoding)
        keep, dropped = _skip_by_flags(head["flags"])
        other = keep & (head["encoding_space_ref"] != 0)
        if other.any():
            dropped["other-encoding"] = int(other.sum())
            keep &= ~other
        rows = np.flatnonzero(keep)
        samples, coils = head["number_of_samples"][rows], head["active_channels"][rows]
        if len(rows) and (np.unique(samples).size > 1 or np.unique(coils).size > 1):
            raise FormatError(path, "data", f"imaging readouts differ in length {sorted(set(samples.tolist()))[:4]} "
                                            f"or coil count {sorted(set(coils.tolist()))[:4]}")
        Ns, C = (int(samples[0]), int(coils[0])) if len(rows) else (0, 0)
        if len(rows) * C * Ns * 8 > MAX_DATASET_BYTES:
            raise FormatError(path, "data", f"{len(rows)} readouts x {C} coils x {Ns} samples exceed the size limit")
        try:
            raw = ds.fields("data")[:][rows] if len(rows) else np.zeros(0, object)
        except (OSError, ValueError, TypeError) as exc:
            raise FormatError(path, "data", f"acquisition data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None
    sizes = np.fromiter(map(len, raw), np.int64, count=len(raw))
    bad = np.flatnonzero(sizes != 2 * C * Ns)
    if bad.size:
        raise FormatError(path, "data", f"acquisition {int(rows[bad[0]])} holds {int(sizes[bad[0]])} values, its header "
                                        f"says {C} coils x {Ns} samples")
    data = (np.concatenate(raw) if len(raw) else np.zeros(0, np.float32)).astype(np.float32, copy=False)
    data = data.view(np.complex64).reshape(len(rows), C, Ns)
    idx = head["idx"][rows]
    flags = head["flags"][rows].astype(np.uint64)
    readouts = Readouts(
        data=data,
        line=idx["kspace_encode_step_1"].astype(np.int64),
        partition=idx["kspace_encode_step_2"].astype(np.int64),
        slice=idx["slice"].astype(np.int64),
        repetition=idx["repetition"].astype(np.int64),
        contrast=idx["contrast"].astype(np.int64),
        phase=idx["phase"].astype(np.int64),
        set=idx["set"].astype(np.int64),
        centre=head["center_sample"][rows].astype(np.int64),
        reverse=((flags >> np.uint64(_FLAG_REVERSE - 1)) & np.uint64(1)) == 1,
    )
    return assemble(path, readouts, enc, "ismrmrd", repetitions, dropped)


def _limit_centre(limit, size: int) -> int:
    centre = getattr(limit, "center", None) if limit is not None else None
    return int(centre) if centre is not None else size // 2


def _ismrmrd_encoding(encoding) -> Encoding:
    """:class:`Encoding` of an ISMRMRD (v1, camelCase) encoding element."""
    space, recon, limits = encoding.encodedSpace.matrixSize, encoding.reconSpace.matrixSize, encoding.encodingLimits
    lines, partitions = int(space.y or 1), int(space.z or 1)
    return Encoding(
        lines=lines,
        line_centre=_limit_centre(getattr(limits, "kspace_encoding_step_1", None), lines),
        partitions=partitions,
        partition_centre=_limit_centre(getattr(limits, "kspace_encoding_step_2", None), partitions) if partitions > 1 else 0,
        readout=int(space.x or 0),
        image_readout=int(recon.x or 0),
    )


# --------------------------------------------------------------------------------------------- MRD v2


def read_mrd(path, repetitions: str = "mean") -> RawVolume:
    """Read an MRD v2 binary stream (``mrd-python``: header and acquisitions) into :class:`RawVolume`.
    The stream is read acquisition by acquisition (the format is a stream); the gridding is one scatter."""
    path = Path(path)
    mrd = _require(path, "mrd", "mrd-python")
    try:
        with mrd.BinaryMrdReader(str(path)) as reader:
            header = reader.read_header()
            acqs = [item.value for item in reader.read_data() if isinstance(item, mrd.StreamItem.Acquisition)]
    except Exception as exc:  # noqa: BLE001 (the yardl reader raises many kinds on a corrupt stream)
        raise FormatError(path, "stream", f"MRD stream cannot be read, truncated or corrupt ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if header is None or not header.encoding:
        raise FormatError(path, "header", "MRD stream has no header with an encoding")
    encoding = header.encoding[0]
    _check_cartesian(path, encoding.trajectory.name)
    space, recon, limits = encoding.encoded_space.matrix_size, encoding.recon_space.matrix_size, encoding.encoding_limits
    lines, partitions = int(space.y or 1), int(space.z or 1)
    enc = Encoding(
        lines=lines,
        line_centre=_limit_centre(limits.kspace_encoding_step_1 if limits else None, lines),
        partitions=partitions,
        partition_centre=_limit_centre(limits.kspace_encoding_step_2 if limits else None, partitions) if partitions > 1 else 0,
        readout=int(space.x or 0),
        image_readout=int(recon.x or 0),
    )
    flags = np.fromiter((int(a.head.flags) for a in acqs), np.uint64, count=len(acqs))
    refs = np.fromiter((a.head.encoding_space_ref or 0 for a in acqs), np.int64, count=len(acqs))
    keep, dropped = _skip_by_flags(flags)
    if (keep & (refs != 0)).any():
        dropped["other-encoding"] = int((keep & (refs != 0)).sum())
        keep &= refs == 0
    acqs = [a for a, k in zip(acqs, keep) if k]
    shapes = {a.data.shape for a in acqs}
    if len(shapes) > 1:
        raise FormatError(path, "acquisitions", f"imaging readouts differ in shape (coils, samples): {sorted(shapes)[:4]}")
    counters = np.array([[getattr(a.head.idx, k) or 0 for k in ("kspace_encode_step_1", "kspace_encode_step_2", "slice",
                                                                  "repetition", "contrast", "phase", "set")]
                         + [a.head.center_sample or 0] for a in acqs], np.int64).reshape(-1, 8)
    data = np.stack([a.data for a in acqs]).astype(np.complex64, copy=False) if acqs else np.zeros((0, 0, 0), np.complex64)
    readouts = Readouts(data, *counters.T, reverse=((flags[keep] >> np.uint64(_FLAG_REVERSE - 1)) & np.uint64(1)) == 1)
    return assemble(path, readouts, enc, "mrd", repetitions, dropped)


# --------------------------------------------------------------------------------------------- twix


def _looks_like_twix(path: Path, head: bytes, size: int) -> bool:
    """A Siemens twix file: VD/VE multi-raid header (uint32 0..9999, 1..64 measurements, first entry
    inside the file) or VB (uint32 header length inside the file, then the 'Config' buffer)."""
    if len(head) < 64:
        return False
    first, second = np.frombuffer(head[:8], "<u4")
    if first < 10000 and 1 <= second <= 64:  # VD/VE: entry[0] offset at byte 16 (MrParcRaidFileEntry)
        offset = int(np.frombuffer(head[16:24], "<u8")[0]) if len(head) >= 24 else 0
        return 0 < offset < size
    return 32 < first < size and b"Config" in head[8:40]


def _check_twix_blocks(path: Path) -> None:
    """Walk the measurement data blocks the way ``twixtools.read_twix`` does, header by header, and
    refuse a block that would not advance the walk (length 0: a corrupt or zero-filled file, on which
    twixtools would loop for ever) or a measurement outside the file."""
    from twixtools import hdr_def, helpers, mdb as mdb_module

    size = path.stat().st_size
    with open(path, "rb") as fid:
        version_is_ve, _ = helpers.idea_version_check(fid)
        if version_is_ve:
            raid = np.fromfile(fid, dtype=hdr_def.MultiRaidFileHeader, count=1)
            if raid.size == 0:
                raise FormatError(path, "-", "twix file truncated inside its file header")
            count = int(raid[0]["hdr"]["count_"])
            entries = raid[0]["entry"][:count]
            spans = [(int(e["off_"]), int(e["len_"]) or size - int(e["off_"])) for e in entries]
        else:
            spans = [(0, size)]
        for start, length in spans:
            end = start + length
            if not 0 <= start < size or end > size:
                raise FormatError(path, "-", f"twix measurement at bytes {start}..{end} lies outside the file ({size} bytes): truncated")
            fid.seek(start)
            init = np.fromfile(fid, dtype=hdr_def.SingleMeasInit, count=1)
            pos = start + (int(init[0]["hdr_len"]) if init.size else size)
            while pos + 128 < end:
                fid.seek(pos)
                block = mdb_module.Mdb(fid, version_is_ve)
                if block.is_flag_set("ACQEND"):
                    break
                step = int(block.dma_len)
                if step <= 0:
                    raise FormatError(path, "-", f"twix data block of length 0 at byte {pos}: file corrupt or zero-filled")
                pos += step


def read_twix(path, repetitions: str = "mean") -> RawVolume:
    """Read a Siemens twix ``.dat`` (VB or VD/VE) into :class:`RawVolume`: ``twixtools.map_twix``, the
    last measurement that has an ``image`` scan (multi-raid files put adjustment scans first), its MDH
    counters and data gathered per readout, gridded by one scatter."""
    path = Path(path)
    twixtools = _require(path, "twixtools", "twixtools")
    try:
        _check_twix_blocks(path)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # twixtools prints and warns
            warnings.simplefilter("ignore")
            measurements = twixtools.map_twix(str(path), verbose=False)
    except FormatError:
        raise
    except Exception as exc:  # noqa: BLE001 (twixtools raises many kinds on a corrupt file)
        raise FormatError(path, "-", f"twix file cannot be read, truncated or corrupt ({exc.__class__.__name__})") from None
    scans = [m for m in measurements if isinstance(m, dict) and "image" in m]
    if not scans:
        raise FormatError(path, "image", "twix file has no imaging scan (only noise/adjustment data)")
    meas = scans[-1]
    try:
        kspace_prot = meas["hdr"]["MeasYaps"]["sKSpace"]
        code = int(kspace_prot.get("ucTrajectory", 1))
        dimension = int(kspace_prot.get("ucDimension", 2))
        lines = int(kspace_prot.get("lPhaseEncodingLines", 0))
        partitions = int(kspace_prot.get("lPartitions", 1)) if dimension > 2 else 1
        base = int(kspace_prot.get("lBaseResolution", 0))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(path, "hdr", f"twix protocol (MeasYaps sKSpace) missing or unreadable ({exc.__class__.__name__})") from None
    if code != 1:
        _check_cartesian(path, _TWIX_TRAJECTORIES.get(code, f"ucTrajectory {code}"))
    mdbs = meas["image"].mdb_list
    try:
        counters = np.array([[m.mdh.Counter.Lin, m.mdh.Counter.Par, m.mdh.Counter.Sli, m.mdh.Counter.Rep,
                              m.mdh.Counter.Eco, m.mdh.Counter.Phs, m.mdh.Counter.Set, m.mdh.CenterCol,
                              m.is_flag_set("REFLECT")] for m in mdbs], np.int64).reshape(-1, 9)
        data = [m.data for m in mdbs]  # read from the file, one readout (all coils) at a time
    except Exception as exc:  # noqa: BLE001
        raise FormatError(path, "image", f"twix readouts cannot be read, truncated or corrupt ({exc.__class__.__name__})") from None
    shapes = {d.shape for d in data}
    if len(shapes) > 1:
        raise FormatError(path, "image", f"imaging readouts differ in shape (coils, samples): {sorted(shapes)[:4]}")
    first = mdbs[0].mdh if mdbs else None
    enc = Encoding(
        lines=lines,
        line_centre=int(first.CenterLin) if first is not None else lines // 2,
        partitions=partitions,
        partition_centre=int(first.CenterPar) if (first is not None and partitions > 1) else 0,
        readout=0,
        image_readout=base,
    )
    stacked = np.stack(data).astype(np.complex64, copy=False) if data else np.zeros((0, 0, 0), np.complex64)
    readouts = Readouts(stacked, *counters[:, :8].T, reverse=counters[:, 8].astype(bool))
    return assemble(path, readouts, enc, "twix", repetitions)


# --------------------------------------------------------------------------------------------- dispatch


def sniff_format(path) -> str:
    """``"ismrmrd"``, ``"mrd"`` or ``"twix"`` from the file's first bytes, else a :class:`FormatError`
    saying what the file is not (or what it is, when recognisable)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "-", "file not found")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(_HDF5_MAGIC):
        return "ismrmrd"
    if head.startswith(_MRD2_MAGIC):
        return "mrd"
    if _looks_like_twix(path, head, size):
        return "twix"
    if path.suffix == ".7" and 5.0 <= float(np.frombuffer(head[:4], "<f4")[0]) < 40.0:  # rdbm revision
        raise FormatError(path, "-", "a GE P-file (proprietary raw format): convert it to ISMRMRD first")
    if head[128:132] == b"DICM":
        raise FormatError(path, "-", "a DICOM image, not raw k-space")
    if path.suffix.lower() == ".cfl" or path.with_suffix(".cfl").is_file() and path.suffix.lower() == ".hdr":
        raise FormatError(path, "-", "a BART .cfl array (no encoding header): not supported")
    raise FormatError(path, "-", "not a raw k-space file (expected ISMRMRD HDF5, an MRD stream or a Siemens twix .dat)")


READERS: Dict[str, Callable[..., RawVolume]] = {"ismrmrd": read_ismrmrd, "mrd": read_mrd, "twix": read_twix}


def read_raw(path, repetitions: str = "mean") -> RawVolume:
    """Read any supported raw file (format from its content) into :class:`RawVolume`."""
    return READERS[sniff_format(path)](path, repetitions=repetitions)


# --------------------------------------------------------------------------------------------- convert


def challenge_scale(kspace: np.ndarray, anatomy: str) -> float:
    """Factor that brings the median of the fully sampled RSS label (384 x 384 crop) over the object
    (pixels above 0.1 x its 99.9th percentile) to the middle (geometric) of the simulator's
    challenge-like range for ``anatomy``."""
    from data.simulate import LABEL_MEDIAN  # the simulator's challenge-like absolute intensities

    label = rss_image(torch.from_numpy(kspace)).numpy()
    top = float(np.quantile(label, 0.999))
    if not top > 0:
        raise ValueError("k-space is all zeros: nothing to scale")
    target = math.sqrt(LABEL_MEDIAN[anatomy][0] * LABEL_MEDIAN[anatomy][1])
    return target / float(np.median(label[label > _OBJECT_FRACTION * top]))


def output_name(anatomy: str, acc: int, index: int, leaderboard: bool) -> str:
    """``{anatomy}_test{index}.h5`` (leaderboard) or ``{anatomy}_acc{acc}_{index}.h5`` (train)."""
    return f"{anatomy}_test{index}.h5" if leaderboard else f"{anatomy}_acc{acc}_{index}.h5"


def convert_raw_file(
    src, out, anatomy: str, acc: int, index: int, leaderboard: bool = False,
    repetitions: str = "mean", scale: str = "challenge",
) -> Tuple[Path, RawVolume, float]:
    """Convert one raw file into ``out/kspace/<name>`` and ``out/image/<name>`` (see
    :func:`output_name`); the mask is the challenge's fixed mask for ``acc``, applied to the stored
    k-space when ``leaderboard``. Returns the k-space path, the volume (unscaled) and the scale used."""
    if scale not in SCALE_MODES:
        raise ValueError(f"scale must be one of {SCALE_MODES}, got {scale!r}")
    volume = read_raw(src, repetitions=repetitions)
    factor = 1.0
    try:
        if scale == "challenge":
            factor = challenge_scale(volume.kspace, anatomy)
        mask = make_mask("fixed", volume.kspace.shape[-1], acc)
    except ValueError as exc:
        raise FormatError(src, "kspace", str(exc)) from None
    kspace = torch.from_numpy(volume.kspace) * np.float32(factor)
    name = output_name(anatomy, acc, index, leaderboard)
    kpath, _ = write_challenge_pair(Path(out) / "kspace" / name, Path(out) / "image" / name, kspace, mask,
                                    undersample=leaderboard)
    return kpath, volume, factor


def raw_files(src) -> List[Path]:
    """``[src]`` for a file; the files with a raw suffix (:data:`RAW_SUFFIXES`) in a folder, sorted."""
    src = Path(src)
    if src.is_dir():
        return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in RAW_SUFFIXES)
    return [src]


def convert_raw(
    src, out, anatomy: str, acc: int, leaderboard: bool = False, repetitions: str = "mean",
    scale: str = "challenge", start_index: int = 1,
) -> int:
    """Convert a raw file, or every raw file of a folder (sorted, numbered from ``start_index``); one
    line per file on stderr, a bad file is reported and skipped. Returns the exit code: 0 all converted,
    1 any file failed (or none found), 2 ``out`` unusable (before any work)."""
    src = Path(src)
    if not src.exists():
        print(f"{src}: -: path not found", file=sys.stderr)
        return 1
    files = raw_files(src)
    if not files:
        print(f"{src}: -: no raw files ({', '.join(RAW_SUFFIXES)})", file=sys.stderr)
        return 1

    def convert_one(path: Path, index: int) -> str:
        kpath, volume, factor = convert_raw_file(path, out, anatomy, acc, index, leaderboard, repetitions, scale)
        scaled = f", scaled x{factor:.4g}" if scale == "challenge" else ""
        return f"{path} -> {kpath.name}: {volume.summary()}{scaled}"

    return convert_batch(files, out, convert_one, "convert-raw", start_index, "raw files")


def add_arguments(parser) -> None:
    """The ``convert-raw`` options (shared by :mod:`data.cli`)."""
    parser.add_argument("--src", required=True, help="a raw file or a folder of raw files (ISMRMRD .h5, MRD stream, Siemens twix .dat)")
    parser.add_argument("--out", required=True, help="output folder (gets kspace/ and image/)")
    parser.add_argument("--anatomy", required=True, choices=("brain", "knee"))
    parser.add_argument("--acceleration", type=int, default=4, help="acc of the challenge's fixed mask (and the baselines)")
    parser.add_argument("--leaderboard", action="store_true",
                        help="write leaderboard files ({anatomy}_test{i}.h5, k-space undersampled by the mask)")
    parser.add_argument("--repetitions", choices=REPETITION_MODES, default="mean",
                        help="average all repetitions (mean) or keep the first only")
    parser.add_argument("--scale", choices=SCALE_MODES, default="challenge",
                        help="challenge: scale to challenge-like intensities (default); none: keep the scanner's units")
    parser.add_argument("--start-index", type=int, default=1, help="number of the first output file")


def run(args) -> int:
    """Entry of ``python -m data.formats convert-raw`` (parsed ``args`` of :func:`add_arguments`)."""
    if args.acceleration < 1:
        print(f"error: --acceleration must be a positive integer, got {args.acceleration}", file=sys.stderr)
        return 2
    return convert_raw(args.src, args.out, args.anatomy, args.acceleration, args.leaderboard, args.repetitions,
                       args.scale, args.start_index)
