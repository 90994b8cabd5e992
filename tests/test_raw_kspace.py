"""Raw scanner k-space -> the challenge layout (data/raw_kspace.py, python -m data.formats convert-raw).

Real files from mrbabel-data (MIT): the Siemens twix GRE (a real scanner phantom, Cartesian, 2 coils),
the MRD v2 stream phantom (Cartesian, 8 coils) and the ISMRMRD spiral (non-Cartesian: refused). Small
ISMRMRD files written here with the ismrmrd package from known k-space check the gridding exactly.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import ismrmrd  # pinned in requirements.txt (with mrd-python, twixtools and the test files of mrbabel-data)
import mrbabel_data
import numpy as np
import pytest
import torch
import twixtools

from data.formats import FormatError, read_image_file, read_kspace_file, validate_path
from data.masks import make_mask
from data.raw_kspace import convert_raw, read_raw
from data.volumes import rss_image

REPO = Path(__file__).resolve().parents[1]
TWIX_GRE = Path(mrbabel_data.testdata("siemens"))
MRD_PHANTOM = Path(mrbabel_data.testdata("mrd"))
ISMRMRD_SPIRAL = Path(mrbabel_data.testdata("ismrmrd"))
GE_ARCHIVE = Path(mrbabel_data.testdata("gehc::archive"))

FLAG = {"noise": 19, "calibration": 20, "calibration_and_imaging": 21, "reverse": 22, "navigator": 23}


def _known_kspace(S=2, C=3, H=32, W=24, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((S, C, H, W)) + 1j * rng.standard_normal((S, C, H, W))).astype(np.complex64)


def _header(H, W, trajectory="cartesian", P=1, recon_x=None):
    x = ismrmrd.xsd
    space = lambda nx, ny, nz: x.encodingSpaceType(matrixSize=x.matrixSizeType(x=nx, y=ny, z=nz),  # noqa: E731
                                                   fieldOfView_mm=x.fieldOfViewMm(x=2.0 * nx, y=float(ny), z=5.0))
    limits = x.encodingLimitsType(kspace_encoding_step_1=x.limitType(minimum=0, maximum=W - 1, center=W // 2),
                                  kspace_encoding_step_2=x.limitType(minimum=0, maximum=P - 1, center=P // 2))
    enc = x.encodingType(encodedSpace=space(H, W, P), reconSpace=space(recon_x or H // 2, W, P), encodingLimits=limits,
                         trajectory=x.trajectoryType(trajectory))
    return x.ismrmrdHeader(experimentalConditions=x.experimentalConditionsType(H1resonanceFrequency_Hz=63_500_000),
                           encoding=[enc]).toXML("utf-8")


def _write_ismrmrd(path, acquisitions, H, W, **header):
    """``acquisitions``: dicts with ``data`` (C, Ns) and header fields (``flags`` list of flag numbers,
    ``line``, ``slice``, ``partition``, ``repetition``, ``contrast``, ``center_sample``)."""
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as ds:
        ds.write_xml_header(_header(H, W, **header))
        for a in acquisitions:
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(a["data"], np.complex64),
                                                 center_sample=a.get("center_sample", a["data"].shape[-1] // 2))
            for flag in a.get("flags", ()):
                acq.set_flag(flag)
            idx = acq.idx
            idx.kspace_encode_step_1 = a.get("line", 0)
            idx.kspace_encode_step_2 = a.get("partition", 0)
            idx.slice = a.get("slice", 0)
            idx.repetition = a.get("repetition", 0)
            idx.contrast = a.get("contrast", 0)
            ds.append_acquisition(acq)
    return Path(path)


def _lines(kspace, order=None, **extra):
    """One acquisition per (slice, line) of ``kspace`` (S, C, H, W), in ``order`` of the flat index."""
    S, C, H, W = kspace.shape
    cells = [(s, w) for s in range(S) for w in range(W)]
    order = range(len(cells)) if order is None else order
    return [dict(data=kspace[cells[i][0], :, :, cells[i][1]], slice=cells[i][0], line=cells[i][1], **extra) for i in order]


def test_ismrmrd_round_trip_exact(tmp_path):
    """Known k-space through an ISMRMRD file: lines shuffled, noise/calibration-only/navigator
    acquisitions dropped by their flags, repeated centre lines averaged, reversed readouts flipped."""
    known = _known_kspace()
    S, C, H, W = known.shape
    rng = np.random.default_rng(1)
    acqs = _lines(known, order=rng.permutation(S * W))
    junk = lambda: (rng.standard_normal((C, H)) * 50).astype(np.complex64)  # noqa: E731
    acqs = [dict(data=junk(), flags=[FLAG["noise"]]) for _ in range(4)] + acqs
    acqs.append(dict(data=junk(), line=W // 2, flags=[FLAG["calibration"]]))
    acqs.append(dict(data=junk(), line=3, slice=1, flags=[FLAG["navigator"]]))
    acqs.append(dict(data=known[1, :, :, W // 2], slice=1, line=W // 2, flags=[FLAG["calibration_and_imaging"]]))
    acqs.append(dict(data=known[0, :, ::-1, 5], slice=0, line=5, flags=[FLAG["reverse"]], center_sample=H // 2))
    path = _write_ismrmrd(tmp_path / "scan.h5", acqs, H, W)
    vol = read_raw(path)
    assert vol.info["format"] == "ismrmrd"
    assert vol.kspace.dtype == np.complex64 and vol.kspace.shape == (S, C, H, W)
    np.testing.assert_array_equal(vol.kspace, known)
    assert vol.info["readout_oversampling"] == 2
    assert vol.info["dropped"] == {"noise": 4, "calibration-only": 1, "navigator": 1}
    assert vol.info["readouts_per_line"] == 2  # the repeated lines were averaged


def test_ismrmrd_partial_fourier_and_asymmetric_echo_zero_filled(tmp_path):
    """Lines 0..5 not acquired (partial Fourier), readouts starting 8 samples before the echo
    (asymmetric echo): zero-filled to the encoded matrix, everything acquired in place, exactly."""
    known = _known_kspace(S=1)
    _, C, H, W = known.shape
    acqs = [dict(data=known[0, :, 8:, w], line=w, center_sample=H // 2 - 8) for w in range(6, W)]
    vol = read_raw(_write_ismrmrd(tmp_path / "pf.h5", acqs, H, W))
    expected = np.zeros_like(known)
    expected[..., 8:, 6:] = known[..., 8:, 6:]
    np.testing.assert_array_equal(vol.kspace, expected)
    assert vol.info["lines_acquired"] == W - 6


def test_ismrmrd_3d_partitions_split_into_slices(tmp_path):
    """A 3-D Cartesian encoding: the partitions become slices by a centred inverse FFT along kz."""
    P = 4
    slices = _known_kspace(S=P, C=2, H=16, W=12)  # the 2-D k-space of each partition's slice
    sh = np.fft.fftshift
    kz = sh(np.fft.fft(np.fft.ifftshift(slices, axes=0), axis=0, norm="ortho"), axes=0).astype(np.complex64)
    acqs = [dict(data=kz[p, :, :, w], line=w, partition=p) for p in range(P) for w in range(12)]
    vol = read_raw(_write_ismrmrd(tmp_path / "3d.h5", acqs, 16, 12, P=P))
    assert vol.kspace.shape == (P, 2, 16, 12) and vol.info["partitions"] == P
    np.testing.assert_allclose(vol.kspace, slices, atol=1e-5)


def _energy_in_object(kspace, rows):
    """Fraction of the RSS image energy (384 x 384 crop) inside the image rows ``rows``."""
    image = rss_image(torch.from_numpy(kspace)).numpy() ** 2
    return float(image[:, rows].sum() / image.sum())


def test_twix_gre_real_file():
    """The real Siemens twix GRE: 1 slice, 2 coils, 2x readout oversampling kept (320 of a 160
    matrix), gridded exactly as twixtools' own (per-readout) assembly, the phantom inside the FOV."""
    vol = read_raw(TWIX_GRE)
    assert vol.info["format"] == "twix" and vol.kspace.shape == (1, 2, 320, 160)
    assert vol.info["readout_oversampling"] == 2
    image = twixtools.map_twix(str(TWIX_GRE), verbose=False)[-1]["image"]
    reference = image[:].squeeze()  # (Lin, Cha, Col), twixtools' loop over the readouts
    np.testing.assert_array_equal(vol.kspace[0], reference.transpose(1, 2, 0))
    # oversampled readout: the object lies in the central half of the readout FOV (rows 112..271 of 384)
    assert _energy_in_object(vol.kspace, slice(192 - 80, 192 + 80)) > 0.97
    label = rss_image(torch.from_numpy(vol.kspace))[0].numpy()
    inside = label > 0.2 * label.max()
    assert 0.1 < inside[112:272].mean() < 0.9  # a structured object, neither empty nor everywhere


