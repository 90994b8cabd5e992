"""MATLAB ``.mat`` I/O: a v7.3 (HDF5) writer, one reader for v7.3 and v5/v6/v7 files, lazy variables.

Axis convention (the one the whole cine half uses): every array is in **h5py order**, the order h5py
reads a MATLAB v7.3 file in, which is MATLAB's order reversed. A CMRxRecon k-space variable that MATLAB
shows as ``(kx, ky, coils, slices, t)`` is ``(t, slices, coils, ky, kx)`` here, whichever way the file
was written:

- v7.3 files are HDF5 with a 512-byte MATLAB user block; h5py reads them directly, complex variables as
  a compound ``{real, imag}`` dtype (converted here to numpy complex).
- v5/v6/v7 files (MATLAB's ``-v7`` default for small files, ``scipy.io.savemat``) go through
  ``scipy.io.loadmat``, which returns MATLAB order; the axes are reversed so both kinds give identical
  arrays.
- Anything else (MATLAB v4, not a MAT file, truncated, a missing variable, structs and cells) raises
  :class:`data.formats.FormatError` with one line ``<file>: <key>: <problem>``.

MATLAB has no 0-d or 1-d arrays: a scalar is written as MATLAB ``1x1`` and a 1-d array of ``n`` values
as a MATLAB row ``1xn`` (scipy's ``oned_as='row'`` default), so both writers read back as h5py order
``(1, 1)`` and ``(n, 1)``.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import scipy.io

from data.formats import FormatError
from utils.io import atomic_path

HEADER_BYTES = 512  # MATLAB v7.3 user block
TEXT_BYTES = 116  # descriptive text; then 8 bytes subsystem offset, 2 bytes version, 2 bytes endian
DEFAULT_MAX_BYTES = 16 * 2**30  # read_mat refuses a variable declaring more than this (HDF5 "bomb")

# numpy dtype -> MATLAB_class, and back
_CLASS_OF = {
    np.dtype(np.float64): "double",
    np.dtype(np.float32): "single",
    np.dtype(np.int8): "int8",
    np.dtype(np.int16): "int16",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.uint64): "uint64",
}
_DTYPE_OF = {name: dt for dt, name in _CLASS_OF.items()}
_DTYPE_OF["logical"] = np.dtype(bool)
_COMPLEX_OF = {np.dtype(np.float32): np.dtype(np.complex64), np.dtype(np.float64): np.dtype(np.complex128)}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
_PLATFORMS = {"linux": "GLNXA64", "darwin": "MACI64", "win32": "PCWIN64"}

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------- writing


def mat73_header(created: Optional[float] = None) -> bytes:
    """MATLAB's 512-byte v7.3 user block: 116 bytes of text padded with spaces, 8 zero bytes (no
    subsystem data), version ``0x0200`` and the endian indicator ``IM`` (bytes 124-127, as a
    little-endian MATLAB writes them), then zeros."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(created))
    platform = _PLATFORMS.get(sys.platform, "GLNXA64")
    text = f"MATLAB 7.3 MAT-file, Platform: {platform}, Created on: {stamp} HDF5 schema 1.00 ."
    raw = text.encode("ascii")[:TEXT_BYTES].ljust(TEXT_BYTES, b" ")
    raw += b"\x00" * 8 + b"\x00\x02" + b"IM"
    return raw.ljust(HEADER_BYTES, b"\x00")


