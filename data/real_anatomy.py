"""Real MR images shipped inside pinned registry packages, and the real-anatomy test leaderboard.

No network: every image is a file installed with a package pinned in ``requirements.txt``.

Catalogue (:data:`SOURCES`; what was checked by looking at every image):

=================  =======  ============================================  =====================  ==========  ===============
source             anatomy  what                                          package (licence)      stored      split
=================  =======  ============================================  =====================  ==========  ===============
``example4d``      brain    axial gradient-echo EPI (fMRI), 2 time        nibabel 5.4.2 (MIT)    128x96x24   held out: slices
                            points, 2 x 2 x 2.2 mm, one subject           tests/data             x 2         10-21; train:
                                                                                                             0-7 and 23
``tlrc``           brain    axial EPI volume in Talairach space (AFNI     nibabel 5.4.2 (MIT)    47x54x43    train: all 43
                            test volume ``scaled+tlrc``), 3 mm            tests/data
``qt2_phantom``    other    two-compartment cylindrical phantom, 2-D      mrbabel-data 1.0.1     192x192x2   routing tests
                            multi-echo spin echo (TE 20/40/60 ms),        (MIT) nifti/           x 3 echoes  only
                            Siemens 3 T (the json says "phantom")
``shoulder``       other    shoulder, coronal T1 spin echo, 0.195 mm      pydicom-data 1.0.0     1024x1024   routing tests
                            (``MR2_UNCR.dcm``)                            (MIT)                              only
``abdomen``        other    abdomen (liver), axial T1 VIBE fat-sat MPR,   pydicom-data 1.0.0     484x484     routing tests
                            0.72 mm (``MR-SIEMENS-DICOM-WithOverlays``)   (MIT)                              only
=================  =======  ============================================  =====================  ==========  ===============

**There is no real knee** in any of these packages (nibabel's, mrbabel-data's and pydicom-data's MR
images were all looked at: brains, a phantom, a shoulder, an abdomen, small head crops), so the
real-anatomy leaderboard is brain only. Also looked at and left out: mrbabel-data's DICOM and BART
copies (the same phantom), nibabel's ``anatomical.nii`` / ``example4d+orig`` (33 x 41 crops of the
brain centre: no head outline), its DICOM test files (pixel data blanked), pydicom's ``MR_small`` and
``emri_small`` (64 x 64 crops).

Split: the held-out ``example4d`` slices 10-21 (both time points) make the test leaderboard and are
never used for training or tuning (routing thresholds included); slices 0-7 and 23 (both time points)
and all of ``tlrc`` may be used for training; slices 8, 9 and 22 are a gap left unused so that
neighbouring slices do not straddle the split. It is one subject: a model trained on the train slices
has seen that head, though not those slices. The ``other`` sources are for routing tests only.

Orientation of every loaded slice (:func:`load_slices`): NIfTI volumes are brought to the closest
canonical (RAS) orientation and each axial slice is returned with rows running anterior -> posterior
(anterior at the top) and columns running patient right -> left (radiological display); DICOM images
are returned as stored (the scanner's display orientation). Values are float32 magnitudes in the
file's own units (NIfTI scaling applied, DICOM rescale slope/intercept applied), never negative.

Real-anatomy test leaderboard (``python -m data.simulate --preset realtest --out DIR --seed N``,
:func:`generate_realtest`): ``DIR/leaderboard/acc{4,8}/{kspace,image}/brain_test{1,2,3}.h5``, nothing
under ``train/``. Volume ``i`` holds the held-out slices ``10 + 4 (i - 1)`` to ``13 + 4 (i - 1)``
(time point 0 at acc 4, time point 1 at acc 8), resampled (cubic spline) to 0.6 mm pixels, centred on
the challenge's brain k-space grid 768 x 396 (2x readout oversampling: the head sits in the central
rows), given the simulator's smooth phase, 8-coil head-coil maps, intensity scale and correlated
noise (:func:`data.simulate.acquire_kspace`, a generator per volume
``SeedSequence([seed, TAG, acc, i])``), undersampled with the challenge's ``fixed`` mask of its
acceleration and written by :func:`data.volumes.write_challenge_pair` (``image_input``,
``image_grappa``, ``image_label`` 384 x 384), so ``python -m data.formats check`` and
``evaluate.py`` take it as any leaderboard.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "RealSource",
    "RealSlices",
    "SOURCES",
    "source",
    "sources_for",
    "load_slices",
    "to_grid",
    "RealtestPreset",
    "REALTEST",
    "REALTEST_PRESETS",
    "realtest_volumes",
    "realtest_kspace",
    "kspace_from_magnitude",
    "generate_realtest",
    "TRAIN_SOURCES",
    "train_runs",
    "augment_magnitude",
    "real_train_kspace",
]

ANATOMIES = ("brain", "knee", "other")
_TAG = 0x12EA1  # separates these seeds from the simulator's use of the same user seed


@dataclasses.dataclass(frozen=True)
class RealSource:
    """One real image file shipped by a pinned package.

    ``stored_shape``: the array as stored; ``slice_axis``/``frame_axis`` index into it (``None``: a
    single 2-D image / no frames); ``held_out`` and ``train``: slice indices of the fixed split
    (``held_out`` for the test leaderboard only, ``train`` may be used for training; ``other`` sources
    have neither, they serve routing tests).
    """

    name: str
    anatomy: str  # brain, knee or other
    description: str
    package: str  # "name==version" as pinned in requirements.txt
    licence: str
    relpath: str  # file inside the package
    kind: str  # "nifti" or "dicom"
    stored_shape: Tuple[int, ...]
    view: str  # axial / coronal
    held_out: Tuple[int, ...] = ()
    train: Tuple[int, ...] = ()

    def path(self) -> Path:
        """The file on disk (:class:`FileNotFoundError` naming the package when it is not installed)."""
        module = {"nibabel": "nibabel", "mrbabel-data": "mrbabel_data", "pydicom-data": "data_store"}[self.package.split("==")[0]]
        try:
            base = Path(__import__(module).__file__).parent
        except ImportError as exc:
            raise FileNotFoundError(f"{self.name}: package {self.package} is not installed ({exc}); "
                                    "see requirements.txt") from None
        path = base / self.relpath
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {self.name} image missing from {self.package}")
        return path


@dataclasses.dataclass(frozen=True)
class RealSlices:
    """Loaded slices: ``images`` float32 ``(S, H, W)`` magnitudes, ``pixel_mm`` ``(row, column)`` spacing."""

    source: RealSource
    images: np.ndarray
    pixel_mm: Tuple[float, float]
    slice_mm: float
    indices: Tuple[int, ...]


SOURCES: Dict[str, RealSource] = {s.name: s for s in (
    RealSource("example4d", "brain", "axial gradient-echo EPI (fMRI), 2 time points, 2 x 2 x 2.2 mm, one subject",
               "nibabel==5.4.2", "MIT (nibabel COPYING)", "tests/data/example4d.nii.gz", "nifti", (128, 96, 24, 2),
               "axial", held_out=tuple(range(10, 22)), train=tuple(range(0, 8)) + (23,)),
    RealSource("tlrc", "brain", "axial EPI volume in Talairach space (AFNI test volume scaled+tlrc), 3 mm",
               "nibabel==5.4.2", "MIT (nibabel COPYING)", "tests/data/scaled+tlrc.HEAD", "nifti", (47, 54, 43, 1),
               "axial", train=tuple(range(43))),
    RealSource("qt2_phantom", "other", "two-compartment cylindrical phantom, 2-D multi-echo spin echo, Siemens 3 T",
               "mrbabel-data==1.0.1", "MIT", "nifti/dicom_2D_16Echo_qT2_20101208191404_3_e1.nii", "nifti",
               (192, 192, 2), "axial"),
    RealSource("shoulder", "other", "shoulder, coronal T1 spin echo, 0.195 mm (MR2_UNCR.dcm)",
               "pydicom-data==1.0.0", "MIT", "data/MR2_UNCR.dcm", "dicom", (1024, 1024), "coronal"),
    RealSource("abdomen", "other", "abdomen (liver), axial T1 VIBE fat-sat MPR, 0.72 mm",
               "pydicom-data==1.0.0", "MIT", "data/MR-SIEMENS-DICOM-WithOverlays.dcm", "dicom", (484, 484), "axial"),
)}


def source(name: str) -> RealSource:
    if name not in SOURCES:
        raise ValueError(f"unknown real-anatomy source {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]


def sources_for(anatomy: str) -> List[RealSource]:
    """The sources of one anatomy (``brain``, ``knee`` (none ships) or ``other``)."""
    if anatomy not in ANATOMIES:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    return [s for s in SOURCES.values() if s.anatomy == anatomy]


def _load_nifti(src: RealSource, path: Path, slices: Optional[Sequence[int]], frame: int):
    import nibabel

    img = nibabel.as_closest_canonical(nibabel.load(str(path)))  # RAS+
    data = np.asanyarray(img.dataobj)
    zooms = img.header.get_zooms()
    if data.ndim == 4:
        if not 0 <= frame < data.shape[3]:
            raise ValueError(f"{path}: frame {frame} out of range (0..{data.shape[3] - 1})")
        data = data[..., frame]
    elif frame != 0:
        raise ValueError(f"{path}: has no frames, got frame {frame}")
    idx = tuple(range(data.shape[2])) if slices is None else tuple(int(i) for i in slices)
    if any(not 0 <= i < data.shape[2] for i in idx):
        raise ValueError(f"{path}: slice indices {idx} out of range (0..{data.shape[2] - 1})")
    vol = np.asarray(data[:, :, list(idx)], dtype=np.float32)  # (x R, y A, S)
    images = np.ascontiguousarray(vol[::-1, ::-1].transpose(2, 1, 0))  # (S, rows A->P, cols R->L)
    return images, (float(zooms[1]), float(zooms[0])), float(zooms[2]), idx


def _load_dicom(src: RealSource, path: Path, slices: Optional[Sequence[int]], frame: int):
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim != 2 or frame != 0 or (slices is not None and tuple(slices) != (0,)):
        raise ValueError(f"{path}: a single 2-D image (slice 0, frame 0) is all it holds")
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    thickness = float(getattr(ds, "SliceThickness", 0) or 0)
    return arr[None], (dy, dx), thickness, (0,)


def load_slices(name: str, slices: Optional[Sequence[int]] = None, frame: int = 0) -> RealSlices:
    """Magnitude slices of source ``name`` (``slices``: indices, default all; ``frame``: time point).

    Returns float32 ``(S, H, W)`` in the orientation of the module docstring, clipped at 0, with the
    pixel spacing in mm. Raises :class:`FileNotFoundError` (package missing) or :class:`ValueError`.
    """
    src = source(name)
    path = src.path()
    loader: Callable = _load_nifti if src.kind == "nifti" else _load_dicom
    images, pixel_mm, slice_mm, idx = loader(src, path, slices, frame)
    if not np.isfinite(images).all():
        raise ValueError(f"{path}: non-finite pixel values")
    return RealSlices(src, np.clip(images, 0, None), pixel_mm, slice_mm, idx)


def to_grid(images: np.ndarray, pixel_mm: Tuple[float, float], target_mm: float, shape: Tuple[int, int]) -> np.ndarray:
    """Resample ``images`` ``(S, h, w)`` (pixel spacing ``pixel_mm``) to ``target_mm`` pixels with a cubic
    spline (negative overshoot clipped) and centre them on an ``shape = (H, W)`` grid (zero padding, or
    a centre crop where the image is larger). Returns float32 ``(S, H, W)``."""
    import scipy.ndimage as ndi
    import torch

    from utils.physics import center_crop_or_pad

    zoom = (1.0, pixel_mm[0] / target_mm, pixel_mm[1] / target_mm)
    resampled = ndi.zoom(np.asarray(images, np.float32), zoom, order=3, grid_mode=True, mode="grid-constant")
    out = center_crop_or_pad(torch.from_numpy(np.clip(resampled, 0, None)), tuple(shape))
    return out.numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- realtest


@dataclasses.dataclass(frozen=True)
class RealtestPreset:
    """Sizes of the real-anatomy leaderboard: ``volumes`` per acceleration, each ``slices`` consecutive
    held-out slices; brain k-space ``brain_shape`` (H, W) with ``coils`` coils; pixels ``pixel_mm``."""

    volumes: int = 3
    slices: int = 4
    coils: int = 8
    brain_shape: Tuple[int, int] = (768, 396)
    pixel_mm: float = 0.6
    source: str = "example4d"


REALTEST = RealtestPreset()
# the presets `python -m data.simulate --preset NAME` writes: the leaderboard, and a 2-slice one (12 slices, not
# 24) for the tiny demo that the tests run
REALTEST_PRESETS = {"realtest": REALTEST, "realtest_tiny": RealtestPreset(slices=2)}
ACCELERATIONS = (4, 8)


def realtest_volumes(preset: RealtestPreset = REALTEST) -> List[Tuple[int, int, Tuple[int, ...], int]]:
    """``[(acc, index, held-out slice indices, time point)]`` of every leaderboard volume (index 1-based;
    time point 0 at acc 4, 1 at acc 8). Raises :class:`ValueError` when the held-out slices run out."""
    held = source(preset.source).held_out
    if preset.volumes * preset.slices > len(held):
        raise ValueError(f"realtest: {preset.volumes} volumes x {preset.slices} slices need more than the "
                         f"{len(held)} held-out slices of {preset.source}")
    return [(acc, i + 1, tuple(held[i * preset.slices:(i + 1) * preset.slices]), frame)
            for frame, acc in enumerate(ACCELERATIONS) for i in range(preset.volumes)]


def realtest_kspace(seed: int, acc: int, index: int, indices: Sequence[int], frame: int,
                    preset: RealtestPreset = REALTEST):
    """Fully sampled k-space ``(S, C, H, W)`` complex64 (torch) of one realtest volume."""
    from data.phantoms import UNIT_PX

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG, int(acc), int(index)]))
    real = load_slices(preset.source, indices, frame)
    mag = to_grid(real.images, real.pixel_mm, preset.pixel_mm, preset.brain_shape)
    positions = np.asarray(real.indices, np.float32)
    z = (positions - positions.mean()) * real.slice_mm / (UNIT_PX * preset.pixel_mm)  # units of UNIT_PX pixels
    return kspace_from_magnitude(rng, mag, z, "brain", preset.coils)


def kspace_from_magnitude(rng: np.random.Generator, magnitude: np.ndarray, z: np.ndarray, anatomy: str = "brain",
                          coils: int = 8, zero_columns: Optional[Tuple[int, int]] = None):
    """Fully sampled k-space ``(S, C, H, W)`` complex64 (torch) of a magnitude ``(S, H, W)`` already on
    the k-space grid (slices at ``z``, units of 192 px): the simulator's smooth phase, then
    :func:`data.simulate.acquire_kspace` (``anatomy``'s coil array, scale, noise, optional zero edge
    columns)."""
    import torch

    from data.phantoms import make_grid, smooth_phase
    from data.simulate import acquire_kspace

    S, H, W = magnitude.shape
    z = np.asarray(z, np.float32)
    obj = torch.polar(torch.from_numpy(np.ascontiguousarray(magnitude, dtype=np.float32)),
                      torch.from_numpy(smooth_phase(rng, make_grid(z, H, W))))
    return acquire_kspace(rng, obj, z, anatomy, coils, zero_columns)


def generate_realtest(out, seed: int = 0, progress: bool = True, preset: RealtestPreset = REALTEST) -> List[Path]:
    """Write the real-anatomy test leaderboard under ``out`` (``leaderboard/acc{4,8}/...``); returns the files."""
    from tqdm import tqdm

    from data.masks import make_mask
    from data.volumes import write_challenge_pair

    root = Path(out)
    written: List[Path] = []
    for acc, index, indices, frame in tqdm(realtest_volumes(preset), desc="simulate realtest", unit="vol",
                                            disable=not progress, file=sys.stderr):
        kspace = realtest_kspace(seed, acc, index, indices, frame, preset)
        mask = make_mask("fixed", kspace.shape[-1], acc, None)
        base = root / "leaderboard" / f"acc{acc}"
        name = f"brain_test{index}.h5"
        written += write_challenge_pair(base / "kspace" / name, base / "image" / name, kspace, mask, undersample=True)
    return written


# --------------------------------------------------------------------------------------------- training volumes

TRAIN_SOURCES = {"example4d": 0.6, "tlrc": 0.4}  # brain sources of the training volumes and their odds


def train_runs(name: str) -> List[Tuple[int, ...]]:
    """Runs of consecutive training slices of source ``name`` (e.g. example4d: ``(0..7)`` and ``(23,)``)."""
    runs: List[List[int]] = []
    for i in source(name).train:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [tuple(r) for r in runs]


def augment_magnitude(rng: np.random.Generator, magnitude: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Random shape, contrast and intensity augmentation of magnitudes ``(S, H, W)`` (slices at ``z``,
    units of 192 px): one geometric warp for the whole slab (left-right flip with odds 1/2, rotation
    +-15 deg, scale 0.85-1.15 with 0.93-1.07 anisotropy, shift +-12 px, a smooth elastic displacement
    of about 3 px), a contrast curve (gamma 0.6-1.6 on the slab normalised to its 99.5th percentile)
    and a smooth multiplicative bias field (+-15 %). Returns float32 ``(S, H, W)``, never negative; the
    absolute scale is set later by :func:`data.simulate.acquire_kspace`."""
    import scipy.ndimage as ndi

    from data.phantoms import make_grid, smooth_field

    S, H, W = magnitude.shape
    grid = make_grid(z, H, W)
    angle = np.deg2rad(rng.uniform(-15, 15))
    scale = rng.uniform(0.85, 1.15) * np.array([rng.uniform(0.93, 1.07), 1.0])
    flip = -1.0 if rng.random() < 0.5 else 1.0
    shift = rng.uniform(-12, 12, size=2)
    elastic = 3.0 * np.stack([smooth_field(rng, grid, 48.0, 0.3), smooth_field(rng, grid, 48.0, 0.3)])
    rows = np.arange(H, dtype=np.float32)[:, None] - H / 2
    cols = np.arange(W, dtype=np.float32)[None, :] - W / 2
    cos, sin = np.cos(angle), np.sin(angle)  # output pixel -> input pixel (inverse map)
    src_r = (cos * rows - sin * cols) / scale[0] + H / 2 + shift[0]
    src_c = flip * (sin * rows + cos * cols) / scale[1] + W / 2 + shift[1]
    coords = np.empty((3, S, H, W), np.float32)
    coords[0] = np.arange(S, dtype=np.float32)[:, None, None]
    coords[1] = src_r[None] + elastic[0]
    coords[2] = src_c[None] + elastic[1]
    warped = np.clip(ndi.map_coordinates(np.asarray(magnitude, np.float32), coords, order=3, mode="constant"), 0, None)
    top = float(np.percentile(warped, 99.5)) or 1.0
    contrast = np.clip(warped / top, 0, None) ** rng.uniform(0.6, 1.6)
    bias = np.exp(0.15 * smooth_field(rng, grid, 160.0, 1.0))
    return (contrast * bias).astype(np.float32)


