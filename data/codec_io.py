"""TiTok-MRI codec files: the token file format, the subjects the codec reads, and the decoded frames it writes.

**Token file** (``.npz``: numpy's zip of ``.npy`` arrays; read with ``allow_pickle=False``, written atomically)::

    format           str     "titok-mri-tokens"
    format_version   int64   1
    ids              uint16  (N, K)    token ids of every frame, item after item, frames in (t, z) order
    num_tokens       int64             K
    codebook_size    int64             ids are < codebook_size
    image_size       int64   (2,)      the tokenizer's frame size (H, W)
    shapes           int64   (n, 4)    per item: frames T, slices Z, frame height h, width w (as read)
    scales           float32 (n,)      per item: the intensity scale (frames were divided by it)
    phases           int64   (n, 2)    per item: 0-based ED and ES frames
    items            str               JSON list, per item: name, kind ("acdc" | "cmrxrecon"),
                                       spacing [dt, dz, dy, dx] (ms, mm), info (ACDC Info.cfg values)
    weights_sha256   str               SHA-256 of the tokenizer weights that made the ids
    decoder_sha256   str               SHA-256 of the decoder weights (DiT, segmenter) at encoding time

Every problem reading one (not a zip, truncated, a missing or malformed array, ids out of range,
shapes that do not add up to the ids) is one :class:`TokenFileError` naming the file.

**Subjects.** The codec reads an ACDC tree (every ``patient###`` folder: the 4-D cine ``(t, z, y, x)``,
its spacing, ED/ES from ``Info.cfg`` and the ED/ES labels) or a CMRxRecon tree (every FullSample
``cine_<view>.mat``: the RSS magnitude of the fully sampled k-space with the 2x readout oversampling
removed, ``(t, slices, ky, kx/2)``, as the ACDC-style frames the networks train on). An item's name is its
path relative to the ``--data`` folder (``training/patient001``, ``.../FullSample/P001/cine_sax``).

**Decoded frames** (:func:`write_decoded`): ACDC items as ``<out>/<name>/<patient>_4d.nii.gz``, the ED and
ES frames ``<patient>_frame##.nii.gz`` and ``Info.cfg`` (an ACDC patient folder without labels);
CMRxRecon items as ``<out>/<name>.mat`` (MATLAB v7.3, key ``img4ranking``, ``(t, slices, h, w)`` single).
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from data.cine import (AcdcInfo, FULL_KEY, acdc_frame_path, find_cine_sets, list_acdc_patients, list_fullsample,
                       read_acdc_patient, read_cine_kspace, write_info_cfg, write_nifti, write_submission_file)
from utils.io import atomic_path, file_sha256  # noqa: F401 - file_sha256 re-exported for the CLI

__all__ = ["TOKEN_FORMAT", "TOKEN_FORMAT_VERSION", "TokenFileError", "TokenItem", "TokenFile", "write_token_file",
           "read_token_file", "CodecSubject", "find_subjects", "read_subject", "write_decoded", "file_sha256",
           "KINDS"]

TOKEN_FORMAT = "titok-mri-tokens"
TOKEN_FORMAT_VERSION = 1
KINDS = ("acdc", "cmrxrecon")
_ARRAYS = {"format": "U", "format_version": "i", "ids": "u", "num_tokens": "i", "codebook_size": "i", "image_size": "i",
           "shapes": "i", "scales": "f", "phases": "i", "items": "U", "weights_sha256": "U", "decoder_sha256": "U"}


class TokenFileError(ValueError):
    """A token file that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass
class TokenItem:
    """One encoded subject: ``shape (T, Z, h, w)``, rows ``offset .. offset + T*Z`` of the ids."""

    name: str
    kind: str
    shape: Tuple[int, int, int, int]
    offset: int
    scale: float
    ed: int
    es: int
    spacing: Tuple[float, float, float, float]
    info: Dict[str, Any]

    @property
    def num_frames(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclasses.dataclass
class TokenFile:
    """A token file in memory (module docstring)."""

    ids: np.ndarray
    num_tokens: int
    codebook_size: int
    image_size: Tuple[int, int]
    items: List[TokenItem]
    weights_sha256: str
    decoder_sha256: str = ""

    def item_ids(self, item: TokenItem) -> np.ndarray:
        """``(T, Z, K)`` uint16 ids of ``item``."""
        t, z = item.shape[:2]
        return self.ids[item.offset:item.offset + t * z].reshape(t, z, self.num_tokens)

    @property
    def bits_per_token(self) -> int:
        return max(1, int(np.ceil(np.log2(self.codebook_size))))


def write_token_file(path, tokens: TokenFile) -> Path:
    """Write ``tokens`` to ``path`` (``.npz``) atomically; returns the path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise TokenFileError(f"{path}: token files end with .npz")
    ids = np.asarray(tokens.ids)
    if ids.ndim != 2 or ids.shape[1] != tokens.num_tokens or (ids.size and int(ids.max()) >= tokens.codebook_size):
        raise TokenFileError(f"{path}: ids must be (N, {tokens.num_tokens}) below {tokens.codebook_size}, got {ids.shape}")
    meta = [{"name": it.name, "kind": it.kind, "spacing": list(map(float, it.spacing)), "info": it.info} for it in tokens.items]
    arrays = {
        "format": np.array(TOKEN_FORMAT), "format_version": np.array(TOKEN_FORMAT_VERSION, np.int64),
        "ids": ids.astype(np.uint16), "num_tokens": np.array(tokens.num_tokens, np.int64),
        "codebook_size": np.array(tokens.codebook_size, np.int64), "image_size": np.array(tokens.image_size, np.int64),
        "shapes": np.array([it.shape for it in tokens.items], np.int64).reshape(-1, 4),
        "scales": np.array([it.scale for it in tokens.items], np.float32),
        "phases": np.array([(it.ed, it.es) for it in tokens.items], np.int64).reshape(-1, 2),
        "items": np.array(json.dumps(meta, sort_keys=True)),
        "weights_sha256": np.array(tokens.weights_sha256), "decoder_sha256": np.array(tokens.decoder_sha256),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def read_token_file(path) -> TokenFile:
    """Read and check a token file (module docstring); any problem is one :class:`TokenFileError`."""
    path = Path(path)
    if not path.is_file():
        raise TokenFileError(f"{path}: token file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(set(_ARRAYS) - set(npz.files))
            if missing:
                raise TokenFileError(f"{path}: not a TiTok-MRI token file: missing {missing}")
            arrays = {key: npz[key] for key in _ARRAYS}
    except TokenFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise TokenFileError(f"{path}: unreadable token file, truncated or corrupt ({exc.__class__.__name__}: "
                             f"{' '.join(str(exc).split())[:120]})") from None
    for key, kind in _ARRAYS.items():
        if arrays[key].dtype.kind != kind:
            raise TokenFileError(f"{path}: array {key!r} has dtype {arrays[key].dtype}, expected kind {kind!r}")
    if str(arrays["format"]) != TOKEN_FORMAT:
        raise TokenFileError(f"{path}: not a TiTok-MRI token file (format {str(arrays['format'])!r})")
    version = int(arrays["format_version"])
    if version > TOKEN_FORMAT_VERSION or version < 1:
        raise TokenFileError(f"{path}: format_version {version} is not one this code reads (1..{TOKEN_FORMAT_VERSION})")
    k, n_codes = int(arrays["num_tokens"]), int(arrays["codebook_size"])
    ids, shapes, scales, phases = arrays["ids"], arrays["shapes"], arrays["scales"], arrays["phases"]
    image_size = tuple(int(v) for v in arrays["image_size"].reshape(-1))
    if ids.dtype != np.uint16 or ids.ndim != 2 or ids.shape[1] != k:
        raise TokenFileError(f"{path}: ids must be uint16 (N, K={k}), got {ids.dtype} {ids.shape}")
    if ids.size and int(ids.max()) >= n_codes:
        raise TokenFileError(f"{path}: token id {int(ids.max())} is outside the codebook of {n_codes}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise TokenFileError(f"{path}: image_size must be two positive ints, got {image_size}")
    try:
        meta = json.loads(str(arrays["items"]))
    except json.JSONDecodeError as exc:
        raise TokenFileError(f"{path}: 'items' is not valid JSON ({exc.msg})") from None
    n = len(meta) if isinstance(meta, list) else -1
    if n < 0 or shapes.shape != (n, 4) or scales.shape != (n,) or phases.shape != (n, 2):
        raise TokenFileError(f"{path}: per-item arrays disagree: {n} items, shapes {shapes.shape}, scales {scales.shape}, "
                             f"phases {phases.shape}")
    items, offset = [], 0
    for i, (m, shape, scale, (ed, es)) in enumerate(zip(meta, shapes.tolist(), scales.tolist(), phases.tolist())):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str) or m.get("kind") not in KINDS:
            raise TokenFileError(f"{path}: item {i}: needs a name and a kind in {KINDS}")
        if min(shape) < 1 or not np.isfinite(scale) or scale <= 0 or not (0 <= ed < shape[0] and 0 <= es < shape[0]):
            raise TokenFileError(f"{path}: item {m['name']}: bad shape {shape}, scale {scale} or ED/ES {ed}/{es}")
        spacing = m.get("spacing")
        if not (isinstance(spacing, list) and len(spacing) == 4 and all(isinstance(v, (int, float)) for v in spacing)):
            raise TokenFileError(f"{path}: item {m['name']}: spacing must be four numbers, got {spacing!r}")
        items.append(TokenItem(m["name"], m["kind"], tuple(shape), offset, float(scale), int(ed), int(es),
                               tuple(float(v) for v in spacing), dict(m.get("info") or {})))
        offset += shape[0] * shape[1]
    if offset != ids.shape[0]:
        raise TokenFileError(f"{path}: the items' frames add up to {offset} but the file holds ids of {ids.shape[0]} "
                             f"frames (truncated or edited)")
    return TokenFile(ids, k, n_codes, image_size, items, str(arrays["weights_sha256"]), str(arrays["decoder_sha256"]))


# ============================================================================ subjects


@dataclasses.dataclass
class CodecSubject:
    """A subject as read: ``frames (T, Z, h, w)`` float32 magnitude, ``spacing (dt, dz, dy, dx)``, 0-based
    ``ed``/``es`` (None where the data does not say), ``labels`` 0-based frame -> ``(Z, h, w)`` uint8,
    ``info`` the ACDC Info.cfg values."""

    name: str
    kind: str
    path: Path
    frames: np.ndarray
    spacing: Tuple[float, float, float, float]
    ed: Optional[int] = None
    es: Optional[int] = None
    labels: Dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    info: Dict[str, Any] = dataclasses.field(default_factory=dict)


def _relative_name(path: Path, root: Path, strip_suffix: bool = False) -> str:
    target = path.with_suffix("") if strip_suffix else path
    if path == root or root.is_file():
        return target.name
    try:
        return target.relative_to(root).as_posix()
    except ValueError:
        return target.name


def find_subjects(root) -> List[Tuple[str, str, Path]]:
    """``(name, kind, path)`` of every ACDC patient and CMRxRecon FullSample file under ``root`` (a tree, a
    patient folder, a set folder or one ``.mat`` file), sorted by name; none is a ``FileNotFoundError``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: data folder not found")
    found: List[Tuple[str, str, Path]] = []
    if root.is_file() and root.suffix == ".mat":
        found.append((root.with_suffix("").name, "cmrxrecon", root))
    elif root.is_dir():
        found += [(_relative_name(p, root), "acdc", p) for p in list_acdc_patients(root)]
        for set_dir in find_cine_sets(root):
            found += [(_relative_name(f.path, root, strip_suffix=True), "cmrxrecon", f.path) for f in list_fullsample(set_dir)]
    if not found:
        raise FileNotFoundError(f"{root}: no ACDC patient folders and no CMRxRecon FullSample cine files inside")
    names = [n for n, _, _ in found]
    if len(set(names)) != len(names):
        raise FileNotFoundError(f"{root}: items with the same name: {sorted({n for n in names if names.count(n) > 1})[:3]}")
    return sorted(found)


def _frame_ms(patient) -> float:
    """The 4-D cine's time step (NIfTI pixdim[4], ACDC: ms) from its header alone; 1.0 where absent."""
    import nibabel

    zooms = nibabel.load(str(patient.path / f"{patient.name}_4d.nii.gz")).header.get_zooms()
    return float(zooms[3]) if len(zooms) > 3 and float(zooms[3]) > 0 else 1.0


def read_subject(name: str, kind: str, path: Path) -> CodecSubject:
    """Read one subject found by :func:`find_subjects` (readers' errors name the file)."""
    if kind == "acdc":
        patient = read_acdc_patient(path, load_cine=True)
        info = {"group": patient.info.group, "height": patient.info.height, "weight": patient.info.weight}
        labels = {frame - 1: label for frame, label in patient.labels.items()}
        return CodecSubject(name, kind, Path(path), patient.cine.astype(np.float32), (_frame_ms(patient), *patient.spacing),
                            patient.info.ed - 1, patient.info.es - 1, labels, info)
    if kind == "cmrxrecon":
        import torch

        from data.cine_baselines import rss_images
        from utils.physics import center_crop_or_pad

        kspace = read_cine_kspace(path, FULL_KEY)
        image = rss_images(kspace)  # (t, slices, ky, kx)
        image = center_crop_or_pad(image, (image.shape[-2], image.shape[-1] // 2))
        return CodecSubject(name, kind, Path(path), image.to(torch.float32).numpy(), (1.0, 1.0, 1.0, 1.0))
    raise ValueError(f"unknown subject kind {kind!r}")


def write_decoded(out_dir, item: TokenItem, frames: np.ndarray) -> List[Path]:
    """Write the decoded ``frames (T, Z, h, w)`` of ``item`` under ``out_dir`` (module docstring); atomic
    files; returns the paths written."""
    out_dir = Path(out_dir)
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape != tuple(item.shape):
        raise ValueError(f"{item.name}: decoded frames {frames.shape} differ from the item's shape {tuple(item.shape)}")
    if item.kind == "cmrxrecon":
        path = out_dir / f"{item.name}.mat"
        write_submission_file(path, frames)
        return [path]
    patient = out_dir / item.name
    name = patient.name
    dt, dz, dy, dx = item.spacing
    written = [patient / f"{name}_4d.nii.gz"]
    write_nifti(written[0], frames, (dt, dz, dy, dx))
    for frame in sorted({item.ed, item.es}):
        written.append(acdc_frame_path(patient, frame + 1))
        write_nifti(written[-1], frames[frame], (dz, dy, dx))
    info = item.info
    write_info_cfg(patient / "Info.cfg", AcdcInfo(item.ed + 1, item.es + 1, str(info.get("group", "NOR")),
                                                  float(info.get("height", 0.0)), float(info.get("weight", 0.0)),
                                                  int(item.shape[0])))
    written.append(patient / "Info.cfg")
    return written