def _as_matlab(name: str, value) -> Tuple[np.ndarray, Dict[str, object]]:
    """``value`` as the array h5py stores (h5py order, >= 2-d) and the MATLAB attributes it carries."""
    if isinstance(value, str):  # MATLAB char row vector: uint16 codes, MATLAB 1xn -> h5py (n, 1)
        codes = np.frombuffer(value.encode("utf-16-le"), np.uint16) if value else np.zeros(0, np.uint16)
        return codes.reshape(-1, 1), {"MATLAB_class": "char", "MATLAB_int_decode": 2}
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    elif arr.ndim == 1:
        arr = arr.reshape(-1, 1)  # MATLAB row 1xn, as scipy.io.savemat's default oned_as='row'
    if arr.dtype == bool:
        return arr.astype(np.uint8), {"MATLAB_class": "logical", "MATLAB_int_decode": 1}
    if arr.dtype.kind == "c":
        part = np.dtype(np.float32) if arr.dtype == np.complex64 else np.dtype(np.float64)
        compound = np.dtype([("real", part), ("imag", part)])
        data = np.ascontiguousarray(arr, dtype=_COMPLEX_OF[part]).view(compound)
        return data, {"MATLAB_class": _CLASS_OF[part]}
    if arr.dtype not in _CLASS_OF:
        raise ValueError(f"{name}: dtype {arr.dtype} has no MATLAB class")
    return np.ascontiguousarray(arr), {"MATLAB_class": _CLASS_OF[arr.dtype]}


def _set_attrs(ds: h5py.Dataset, attrs: Mapping[str, object]) -> None:
    for key, val in attrs.items():
        if isinstance(val, str):  # fixed-length ASCII, as MATLAB writes MATLAB_class
            ds.attrs.create(key, np.bytes_(val))
        else:
            ds.attrs.create(key, np.int32(val))


def write_mat73(path: PathLike, variables: Mapping[str, object], compression: Optional[int] = None) -> None:
    """Write ``variables`` as a MATLAB v7.3 MAT-file, atomically.

    ``variables`` maps MATLAB names to numpy arrays (or ``str`` for char) in **h5py order**: h5py reads
    each back with the same shape, MATLAB with the axes reversed (k-space given as
    ``(t, slices, coils, ky, kx)`` is ``(kx, ky, coils, slices, t)`` in MATLAB, like the challenge's
    files). Complex arrays are stored as MATLAB does, a compound ``{real, imag}`` of float32
    (``single``) or float64 (``double``); ``bool`` as ``logical`` (uint8, ``MATLAB_int_decode`` 1);
    empty arrays as MATLAB's dims vector with ``MATLAB_empty``. ``compression`` (a gzip level) stores
    the data in chunks of one 2-D image (the last two axes) so per-frame/per-slice reads stay cheap.
    """
    path = Path(path)
    prepared = {}
    for name, value in variables.items():
        if not _NAME_RE.match(name):
            raise ValueError(f"{path}: {name!r}: not a valid MATLAB variable name")
        prepared[name] = _as_matlab(name, value)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=HEADER_BYTES, libver="earliest") as f:
            for name, (data, attrs) in prepared.items():
                if data.size == 0:  # MATLAB stores an empty array as its (MATLAB-order) dims
                    ds = f.create_dataset(name, data=np.array(data.shape[::-1], np.uint64))
                    _set_attrs(ds, {**attrs, "MATLAB_empty": 1})
                    continue
                kwargs = {}
                if compression is not None:
                    kwargs = dict(compression="gzip", compression_opts=int(compression),
                                  chunks=(1,) * (data.ndim - 2) + data.shape[-2:])
                ds = f.create_dataset(name, data=data, **kwargs)
                _set_attrs(ds, attrs)
        with open(tmp, "r+b") as raw:
            raw.write(mat73_header())


# --------------------------------------------------------------------------------------------- reading


