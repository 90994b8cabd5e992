"""Synthetic challenge data set: a complete ``Data/`` tree of brain- and knee-like multi-coil volumes.

    python -m data.simulate --out DIR --preset {tiny,demo,full,realtest,realtest_tiny} --seed N

writes (DESIGN.md data contract)::

    DIR/train/{brain,knee}/kspace/{anat}_acc{4,8}_{i}.h5      fully sampled k-space + the fixed acc mask
    DIR/train/{brain,knee}/image/{anat}_acc{4,8}_{i}.h5       image_input / image_grappa with that mask
    DIR/leaderboard/acc{4,8}/kspace/{anat}_test{i}.h5         undersampled k-space (zeros off the mask)
    DIR/leaderboard/acc{4,8}/image/{anat}_test{i}.h5

Indices start at 1. Every volume is distinct (train acc4 / acc8 and the two leaderboard folders hold
different volumes) and drawn from its own generator ``SeedSequence([seed, TAG, split, anatomy, acc,
index])``, so a volume does not depend on which others are generated or in which order; a given seed
gives bit-identical arrays, a different seed different ones.

Forward model per volume (all FFTs and coil ops from :mod:`utils.physics`):

1. object ``m(x, y, z)`` = anatomy-like magnitude (:mod:`data.phantoms`; brain axial with random
   T1/T2/FLAIR-like contrast, knee coronal with PD/PD-FS-like contrast) times a smooth phase;
2. coil images ``S_c m`` with birdcage-like sensitivities (loops on a cylinder around the object),
   k-space ``fft2c(S_c m)``, scaled so that the noiseless RSS label's median over the object is a
   random value in ``LABEL_MEDIAN`` (challenge-like absolute intensities: tissue above the leaderboard
   foreground thresholds 5e-5 brain / 2e-5 knee, label max about 3e-4..1e-3);
3. complex Gaussian k-space noise, correlated across coils, with a mean background RSS of
   ``NOISE_FLOOR`` times that median (well below the thresholds);
4. knee only: a few zero columns at both k-space width edges, as real knee data have.

Images are RSS over coils of ``ifft2c`` of the full / zero-filled / GRAPPA k-space, centre-cropped
(or zero-padded where the width is below 384) to 384 x 384: brain has 2x readout oversampling (H = 768
for a 384 field of view), so the object sits in the central rows. ``image_input`` and ``image_grappa``
use the challenge's fixed mask (:func:`data.masks.make_mask`, ``"fixed"``) for the file's acceleration.

Presets (volumes counted per anatomy and per acceleration; total = 2 anatomies x 2 accelerations):

=======  ===========  ==========  ===========  ======  =====  =============  ================  ================
preset   train vols   + real      leaderboard  slices  coils  brain H x W    knee H x W        knee zero cols
                      brain train
=======  ===========  ==========  ===========  ======  =====  =============  ================  ================
tiny     2            1           1            2       4      400 x 396      400 x {372, 396}  2-6 each side
demo     4            2           2            4       4      768 x 396      640 x {372, 396}  4-12 each side
full     100          12          29           16      16     768 x 396      640 x {372..396}  4-14 each side
=======  ===========  ==========  ===========  ======  =====  =============  ================  ================

``+ real brain train``: extra brain training volumes per acceleration (``brain_acc{4,8}_<n>.h5`` numbered
after the phantoms) made from real brain slices of the training split of :mod:`data.real_anatomy`
(never its held-out slices, which make the ``realtest`` leaderboard), augmented in shape, contrast and
intensity (:func:`data.real_anatomy.augment_magnitude`) and acquired like the phantoms (smooth phase,
head-coil maps, readout oversampling, scale, correlated noise): what is trained on them meets real
anatomy, not only the phantoms. A slab holds at most the longest run of consecutive training slices of
its source (example4d: 8), so the ``full`` preset's real volumes are shorter than its 16-slice phantoms.

``realtest`` is not a phantom preset: it writes only ``DIR/leaderboard/acc{4,8}`` (3 brain volumes of 4
slices each per acceleration, 8 coils, 768 x 396) from real brain slices held out of all training
(:mod:`data.real_anatomy`, which says where they come from); there is no real knee. ``realtest_tiny`` is the
same with 2 held-out slices per volume (12 slices, not 24), for the tiny demo the tests run.

``tiny`` (tests) has no readout oversampling so that GRAPPA stays cheap; ``demo`` is small enough for a
CPU demo to train on in minutes; ``full`` has the SNU 2025 challenge's counts (train 1..100 per anatomy
and acceleration, leaderboard 29 brain + 29 knee = 58 per acceleration) and sizes. Knee widths below
384 give images zero-padded at the left/right edges.

Cost, measured on a busy 2-core machine with ``--threads 1`` (torch's default of 2 threads was 2-15x
slower there): tiny 24 files in ~11 s (4 CPU-s), ~150 MB; demo 48 files in ~55 s (19 CPU-s), ~1 GB,
0.7 GB peak memory; full about 1 min and ~3 GB of memory per volume (k-space synthesis ~17 s, GRAPPA
~2 s per slice), ~8 h and ~300 GB on disk for all 516 volumes (a 16 x 16 x 768 x 396 complex64
k-space is 623 MB). ``full`` is documented, never run in CI.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from data.volumes import rss_image, slice_chunks, volume_images, write_challenge_pair  # noqa: F401 (re-exported)
from data.masks import make_mask
from data.phantoms import CoilArray, brain_magnitude, knee_magnitude, make_grid, smooth_phase
from utils.contract import IMAGE_SIZE
from utils.physics import center_crop_or_pad, fft2c, rss

__all__ = [
    "Preset",
    "PRESETS",
    "ANATOMIES",
    "ACCELERATIONS",
    "VolumeSpec",
    "volume_specs",
    "volume_rng",
    "simulate_kspace",
    "acquire_kspace",
    "noise_mixing",
    "rss_image",
    "volume_images",
    "write_volume",
    "generate_dataset",
]

ANATOMIES = ("brain", "knee")
ACCELERATIONS = (4, 8)
SPLITS = ("train", "leaderboard")
REALTEST = "realtest"  # the real-anatomy test leaderboard preset (data/real_anatomy.py)
REALTEST_NAMES = (REALTEST, "realtest_tiny")  # its presets (data.real_anatomy.REALTEST_PRESETS): 4 or 2 slices
_TAG = 0x5D47A  # separates these seeds from other uses of the same user seed

# median of the noiseless RSS label over the object (2.4-5x / 3-6x the leaderboard foreground thresholds
# 5e-5 brain / 2e-5 knee, so tissue is foreground; the label max then lands around 3e-4..1e-3)
LABEL_MEDIAN = {"brain": (1.2e-4, 2.5e-4), "knee": (6.0e-5, 1.2e-4)}
NOISE_FLOOR = {"brain": (0.02, 0.06), "knee": (0.02, 0.06)}  # mean background RSS / that median
_OBJECT_LEVEL = 0.1  # object pixels for the median: magnitude above this fraction of its maximum
SLICE_GAP = {"brain": 0.045, "knee": 0.035}  # slice spacing, units (1 unit = 192 px)
_BRAIN_ROWS = 416  # rows holding the head (2 x 208 px covers its largest extent); the rest is air


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of a synthetic data set. Volume counts are per anatomy and per acceleration."""

    name: str
    train_volumes: int
    leaderboard_volumes: int
    slices: int
    coils: int
    brain_shape: Tuple[int, int]  # k-space (H, W)
    knee_height: int
    knee_widths: Tuple[int, ...]  # one drawn per volume
    knee_zero_columns: Tuple[int, int]  # inclusive range of zero columns at each width edge
    real_train_volumes: int = 0  # extra brain training volumes per acceleration from real anatomy


