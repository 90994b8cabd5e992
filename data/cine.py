"""Cardiac cine data as shipped: the CMRxRecon multi-coil cine tree (MATLAB files) and ACDC (NIfTI).

CMRxRecon (DESIGN.md "Cardiac cine"; axes in h5py order, MATLAB's reversed, see :mod:`data.matlab`)::

    2023  <root>/MultiCoil/Cine/<Set>/FullSample/P###/cine_{sax,lax}.mat           kspace_full (t, slices, coils, ky, kx)
          <root>/MultiCoil/Cine/<Set>/AccFactor{04,08,10}/P###/cine_{view}.mat      kspace_sub04|08|10
          <root>/MultiCoil/Cine/<Set>/AccFactor{04,08,10}/P###/cine_{view}_mask.mat mask04|08|10 (ky, kx)
    2024  <root>/MultiCoil/Cine/<Set>/FullSample/P###/cine_{sax,lax,lvot}.mat       kspace_full
          <root>/MultiCoil/Cine/<Set>/UnderSample_Task{1,2}/P###/cine_{view}_kus_{Pattern}{R}.mat   kus
          <root>/MultiCoil/Cine/<Set>/Mask_Task{1,2}/P###/cine_{view}_mask_{Pattern}{R}.mat         mask

``<Set>`` is TrainingSet, ValidationSet or TestSet. The 2024 names are those of the organisers'
``ChallengeDataFormat/Format_Task{1,2}.txt`` (CmrxRecon/CMRxRecon2024): Task 1 masks are ``Uniform4|8|10``,
2-D ``(ky, kx)`` with 16 ACS lines; Task 2 masks are ``kt{Uniform,Gaussian,Radial}{4..24}``, 3-D
``(t, ky, kx)`` (MATLAB ``(nx, ny, nt)``). The 2024 TrainingSet ships FullSample plus Mask_Task folders
and no undersampled k-space: such a case has ``kspace_path=None`` and its undersampled k-space is the
FullSample k-space times the mask, exactly as the organisers' ``kus = kspace_full .* mask``. Inferred,
not in the format files: a 2023-layout AccFactor folder may also hold a 3-D kt mask ``(t, ky, kx)``
(our simulator's kt masks), and a 2024 set may hold its own FullSample (our simulator's validation sets).

ACDC (MICCAI 2017)::

    <root>/{training,testing}/patient###/patient###_4d.nii.gz           cine (x, y, z, t) on disk
    <root>/{training,testing}/patient###/patient###_frame##.nii.gz      ED / ES volumes (x, y, z)
    <root>/{training,testing}/patient###/patient###_frame##_gt.nii.gz   labels 0 bg, 1 RV, 2 myocardium, 3 LV
    <root>/{training,testing}/patient###/Info.cfg                       "ED: 1", "ES: 12", Group, Height, NbFrame, Weight

NIfTI arrays here are in **reversed NIfTI axis order**, as SimpleITK/nnU-Net read them: images
``(z, y, x)``, the cine ``(t, z, y, x)``, voxel spacing ``(dz, dy, dx)`` in mm (so volumes come out in
mL). ``python -m data.formats check PATH`` validates either tree (:func:`validate_cine_path`).
"""
from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from data.formats import FormatError
from data.matlab import DEFAULT_MAX_BYTES, MatVariable, mat_variables, open_mat_variable, read_mat, write_mat73
from utils.io import atomic_path

VIEWS = ("sax", "lax", "lvot")
SET_NAMES = ("TrainingSet", "ValidationSet", "TestSet")
FULL_DIR = "FullSample"
FULL_KEY = "kspace_full"
KUS_KEY = "kus"  # 2024 undersampled k-space
MASK_KEY_2024 = "mask"
SUBMISSION_KEY = "img4ranking"
ACS_LINES_2023 = 24
ACS_LINES_2024 = 16

_SET_CHILD_RE = re.compile(r"^(FullSample|AccFactor\d+|UnderSample_Task\d+|Mask_Task\d+)$")
_ACC_DIR_RE = re.compile(r"^AccFactor(\d+)$")
_SUBJECT_RE = re.compile(r"^P\d+$")
_FULL_RE = re.compile(r"^cine_([a-z0-9]+)\.mat$")
_MASK23_RE = re.compile(r"^cine_([a-z0-9]+)_mask\.mat$")
_KUS24_RE = re.compile(r"^cine_([a-z0-9]+)_kus_([A-Za-z]+)(\d+)\.mat$")
_MASK24_RE = re.compile(r"^cine_([a-z0-9]+)_mask_([A-Za-z]+)(\d+)\.mat$")
_PATIENT_RE = re.compile(r"^patient\d+$")

PathLike = Union[str, Path]


# ============================================================================ CMRxRecon: cases