def mat_version(path: PathLike) -> str:
    """``"7.3"`` (HDF5, with or without MATLAB's header), ``"5"`` (v5/v6/v7) or a :class:`FormatError`
    for anything else (v4, not a MAT file, too short, missing)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(path, "-", "file not found")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if h5py.is_hdf5(str(path)):
        return "7.3"
    if len(head) >= 20 and _looks_like_v4(head):
        raise FormatError(path, "-", "MATLAB v4 MAT-file is not supported (save with -v7 or -v7.3)")
    if len(head) < 128:
        raise FormatError(path, "-", f"not a MATLAB file or truncated ({len(head)} bytes, no 128-byte header)")
    text = head[:TEXT_BYTES]
    version, endian = head[124:126], head[126:128]
    if text.startswith(b"MATLAB 7.3 MAT-file"):
        raise FormatError(path, "-", "MATLAB v7.3 header but no readable HDF5 data (truncated or corrupt)")
    if text.startswith(b"MATLAB 5.0 MAT-file") and endian in (b"IM", b"MI"):
        if version not in (b"\x00\x01", b"\x01\x00"):
            raise FormatError(path, "-", f"unknown MAT-file version bytes {version.hex()}")
        return "5"
    raise FormatError(path, "-", "not a MATLAB MAT-file (no v5 or v7.3 header)")


def _looks_like_v4(head: bytes) -> bool:
    """A v4 file starts with a 20-byte int32 header: type code MOPT < 5000, mrows, ncols, imagf 0/1."""
    for order in ("<", ">"):
        mopt, rows, cols, imagf, namelen = np.frombuffer(head[:20], dtype=order + "i4")
        if 0 <= mopt < 5000 and rows >= 0 and cols >= 0 and imagf in (0, 1) and 0 < namelen < 64:
            return True
    return False


def _to_complex(raw: np.ndarray, complex_dtype) -> np.ndarray:
    """A compound ``{real, imag}`` array as numpy complex (zero-copy view when the layout allows)."""
    parts = raw.dtype
    real = parts.fields["real"][0]
    native = _COMPLEX_OF.get(np.dtype(real).newbyteorder("="), np.dtype(np.complex128))
    if (parts.names == ("real", "imag") and parts.itemsize == native.itemsize and real.isnative
            and parts.fields["imag"][1] == real.itemsize and parts.fields["imag"][0] == real):
        out = np.ascontiguousarray(raw).view(native)
    else:
        out = np.empty(raw.shape, native)
        out.real, out.imag = raw["real"], raw["imag"]
    return out if complex_dtype is None else out.astype(complex_dtype, copy=False)


def _is_complex_compound(dtype: np.dtype) -> bool:
    return dtype.names is not None and {"real", "imag"} <= set(dtype.names) and len(dtype.names) == 2


def _matlab_class(ds: h5py.Dataset) -> Optional[str]:
    value = ds.attrs.get("MATLAB_class")
    if value is None:
        return None
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _declared_nbytes(ds: h5py.Dataset) -> int:
    return int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize) if ds.shape else ds.dtype.itemsize


class MatVariable:
    """A lazy handle on one variable of a ``.mat`` file (use as a context manager).

    ``.shape`` and ``.dtype`` are in h5py order / numpy terms (``complex64`` for a compound
    ``{real, imag}`` variable unless ``complex_dtype=None`` keeps its precision); ``handle[idx]`` reads
    only the selected part of a v7.3 file (e.g. ``handle[t]`` one frame ``(slices, coils, ky, kx)``)
    and returns numpy arrays (complex variables as ``complex_dtype``). v5 files have no partial reads:
    the variable is loaded on open. ``.nbytes`` is the declared size, ``.storage_bytes`` what the file
    holds for it (v7.3), so callers can refuse absurd declarations before reading.
    """

    def __init__(self, path: PathLike, key: str, complex_dtype=np.complex64):
        self.path, self.key = Path(path), key
        self._complex_dtype = None if complex_dtype is None else np.dtype(complex_dtype)
        self._file: Optional[h5py.File] = None
        self._ds: Optional[h5py.Dataset] = None
        self._array: Optional[np.ndarray] = None
        self.version = mat_version(self.path)
        if self.version == "5":
            self._array = _read_v5(self.path, [key], self._complex_dtype)[key]
            self.matlab_class = None
            return
        self._file = _open_h5(self.path)
        try:
            self._ds = _require(self._file, self.path, key)
            self.matlab_class = _matlab_class(self._ds)
            if self.matlab_class in ("cell", "struct", "function_handle", "char") or self._ds.attrs.get("MATLAB_empty"):
                self._array = _read_dataset(self._ds, self.path, key, self._complex_dtype, DEFAULT_MAX_BYTES)
        except BaseException:
            self.close()
            raise

    # -- metadata
    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self._array.shape if self._array is not None else self._ds.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        if self._array is not None:
            return self._array.dtype
        dt = self._ds.dtype
        if _is_complex_compound(dt):
            if self._complex_dtype is not None:
                return self._complex_dtype
            return _COMPLEX_OF.get(np.dtype(dt.fields["real"][0]).newbyteorder("="), np.dtype(np.complex128))
        if self.matlab_class == "logical":
            return np.dtype(bool)
        return dt

    @property
    def is_complex(self) -> bool:
        return self.dtype.kind == "c"

    @property
    def nbytes(self) -> int:
        """Declared size in bytes of the stored data (before any conversion)."""
        if self._array is not None:
            return int(self._array.nbytes)
        return _declared_nbytes(self._ds)

    @property
    def storage_bytes(self) -> Optional[int]:
        """Bytes the file actually holds for the variable (v7.3; ``None`` for v5)."""
        return None if self._ds is None or self._array is not None else int(self._ds.id.get_storage_size())

    @property
    def compressed(self) -> bool:
        return self._ds is not None and self._ds.compression is not None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        if self._array is not None:
            return self._array[idx]
        if self._file is None:
            raise ValueError(f"{self.path}: {self.key}: variable handle is closed")
        try:
            raw = self._ds[idx]
        except (OSError, RuntimeError) as exc:
            raise FormatError(self.path, self.key,
                              f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None
        return _convert(np.asarray(raw), self.matlab_class, self._complex_dtype, self.path, self.key)

    def read(self) -> np.ndarray:
        """The whole variable."""
        return self[()]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "MatVariable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MatVariable({str(self.path)!r}, {self.key!r}, shape={self.shape}, dtype={self.dtype})"


def open_mat_variable(path: PathLike, key: str, complex_dtype=np.complex64) -> MatVariable:
    """A lazy, sliceable :class:`MatVariable` (a context manager) on ``key`` of ``path``."""
    return MatVariable(path, key, complex_dtype=complex_dtype)


def mat_variables(path: PathLike) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of a ``.mat`` file's variables in h5py order, without reading data
    (v5 files are loaded)."""
    path = Path(path)
    if mat_version(path) == "5":  # small by nature: load it
        return {k: (v.shape, v.dtype) for k, v in _read_v5(path, None, np.dtype(np.complex64)).items()}
    out = {}
    with _open_h5(path) as f:
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset) and not name.startswith("#"):
                with open_mat_variable(path, name) as var:
                    out[name] = (var.shape, var.dtype)
    return out


