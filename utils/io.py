"""Atomic file output: write to a temporary name in the same folder, then rename into place.

Every failure to write an output (a folder that cannot be created or written, a full disk, a path
under a regular file) is an :class:`OutputError`: one line naming the *final* path (never the hidden
temporary file) and the operating system's reason.
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


class OutputError(OSError):
    """An output could not be written. ``str()`` is one line ``<final path>: cannot write: <reason>``.

    A subclass of :class:`OSError` (``errno`` kept) so callers that catch ``OSError`` keep working.
    """

    def __init__(self, path: PathLike, reason: str, code: Optional[int] = None):
        super().__init__(code, reason, str(path))
        self.path = Path(path)
        self.reason = reason
        self.message = f"{path}: cannot write: {reason}"

    def __str__(self) -> str:
        return self.message


def _reason(exc: BaseException, replace: Optional[Path] = None, by: Optional[Path] = None) -> str:
    """The OS problem of ``exc`` in a few words (``No space left on device``), with the temporary
    name ``replace`` (if any) swapped for the final name ``by``."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        text = os.strerror(code)
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else exc.__class__.__name__
    if replace is not None and by is not None:
        text = text.replace(str(replace), str(by))
    return text


def _file_in_the_way(folder: Path) -> Optional[Path]:
    """The first existing non-folder among ``folder`` and its ancestors (what blocks creating it)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _make_folder(folder: Path, target: Path) -> None:
    """``mkdir -p folder`` or an :class:`OutputError` about ``target`` saying why not."""
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        where = "" if blocker == target else f"{blocker} "
        raise OutputError(target, f"{where}is a file, not a folder", errno_codes.ENOTDIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(target, f"cannot create the folder {folder}: {_reason(exc)}", exc.errno) from None


def prepare_output_dir(folder: PathLike) -> Path:
    """Create ``folder`` (with parents) and prove it is writable by creating and removing a hidden
    probe file, so an entry point fails before any work. Raises :class:`OutputError` (one line)."""
    folder = Path(folder)
    _make_folder(folder, folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(folder, _reason(exc), exc.errno) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return folder


def prepare_output_file(path: PathLike) -> Path:
    """Check that ``path`` can become a file: its folder is writable (created if needed) and ``path``
    is not a folder. Raises :class:`OutputError` (one line)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(path, "is a folder, expected a file path", errno_codes.EISDIR)
    try:
        prepare_output_dir(path.parent)
    except OutputError as exc:
        raise OutputError(path, exc.reason, exc.errno) from None
    return path


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    The temporary name starts with ``.`` and ends with ``.tmp`` so readers scanning a folder for
    ``*.h5`` never see a half-written file. Any :class:`OSError` (creating the folder or the
    temporary file, writing it inside the ``with`` block, renaming it) becomes an
    :class:`OutputError` naming ``path``; other exceptions pass through unchanged.
    """
    path = Path(path)
    _make_folder(path.parent, path)
    if path.is_dir():
        raise OutputError(path, "is a folder, expected a file path", errno_codes.EISDIR)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(path, _reason(exc), exc.errno) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(path, _reason(exc, tmp_path, path), exc.errno) from exc
        raise


def file_sha256(paths) -> str:
    """SHA-256 (hex) of the bytes of the files ``paths`` (one path or a sequence, hashed in order)."""
    import hashlib

    digest = hashlib.sha256()
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
