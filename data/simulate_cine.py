"""Synthetic cardiac cine data: a CMRxRecon 2023 multi-coil cine tree and an ACDC tree of the same subjects.

    python -m data.simulate_cine --out DIR --preset {tiny,demo,codec,full} --seed N [--trees both|acdc]

writes (DESIGN.md "Cardiac cine")::

    DIR/CMRxRecon/MultiCoil/Cine/{TrainingSet,ValidationSet}/FullSample/P###/cine_{sax,lax}.mat        kspace_full
    DIR/CMRxRecon/MultiCoil/Cine/{TrainingSet,ValidationSet}/AccFactor{04,08,10}/P###/cine_{sax,lax}.mat      kspace_subRR
    DIR/CMRxRecon/MultiCoil/Cine/{TrainingSet,ValidationSet}/AccFactor{04,08,10}/P###/cine_{sax,lax}_mask.mat mask RR
    DIR/ACDC/{training,testing}/patient###/patient###_4d.nii.gz, patient###_frame##[_gt].nii.gz, Info.cfg

k-space is complex64 ``(t, slices, coils, ky, kx)`` in h5py order (MATLAB v7.3 via :mod:`data.cine`);
``cine_sax`` holds the short-axis stack (base to apex), ``cine_lax`` the 2-, 3- and 4-chamber views in
that order. The AccFactor files hold the full k-space times the CMRxRecon 2023 uniform mask of that R
(:func:`data.cine_masks.make_cine_mask` ``"uniform"``: 24 ACS lines, comb offset 0, the same mask every
frame; stored ``(ky, kx)``). ACDC's training set is the CMRxRecon TrainingSet's subjects, its testing
set the ValidationSet's (patient numbers continue, as ACDC's 101-150 follow 1-100); the ACDC cine is
the short-axis stack's fully sampled RSS image with the readout oversampling removed, scaled so its
99.5th percentile is 1000, with labels (0 bg, 1 RV, 2 myocardium, 3 LV) at ED (frame 1) and ES.

Subjects: ``P###`` numbers restart at 1 in each set; subject ``g`` (1-based over TrainingSet then
ValidationSet) has ACDC group ``GROUPS[(g - 1) % 5]`` (NOR, DCM, HCM, MINF, RV) and its own generator
``SeedSequence([seed, TAG, g])``: a subject does not depend on which others are generated or in which
order, and a seed gives bit-identical arrays.

Forward model per subject and view (anatomy and motion from :mod:`data.heart_phantom`; FFTs and coil
ops from :mod:`utils.physics`): magnitude ``m(t, s, y, x)`` over the 2x oversampled readout width,
times a smooth static phase (:func:`data.phantoms.smooth_phase`); coil images with smooth complex
sensitivities (:class:`data.phantoms.CoilArray`, a ring around the image plane; 10 coils as CMRxRecon
after coil compression); ``fft2c``; scaled so that the median of the noiseless RSS over the object
(magnitude above 10 % of its maximum) is drawn from ``LABEL_MEDIAN`` (small CMRxRecon-like values);
complex Gaussian noise correlated across coils (:func:`data.simulate.noise_mixing`) with a standard
deviation of ``floor * median / sqrt(C)`` per sample, ``floor`` from ``NOISE_FLOOR``. Planes are thin
(no through-slab averaging); no phase wrap is simulated (anatomy outside the phase field of view is
simply not imaged).

Presets (subjects per set; k-space ``ky x kx`` with kx the 2x oversampled readout; pixel size mm):

=======  =====  =====  ======  ====  =====  ==============  ==============  =====
preset   train  valid  frames  SAX   coils  SAX ky x kx     LAX ky x kx     pixel
=======  =====  =====  ======  ====  =====  ==============  ==============  =====
tiny     2      1      6       3     4      48 x 96         40 x 96         5.0
demo     8      3      12      4     10     64 x 96         48 x 96         4.5
codec    40     3      12      4     10     64 x 96         48 x 96         4.5
full     120    60     12      10    10     246 x 512       204 x 448       1.4
=======  =====  =====  ======  ====  =====  ==============  ==============  =====

``full`` has CMRxRecon 2023's counts and SAX/LAX matrix sizes; it is documented, never run in CI
(about 1.4 GB of FullSample k-space per subject, ~3 GB with the AccFactor copies, ~500 GB in all).
``tiny`` is for tests; ``demo`` is sized for a CPU demo; ``codec`` is ``demo`` with five times the training
subjects, for the TiTok-MRI codec demo (its tokenizer and DiT learn the anatomy from frames, and 8 subjects
are too few to generalise to unseen ones); it is meant for ``--trees acdc``, which writes the ACDC tree only
and skips the long-axis views and every k-space file (the SAX k-space is still simulated: the ACDC cine is
its RSS image). The AccFactor k-space files of ``demo`` and
``full`` are gzip-compressed (level 4: their zero lines shrink them to ~55-65 % at demo size), FullSample
files are not (noise does not compress, and training reads them frame by frame). The 24 ACS lines are
the 2023 contract at every size, so at the small demo matrices they are a large share of the lines
(an AccFactor10 SAX file samples 28 of 64 lines, a LAX one 27 of 48).

Cost, measured on a busy 2-core machine with ``--threads 1``: tiny (3 subjects) ~1 s (6 s with the
imports), 58 MB; demo (11 subjects) ~55 s (mostly gzip), 1.0 GB, 0.7 GB peak memory; full ~80 s to
synthesise one subject (2.9 GB peak memory) plus its writing (not measured; gzip of ~1.5 GB), so
roughly 6-8 h for all 180.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from data.cine import AcdcInfo, write_acdc_patient, write_cine_fullsample, write_cine_undersampled
from data.cine_masks import ACS_2023, make_cine_mask
from data.heart_phantom import GROUPS, Planes, Subject, es_frame, lax_planes, render, sample_subject, sax_planes
from data.phantoms import CoilArray, Grid, smooth_phase
from data.simulate import noise_mixing
from data.volumes import slice_chunks
from utils.io import OutputError, prepare_output_dir
from utils.physics import center_crop, fft2c, ifft2c, rss

__all__ = [
    "CinePreset",
    "PRESETS",
    "ACCELERATIONS",
    "SubjectSpec",
    "subject_specs",
    "subject_rng",
    "SimulatedView",
    "SimulatedSubject",
    "simulate_subject",
    "write_subject",
    "generate_dataset",
]

ACCELERATIONS = (4, 8, 10)  # CMRxRecon 2023 AccFactor folders
SETS = (("TrainingSet", "training"), ("ValidationSet", "testing"))  # CMRxRecon set, ACDC split
_TAG = 0xC17E  # separates these seeds from other uses of the same user seed
UNIT_MM = 150.0  # millimetres per coordinate unit of the coil/phase grids (data.phantoms.Grid)
LABEL_MEDIAN = (1.5e-4, 3.0e-4)  # median noiseless RSS over the object
NOISE_FLOOR = (0.02, 0.05)  # noise std per coil sample x sqrt(C) / that median
_OBJECT_LEVEL = 0.1
ACDC_MAX = 1000.0  # the ACDC cine's 99.5th percentile
TREES = ("both", "acdc")  # what generate_dataset writes


@dataclasses.dataclass(frozen=True)
class CinePreset:
    """Sizes of a synthetic cine data set (subject counts per set)."""

    name: str
    train_subjects: int
    val_subjects: int
    frames: int
    sax_slices: int
    coils: int
    sax_shape: Tuple[int, int]  # k-space (ky, kx), kx = 2x oversampled readout
    lax_shape: Tuple[int, int]
    pixel_mm: float
    compression: Optional[int]  # gzip level of the AccFactor k-space files (zero lines compress well)


PRESETS: Dict[str, CinePreset] = {
    "tiny": CinePreset("tiny", 2, 1, 6, 3, 4, (48, 96), (40, 96), 5.0, None),
    "demo": CinePreset("demo", 8, 3, 12, 4, 10, (64, 96), (48, 96), 4.5, 4),
    "codec": CinePreset("codec", 40, 3, 12, 4, 10, (64, 96), (48, 96), 4.5, 4),
    "full": CinePreset("full", 120, 60, 12, 10, 10, (246, 512), (204, 448), 1.4, 4),
}


@dataclasses.dataclass(frozen=True)
class SubjectSpec:
    """One subject: its set, its number there (``P###``) and overall (seed key, ACDC patient number)."""

    set_name: str  # TrainingSet or ValidationSet
    number: int  # 1-based within the set
    global_number: int  # 1-based over TrainingSet then ValidationSet

    @property
    def name(self) -> str:
        return f"P{self.number:03d}"

    @property
    def acdc_split(self) -> str:
        return dict(SETS)[self.set_name]

    @property
    def group(self) -> str:
        return GROUPS[(self.global_number - 1) % len(GROUPS)]


def subject_specs(preset: CinePreset) -> List[SubjectSpec]:
    """Every subject of a preset, TrainingSet first."""
    train = [SubjectSpec("TrainingSet", i, i) for i in range(1, preset.train_subjects + 1)]
    val = [SubjectSpec("ValidationSet", i, preset.train_subjects + i) for i in range(1, preset.val_subjects + 1)]
    return train + val


def subject_rng(seed: int, spec: SubjectSpec) -> np.random.Generator:
    """The subject's own generator ``default_rng(SeedSequence([seed, TAG, global_number]))``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([seed, _TAG, spec.global_number]))


# --------------------------------------------------------------------------------------------- acquisition


@dataclasses.dataclass
class SimulatedView:
    """One view stack: ``kspace`` complex64 ``(t, slices, coils, ky, kx)``, ``labels`` uint8
    ``(t, slices, ky, kx)`` over the oversampled grid, ``planes`` its geometry."""

    kspace: np.ndarray
    labels: np.ndarray
    planes: Planes


@dataclasses.dataclass
class SimulatedSubject:
    """A subject's parameters, ES frame (0-based), heart period (ms) and its SAX and LAX stacks."""

    spec: SubjectSpec
    subject: Subject
    es_frame: int
    rr_ms: float
    sax: SimulatedView
    lax: Optional[SimulatedView]  # None when simulated for the ACDC tree only


def _grid(planes: Planes, z_mm: np.ndarray) -> Grid:
    """The image planes as a :class:`data.phantoms.Grid` in units of ``UNIT_MM`` (in-plane pixel
    offsets from the centre; ``z`` one value per plane)."""
    H, W = planes.shape
    dy, dx = planes.pixel_mm
    x = ((np.arange(W) - W // 2) * dx / UNIT_MM).astype(np.float32).reshape(1, 1, W)
    y = ((np.arange(H) - H // 2) * dy / UNIT_MM).astype(np.float32).reshape(1, H, 1)
    return Grid(x, y, (np.asarray(z_mm, np.float32) / UNIT_MM).reshape(-1, 1, 1))


def _acquire(rng: np.random.Generator, magnitude: np.ndarray, planes: Planes, coils: int,
             phase_z_mm: np.ndarray, coil_z_mm: np.ndarray) -> np.ndarray:
    """Noisy multi-coil k-space complex64 ``(t, S, C, H, W)`` of a magnitude movie ``(t, S, H, W)``.

    Static smooth phase and coil maps (a ring of loops around the plane centre, enclosing the
    field of view), scaling to ``LABEL_MEDIAN``, correlated complex Gaussian noise (module docstring).
    """
    T, S, H, W = magnitude.shape
    dy, dx = planes.pixel_mm
    half_rows, half_cols = H * dy / 2 / UNIT_MM, W * dx / 4 / UNIT_MM  # phase FOV, nominal readout FOV
    radii = (max(half_cols, 0.8) * rng.uniform(1.3, 1.5), max(half_rows, 0.8) * rng.uniform(1.2, 1.35))
    ring = CoilArray.sample(rng, coils, radii, (0.0, 0.0, float(np.mean(coil_z_mm)) / UNIT_MM), axis="z")
    maps = ring.maps(_grid(planes, coil_z_mm))  # (S, C, H, W)
    phase = torch.from_numpy(smooth_phase(rng, _grid(planes, phase_z_mm)))  # (S, H, W)
    median_target = rng.uniform(*LABEL_MEDIAN)
    floor = rng.uniform(*NOISE_FLOOR)
    mixing = noise_mixing(rng, coils)

    mag = torch.from_numpy(magnitude)
    kspace = torch.empty((T, S, coils, H, W), dtype=torch.complex64)
    level = _OBJECT_LEVEL * float(mag.max())
    inside = []
    for part in slice_chunks(T, S * coils * H * W):
        obj = torch.polar(mag[part], phase.expand_as(mag[part]))  # (t, S, H, W)
        images = obj[:, :, None] * maps[None]  # (t, S, C, H, W)
        inside.append(rss(images, dim=2)[mag[part] > level])
        kspace[part] = fft2c(images)
    values = torch.cat(inside)
    if values.numel() == 0:
        raise RuntimeError("simulated cine view is empty")
    median = float(values.median())
    kspace *= median_target / median
    sigma = floor * median_target / math.sqrt(coils)
    for part in slice_chunks(T, S * coils * H * W):
        n = part.stop - part.start
        white = rng.standard_normal((2, n * S, coils, H * W), dtype=np.float32)
        noise = torch.complex(torch.from_numpy(white[0]), torch.from_numpy(white[1])) * np.float32(sigma / math.sqrt(2))
        kspace[part] += (mixing @ noise).reshape(n, S, coils, H, W)
    return kspace.numpy()


def simulate_subject(seed: int, spec: SubjectSpec, preset: CinePreset, lax: bool = True) -> SimulatedSubject:
    """Simulate one subject's SAX stack and LAX views (a pure function of ``(seed, spec, preset)``); with
    ``lax=False`` the LAX views are skipped (``None``) and the SAX stack is the same."""
    rng = subject_rng(seed, spec)
    subject = sample_subject(rng, spec.group)
    rr_ms = float(rng.uniform(750.0, 1100.0))
    T = preset.frames
    views = {}
    for view, planes in (("sax", sax_planes(subject, preset.sax_slices, preset.sax_shape, preset.pixel_mm)),
                         ("lax", lax_planes(subject, preset.lax_shape, preset.pixel_mm))):
        if view == "lax" and not lax:
            views[view] = None
            continue
        magnitude, labels = render(subject, planes, T)
        S = magnitude.shape[1]
        if view == "sax":
            phase_z, coil_z = planes.position_mm, planes.position_mm
        else:  # the three LAX planes are not parallel: independent phase, one coil ring
            phase_z, coil_z = np.arange(S) * 0.6 * UNIT_MM, np.zeros(S)
        kspace = _acquire(rng, magnitude, planes, preset.coils, phase_z, coil_z)
        views[view] = SimulatedView(kspace, labels, planes)
    return SimulatedSubject(spec, subject, es_frame(subject, T), rr_ms, views["sax"], views["lax"])


def acdc_cine(kspace: np.ndarray) -> np.ndarray:
    """The ACDC cine ``(t, z, y, x)`` float32 of SAX k-space ``(t, S, C, ky, kx)``: RSS image, readout
    oversampling removed (central ``kx // 2`` columns), 99.5th percentile scaled to ``ACDC_MAX``."""
    k = torch.from_numpy(kspace)
    T, S, C, H, W = k.shape
    image = torch.empty((T, S, H, W // 2), dtype=torch.float32)
    for part in slice_chunks(T, S * C * H * W):
        image[part] = center_crop(rss(ifft2c(k[part]), dim=2), (H, W // 2))
    out = image.numpy()
    return (out * (ACDC_MAX / max(float(np.percentile(out, 99.5)), 1e-30))).astype(np.float32)


def write_subject(root: Path, sim: SimulatedSubject, compression: Optional[int] = None,
                  trees: str = "both") -> List[Path]:
    """Write one simulated subject into both trees under ``root`` (``trees="acdc"``: the ACDC tree only;
    ``compression``: gzip level of the AccFactor k-space); returns the written paths."""
    spec, T = sim.spec, sim.sax.kspace.shape[0]
    set_dir = Path(root) / "CMRxRecon" / "MultiCoil" / "Cine" / spec.set_name
    written: List[Path] = []
    for view, data in (("sax", sim.sax), ("lax", sim.lax)) if trees == "both" else ():
        written.append(write_cine_fullsample(set_dir, spec.name, view, data.kspace))
        ky, kx = data.kspace.shape[-2:]
        for acc in ACCELERATIONS:
            mask = make_cine_mask("uniform", (1, ky, kx), acc, acs=ACS_2023)[0]
            written += write_cine_undersampled(set_dir, spec.name, view, data.kspace, mask, acc,
                                               compression=compression)
    cine = acdc_cine(sim.sax.kspace)
    H, W = sim.sax.kspace.shape[-2:]
    labels = center_crop(torch.from_numpy(sim.sax.labels), (H, W // 2)).numpy()
    positions = sim.sax.planes.position_mm
    gap = float(abs(positions[1] - positions[0])) if len(positions) > 1 else 10.0
    spacing = (gap, *sim.sax.planes.pixel_mm)
    es = sim.es_frame + 1
    info = AcdcInfo(ed=1, es=es, group=spec.group, height=round(sim.subject.height_cm, 1),
                    weight=round(sim.subject.weight_kg, 1), nb_frame=T)
    split_dir = Path(root) / "ACDC" / spec.acdc_split
    patient = write_acdc_patient(split_dir, spec.global_number, cine, spacing, info,
                                 {1: labels[0], es: labels[sim.es_frame]}, frame_ms=sim.rr_ms / T)
    written.append(patient)
    return written


def generate_dataset(out, preset: str = "tiny", seed: int = 0, progress: bool = True,
                     subjects: Optional[Sequence[int]] = None, trees: str = "both") -> List[Path]:
    """Write both trees of ``preset`` under ``out`` (``trees="acdc"``: the ACDC tree only); returns the
    written paths.

    ``subjects``: global subject numbers to generate (default all, in order); any subset or order
    writes the same files for those subjects.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if trees not in TREES:
        raise ValueError(f"trees must be one of {TREES}, got {trees!r}")
    config = PRESETS[preset]
    specs = subject_specs(config)
    if subjects is not None:
        by_number = {s.global_number: s for s in specs}
        unknown = [n for n in subjects if n not in by_number]
        if unknown:
            raise ValueError(f"preset {preset!r} has subjects 1..{len(specs)}, not {unknown}")
        specs = [by_number[n] for n in subjects]
    written: List[Path] = []
    for spec in tqdm(specs, desc=f"simulate cine {preset}", unit="subject", disable=not progress, file=sys.stderr):
        sim = simulate_subject(seed, spec, config, lax=trees == "both")
        written += write_subject(Path(out), sim, config.compression, trees)
    return written


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.simulate_cine", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output root (gets CMRxRecon/ and ACDC/)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trees", choices=TREES, default="both",
                        help="both (CMRxRecon and ACDC, default) or acdc (the ACDC tree only: no k-space files)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        prepare_output_dir(args.out)  # fail before any work
        files = generate_dataset(args.out, args.preset, args.seed, progress=not args.no_progress, trees=args.trees)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} files/folders under {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