def read_mat(
    path: PathLike,
    keys: Optional[Sequence[str]] = None,
    complex_dtype=np.complex64,
    max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
) -> Dict[str, np.ndarray]:
    """Read variables of a MATLAB file into ``{name: array}`` in h5py axis order.

    ``keys`` (default: every numeric variable) must all be present. Complex data comes back as
    ``complex_dtype`` (default complex64, also for MATLAB ``double`` complex, since k-space never needs
    more; pass ``None`` to keep complex128 for double); real data keeps its class (``double`` ->
    float64, ``logical`` -> bool); a char row vector becomes a 0-d ``str`` array. A v7.3 variable
    declaring more than ``max_bytes`` is refused before reading. Errors are :class:`FormatError`.
    """
    path = Path(path)
    cdt = None if complex_dtype is None else np.dtype(complex_dtype)
    if mat_version(path) == "5":
        return _read_v5(path, keys, cdt)
    out: Dict[str, np.ndarray] = {}
    with _open_h5(path) as f:
        names = [n for n, o in f.items() if isinstance(o, h5py.Dataset) and not n.startswith("#")] \
            if keys is None else list(keys)
        for name in names:
            ds = _require(f, path, name)
            out[name] = _read_dataset(ds, path, name, cdt, max_bytes)
    return out


# --------------------------------------------------------------------------------------------- helpers


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        detail = str(exc).split("(")[0].strip().rstrip(",") or exc.__class__.__name__
        raise FormatError(path, "-", f"unreadable or truncated HDF5/v7.3 file ({detail})") from None