PRESETS: Dict[str, Preset] = {
    "tiny": Preset("tiny", 2, 1, 2, 4, (400, 396), 400, (372, 396), (2, 6), real_train_volumes=1),
    "demo": Preset("demo", 4, 2, 4, 4, (768, 396), 640, (372, 396), (4, 12), real_train_volumes=2),
    "full": Preset("full", 100, 29, 16, 16, (768, 396), 640, (372, 380, 388, 396), (4, 14), real_train_volumes=12),
}


@dataclasses.dataclass(frozen=True)
class VolumeSpec:
    """One volume to generate: where it goes and which generator draws it."""

    split: str  # "train" or "leaderboard"
    anatomy: str
    acc: int
    index: int  # 1-based
    real: bool = False  # a brain training volume from real anatomy (data.real_anatomy.real_train_kspace)

    @property
    def name(self) -> str:
        if self.split == "train":
            return f"{self.anatomy}_acc{self.acc}_{self.index}.h5"
        return f"{self.anatomy}_test{self.index}.h5"

    def folder(self, root: Path) -> Path:
        """The folder holding ``kspace/`` and ``image/`` for this volume."""
        if self.split == "train":
            return Path(root) / "train" / self.anatomy
        return Path(root) / "leaderboard" / f"acc{self.acc}"

    def paths(self, root: Path) -> Tuple[Path, Path]:
        """``(kspace file, image file)`` under the ``Data`` root ``root``."""
        base = self.folder(root)
        return base / "kspace" / self.name, base / "image" / self.name


