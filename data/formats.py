"""The challenge's h5 file formats: readers, atomic writers and a validator.

Layout (DESIGN.md)::

    Data/train/{brain,knee}/kspace/{brain,knee}_acc{4,8}_{i}.h5     kspace (S, C, H, W) complex64, mask (W,)
    Data/train/{brain,knee}/image/{brain,knee}_acc{4,8}_{i}.h5      image_input, image_grappa, image_label
    Data/leaderboard/acc{4,8}/kspace/{brain,knee}_test{i}.h5          (S, 384, 384) float32, attr max
    Data/leaderboard/acc{4,8}/image/{brain,knee}_test{i}.h5
    <out>/acc{4,8}/{name}.h5                                          reconstruction (S, 384, 384) float32

Every reader validates what it reads and raises :class:`FormatError` with one line
``<file>: <key>: <problem>``. ``python -m data.formats check PATH`` validates a file, a ``Data`` tree or
any folder holding ``kspace/`` and ``image/`` subfolders, one problem per line, exit code 0 only when
everything is valid. ``python -m data.formats convert-fastmri`` turns public fastMRI multi-coil files
into the challenge layout.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import h5py
import numpy as np

from utils.contract import IMAGE_SIZE
from utils.io import atomic_path

KSPACE_KEY = "kspace"
MASK_KEY = "mask"
IMAGE_KEYS = ("image_input", "image_grappa", "image_label")
RECON_KEY = "reconstruction"
MAX_ATTR = "max"
ANATOMIES = ("brain", "knee")

_NAME_RE = re.compile(r"^(brain|knee)(?:_acc(\d+)_\d+|_test\d+)?")


class FormatError(ValueError):
    """A file breaks the data contract. The message is ``<file>: <key>: <problem>``."""

    def __init__(self, path, key: str, problem: str):
        self.path, self.key, self.problem = str(path), key, problem
        super().__init__(f"{path}: {key}: {problem}")


def anatomy_from_name(path) -> str:
    """``brain`` or ``knee`` from a challenge file name (training and evaluation only, never routing)."""
    match = _NAME_RE.match(Path(path).name)
    if not match:
        raise FormatError(path, "-", "file name does not start with 'brain' or 'knee'")
    return match.group(1)


# --------------------------------------------------------------------------------------------- writers


def write_kspace_file(path, kspace: np.ndarray, mask: np.ndarray) -> None:
    """Write ``kspace`` complex64 ``(S, C, H, W)`` and ``mask`` float32 ``(W,)`` atomically."""
    kspace = np.asarray(kspace)
    mask = np.asarray(mask)
    if kspace.ndim != 4 or not np.iscomplexobj(kspace):
        raise ValueError(f"{path}: kspace: expected complex (slices, coils, H, W), got {kspace.dtype} {kspace.shape}")
    if mask.shape != (kspace.shape[-1],):
        raise ValueError(f"{path}: mask: shape {mask.shape} does not match k-space width {kspace.shape[-1]}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(KSPACE_KEY, data=kspace.astype(np.complex64, copy=False))
        f.create_dataset(MASK_KEY, data=mask.astype(np.float32, copy=False))


def write_image_file(
    path,
    image_input: np.ndarray,
    image_grappa: np.ndarray,
    image_label: np.ndarray,
    max_value: Optional[float] = None,
) -> None:
    """Write the three float32 ``(S, 384, 384)`` images and attr ``max`` (default: max of the label)."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in zip(IMAGE_KEYS, (image_input, image_grappa, image_label))}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or arrays["image_label"].ndim != 3:
        raise ValueError(f"{path}: images must share one (slices, H, W) shape, got {sorted(shapes)}")
    value = float(arrays["image_label"].max()) if max_value is None else float(max_value)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr)
        f.attrs[MAX_ATTR] = value


