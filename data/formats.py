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

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import h5py
import numpy as np

from utils.io import atomic_path

IMAGE_SIZE = 384
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


def _read(ds: h5py.Dataset, path, key: str) -> np.ndarray:
    try:
        return ds[()]
    except (OSError, RuntimeError) as exc:
        raise FormatError(path, key, f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None


def _check_finite(arr: np.ndarray, path, key: str) -> None:
    if not np.isfinite(arr).all():
        raise FormatError(path, key, f"{int((~np.isfinite(arr)).sum())} non-finite values")


def _check_mask(mask: np.ndarray, width: Optional[int], path) -> None:
    if mask.ndim != 1:
        raise FormatError(path, MASK_KEY, f"expected shape (W,), got {mask.shape}")
    if width is not None and mask.shape[0] != width:
        raise FormatError(path, MASK_KEY, f"width {mask.shape[0]} differs from k-space width {width}")
    if not np.isin(mask, (0, 1)).all():
        raise FormatError(path, MASK_KEY, "mask is not binary (values other than 0 and 1)")
    if not mask.any():
        raise FormatError(path, MASK_KEY, "mask samples no line")


@dataclasses.dataclass
class KspaceVolume:
    """A challenge k-space file: ``kspace`` complex64 ``(S, C, H, W)``, ``mask`` float32 ``(W,)``."""

    path: Path
    kspace: np.ndarray
    mask: np.ndarray

    @property
    def num_slices(self) -> int:
        return self.kspace.shape[0]


def read_kspace_file(path, load: bool = True) -> KspaceVolume:
    """Read and validate a k-space file. With ``load=False`` only the header is checked and
    ``kspace`` is an empty ``(0, C, H, W)`` placeholder (cheap shape check for big files)."""
    path = Path(path)
    with open_h5(path) as f:
        ds = require_dataset(f, path, KSPACE_KEY)
        _check_kind(ds, path, KSPACE_KEY, 4, complex_=True)
        mask = _read(require_dataset(f, path, MASK_KEY), path, MASK_KEY)
        _check_mask(np.asarray(mask), ds.shape[-1], path)
        if load:
            kspace = _read(ds, path, KSPACE_KEY).astype(np.complex64, copy=False)
            _check_finite(kspace, path, KSPACE_KEY)
        else:
            kspace = np.zeros((0,) + ds.shape[1:], np.complex64)
    return KspaceVolume(path, kspace, np.asarray(mask, dtype=np.float32))


def kspace_shape(path) -> tuple:
    """``(S, C, H, W)`` of a k-space file without reading the data."""
    with open_h5(path) as f:
        ds = require_dataset(f, path, KSPACE_KEY)
        _check_kind(ds, path, KSPACE_KEY, 4, complex_=True)
        return tuple(ds.shape)


def read_image_file(path, keys: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Read and validate an image file: ``{key: float32 (S, H, W)}`` for ``keys`` (default all three)
    plus ``"max"`` (float, the volume's label maximum)."""
    path = Path(path)
    keys = IMAGE_KEYS if keys is None else tuple(keys)
    out: Dict[str, object] = {}
    with open_h5(path) as f:
        if MAX_ATTR not in f.attrs:
            raise FormatError(path, "attr max", "missing attribute")
        max_value = float(np.asarray(f.attrs[MAX_ATTR]))
        if not np.isfinite(max_value) or max_value <= 0:
            raise FormatError(path, "attr max", f"must be a positive finite number, got {max_value}")
        shape = None
        for key in keys:
            ds = require_dataset(f, path, key)
            _check_kind(ds, path, key, 3, complex_=False)
            if shape is not None and ds.shape != shape:
                raise FormatError(path, key, f"shape {ds.shape} differs from {keys[0]} {shape}")
            shape = ds.shape
            arr = _read(ds, path, key).astype(np.float32, copy=False)
            _check_finite(arr, path, key)
            out[key] = arr
    out[MAX_ATTR] = max_value
    return out


def read_reconstruction_file(path, key: str = RECON_KEY) -> np.ndarray:
    """Read and validate a reconstruction file: float32 ``(S, H, W)``."""
    path = Path(path)
    with open_h5(path) as f:
        ds = require_dataset(f, path, key)
        _check_kind(ds, path, key, 3, complex_=False)
        arr = _read(ds, path, key).astype(np.float32, copy=False)
    _check_finite(arr, path, key)
    return arr


# --------------------------------------------------------------------------------------------- validator


def _problems(fn, *args) -> List[str]:
    try:
        fn(*args)
    except FormatError as exc:
        return [str(exc)]
    return []


def validate_kspace_file(path) -> List[str]:
    """Problems of one k-space file (empty list when valid)."""
    return _problems(read_kspace_file, path)


def validate_image_file(path) -> List[str]:
    """Problems of one image file (empty list when valid)."""
    def check(p):
        images = read_image_file(p)
        if images["image_label"].shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise FormatError(p, "image_label", f"expected {IMAGE_SIZE}x{IMAGE_SIZE} slices, got {images['image_label'].shape}")
    return _problems(check, path)


def _image_slices(path) -> int:
    with open_h5(path) as f:
        return require_dataset(f, path, "image_label").shape[0]


def _slices_in(path, reader) -> Optional[int]:
    try:
        return reader(path)
    except FormatError:
        return None


def validate_pair_folder(folder: Path) -> List[str]:
    """Validate a folder holding ``kspace/`` and/or ``image/``: each file, and each k-space file's
    image partner (present, same slice count)."""
    problems: List[str] = []
    kdir, idir = folder / "kspace", folder / "image"
    kfiles = sorted(kdir.glob("*.h5")) if kdir.is_dir() else []
    ifiles = sorted(idir.glob("*.h5")) if idir.is_dir() else []
    for p in kfiles:
        problems += validate_kspace_file(p)
    for p in ifiles:
        problems += validate_image_file(p)
    if kdir.is_dir():
        for p in kfiles:
            partner = idir / p.name
            if not partner.is_file():
                problems.append(f"{p}: -: k-space file has no image file {partner}")
                continue
            ks = _slices_in(p, lambda q: kspace_shape(q)[0])
            isl = _slices_in(partner, _image_slices)
            if ks is not None and isl is not None and ks != isl:
                problems.append(f"{p}: kspace: {ks} slices but {partner.name} has {isl}")
    return problems


def _pair_folders(root: Path) -> Iterable[Path]:
    for sub in sorted({p.parent.parent for p in root.rglob("*.h5") if p.parent.name in ("kspace", "image")}):
        yield sub


def validate_path(path) -> List[str]:
    """Validate a single file, or every kspace/image folder pair under a directory."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: -: path not found"]
    if path.is_file():
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
        return [f"{path}: -: no .h5 files in kspace/ or image/ folders"]
    problems: List[str] = []
    for folder in folders:
        problems += validate_pair_folder(folder)
    for p in loose:
        problems += validate_path(p)
    return problems


# --------------------------------------------------------------------------------------------- fastMRI


def read_fastmri_file(path) -> Dict[str, object]:
    """Read a public fastMRI multi-coil file: ``kspace`` complex ``(S, C, H, W)``,
    ``reconstruction_rss`` float ``(S, 320, 320)`` if present, attr ``max`` if present, and the mask
    (fastMRI test/challenge files carry ``mask``; train/val files are fully sampled -> ones)."""
    path = Path(path)
    with open_h5(path) as f:
        ds = require_dataset(f, path, KSPACE_KEY)
        _check_kind(ds, path, KSPACE_KEY, 4, complex_=True)
        kspace = _read(ds, path, KSPACE_KEY).astype(np.complex64, copy=False)
        out: Dict[str, object] = {"kspace": kspace}
        if MASK_KEY in f:
            mask = np.asarray(_read(f[MASK_KEY], path, MASK_KEY), dtype=np.float32)
            _check_mask(mask, kspace.shape[-1], path)
        else:
            mask = np.ones(kspace.shape[-1], np.float32)
        out["mask"] = mask
        if "reconstruction_rss" in f:
            out["reconstruction_rss"] = _read(f["reconstruction_rss"], path, "reconstruction_rss")
        if MAX_ATTR in f.attrs:
            out[MAX_ATTR] = float(np.asarray(f.attrs[MAX_ATTR]))
    _check_finite(kspace, path, KSPACE_KEY)
    return out


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.formats", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a file, a Data tree or a folder with kspace/ and image/")
    check.add_argument("path", nargs="+")
    conv = sub.add_parser("convert-fastmri", help="convert fastMRI multi-coil files to the challenge layout")
    conv.add_argument("--src", required=True, help="folder of fastMRI .h5 files")
    conv.add_argument("--out", required=True, help="output folder (gets kspace/ and image/)")
    conv.add_argument("--anatomy", required=True, choices=ANATOMIES)
    conv.add_argument("--acceleration", type=int, default=4, help="acc used for the mask and baselines")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems: List[str] = []
        for p in args.path:
            problems += validate_path(p)
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) found" if problems else "all files valid", file=sys.stderr)
        return 1 if problems else 0
    from data.convert import convert_fastmri_folder  # entry-point-only import (needs masks, grappa)

    return convert_fastmri_folder(Path(args.src), Path(args.out), args.anatomy, args.acceleration)


if __name__ == "__main__":
    sys.exit(_main())