def volume_specs(preset: Preset) -> List[VolumeSpec]:
    """All volumes of a preset, train first, in a fixed order."""
    specs = []
    for split, count in (("train", preset.train_volumes), ("leaderboard", preset.leaderboard_volumes)):
        for acc in ACCELERATIONS:
            for anatomy in ANATOMIES:
                specs += [VolumeSpec(split, anatomy, acc, i) for i in range(1, count + 1)]
                if split == "train" and anatomy == "brain":  # real anatomy after the phantoms
                    specs += [VolumeSpec(split, anatomy, acc, count + i, real=True)
                              for i in range(1, preset.real_train_volumes + 1)]
    return specs


def volume_rng(seed: int, spec: VolumeSpec) -> np.random.Generator:
    """The volume's own generator, a function of ``(seed, split, anatomy, acc, index)`` only."""
    key = [int(seed), _TAG, SPLITS.index(spec.split), ANATOMIES.index(spec.anatomy), spec.acc, spec.index]
    return np.random.default_rng(np.random.SeedSequence(key))


# --------------------------------------------------------------------------------------------- forward model


def _slice_positions(rng: np.random.Generator, anatomy: str, slices: int) -> np.ndarray:
    """Slice positions (units): an axial brain slab from the skull base upwards, a coronal knee slab
    centred on the joint."""
    gap = SLICE_GAP[anatomy]
    if anatomy == "brain":
        start = rng.uniform(-0.35, 0.05)
    else:
        start = -0.5 * gap * (slices - 1) + rng.uniform(-0.05, 0.05)
    return (start + gap * np.arange(slices)).astype(np.float32)