@dataclasses.dataclass(frozen=True)
class CineCase:
    """One undersampled acquisition of one subject and view, with its mask and ground truth.

    ``mask_name`` is the folder/file tag (``AccFactor04`` in 2023, ``ktGaussian8`` in 2024); ``pattern``
    (``Uniform`` for 2023 and Task 1, ``ktUniform``/``ktGaussian``/``ktRadial``) and ``acceleration``
    come from the names: use them to group results in evaluation, never to route a model (routing
    estimates the acceleration from the mask). ``kspace_path`` is ``None`` when only the mask exists
    (2024 TrainingSet): :meth:`read_kspace` then masks the FullSample k-space. ``full_path`` is the
    FullSample file of the same subject and view, ``None`` when the set has none (validation/test).
    """

    set_dir: Path
    subject: str
    view: str
    mask_name: str
    pattern: str
    acceleration: int
    layout: str  # "2023" or "2024"
    kspace_path: Optional[Path]
    kspace_key: str
    mask_path: Optional[Path]
    mask_key: str
    full_path: Optional[Path]

    @property
    def set_name(self) -> str:
        return self.set_dir.name

    @property
    def group(self) -> str:
        """The organisers' aggregation group: view x sampling scenario, e.g. ``cine_sax/AccFactor04``."""
        return f"cine_{self.view}/{self.mask_name}"

    @property
    def relpath(self) -> Path:
        """Path of the case's k-space file relative to the set folder; a CMRxRecon submission keeps it
        (``<out>/Submission/MultiCoil/Cine/<Set>/<relpath>``, e.g. ``AccFactor04/P001/cine_sax.mat``)."""
        if self.kspace_path is not None:
            return self.kspace_path.relative_to(self.set_dir)
        return self.mask_path.relative_to(self.set_dir)

    def read_kspace(self, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> np.ndarray:
        """Undersampled k-space, complex64 ``(t, slices, coils, ky, kx)``."""
        if self.kspace_path is not None:
            return read_cine_kspace(self.kspace_path, self.kspace_key, max_bytes=max_bytes)
        full = read_cine_kspace(self.full_path, FULL_KEY, max_bytes=max_bytes)
        return apply_cine_mask(full, self.read_mask())

    def read_mask(self) -> np.ndarray:
        """float32 0/1 mask, ``(ky, kx)`` or ``(t, ky, kx)``."""
        return read_cine_mask(self.mask_path, self.mask_key)

    def read_full(self, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> np.ndarray:
        """Fully sampled k-space, complex64 ``(t, slices, coils, ky, kx)``."""
        if self.full_path is None:
            raise FormatError(self.set_dir / FULL_DIR / self.subject, "-", f"no FullSample file for cine_{self.view}")
        return read_cine_kspace(self.full_path, FULL_KEY, max_bytes=max_bytes)


@dataclasses.dataclass(frozen=True)
class CineFullSample:
    """One fully sampled file: ``<Set>/FullSample/<subject>/cine_<view>.mat`` with ``kspace_full``."""

    set_dir: Path
    subject: str
    view: str
    path: Path


def is_cine_set(folder: PathLike) -> bool:
    """Whether ``folder`` is a CMRxRecon set folder (holds FullSample/AccFactorXX/UnderSample_TaskN/Mask_TaskN)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.is_dir() and _SET_CHILD_RE.match(p.name) for p in folder.iterdir())


def find_cine_sets(path: PathLike, max_depth: int = 4) -> List[Path]:
    """CMRxRecon set folders at or below ``path`` (a set folder, ``.../Cine``, ``.../MultiCoil``, the
    dataset root or a folder holding it), searched ``max_depth`` levels deep; sorted."""
    path = Path(path)
    found, frontier = [], [path]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in frontier:
            if not folder.is_dir():
                continue
            if is_cine_set(folder):
                found.append(folder)
            elif not _SUBJECT_RE.match(folder.name) and not _PATIENT_RE.match(folder.name):
                nxt += [p for p in sorted(folder.iterdir()) if p.is_dir()]
        frontier = nxt
    return sorted(found)


def _subjects(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _SUBJECT_RE.match(p.name)) if folder.is_dir() else []


def list_fullsample(set_dir: PathLike, views: Optional[Sequence[str]] = None) -> List[CineFullSample]:
    """Every ``FullSample/P###/cine_<view>.mat`` of a set (the training inputs), sorted."""
    set_dir = Path(set_dir)
    out = []
    for subj in _subjects(set_dir / FULL_DIR):
        for f in sorted(subj.glob("cine_*.mat")):
            m = _FULL_RE.match(f.name)
            if m and (views is None or m.group(1) in views):
                out.append(CineFullSample(set_dir, subj.name, m.group(1), f))
    return out


def _full_for(set_dir: Path, subject: str, view: str) -> Optional[Path]:
    p = set_dir / FULL_DIR / subject / f"cine_{view}.mat"
    return p if p.is_file() else None


def list_cine_cases(
    set_dir: PathLike,
    views: Optional[Sequence[str]] = None,
    include_mask_only: bool = False,
) -> List[CineCase]:
    """The undersampled cases of a CMRxRecon set folder, sorted by (mask folder, subject, file).

    2023 layout: one case per ``AccFactorXX/P###/cine_<view>.mat`` (``mask_path`` is its
    ``cine_<view>_mask.mat`` or ``None`` when missing). 2024 layout: one per
    ``UnderSample_TaskN/P###/cine_<view>_kus_<Pattern><R>.mat`` with its ``Mask_TaskN`` partner, and,
    with ``include_mask_only``, one per Mask_TaskN file without k-space when the FullSample file exists
    (the 2024 TrainingSet). This is what ``reconstruct.py --task cine`` and ``evaluate.py --task cine``
    walk. Missing partners are not errors here; :func:`validate_cine_set` reports them.
    """
    set_dir = Path(set_dir)
    keep = (lambda v: True) if views is None else (lambda v: v in views)
    cases: List[CineCase] = []
    for acc_dir in sorted(p for p in set_dir.iterdir() if p.is_dir() and _ACC_DIR_RE.match(p.name)):
        acc = int(_ACC_DIR_RE.match(acc_dir.name).group(1))
        for subj in _subjects(acc_dir):
            for f in sorted(subj.glob("cine_*.mat")):
                m = _FULL_RE.match(f.name)
                if not m or not keep(m.group(1)):
                    continue
                view = m.group(1)
                mask = subj / f"cine_{view}_mask.mat"
                cases.append(CineCase(set_dir, subj.name, view, acc_dir.name, "Uniform", acc, "2023", f,
                                      f"kspace_sub{acc:02d}", mask if mask.is_file() else None,
                                      f"mask{acc:02d}", _full_for(set_dir, subj.name, view)))
    for task_dir in sorted(p for p in set_dir.iterdir() if p.is_dir() and p.name.startswith("UnderSample_Task")):
        mask_root = set_dir / task_dir.name.replace("UnderSample_", "Mask_")
        for subj in _subjects(task_dir):
            for f in sorted(subj.glob("cine_*_kus_*.mat")):
                m = _KUS24_RE.match(f.name)
                if not m or not keep(m.group(1)):
                    continue
                view, pattern, acc = m.group(1), m.group(2), int(m.group(3))
                mask = mask_root / subj.name / f"cine_{view}_mask_{pattern}{acc}.mat"
                cases.append(CineCase(set_dir, subj.name, view, f"{pattern}{acc}", pattern, acc, "2024", f, KUS_KEY,
                                      mask if mask.is_file() else None, MASK_KEY_2024,
                                      _full_for(set_dir, subj.name, view)))
    if include_mask_only:
        for mask_dir in sorted(p for p in set_dir.iterdir() if p.is_dir() and p.name.startswith("Mask_Task")):
            kus_root = set_dir / mask_dir.name.replace("Mask_", "UnderSample_")
            for subj in _subjects(mask_dir):
                for f in sorted(subj.glob("cine_*_mask_*.mat")):
                    m = _MASK24_RE.match(f.name)
                    if not m or not keep(m.group(1)):
                        continue
                    view, pattern, acc = m.group(1), m.group(2), int(m.group(3))
                    full = _full_for(set_dir, subj.name, view)
                    if full is None or (kus_root / subj.name / f"cine_{view}_kus_{pattern}{acc}.mat").is_file():
                        continue
                    cases.append(CineCase(set_dir, subj.name, view, f"{pattern}{acc}", pattern, acc, "2024", None,
                                          KUS_KEY, f, MASK_KEY_2024, full))
    return cases


# ============================================================================ CMRxRecon: readers


def _kspace_key(path: Path) -> str:
    names = [n for n in mat_variables(path) if n.startswith("kspace") or n == KUS_KEY]
    if len(names) != 1:
        raise FormatError(path, "-", f"expected one k-space variable (kspace_* or kus), found {names or 'none'}")
    return names[0]


def _declared_problem(var: MatVariable, max_bytes: Optional[int]) -> Optional[str]:
    """Why a variable's declared size cannot be trusted (checked before any data is read), or None."""
    if 0 in var.shape:
        return f"empty dimension in shape {var.shape}"
    if max_bytes is not None and var.nbytes > max_bytes:
        return (f"declared size {var.nbytes / 2**30:.1f} GiB {var.shape} exceeds the {max_bytes / 2**30:.1f} GiB "
                f"limit (corrupt header or HDF5 bomb)")
    stored = var.storage_bytes
    if stored is not None:
        # gzip cannot compress below ~1/1032; uncompressed data must be stored in full
        needed = var.nbytes if not var.compressed else var.nbytes / 1100
        if stored < needed:
            return (f"declares {var.nbytes} bytes {var.shape} but the file stores {stored} "
                    f"(truncated, unwritten or HDF5 bomb)")
    return None


def open_cine_kspace(path: PathLike, key: Optional[str] = None,
                     max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> MatVariable:
    """Open a cine k-space variable lazily (a context manager): ``var[t]`` reads one frame
    ``(slices, coils, ky, kx)``, ``var[t, s]`` one slice ``(coils, ky, kx)``, complex64. The shape
    ``(t, slices, coils, ky, kx)``, complex dtype and declared size are checked before any data is
    read; ``key`` defaults to the file's single ``kspace_*``/``kus`` variable."""
    path = Path(path)
    key = key or _kspace_key(path)
    var = open_mat_variable(path, key)
    try:
        if var.ndim != 5:
            raise FormatError(path, key, f"expected 5 dimensions (t, slices, coils, ky, kx), got shape {var.shape}")
        if not var.is_complex:
            raise FormatError(path, key, f"expected complex k-space (compound real/imag), got {var.dtype}")
        problem = _declared_problem(var, max_bytes)
        if problem:
            raise FormatError(path, key, problem)
    except BaseException:
        var.close()
        raise
    return var


def read_cine_kspace(path: PathLike, key: Optional[str] = None,
                     max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read and validate cine k-space: complex64 ``(t, slices, coils, ky, kx)``, all finite."""
    path = Path(path)
    with open_cine_kspace(path, key, max_bytes) as var:
        data = var.read()
        if not np.isfinite(data).all():
            raise FormatError(path, var.key, f"{int((~np.isfinite(data)).sum())} non-finite values")
    return data


def read_cine_mask(path: PathLike, key: Optional[str] = None) -> np.ndarray:
    """Read and validate a cine mask: float32 0/1, ``(ky, kx)`` or ``(t, ky, kx)`` (h5py order, i.e.
    MATLAB ``(kx, ky[, t])``). ``key`` defaults to the file's single ``mask*`` variable."""
    path = Path(path)
    if key is None:
        names = [n for n in mat_variables(path) if n.startswith("mask")]
        if len(names) != 1:
            raise FormatError(path, "-", f"expected one mask variable, found {names or 'none'}")
        key = names[0]
    mask = read_mat(path, [key], max_bytes=64 * 2**20)[key]
    _check_mask_array(mask, path, key)
    return mask.astype(np.float32)


def _check_mask_array(mask: np.ndarray, path: Path, key: str, ndims: Tuple[int, ...] = (2, 3)) -> None:
    if mask.ndim not in ndims:
        want = " or ".join({2: "(ky, kx)", 3: "(t, ky, kx)"}[n] for n in ndims)
        raise FormatError(path, key, f"expected a mask {want}, got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise FormatError(path, key, f"expected a real 0/1 mask, got {mask.dtype}")
    if not np.isin(mask, (0, 1)).all():
        raise FormatError(path, key, "mask is not binary (values other than 0 and 1)")
    if not mask.any():
        raise FormatError(path, key, "mask samples nothing")


def apply_cine_mask(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``kspace (t, slices, coils, ky, kx)`` times a ``(ky, kx)`` or ``(t, ky, kx)`` mask (the
    organisers' ``kspace_full .* mask``), complex64."""
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 3:
        mask = mask[:, None, None]
    return (kspace * mask).astype(np.complex64, copy=False)


# ============================================================================ CMRxRecon: writers


def write_cine_fullsample(set_dir: PathLike, subject: str, view: str, kspace: np.ndarray) -> Path:
    """Write ``<set_dir>/FullSample/<subject>/cine_<view>.mat`` (``kspace_full``, complex64
    ``(t, slices, coils, ky, kx)``, MATLAB v7.3, atomic); return its path."""
    kspace = _check_kspace_arg(kspace, "kspace_full")
    path = Path(set_dir) / FULL_DIR / subject / f"cine_{view}.mat"
    write_mat73(path, {FULL_KEY: kspace})
    return path


def write_cine_undersampled(
    set_dir: PathLike,
    subject: str,
    view: str,
    kspace_full: np.ndarray,
    mask: np.ndarray,
    acceleration: int,
    pattern: str = "Uniform",
    layout: str = "2023",
    compression: Optional[int] = None,
) -> Tuple[Path, Path]:
    """Write one undersampled case, ``kspace_full`` times ``mask`` (``(ky, kx)`` or ``(t, ky, kx)``),
    and its mask, as the challenge ships them; return ``(kspace_path, mask_path)``.

    ``layout="2023"``: ``AccFactor{R:02d}/<subject>/cine_<view>.mat`` (``kspace_subRR``) and
    ``cine_<view>_mask.mat`` (``maskRR``). ``layout="2024"``: ``UnderSample_TaskN/<subject>/
    cine_<view>_kus_<pattern><R>.mat`` (``kus``) and ``Mask_TaskN/.../cine_<view>_mask_<pattern><R>.mat``
    (``mask``), N = 1 for a 2-D mask and 2 for a kt mask. Masks are stored as MATLAB double.
    ``compression``: gzip level for the k-space (its zero lines compress well), as :func:`write_mat73`.
    """
    kspace_full = _check_kspace_arg(kspace_full, "kspace_full")
    mask = np.asarray(mask)
    _check_mask_array(mask, Path(f"<{view} mask>"), "mask")
    expected = kspace_full.shape[-2:] if mask.ndim == 2 else (kspace_full.shape[0],) + kspace_full.shape[-2:]
    if mask.shape != expected:
        raise ValueError(f"mask shape {mask.shape} does not match k-space {kspace_full.shape} (expected {expected})")
    set_dir, acc = Path(set_dir), int(acceleration)
    kus = apply_cine_mask(kspace_full, mask)
    mask = mask.astype(np.float64)
    if layout == "2023":
        folder = set_dir / f"AccFactor{acc:02d}" / subject
        kpath, mpath = folder / f"cine_{view}.mat", folder / f"cine_{view}_mask.mat"
        write_mat73(kpath, {f"kspace_sub{acc:02d}": kus}, compression=compression)
        write_mat73(mpath, {f"mask{acc:02d}": mask})
    elif layout == "2024":
        task = 1 if mask.ndim == 2 else 2
        kpath = set_dir / f"UnderSample_Task{task}" / subject / f"cine_{view}_kus_{pattern}{acc}.mat"
        mpath = set_dir / f"Mask_Task{task}" / subject / f"cine_{view}_mask_{pattern}{acc}.mat"
        write_mat73(kpath, {KUS_KEY: kus}, compression=compression)
        write_mat73(mpath, {MASK_KEY_2024: mask})
    else:
        raise ValueError(f"layout must be '2023' or '2024', got {layout!r}")
    return kpath, mpath


def write_submission_file(path: PathLike, image: np.ndarray) -> None:
    """Write a CMRxRecon submission file: ``img4ranking``, single precision, MATLAB v7.3, atomic.
    ``image`` is real, in h5py order (e.g. the ranking crop ``(frames, slices, y, x)``)."""
    image = np.asarray(image)
    if np.iscomplexobj(image):
        raise ValueError(f"{path}: {SUBMISSION_KEY}: expected a real (magnitude) image, got {image.dtype}")
    write_mat73(path, {SUBMISSION_KEY: image.astype(np.float32)})


def _check_kspace_arg(kspace, name: str) -> np.ndarray:
    kspace = np.asarray(kspace)
    if kspace.ndim != 5 or not np.iscomplexobj(kspace):
        raise ValueError(f"{name}: expected complex (t, slices, coils, ky, kx), got {kspace.dtype} {kspace.shape}")
    return kspace.astype(np.complex64, copy=False)


# ============================================================================ CMRxRecon: validation


def _line(path, key: str, problem: str) -> str:
    return str(FormatError(path, key, problem))


def check_kspace_file(path: PathLike, key: Optional[str] = None, mask: Optional[np.ndarray] = None,
                      max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> Tuple[Optional[Tuple[int, ...]], List[str]]:
    """Validate one cine k-space file, reading it frame by frame: ``(shape or None, problems)``.

    Checks the variable, 5 dimensions, complex dtype, the declared size (before reading), every
    value finite and, given the case's ``mask`` (``(ky, kx)`` or ``(t, ky, kx)``), no sample outside it.
    """
    path = Path(path)
    try:
        with open_cine_kspace(path, key, max_bytes) as var:
            shape = var.shape
            problems = []
            if mask is not None:
                want = shape[-2:] if mask.ndim == 2 else (shape[0],) + shape[-2:]
                if mask.shape != want:
                    problems.append(_line(path, var.key, f"k-space {shape} does not match its mask {mask.shape} "
                                                         f"(expected mask {want})"))
                    mask = None
            nonfinite, outside = 0, 0
            for t in range(shape[0]):  # one frame in memory at a time
                frame = var[t]
                nonfinite += int(np.count_nonzero(~np.isfinite(frame)))
                if mask is not None:
                    unsampled = (mask if mask.ndim == 2 else mask[t]) == 0
                    outside += int(np.count_nonzero(frame[..., unsampled]))
            if nonfinite:
                problems.append(_line(path, var.key, f"{nonfinite} non-finite values"))
            if outside:
                problems.append(_line(path, var.key, f"{outside} nonzero samples outside the mask"))
            return shape, problems
    except FormatError as exc:
        return None, [str(exc)]


def _check_mask_file(path: Path, key: str, ndims: Tuple[int, ...]) -> Tuple[Optional[np.ndarray], List[str]]:
    try:
        mask = read_mat(path, [key], max_bytes=64 * 2**20)[key]
        _check_mask_array(mask, path, key, ndims)
    except FormatError as exc:
        return None, [str(exc)]
    return mask, []


def validate_cine_set(set_dir: PathLike, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> List[str]:
    """Problems of a CMRxRecon set folder, one line each (``<file>: <key>: <problem>``).

    Every FullSample file; every undersampled case: the k-space file, its mask (present, 0/1, right
    ndim, shape matching the k-space), frame/slice/coil/matrix counts equal to the FullSample file,
    the subject and view present in FullSample (when the set has a FullSample folder), and for 2024
    Mask_Task files their FullSample partner.
    """
    set_dir = Path(set_dir)
    problems: List[str] = []
    full_shapes: Dict[Path, Optional[Tuple[int, ...]]] = {}
    for item in list_fullsample(set_dir):
        shape, found = check_kspace_file(item.path, FULL_KEY, max_bytes=max_bytes)
        full_shapes[item.path] = shape
        problems += found
    has_full = (set_dir / FULL_DIR).is_dir()
    for acc_dir in sorted(p for p in set_dir.iterdir() if p.is_dir() and _ACC_DIR_RE.match(p.name)):
        for mask_path in sorted(acc_dir.glob("P*/cine_*_mask.mat")):  # a mask whose k-space file is missing
            view = _MASK23_RE.match(mask_path.name)
            if view and not (mask_path.parent / f"cine_{view.group(1)}.mat").is_file():
                problems.append(_line(mask_path, "-", f"mask without its k-space file cine_{view.group(1)}.mat"))
    reported_subjects = set()
    for case in list_cine_cases(set_dir, include_mask_only=True):
        kfile = case.kspace_path or case.mask_path
        if case.kspace_path is not None and case.mask_path is None:
            want = (f"cine_{case.view}_mask.mat" if case.layout == "2023" else
                    f"{case.kspace_path.parent.parent.name.replace('UnderSample_', 'Mask_')}/{case.subject}/"
                    f"cine_{case.view}_mask_{case.mask_name}.mat")
            problems.append(_line(kfile, "-", f"mask file {want} is missing"))
        mask = None
        if case.mask_path is not None:
            ndims = (2, 3) if case.layout == "2023" else ((2,) if "Task1" in case.mask_path.parent.parent.name else (3,))
            mask, found = _check_mask_file(case.mask_path, case.mask_key, ndims)
            problems += found
        shape = None
        if case.kspace_path is not None:
            shape, found = check_kspace_file(case.kspace_path, case.kspace_key, mask, max_bytes)
            problems += found
        elif mask is not None and case.full_path in full_shapes and full_shapes[case.full_path] is not None:
            fshape = full_shapes[case.full_path]
            want = fshape[-2:] if mask.ndim == 2 else (fshape[0],) + fshape[-2:]
            if mask.shape != want:
                problems.append(_line(case.mask_path, case.mask_key, f"mask {mask.shape} does not match FullSample "
                                                                     f"k-space {fshape} (expected {want})"))
        if not has_full:
            continue
        if not (set_dir / FULL_DIR / case.subject).is_dir():
            if case.subject not in reported_subjects:
                reported_subjects.add(case.subject)
                problems.append(_line(kfile.parent, "-", f"subject {case.subject} is missing from "
                                                         f"{set_dir / FULL_DIR}"))
            continue
        if case.full_path is None:
            problems.append(_line(kfile, "-", f"no FullSample file {FULL_DIR}/{case.subject}/cine_{case.view}.mat"))
            continue
        fshape = full_shapes.get(case.full_path)
        if shape is not None and fshape is not None and shape != fshape:
            problems.append(_line(case.kspace_path, case.kspace_key, _shape_difference(shape, fshape)))
    return problems


def _shape_difference(shape: Tuple[int, ...], full: Tuple[int, ...]) -> str:
    names = ("frames", "slices", "coils", "ky lines", "kx samples")
    diffs = [f"{a} {n} but FullSample has {b}" for n, a, b in zip(names, shape, full) if a != b]
    return "; ".join(diffs) + f" (shape {shape} vs {full})"


def validate_mat_file(path: PathLike, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> List[str]:
    """Problems of one ``.mat`` file judged by its variables: cine k-space (``kspace_*``/``kus``),
    a mask (``mask*``) or a submission (``img4ranking``: real, finite)."""
    path = Path(path)
    try:
        names = list(mat_variables(path))
    except FormatError as exc:
        return [str(exc)]
    kspace = [n for n in names if n.startswith("kspace") or n == KUS_KEY]
    if kspace:
        return check_kspace_file(path, kspace[0], max_bytes=max_bytes)[1]
    masks = [n for n in names if n.startswith("mask")]
    if masks:
        return _check_mask_file(path, masks[0], (2, 3))[1]
    if SUBMISSION_KEY in names:
        try:
            img = read_mat(path, [SUBMISSION_KEY], max_bytes=max_bytes)[SUBMISSION_KEY]
        except FormatError as exc:
            return [str(exc)]
        if img.dtype.kind not in "fiu":
            return [_line(path, SUBMISSION_KEY, f"expected a real image, got {img.dtype}")]
        if not np.isfinite(img).all():
            return [_line(path, SUBMISSION_KEY, f"{int((~np.isfinite(img)).sum())} non-finite values")]
        return []
    return [_line(path, "-", f"no k-space (kspace_*, kus), mask or {SUBMISSION_KEY} variable (has: {names})")]


# ============================================================================ ACDC


ACDC_LABELS = {0: "background", 1: "RV", 2: "myocardium", 3: "LV"}
ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
MYOCARDIUM_DENSITY = 1.05  # g/mL
_INFO_KEYS = ("ED", "ES", "Group", "Height", "NbFrame", "Weight")
_NIFTI_MAX_BYTES = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class AcdcInfo:
    """``Info.cfg``: ED and ES frame numbers (1-based), Group, Height (cm), Weight (kg), NbFrame."""

    ed: int
    es: int
    group: str
    height: float
    weight: float
    nb_frame: int


def read_info_cfg(path: PathLike) -> AcdcInfo:
    """Parse ACDC's ``Info.cfg`` (``Key: value`` lines); any problem is a :class:`FormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "-", "file not found")
    values: Dict[str, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise FormatError(path, f"line {number}", f"expected 'Key: value', got {line.strip()[:40]!r}")
        key, value = line.split(":", 1)
        values[key.strip()] = value.strip()
    missing = [k for k in _INFO_KEYS if k not in values]
    if missing:
        raise FormatError(path, missing[0], f"missing key (has: {sorted(values)})")
    try:
        info = AcdcInfo(int(values["ED"]), int(values["ES"]), values["Group"], float(values["Height"]),
                        float(values["Weight"]), int(values["NbFrame"]))
    except ValueError as exc:
        raise FormatError(path, "-", f"bad value ({exc})") from None
    if info.nb_frame < 1:
        raise FormatError(path, "NbFrame", f"must be positive, got {info.nb_frame}")
    for key, frame in (("ED", info.ed), ("ES", info.es)):
        if not 1 <= frame <= info.nb_frame:
            raise FormatError(path, key, f"frame {frame} outside 1..NbFrame={info.nb_frame}")
    return info


def write_info_cfg(path: PathLike, info: AcdcInfo) -> None:
    """Write ``Info.cfg`` in ACDC's ``Key: value`` format (atomic)."""
    text = (f"ED: {info.ed}\nES: {info.es}\nGroup: {info.group}\nHeight: {info.height:.1f}\n"
            f"NbFrame: {info.nb_frame}\nWeight: {info.weight:.1f}\n")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_nifti(path: PathLike, max_bytes: int = _NIFTI_MAX_BYTES) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Read a NIfTI image as ``(array, spacing)`` in reversed NIfTI order: a 3-D file gives
    ``(z, y, x)`` and spacing ``(dz, dy, dx)`` mm, a 4-D one ``(t, z, y, x)`` and ``(dt, dz, dy, dx)``
    (dt as stored, ACDC: ms). The declared size is checked before reading."""
    import nibabel  # heavy import kept local

    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "-", "file not found")
    try:
        img = nibabel.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError, gzip errors
        raise FormatError(path, "-", f"unreadable NIfTI file ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    shape = tuple(int(s) for s in img.shape)
    declared = int(np.prod(shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    if declared > max_bytes:
        raise FormatError(path, "-", f"declared size {declared / 2**30:.1f} GiB {shape} exceeds the "
                                     f"{max_bytes / 2**30:.1f} GiB limit (corrupt header)")
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise FormatError(path, "-", f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    return np.ascontiguousarray(data.T), zooms[::-1]


def write_nifti(path: PathLike, array: np.ndarray, spacing: Sequence[float]) -> None:
    """Write ``array`` (reversed NIfTI order: ``(z, y, x)`` or ``(t, z, y, x)``) with ``spacing`` in the
    same order (mm; ms for t) as NIfTI-1, gzip-compressed when ``path`` ends in ``.gz``; atomic and
    byte-identical for identical input (gzip mtime 0). The affine is the diagonal of the spatial spacing."""
    import nibabel

    array = np.asarray(array)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != array.ndim or array.ndim not in (3, 4):
        raise ValueError(f"{path}: expected a 3-D or 4-D array with one spacing per axis, got {array.shape}, {spacing}")
    data = np.asfortranarray(array.T)
    zooms = spacing[::-1]
    img = nibabel.Nifti1Image(data, np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "msec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


@dataclasses.dataclass
class AcdcPatient:
    """One ACDC patient. ``frames`` and ``labels`` map 1-based frame numbers to ``(z, y, x)`` arrays
    (images float32, labels uint8 0-3); ``spacing`` is ``(dz, dy, dx)`` mm; ``cine`` is ``(t, z, y, x)``
    float32 when loaded."""

    path: Path
    name: str
    info: AcdcInfo
    spacing: Tuple[float, float, float]
    frames: Dict[int, np.ndarray]
    labels: Dict[int, np.ndarray]
    cine: Optional[np.ndarray] = None

    @property
    def ed_image(self) -> np.ndarray:
        return self.frames[self.info.ed]

    @property
    def es_image(self) -> np.ndarray:
        return self.frames[self.info.es]

    @property
    def ed_label(self) -> np.ndarray:
        return self.labels[self.info.ed]

    @property
    def es_label(self) -> np.ndarray:
        return self.labels[self.info.es]


def acdc_frame_path(patient_dir: PathLike, frame: int, label: bool = False) -> Path:
    """``patient###_frame##.nii.gz`` (``_gt`` with ``label``) inside ``patient_dir``."""
    patient_dir = Path(patient_dir)
    return patient_dir / f"{patient_dir.name}_frame{frame:02d}{'_gt' if label else ''}.nii.gz"


def list_acdc_patients(root: PathLike) -> List[Path]:
    """Patient folders of an ACDC tree: ``root`` itself, ``root/patient###`` or
    ``root/{training,testing}/patient###`` (searched three levels deep); sorted."""
    return _acdc_patients_below(Path(root))


def _is_patient_dir(path: Path) -> bool:
    return path.is_dir() and bool(_PATIENT_RE.match(path.name)) and (
        (path / "Info.cfg").is_file() or any(path.glob(f"{path.name}_*.nii*")))


def read_acdc_patient(patient_dir: PathLike, load_cine: bool = False) -> AcdcPatient:
    """Read an ACDC patient: Info.cfg, the ED and ES volumes, their labels where present (every other
    ``_frame##`` file too), and with ``load_cine`` the 4-D cine. Validates labels (0-3) and shapes."""
    patient_dir = Path(patient_dir)
    info = read_info_cfg(patient_dir / "Info.cfg")
    frames: Dict[int, np.ndarray] = {}
    labels: Dict[int, np.ndarray] = {}
    spacing = None
    numbers = sorted({info.ed, info.es} | {int(m.group(1)) for m in (re.match(rf"^{patient_dir.name}_frame(\d+)\.nii\.gz$", p.name)
                                                                       for p in patient_dir.glob("*_frame*.nii.gz")) if m})
    for n in numbers:
        image, sp = read_nifti(acdc_frame_path(patient_dir, n))
        if image.ndim != 3:
            raise FormatError(acdc_frame_path(patient_dir, n), "-", f"expected a 3-D volume, got shape {image.shape}")
        frames[n] = image.astype(np.float32)
        spacing = spacing or sp
        gt = acdc_frame_path(patient_dir, n, label=True)
        if gt.is_file():
            labels[n] = _read_label(gt, image.shape)[0]
    cine = None
    if load_cine:
        cine_path = patient_dir / f"{patient_dir.name}_4d.nii.gz"
        cine, _ = read_nifti(cine_path)
        if cine.ndim != 4:
            raise FormatError(cine_path, "-", f"expected a 4-D cine, got shape {cine.shape}")
        cine = cine.astype(np.float32)
    return AcdcPatient(patient_dir, patient_dir.name, info, tuple(spacing), frames, labels, cine)


def _read_label(path: Path, shape: Tuple[int, ...]) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """A validated uint8 label map ``(z, y, x)`` and its spacing."""
    label, spacing = read_nifti(path)
    if label.shape != shape:
        raise FormatError(path, "-", f"label shape {label.shape} differs from its image {shape}")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise FormatError(path, "-", "labels are not integers")
    if not np.isin(label, list(ACDC_LABELS)).all():
        bad = sorted(set(np.unique(label).tolist()) - set(ACDC_LABELS))[:5]
        raise FormatError(path, "-", f"labels outside 0-3 (0 bg, 1 RV, 2 myocardium, 3 LV): {bad}")
    return label.astype(np.uint8), spacing


def write_acdc_patient(
    split_dir: PathLike,
    patient_id: int,
    cine: np.ndarray,
    spacing: Sequence[float],
    info: AcdcInfo,
    labels: Mapping[int, np.ndarray],
    frame_ms: float = 1.0,
) -> Path:
    """Write one ACDC patient folder ``<split_dir>/patient{id:03d}/`` and return it.

    ``cine`` is ``(t, z, y, x)`` (any real dtype, written as float32), ``spacing`` ``(dz, dy, dx)``
    mm, ``info`` the Info.cfg values (``nb_frame`` must equal ``t``), ``labels`` 1-based frame number ->
    uint8 ``(z, y, x)`` label map (0 bg, 1 RV, 2 myocardium, 3 LV) and must cover ED and ES. Writes
    ``patient###_4d.nii.gz``, ``patient###_frame##.nii.gz`` (the cine frame) and ``_gt`` for every
    labelled frame, and ``Info.cfg``; every file atomically, byte-identical for identical input.
    ``split_dir`` is ``<root>/training`` or ``<root>/testing``.
    """
    cine = np.asarray(cine)
    if cine.ndim != 4 or cine.dtype.kind not in "fiu":
        raise ValueError(f"cine: expected a real (t, z, y, x) array, got {cine.dtype} {cine.shape}")
    if info.nb_frame != cine.shape[0]:
        raise ValueError(f"info.nb_frame {info.nb_frame} differs from the cine's {cine.shape[0]} frames")
    if not {info.ed, info.es} <= set(labels):
        raise ValueError(f"labels must include ED {info.ed} and ES {info.es}, got frames {sorted(labels)}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive (dz, dy, dx) mm, got {spacing}")
    for n, lab in labels.items():
        lab = np.asarray(lab)
        if not 1 <= n <= cine.shape[0] or lab.shape != cine.shape[1:] or not np.isin(lab, list(ACDC_LABELS)).all():
            raise ValueError(f"label for frame {n}: expected (z, y, x) {cine.shape[1:]} with values 0-3 and a "
                             f"frame in 1..{cine.shape[0]}, got {lab.shape}")
    patient = Path(split_dir) / f"patient{int(patient_id):03d}"
    image = cine.astype(np.float32)
    write_nifti(patient / f"{patient.name}_4d.nii.gz", image, (float(frame_ms),) + spacing)
    for n in sorted(labels):
        write_nifti(acdc_frame_path(patient, n), image[n - 1], spacing)
        write_nifti(acdc_frame_path(patient, n, label=True), np.asarray(labels[n], np.uint8), spacing)
    write_info_cfg(patient / "Info.cfg", info)
    return patient


def cavity_volumes_ml(label: np.ndarray, spacing: Sequence[float]) -> Dict[str, np.ndarray]:
    """Volumes in mL of RV cavity, myocardium and LV cavity of a label map ``(..., z, y, x)`` with
    voxel ``spacing`` ``(dz, dy, dx)`` mm: ``{"rv", "myo", "lv"}`` each of shape ``label.shape[:-3]``
    (e.g. one value per frame for ``(t, z, y, x)``)."""
    label = np.asarray(label)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    axes = (-3, -2, -1)
    return {name: np.count_nonzero(label == value, axis=axes) * voxel_ml
            for name, value in (("rv", 1), ("myo", 2), ("lv", 3))}


def ejection_fraction(ed_label: np.ndarray, es_label: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Clinical indices from ED and ES label maps ``(z, y, x)`` and ``(dz, dy, dx)`` mm spacing:
    LV/RV end-diastolic and end-systolic volumes (mL), ejection fractions (%, ``100 (EDV-ESV)/EDV``,
    NaN for an empty EDV), stroke volumes (mL) and ED myocardial mass (g, 1.05 g/mL)."""
    ed, es = cavity_volumes_ml(ed_label, spacing), cavity_volumes_ml(es_label, spacing)
    out: Dict[str, float] = {}
    for side in ("lv", "rv"):
        edv, esv = float(ed[side]), float(es[side])
        out[f"{side}_edv_ml"], out[f"{side}_esv_ml"] = edv, esv
        out[f"{side}_sv_ml"] = edv - esv
        out[f"{side}_ef"] = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
    out["myo_mass_g"] = float(ed["myo"]) * MYOCARDIUM_DENSITY
    return out


def validate_acdc_patient(patient_dir: PathLike, require_labels: Optional[bool] = None) -> List[str]:
    """Problems of one ACDC patient folder, one line each: Info.cfg, the 4-D cine (present, 4-D,
    NbFrame frames, finite), ED/ES volumes (present, same grid and spacing as the cine) and labels
    (0-3, same shape). Labels are required in ``training`` folders (``require_labels=None``)."""
    patient_dir = Path(patient_dir)
    if require_labels is None:
        require_labels = patient_dir.parent.name == "training"
    try:
        info = read_info_cfg(patient_dir / "Info.cfg")
    except FormatError as exc:
        return [str(exc)]
    problems: List[str] = []
    cine_path = patient_dir / f"{patient_dir.name}_4d.nii.gz"
    grid = None
    try:
        cine, cine_spacing = read_nifti(cine_path)
        if cine.ndim != 4:
            problems.append(_line(cine_path, "-", f"expected a 4-D cine (x, y, z, t), got {cine.ndim}-D {cine.shape[::-1]}"))
        else:
            grid = (cine.shape[1:], cine_spacing[1:])
            if cine.shape[0] != info.nb_frame:
                problems.append(_line(cine_path, "-", f"{cine.shape[0]} frames but Info.cfg NbFrame is {info.nb_frame}"))
            if cine.dtype.kind == "f" and not np.isfinite(cine).all():
                problems.append(_line(cine_path, "-", f"{int((~np.isfinite(cine)).sum())} non-finite values"))
    except FormatError as exc:
        problems.append(str(exc))
    for name, frame in (("ED", info.ed), ("ES", info.es)):
        image_path = acdc_frame_path(patient_dir, frame)
        try:
            image, spacing = read_nifti(image_path)
        except FormatError as exc:
            problems.append(f"{exc} ({name} frame {frame})" if exc.problem == "file not found" else str(exc))
            continue
        if image.ndim != 3:
            problems.append(_line(image_path, "-", f"expected a 3-D volume, got shape {image.shape[::-1]}"))
            continue
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            problems.append(_line(image_path, "-", f"{int((~np.isfinite(image)).sum())} non-finite values"))
        if grid is not None and (image.shape != grid[0] or not np.allclose(spacing, grid[1], rtol=1e-4)):
            problems.append(_line(image_path, "-", f"grid {image.shape[::-1]} spacing {spacing[::-1]} differs from "
                                                   f"the cine's {grid[0][::-1]} {grid[1][::-1]}"))
        gt_path = acdc_frame_path(patient_dir, frame, label=True)
        if not gt_path.is_file():
            if require_labels:
                problems.append(_line(gt_path, "-", f"file not found ({name} label)"))
            continue
        try:
            _, gt_spacing = _read_label(gt_path, image.shape)
            reference, whose = (grid[1], "the cine's") if grid is not None else (spacing, "its image's")
            if not np.allclose(gt_spacing, reference, rtol=1e-4):
                problems.append(_line(gt_path, "-", f"spacing {gt_spacing[::-1]} differs from {whose} {reference[::-1]}"))
        except FormatError as exc:
            problems.append(str(exc))
    return problems


# ============================================================================ dispatch


def validate_cine_path(path: PathLike, max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> Optional[List[str]]:
    """Problems of a cine path, or ``None`` when it holds no cine data (so the SNU validator decides).

    Accepts a ``.mat`` file, a NIfTI file, a CMRxRecon tree (any folder holding ``MultiCoil/Cine``, a
    Cine folder or a set folder) and an ACDC tree (``{training,testing}/patient###``, a folder of
    patients, or one patient).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix == ".mat":
            return validate_mat_file(path, max_bytes)
        if path.name.endswith((".nii", ".nii.gz")):
            try:
                read_nifti(path)
            except FormatError as exc:
                return [str(exc)]
            return []
        return None
    if not path.is_dir():
        return None
    sets = find_cine_sets(path)
    patients = _acdc_patients_below(path)
    if not sets and not patients:
        return None
    problems: List[str] = []
    for set_dir in sets:
        found = validate_cine_set(set_dir, max_bytes)
        if not found and not list_fullsample(set_dir) and not list_cine_cases(set_dir, include_mask_only=True):
            found = [_line(set_dir, "-", "CMRxRecon set folder holds no cine_<view>.mat files")]
        problems += found
    for patient in patients:
        problems += validate_acdc_patient(patient)
    return problems


def _acdc_patients_below(path: Path, max_depth: int = 3) -> List[Path]:
    found, frontier = [], [path]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in frontier:
            if _is_patient_dir(folder):
                found.append(folder)
            elif folder.is_dir() and not is_cine_set(folder) and not _SUBJECT_RE.match(folder.name):
                nxt += [p for p in sorted(folder.iterdir()) if p.is_dir()]
        frontier = nxt
    return sorted(found)


__all__ = [
    "AcdcInfo", "AcdcPatient", "CineCase", "CineFullSample", "apply_cine_mask", "acdc_frame_path",
    "cavity_volumes_ml", "check_kspace_file", "ejection_fraction", "find_cine_sets", "is_cine_set",
    "list_acdc_patients", "list_cine_cases", "list_fullsample", "open_cine_kspace", "read_acdc_patient",
    "read_cine_kspace", "read_cine_mask", "read_info_cfg", "read_nifti", "validate_acdc_patient",
    "validate_cine_path", "validate_cine_set", "validate_mat_file", "write_acdc_patient",
    "write_cine_fullsample", "write_cine_undersampled", "write_info_cfg", "write_nifti",
    "write_submission_file",
]