def _require(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    if key not in f:
        have = sorted(n for n in f.keys() if not n.startswith("#"))
        raise FormatError(path, key, f"missing variable (has: {have})")
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise FormatError(path, key, "is a MATLAB struct (HDF5 group), expected a numeric array")
    return obj


def _read_dataset(ds: h5py.Dataset, path: Path, key: str, cdt, max_bytes: Optional[int]) -> np.ndarray:
    cls = _matlab_class(ds)
    if cls in ("cell", "struct", "function_handle") or ds.dtype.kind == "O" or h5py.check_ref_dtype(ds.dtype):
        raise FormatError(path, key, f"unsupported MATLAB class {cls or ds.dtype} (expected a numeric array)")
    if ds.attrs.get("MATLAB_empty"):
        dims = tuple(int(d) for d in np.asarray(ds[()]).ravel())[::-1]
        dtype = _DTYPE_OF.get(cls, np.dtype(np.float64))
        return np.zeros(dims if np.prod(dims) == 0 else (0, 0), dtype)
    declared = _declared_nbytes(ds)
    if max_bytes is not None and declared > max_bytes:
        raise FormatError(path, key, f"declared size {declared / 2**30:.1f} GiB {ds.shape} exceeds the "
                                     f"{max_bytes / 2**30:.1f} GiB limit (corrupt file or HDF5 bomb)")
    try:
        raw = ds[()]
    except (OSError, RuntimeError) as exc:
        raise FormatError(path, key, f"data cannot be read, file truncated or corrupt ({exc.__class__.__name__})") from None
    return _convert(np.asarray(raw), cls, cdt, path, key)


def _convert(raw: np.ndarray, cls: Optional[str], cdt, path: Path, key: str) -> np.ndarray:
    if _is_complex_compound(raw.dtype):
        return _to_complex(raw, cdt)
    if raw.dtype.names is not None:
        raise FormatError(path, key, f"unsupported compound dtype {raw.dtype}")
    if cls == "logical":
        return raw.astype(bool)
    if cls == "char":
        if raw.ndim == 2 and raw.shape[1] <= 1:
            return np.array(raw.astype(np.uint16).tobytes().decode("utf-16-le", "replace"))
        raise FormatError(path, key, f"char array of shape {raw.shape} (only one-row strings supported)")
    if cdt is not None and raw.dtype.kind == "c":
        return raw.astype(cdt, copy=False)
    return raw


def _read_v5(path: Path, keys: Optional[Sequence[str]], cdt) -> Dict[str, np.ndarray]:
    try:
        data = scipy.io.loadmat(str(path), variable_names=None if keys is None else list(keys),
                                squeeze_me=False, chars_as_strings=True, mat_dtype=False)
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError/MatReadError on corrupt files
        raise FormatError(path, "-", f"unreadable or truncated MAT-file ({exc.__class__.__name__}: {exc})") from None
    names = [k for k in data if not k.startswith("__")] if keys is None else list(keys)
    try:  # loadmat returns MATLAB logical as uint8; the class listing tells them apart
        logical = {name for name, _, cls in scipy.io.whosmat(str(path)) if cls == "logical"}
    except Exception:  # pragma: no cover - loadmat just parsed the same headers
        logical = set()
    out: Dict[str, np.ndarray] = {}
    for name in names:
        if name not in data:
            have = sorted(k for k in data if not k.startswith("__"))
            raise FormatError(path, name, f"missing variable (has: {have})")
        arr = data[name]
        if arr.dtype.kind in "US":
            if arr.size > 1:
                raise FormatError(path, name, f"char array of shape {arr.shape} (only one-row strings supported)")
            out[name] = np.array(str(arr.item()) if arr.size else "")
            continue
        if arr.dtype.kind not in "biufc":
            raise FormatError(path, name, f"unsupported MATLAB class ({arr.dtype}: struct, cell or object)")
        arr = np.ascontiguousarray(arr.T)  # MATLAB order -> h5py order
        if name in logical:
            arr = arr.astype(bool)
        if arr.dtype.kind == "c" and cdt is not None:
            arr = arr.astype(cdt, copy=False)
        out[name] = arr
    return out