def _object(rng: np.random.Generator, anatomy: str, z: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Complex object ``(S, H, W)`` complex64: anatomy magnitude times a smooth phase."""
    if anatomy == "brain":
        rows = min(height, _BRAIN_ROWS)  # the head fits here: skip the air of the oversampled readout
        mag_small = brain_magnitude(rng, make_grid(z, rows, width))
        mag = np.zeros((len(z), height, width), np.float32)
        top = height // 2 - rows // 2
        mag[:, top:top + rows] = mag_small
    else:
        mag = knee_magnitude(rng, make_grid(z, height, width))
    phase = smooth_phase(rng, make_grid(z, height, width))
    return torch.polar(torch.from_numpy(mag), torch.from_numpy(phase))


def _coils(rng: np.random.Generator, anatomy: str, coils: int, z: np.ndarray) -> CoilArray:
    if anatomy == "brain":  # head coil around the axial slab
        return CoilArray.sample(rng, coils, (rng.uniform(0.92, 1.0), rng.uniform(1.08, 1.16)),
                                (0.0, 0.0, float(z.mean()) + rng.uniform(-0.1, 0.1)), axis="z")
    radius = rng.uniform(0.88, 0.98)  # knee coil: cylinder along the leg (image y axis)
    return CoilArray.sample(rng, coils, (radius, radius), (0.0, rng.uniform(-0.1, 0.1), 0.0), axis="y")


def noise_mixing(rng: np.random.Generator, coils: int) -> torch.Tensor:
    """Lower-triangular ``(C, C)`` complex64 ``L`` with ``L L^H`` a coil noise covariance (unit mean
    variance, mild correlations)."""
    a = np.eye(coils) + 0.15 * (rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils)))
    cov = a @ a.conj().T
    cov *= coils / np.trace(cov).real
    return torch.from_numpy(np.linalg.cholesky(cov).astype(np.complex64))


def simulate_kspace(rng: np.random.Generator, anatomy: str, preset: Preset) -> torch.Tensor:
    """Fully sampled multi-coil k-space ``(S, C, H, W)`` complex64 of one random volume.

    Absolute scale: the median of the noiseless RSS label over the object (inside the central 384x384)
    is drawn from ``LABEL_MEDIAN[anatomy]``; the noise std per coil and k-space sample is
    ``floor * median / sqrt(C)`` with ``floor`` from ``NOISE_FLOOR[anatomy]`` (so the background RSS
    is about ``floor * median``).
    Knee k-space gets zero columns at both width edges.
    """
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    S, C = preset.slices, preset.coils
    if anatomy == "brain":
        H, W = preset.brain_shape
    else:
        H, W = preset.knee_height, int(rng.choice(preset.knee_widths))
    z = _slice_positions(rng, anatomy, S)
    obj = _object(rng, anatomy, z, H, W)
    return acquire_kspace(rng, obj, z, anatomy, C, preset.knee_zero_columns if anatomy == "knee" else None)


def acquire_kspace(rng: np.random.Generator, obj: torch.Tensor, z: np.ndarray, anatomy: str, coils: int,
                   zero_columns: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Fully sampled multi-coil k-space ``(S, C, H, W)`` complex64 of the complex object ``obj``
    ``(S, H, W)`` (slices at positions ``z`` ``(S,)``, units of 192 px): the anatomy's coil array
    (head coil around an axial slab, extremity coil along the leg), k-space ``fft2c`` of the coil
    images, scaled so that the median of the noiseless RSS over the object (magnitude above 10 % of its
    maximum, inside the central 384x384) is drawn from ``LABEL_MEDIAN[anatomy]``, plus correlated
    complex Gaussian noise (background RSS ``NOISE_FLOOR[anatomy]`` times that median) and, when
    ``zero_columns = (lo, hi)``, ``lo..hi`` zero columns at each width edge (knee). Used by
    :func:`simulate_kspace` on phantoms and by :mod:`data.real_anatomy` on real images.
    """
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    S, H, W = obj.shape
    C = int(coils)
    coils = _coils(rng, anatomy, C, z)
    median = rng.uniform(*LABEL_MEDIAN[anatomy])
    floor = rng.uniform(*NOISE_FLOOR[anatomy])
    mixing = noise_mixing(rng, C)

    kspace = torch.empty((S, C, H, W), dtype=torch.complex64)
    level = _OBJECT_LEVEL * float(obj.abs().max())
    inside = []
    for part in slice_chunks(S, C * H * W):
        grid = make_grid(z[part], H, W)
        images = coils.maps(grid) * obj[part, None]  # (s, C, H, W)
        crop = center_crop_or_pad(rss(images), (IMAGE_SIZE, IMAGE_SIZE))
        support = center_crop_or_pad(obj[part].abs(), (IMAGE_SIZE, IMAGE_SIZE)) > level
        inside.append(crop[support])
        kspace[part] = fft2c(images)
    values = torch.cat(inside)
    if values.numel() == 0:
        raise RuntimeError(f"simulated {anatomy} volume is empty inside the central {IMAGE_SIZE} pixels")
    kspace *= median / float(values.median())
    sigma = floor * median / np.sqrt(C)
    for part in slice_chunks(S, C * H * W):
        n = part.stop - part.start
        white = rng.standard_normal((2, n, C, H * W), dtype=np.float32)
        noise = torch.complex(torch.from_numpy(white[0]), torch.from_numpy(white[1])) * np.float32(sigma / np.sqrt(2))
        kspace[part] += (mixing @ noise).reshape(n, C, H, W)
    if zero_columns is not None:
        lo, hi = zero_columns
        left, right = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        kspace[..., :left] = 0
        kspace[..., W - right:] = 0
    return kspace


def write_volume(root: Path, spec: VolumeSpec, preset: Preset, seed: int) -> Tuple[Path, Path]:
    """Simulate one volume and write its k-space and image files; returns their paths."""
    rng = volume_rng(seed, spec)
    if spec.real:
        from data.real_anatomy import real_train_kspace

        kspace = real_train_kspace(rng, preset.brain_shape, preset.slices, preset.coils)
    else:
        kspace = simulate_kspace(rng, spec.anatomy, preset)
    mask = make_mask("fixed", kspace.shape[-1], spec.acc, None)
    kpath, ipath = spec.paths(root)
    write_challenge_pair(kpath, ipath, kspace, mask, undersample=spec.split != "train")
    return kpath, ipath


def generate_dataset(out, preset: str = "tiny", seed: int = 0, progress: bool = True) -> List[Path]:
    """Write the whole ``Data`` tree of ``preset`` under ``out``; returns the written files."""
    if preset in REALTEST_NAMES:  # the real-anatomy test leaderboard (data/real_anatomy.py): leaderboard only
        from data.real_anatomy import REALTEST_PRESETS, generate_realtest

        return generate_realtest(out, seed, progress, REALTEST_PRESETS[preset])
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS) + list(REALTEST_NAMES)}")
    root, spec_list = Path(out), volume_specs(PRESETS[preset])
    written: List[Path] = []
    for spec in tqdm(spec_list, desc=f"simulate {preset}", unit="vol", disable=not progress, file=sys.stderr):
        written += write_volume(root, spec, PRESETS[preset], seed)
    return written


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Data root to create (gets train/ and leaderboard/)")
    parser.add_argument("--preset", choices=sorted(PRESETS) + list(REALTEST_NAMES), default="tiny",
                        help=f"{REALTEST}: the real-anatomy test leaderboard (held-out real brain slices, "
                             "leaderboard only; data/real_anatomy.py); realtest_tiny: the same with 2 slices "
                             "per volume (the tiny demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    files = generate_dataset(args.out, args.preset, args.seed, progress=not args.no_progress)
    print(f"wrote {len(files)} files under {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