def test_mrd_stream_real_file():
    """The MRD v2 stream phantom: 8 coils, 512 samples for a 256 matrix, 32 noise readouts dropped;
    equal to placing each imaging acquisition at its line (the test's own loop)."""
    import mrd

    vol = read_raw(MRD_PHANTOM)
    assert vol.info["format"] == "mrd" and vol.kspace.shape == (1, 8, 512, 256)
    assert vol.info["readout_oversampling"] == 2 and vol.info["dropped"] == {"noise": 32}
    expected = np.zeros((8, 512, 256), np.complex64)
    with mrd.BinaryMrdReader(str(MRD_PHANTOM)) as reader:
        reader.read_header()
        for item in reader.read_data():
            acq = item.value
            if not acq.head.flags & mrd.AcquisitionFlags.IS_NOISE_MEASUREMENT:
                expected[:, :, acq.head.idx.kspace_encode_step_1] = acq.data
    np.testing.assert_array_equal(vol.kspace[0], expected)
    assert _energy_in_object(vol.kspace, slice(192 - 128, 192 + 128)) > 0.9  # (noise fills the oversampled margin)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "data.formats", *map(str, args)], cwd=REPO, capture_output=True, text=True)


def test_convert_raw_cli_leaderboard_batch(tmp_path):
    """A folder with the real twix GRE, the MRD phantom, the (spiral) ISMRMRD file and a text file:
    the two Cartesian files become leaderboard files carrying the challenge's fixed mask, the two
    others are one line each, exit code 1; the output passes the validator."""
    src = tmp_path / "raw"
    src.mkdir()
    for path in (TWIX_GRE, MRD_PHANTOM, ISMRMRD_SPIRAL):
        shutil.copy(path, src / path.name)
    (src / "notes.dat").write_text("not a scanner file\n" * 10)
    out = tmp_path / "Data" / "leaderboard" / "acc4"
    res = _cli("convert-raw", "--src", src, "--out", out, "--anatomy", "brain", "--acceleration", 4, "--leaderboard")
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if ": -: " in line or "trajectory" in line]
    assert any(line.startswith(str(src / "notes.dat")) and "not a raw k-space file" in line for line in errors)
    assert any(line.startswith(str(src / "spiral.h5")) and "spiral trajectory is not Cartesian" in line for line in errors)
    assert "converted 2 of 4 raw files" in res.stderr
    # sorted: gre.dat (1), notes.dat (2, bad), phantom.bin (3), spiral.h5 (4, bad)
    assert sorted(p.name for p in (out / "kspace").glob("*.h5")) == ["brain_test1.h5", "brain_test3.h5"]
    assert validate_path(out) == []  # what python -m data.formats check runs
    for name, raw in (("brain_test1.h5", TWIX_GRE), ("brain_test3.h5", MRD_PHANTOM)):
        stored = read_kspace_file(out / "kspace" / name)
        full = read_raw(raw).kspace
        mask = make_mask("fixed", full.shape[-1], 4)
        np.testing.assert_array_equal(stored.mask, mask)
        assert not np.any(stored.kspace[..., mask == 0])  # undersampled: zeros off the mask
        on = stored.kspace[..., mask == 1]
        factor = np.vdot(full[..., mask == 1], on).real / np.vdot(full[..., mask == 1], full[..., mask == 1]).real
        np.testing.assert_allclose(on, full[..., mask == 1] * factor, rtol=1e-5, atol=1e-6 * np.abs(on).max())
        images = read_image_file(out / "image" / name)
        assert images["image_label"].shape == (1, 384, 384)
        target = np.sqrt(1.2e-4 * 2.5e-4)  # the brain scale: median of the label over the object
        label = images["image_label"]
        assert np.median(label[label > 0.1 * np.quantile(label, 0.999)]) == pytest.approx(target, rel=1e-3)