def real_train_kspace(rng: np.random.Generator, shape: Tuple[int, int], slices: int, coils: int,
                      pixel_mm: float = REALTEST.pixel_mm):
    """Fully sampled k-space ``(S, C, H, W)`` complex64 (torch) of one real-anatomy training volume.

    A source is drawn from :data:`TRAIN_SOURCES`, then a run of up to ``slices`` consecutive slices from
    its training split (never a held-out slice) and a time point; the slab is resampled to ``pixel_mm``
    pixels on the ``shape = (H, W)`` k-space grid, augmented (:func:`augment_magnitude`) and acquired
    like a phantom (:func:`kspace_from_magnitude`: smooth phase, head coil, scale, noise). ``S`` is
    ``slices`` or the longest training run of the drawn source when that is shorter.
    """
    from data.phantoms import UNIT_PX

    names = sorted(TRAIN_SOURCES)
    odds = np.array([TRAIN_SOURCES[n] for n in names])
    name = names[int(rng.choice(len(names), p=odds / odds.sum()))]
    src = source(name)
    run = max(train_runs(name), key=len)
    count = min(int(slices), len(run))
    start = int(rng.integers(0, len(run) - count + 1))
    frame = int(rng.integers(0, src.stored_shape[3])) if len(src.stored_shape) == 4 else 0
    real = load_slices(name, run[start:start + count], frame)
    mag = to_grid(real.images, real.pixel_mm, pixel_mm, shape)
    positions = np.asarray(real.indices, np.float32)
    z = (positions - positions.mean()) * real.slice_mm / (UNIT_PX * pixel_mm)
    return kspace_from_magnitude(rng, augment_magnitude(rng, mag, z), z, "brain", coils)