def write_reconstruction_file(path, reconstruction: np.ndarray, key: str = RECON_KEY) -> None:
    """Write ``reconstruction`` float32 ``(S, 384, 384)`` atomically."""
    recon = np.asarray(reconstruction, dtype=np.float32)
    if recon.ndim != 3:
        raise ValueError(f"{path}: {key}: expected (slices, H, W), got shape {recon.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(key, data=recon)


# --------------------------------------------------------------------------------------------- checks

#: Largest dataset (declared shape x item size) a reader accepts, checked on the header before any data
#: is read. A real challenge volume is well below it (brain: 16 slices x 20 coils x 768 x 396 complex64
#: = 0.8 GiB); a header declaring more is corrupt or hostile (a few-KB chunked file whose data was never
#: written can declare hundreds of GiB, which reading would allocate).
MAX_DATASET_BYTES = 8 * 2**30
#: Largest k-space or image height/width a reader accepts (also bounds the mask it reads).
MAX_MATRIX = 4096
#: Relative tolerance of attr ``max`` against the maximum of ``image_label`` (float32 rounding).
MAX_ATTR_RTOL = 1e-5
#: Bytes read at once when a dataset is streamed in ranges of slices (bounds temporary memory).
_BLOCK_BYTES = 256 * 2**20

KSPACE_AXES = ("slices", "coils", "height", "width")
IMAGE_AXES = ("slices", "height", "width")


def open_h5(path) -> h5py.File:
    """Open an h5 file for reading; a missing, unreadable or truncated file is a :class:`FormatError`."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "-", "file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(path, "-", f"unreadable or truncated h5 file ({exc.__class__.__name__})") from None


def require_dataset(f: h5py.File, path, key: str) -> h5py.Dataset:
    """``f[key]`` as a dataset, or a :class:`FormatError` naming the file and key."""
    if key not in f:
        raise FormatError(path, key, f"missing key (has: {sorted(f.keys())})")
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise FormatError(path, key, "is a group, expected a dataset")
    return obj


def _check_kind(ds: h5py.Dataset, path, key: str, ndim: int, complex_: bool) -> None:
    if ds.ndim != ndim:
        raise FormatError(path, key, f"expected {ndim} dimensions, got shape {ds.shape}")
    is_complex = ds.dtype.kind == "c"
    if complex_ and not is_complex:
        raise FormatError(path, key, f"expected a complex dtype, got {ds.dtype}")
    if not complex_ and ds.dtype.kind not in "fiub":
        raise FormatError(path, key, f"expected a real numeric dtype, got {ds.dtype}")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _check_header(ds: h5py.Dataset, path, key: str, axes: Sequence[str]) -> None:
    """Header-only checks (nothing is read): no empty axis, height and width at most :data:`MAX_MATRIX`,
    declared size at most :data:`MAX_DATASET_BYTES`. ``axes`` names the dimensions for the messages."""
    shape = tuple(int(n) for n in ds.shape)
    for name, n in zip(axes, shape):
        if n == 0:
            raise FormatError(path, key, f"no {name} (shape {shape})")
    for name, n in zip(axes, shape):
        if name in ("height", "width") and n > MAX_MATRIX:
            raise FormatError(path, key, f"{name} {n} is over the limit of {MAX_MATRIX} (shape {shape})")
    nbytes = math.prod(shape) * ds.dtype.itemsize
    if nbytes > MAX_DATASET_BYTES:
        raise FormatError(path, key, f"shape {shape} {ds.dtype} declares {_gib(nbytes)}, over the "
                                     f"{_gib(MAX_DATASET_BYTES)} limit (corrupt or hostile header; nothing read)")


def _read(ds: h5py.Dataset, path, key: str, where=()) -> np.ndarray:
    try:
        return ds[where]
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise FormatError(path, key, f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None


def _slice_blocks(ds: h5py.Dataset) -> Iterator[slice]:
    """Ranges of slices (first axis) of at most about :data:`_BLOCK_BYTES` each."""
    per_slice = max(1, math.prod(ds.shape[1:]) * ds.dtype.itemsize)
    step = max(1, _BLOCK_BYTES // per_slice)
    for start in range(0, ds.shape[0], step):
        yield slice(start, min(start + step, ds.shape[0]))


def _read_checked(ds: h5py.Dataset, path, key: str, dtype, keep: bool = True) -> Optional[np.ndarray]:
    """Read a header-checked dataset range of slices by range, each range checked for non-finite values.

    Returns the whole array as ``dtype`` (``keep=False``: only checks, returns None, memory bounded)."""
    out = np.empty(ds.shape, dtype) if keep else None
    direct = out is not None and ds.dtype == out.dtype
    for block in _slice_blocks(ds):
        if direct:  # straight into the result, no temporary copy
            try:
                ds.read_direct(out, np.s_[block], np.s_[block])
            except (OSError, RuntimeError, ValueError, TypeError) as exc:
                raise FormatError(path, key, f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None
            part = out[block]
        else:
            part = _read(ds, path, key, block)
        bad = ~np.isfinite(part)
        if bad.any():
            raise FormatError(path, key, f"{int(bad.sum())} non-finite values in slices {block.start}..{block.stop - 1}")
        if out is not None and not direct:
            out[block] = part
    return out


def _describe(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_max_attr(f: h5py.File, path) -> float:
    """Attr ``max`` of an open image file: one positive finite real number, else a :class:`FormatError`
    naming the file and ``attr max`` (missing, unreadable, a string, several values, NaN, <= 0)."""
    if MAX_ATTR not in f.attrs:
        raise FormatError(path, "attr max", "missing attribute")
    try:
        shape = f.attrs.get_id(MAX_ATTR).shape  # header only: a huge attribute is never read
        if shape is not None and math.prod(shape) > 64:
            raise FormatError(path, "attr max", f"must be one number, got {math.prod(shape)} values (shape {shape})")
        raw = f.attrs[MAX_ATTR]
    except (OSError, RuntimeError, TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(path, "attr max", f"cannot be read ({exc.__class__.__name__})") from None
    value = np.asarray(raw)
    if value.dtype.kind not in "fiu":
        raise FormatError(path, "attr max", f"must be a real number, got {_describe(raw)} ({value.dtype})")
    if value.size != 1:
        raise FormatError(path, "attr max", f"must be one number, got {value.size} values {_describe(raw)}")
    number = float(value.reshape(-1)[0])
    if not math.isfinite(number) or number <= 0:
        raise FormatError(path, "attr max", f"must be a positive finite number, got {number}")
    return number


def _check_max_agrees(max_value: float, label: np.ndarray, path) -> None:
    """attr ``max`` must be the maximum of ``image_label`` (it is the SSIM data range)."""
    label_max = float(label.max())
    if not math.isclose(max_value, label_max, rel_tol=MAX_ATTR_RTOL):
        raise FormatError(path, "attr max", f"{max_value:.7g} differs from the maximum of image_label {label_max:.7g}")


def _mask_dataset(f: h5py.File, path, width: int) -> h5py.Dataset:
    """The ``mask`` dataset, its header checked against the k-space width before it is read."""
    ds = require_dataset(f, path, MASK_KEY)
    if ds.ndim != 1:
        raise FormatError(path, MASK_KEY, f"expected shape (W,), got {ds.shape}")
    if ds.shape[0] != width:
        raise FormatError(path, MASK_KEY, f"width {ds.shape[0]} differs from k-space width {width}")
    if ds.dtype.kind not in "fiub":
        raise FormatError(path, MASK_KEY, f"expected a real numeric dtype, got {ds.dtype}")
    return ds


def _check_mask(mask: np.ndarray, width: Optional[int], path) -> None:
    """A ``(W,)`` 0/1 mask with a sampled centre line (the ACS that GRAPPA, the models' coil
    sensitivities and routing need) and, unless fully sampled, lines outside the ACS (the spacing
    there is the acceleration). The same rule :func:`data.masks.estimate_acceleration` applies."""
    if mask.ndim != 1:
        raise FormatError(path, MASK_KEY, f"expected shape (W,), got {mask.shape}")
    if width is not None and mask.shape[0] != width:
        raise FormatError(path, MASK_KEY, f"width {mask.shape[0]} differs from k-space width {width}")
    if not np.isin(mask, (0, 1)).all():
        raise FormatError(path, MASK_KEY, "mask is not binary (values other than 0 and 1)")
    if not mask.any():
        raise FormatError(path, MASK_KEY, "mask samples no line")
    from data.masks import estimate_acceleration  # torch-backed; loaded on first use

    try:
        est = estimate_acceleration(mask)
    except ValueError:
        raise FormatError(path, MASK_KEY, f"centre line (column {mask.shape[0] // 2}) not sampled, so no ACS "
                                          "region (GRAPPA, the models' coil sensitivities and routing need one)") from None
    if not math.isfinite(est.spacing):
        raise FormatError(path, MASK_KEY, f"only the {est.acs_width} ACS lines around the centre are sampled, "
                                          "none outside: the acceleration (spacing outside the ACS) is undefined")


@dataclasses.dataclass
class KspaceVolume:
    """A challenge k-space file: ``kspace`` complex64 ``(S, C, H, W)``, ``mask`` float32 ``(W,)``."""

    path: Path
    kspace: np.ndarray
    mask: np.ndarray

    @property
    def num_slices(self) -> int:
        return self.kspace.shape[0]


def _kspace_dataset(f: h5py.File, path) -> h5py.Dataset:
    ds = require_dataset(f, path, KSPACE_KEY)
    _check_kind(ds, path, KSPACE_KEY, 4, complex_=True)
    _check_header(ds, path, KSPACE_KEY, KSPACE_AXES)
    return ds


def _read_kspace(path, data: str) -> KspaceVolume:
    """``data``: ``"load"`` (read all), ``"scan"`` (read range by range, check, keep nothing) or
    ``"header"`` (read nothing but the mask)."""
    path = Path(path)
    with open_h5(path) as f:
        ds = _kspace_dataset(f, path)
        mask = np.asarray(_read(_mask_dataset(f, path, ds.shape[-1]), path, MASK_KEY))
        _check_mask(mask, ds.shape[-1], path)
        kspace = _read_checked(ds, path, KSPACE_KEY, np.complex64, keep=data == "load") if data != "header" else None
        if kspace is None:
            kspace = np.zeros((0,) + ds.shape[1:], np.complex64)
    return KspaceVolume(path, kspace, mask.astype(np.float32))


def read_kspace_file(path, load: bool = True) -> KspaceVolume:
    """Read and validate a k-space file. Every header check (shapes, non-empty axes, declared size
    against :data:`MAX_DATASET_BYTES`, mask width) runs before any data is read; the data is read in
    ranges of slices. With ``load=False`` only the header and mask are checked and ``kspace`` is an
    empty ``(0, C, H, W)`` placeholder (cheap shape check for big files)."""
    return _read_kspace(path, "load" if load else "header")


def kspace_shape(path) -> tuple:
    """``(S, C, H, W)`` of a k-space file from its header (every header check, the mask's shape too)
    without reading the data."""
    with open_h5(path) as f:
        ds = _kspace_dataset(f, path)
        _mask_dataset(f, path, ds.shape[-1])
        return tuple(ds.shape)


def _image_datasets(f: h5py.File, path, keys: Sequence[str]) -> Dict[str, h5py.Dataset]:
    """Header checks of the image datasets ``keys``: real ``(S, 384, 384)``, one shared shape, size limits."""
    out: Dict[str, h5py.Dataset] = {}
    for key in keys:
        ds = require_dataset(f, path, key)
        _check_kind(ds, path, key, 3, complex_=False)
        _check_header(ds, path, key, IMAGE_AXES)
        if out and ds.shape != next(iter(out.values())).shape:
            raise FormatError(path, key, f"shape {ds.shape} differs from {keys[0]} {out[keys[0]].shape}")
        if ds.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise FormatError(path, key, f"expected {IMAGE_SIZE}x{IMAGE_SIZE} slices, got shape {ds.shape}")
        out[key] = ds
    return out


def image_shape(path, keys: Sequence[str] = ("image_label",)) -> tuple:
    """``(S, 384, 384)`` of an image file's ``keys`` from the header only (attr ``max`` and every header
    check included), without reading the images."""
    path = Path(path)
    with open_h5(path) as f:
        read_max_attr(f, path)
        return tuple(next(iter(_image_datasets(f, path, keys).values())).shape)


def read_image_file(path, keys: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Read and validate an image file: ``{key: float32 (S, 384, 384)}`` for ``keys`` (default all three)
    plus ``"max"`` (float, the volume's label maximum; checked against ``image_label`` when it is read).
    Headers (attr ``max``, shapes, declared sizes) are checked before any image is read."""
    path = Path(path)
    keys = IMAGE_KEYS if keys is None else tuple(keys)
    out: Dict[str, object] = {}
    with open_h5(path) as f:
        max_value = read_max_attr(f, path)
        for key, ds in _image_datasets(f, path, keys).items():
            out[key] = _read_checked(ds, path, key, np.float32)
    if "image_label" in out:
        _check_max_agrees(max_value, out["image_label"], path)
    out[MAX_ATTR] = max_value
    return out


def read_reconstruction_file(path, key: str = RECON_KEY) -> np.ndarray:
    """Read and validate a reconstruction file: float32 ``(S, H, W)``."""
    path = Path(path)
    with open_h5(path) as f:
        ds = require_dataset(f, path, key)
        _check_kind(ds, path, key, 3, complex_=False)
        _check_header(ds, path, key, IMAGE_AXES)
        return _read_checked(ds, path, key, np.float32)


def check_pair(kspace_path, image_path, key: str = "image_label") -> tuple:
    """Header-level agreement of a k-space file and its image file, before either is read: both
    headers valid (declared sizes within the limits, mask width = k-space width, attr ``max``), the
    image file present, and the slice counts equal. Returns the k-space shape ``(S, C, H, W)``."""
    shape = kspace_shape(kspace_path)
    image_path = Path(image_path)
    if not image_path.is_file():
        raise FormatError(kspace_path, "-", f"k-space file has no image file {image_path}")
    slices = image_shape(image_path, (key,))[0]
    if slices != shape[0]:
        raise FormatError(kspace_path, KSPACE_KEY, f"{shape[0]} slices but {image_path.name} has {slices} ({key})")
    return shape


# --------------------------------------------------------------------------------------------- validator


def _problems(fn, *args) -> List[str]:
    try:
        fn(*args)
    except FormatError as exc:
        return [str(exc)]
    return []


def validate_kspace_file(path) -> List[str]:
    """Problems of one k-space file (empty list when valid); the data is scanned range by range."""
    return _problems(_read_kspace, path, "scan")


def validate_image_file(path) -> List[str]:
    """Problems of one image file (empty list when valid)."""
    return _problems(read_image_file, path)


def validate_pair_folder(folder: Path) -> List[str]:
    """Validate a folder holding ``kspace/`` and/or ``image/``: each file (one line per bad file), and
    each valid k-space file's image partner (present, valid, same slice count)."""
    kdir, idir = folder / "kspace", folder / "image"
    kfiles = sorted(kdir.glob("*.h5")) if kdir.is_dir() else []
    ifiles = sorted(idir.glob("*.h5")) if idir.is_dir() else []
    kproblems = {p: validate_kspace_file(p) for p in kfiles}
    iproblems = {p: validate_image_file(p) for p in ifiles}
    problems = [line for lines in (*kproblems.values(), *iproblems.values()) for line in lines]
    for p in kfiles:
        partner = idir / p.name
        if not partner.is_file():
            problems.append(f"{p}: -: k-space file has no image file {partner}")
        elif not kproblems[p] and not iproblems.get(partner):
            problems += _problems(check_pair, p, partner)
    return problems


def _pair_folders(root: Path) -> Iterable[Path]:
    for sub in sorted({p.parent.parent for p in root.rglob("*.h5") if p.parent.name in ("kspace", "image")}):
        yield sub


def validate_path(path) -> List[str]:
    """Validate a single file, or every kspace/image folder pair under a directory."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: -: path not found"]
    from data.cine import validate_cine_path  # local import: data.cine imports this module

    cine_problems = validate_cine_path(path)  # None unless a .mat/NIfTI file or a CMRxRecon/ACDC tree
    if path.is_file():
        if cine_problems is not None:
            return cine_problems
        try:
            with open_h5(path) as f:
                keys = set(f.keys())
        except FormatError as exc:
            return [str(exc)]
        if KSPACE_KEY in keys:
            return validate_kspace_file(path)
        if RECON_KEY in keys and not keys & set(IMAGE_KEYS):
            return _problems(read_reconstruction_file, path)
        return validate_image_file(path)
    folders = list(_pair_folders(path))
    loose = sorted(p for p in path.rglob("*.h5") if p.parent.name not in ("kspace", "image"))
    if not folders and not loose:
        if cine_problems is not None:
            return cine_problems
        return [f"{path}: -: no .h5 files in kspace/ or image/ folders"]
    problems: List[str] = list(cine_problems or [])
    for folder in folders:
        problems += validate_pair_folder(folder)
    for p in loose:
        problems += validate_path(p)
    return problems


# --------------------------------------------------------------------------------------------- fastMRI


def read_fastmri_file(path) -> Dict[str, object]:
    """Read a public fastMRI multi-coil file: ``kspace`` complex ``(S, C, H, W)``,
    ``reconstruction_rss`` float ``(S, 320, 320)`` if present, attr ``max`` if present, and the mask
    (fastMRI test/challenge files carry ``mask``; train/val files are fully sampled -> ones).
    Headers are checked (declared sizes, mask width) before anything is read."""
    path = Path(path)
    with open_h5(path) as f:
        ds = _kspace_dataset(f, path)
        width = ds.shape[-1]
        if MASK_KEY in f:
            mask = np.asarray(_read(_mask_dataset(f, path, width), path, MASK_KEY), dtype=np.float32)
            _check_mask(mask, width, path)
        else:
            mask = np.ones(width, np.float32)
        rss_ds = None
        if "reconstruction_rss" in f:
            rss_ds = require_dataset(f, path, "reconstruction_rss")
            _check_kind(rss_ds, path, "reconstruction_rss", 3, complex_=False)
            _check_header(rss_ds, path, "reconstruction_rss", IMAGE_AXES)
        out: Dict[str, object] = {"kspace": _read_checked(ds, path, KSPACE_KEY, np.complex64), "mask": mask}
        if rss_ds is not None:
            out["reconstruction_rss"] = _read(rss_ds, path, "reconstruction_rss")
        if MAX_ATTR in f.attrs:
            out[MAX_ATTR] = read_max_attr(f, path)
    return out


if __name__ == "__main__":  # python -m data.formats check|convert-fastmri: the command line is data/cli.py
    from data.cli import main  # (it needs data.convert, which imports this module)

    sys.exit(main())