def test_convert_raw_train_file_fully_sampled(tmp_path):
    """Train files keep the fully sampled k-space (scanner units with scale='none') and the mask."""
    out = tmp_path / "train" / "knee"
    assert convert_raw(TWIX_GRE, out, "knee", 8, scale="none") == 0
    stored = read_kspace_file(out / "kspace" / "knee_acc8_1.h5")
    np.testing.assert_array_equal(stored.kspace, read_raw(TWIX_GRE).kspace)
    np.testing.assert_array_equal(stored.mask, make_mask("fixed", 160, 8))
    assert validate_path(out) == []


def _one_line_error(path, match):
    with pytest.raises(FormatError) as info:
        read_raw(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and match in text, text
    return text


def test_bad_raw_inputs_one_clear_error(tmp_path):
    known = _known_kspace(S=2, C=2, H=16, W=12)
    acqs = _lines(known)
    # undersampled acquisition: every other line outside the centre missing
    holes = [a for a in acqs if a["line"] % 2 == 0 or abs(a["line"] - 6) < 2]
    _one_line_error(_write_ismrmrd(tmp_path / "under.h5", holes, 16, 12), "k-space lines missing")
    # one slice lacks lines the other has
    short = [a for a in acqs if not (a["slice"] == 1 and a["line"] == 11)]
    _one_line_error(_write_ismrmrd(tmp_path / "short.h5", short, 16, 12), "slice 1 has")
    # non-Cartesian header
    _one_line_error(_write_ismrmrd(tmp_path / "radial.h5", acqs, 16, 12, trajectory="radial"), "radial trajectory is not Cartesian")
    # partition counters in a 2-D encoding: 3-D data that cannot be split
    parts = [dict(a, partition=a["slice"], slice=0) for a in acqs]
    _one_line_error(_write_ismrmrd(tmp_path / "3d2d.h5", parts, 16, 12), "without partitions to split")
    # only noise
    noise = [dict(a, flags=[FLAG["noise"]]) for a in acqs[:3]]
    _one_line_error(_write_ismrmrd(tmp_path / "noise.h5", noise, 16, 12), "no imaging readouts")
    # readouts of different lengths
    ragged = acqs[:-1] + [dict(acqs[-1], data=acqs[-1]["data"][:, :8])]
    _one_line_error(_write_ismrmrd(tmp_path / "ragged.h5", ragged, 16, 12), "differ in length")
    # truncated file
    good = _write_ismrmrd(tmp_path / "good.h5", acqs, 16, 12)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error(cut, "truncated")
    # not raw files: text, a challenge k-space file, a GE ScanArchive, the spiral ISMRMRD file
    text = tmp_path / "scan.dat"
    text.write_text("hello\n" * 100)
    _one_line_error(text, "not a raw k-space file")
    challenge = tmp_path / "brain_acc4_1.h5"
    with h5py.File(challenge, "w") as f:
        f["kspace"] = known
    _one_line_error(challenge, "use convert-fastmri")
    _one_line_error(GE_ARCHIVE, "GE ScanArchive")
    # twix: truncated, and a data block of length 0 (twixtools itself would loop for ever on it)
    raw = TWIX_GRE.read_bytes()
    (tmp_path / "cut.dat").write_bytes(raw[: len(raw) // 3])
    _one_line_error(tmp_path / "cut.dat", "truncated")
    from twixtools import mdh_def

    start = 10240 + int(np.frombuffer(raw[10240:10244], "<u4")[0])  # first data block of the measurement
    block = mdh_def.Scan_header()
    mdh_def.set_flag(block, "SYNCDATA", True)
    block.FlagsAndDMALength = (block.FlagsAndDMALength >> 25) << 25  # declared length 0
    loop = tmp_path / "loop.dat"
    loop.write_bytes(raw[:start] + bytes(block) + bytes(len(raw) - start - len(bytes(block))))
    code = f"from data.raw_kspace import read_raw\ntry:\n    read_raw({str(loop)!r})\nexcept ValueError as e:\n    print(e)"
    try:  # in a child with a time limit: without the guard, twixtools never returns
        res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{loop}: reading a twix file with a zero-length data block did not return")
    assert res.stdout.strip().startswith(f"{loop}: ") and "length 0" in res.stdout, res.stdout + res.stderr
    _one_line_error(ISMRMRD_SPIRAL, "spiral trajectory is not Cartesian")