# --------------------------------------------------------------------------------------------- routing cases


def cardiac_magnitude(rng: np.random.Generator, slices: int, shape: Tuple[int, int], pixel_mm: float) -> np.ndarray:
    """End-diastolic short-axis frames of a :mod:`data.heart_phantom` subject (a torso) laid out as a
    challenge volume: float32 ``(slices, H, W)`` with the rows ``H`` along the phantom's readout."""
    from data.heart_phantom import render, sample_subject, sax_planes

    subject = sample_subject(rng, "NOR")
    planes = sax_planes(subject, slices, (shape[1], shape[0]), pixel_mm)  # phantom rows = phase encoding
    image, _ = render(subject, planes, 2)
    return np.ascontiguousarray(image[0].transpose(0, 2, 1), dtype=np.float32)


def routing_case(magnitude: Optional[np.ndarray], acc: int, seed: int, coils: int = 4, coil_array: str = "brain",
                 zero_columns: Optional[Tuple[int, int]] = None, shape: Optional[Tuple[int, int, int]] = None):
    """One leaderboard-style volume for routing checks: ``(kspace, mask, image_grappa, image_label)``
    with ``kspace`` complex64 numpy ``(S, C, H, W)`` undersampled by the ``fixed`` mask of ``acc`` and
    the images float32 ``(S, 384, 384)``. ``magnitude`` ``(S, H, W)`` goes through
    :func:`kspace_from_magnitude` (``coil_array``: whose coils); ``None`` with ``shape = (S, H, W)``
    gives pure complex Gaussian noise when ``seed >= 0`` and an all-zero volume when ``seed < 0``."""
    import torch

    from data.masks import make_mask
    from data.volumes import volume_images

    if magnitude is None:
        S, H, W = shape
        if seed < 0:
            kspace = torch.zeros((S, coils, H, W), dtype=torch.complex64)
        else:
            g = torch.Generator().manual_seed(seed)
            kspace = torch.randn((S, coils, H, W), dtype=torch.complex64, generator=g) * 1e-5
    else:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG, 99]))
        z = np.linspace(-0.02, 0.02, magnitude.shape[0]) if magnitude.shape[0] > 1 else np.zeros(1)
        kspace = kspace_from_magnitude(rng, magnitude, z, coil_array, coils, zero_columns)
    mask = make_mask("fixed", kspace.shape[-1], acc, None)
    images = volume_images(kspace, mask)
    under = (kspace * torch.from_numpy(mask)).numpy()
    return under, mask, images["image_grappa"], images["image_label"]
