"""ACDC frames for the TiTok-MRI codec: intensity normalisation, frame placement and the training datasets.

**Normalisation.** A subject's frames are divided by the 99.5th percentile of its whole cine
(:func:`cine_scale`; the simulator writes cines whose 99.5th percentile is 1000), so values are roughly
[0, 1]; the codec stores the scale (float32) beside the tokens.

**Placement.** The networks take frames of one size ``(H, W)`` (the tokenizer's ``image_size``). A frame
``(h, w)`` is placed by :func:`place_frames`: if it fits, it is zero-padded symmetrically (the extra
pixel after); otherwise it is first shrunk by one factor ``s = min(H / h, W / w)`` (bilinear with
antialiasing; labels by nearest neighbour) and then padded. :func:`unplace_frames` inverts it (crop, then
bilinear back to ``(h, w)`` when shrunk), so a decoded frame has the original shape. The demo and tiny
simulated frames (64 x 48, 48 x 48) fit their presets exactly (no resampling).

**Datasets** (:class:`AcdcFrameDataset`, samples :class:`AcdcSample`): the patients under ACDC roots
(read with :func:`data.cine.read_acdc_patient`, the cine included) are normalised, placed and kept in
memory as float16 (``T x Z x H x W`` per patient: 128 KiB per frame and slice at 256 x 256, so the 100
ACDC training patients, ~25 frames x ~10 slices each, need ~3 GB), labels as uint8. Modes:

* ``"frames"`` -- every (patient, slice, frame): the tokenizer's stage 1;
* ``"labelled"`` -- every (patient, slice, labelled frame), with its label: the segmentation network;
* ``"context"`` -- every (patient, slice, frame) with the frames at ``neighbour_offsets`` (circular in
  time) and the slice's ED and ES frames, and the label when the frame is labelled: the DiT.

``AcdcSample.frames`` is ``(N, 1, H, W)`` float32: ``[frame, neighbours…, ED, ES]`` in ``"context"`` mode,
``[frame]`` otherwise; ``motion`` ``(1, H, W)`` float32 is the motion map of the frame's slice
(:func:`motion_map`: the temporal standard deviation of the slice over its cine, in the normalised intensity
units of the frames, computed once per (patient, slice) on the cine before placement and then placed exactly
like the frames, so it is 0 on the padding; the moving heart stands out, the static body is ~0); ``label`` ``(H, W)`` int64 (``-1`` everywhere when the frame has none), ``has_label``
bool; ``fname``/``slice_index`` name the sample in errors (``slice_index = (z * T + t)``); ``epoch`` is the
dataset's epoch (random streams of the objectives depend on it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.cine import AcdcPatient, list_acdc_patients, read_acdc_patient
from data.formats import FormatError

__all__ = ["AcdcSample", "AcdcFrameDataset", "Placement", "cine_scale", "place_frames", "unplace_frames",
           "collate_acdc", "motion_map", "MODES", "SCALE_PERCENTILE", "NO_LABEL"]

MODES = ("frames", "labelled", "context")
SCALE_PERCENTILE = 99.5
NO_LABEL = -1


def cine_scale(cine: np.ndarray) -> float:
    """The normalisation scale of a subject: the 99.5th percentile of its cine (any shape); a cine with a
    non-positive or non-finite percentile is a ``ValueError``."""
    value = float(np.percentile(np.asarray(cine, dtype=np.float32), SCALE_PERCENTILE))
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"cine has no positive {SCALE_PERCENTILE}th percentile ({value}): blank or non-finite frames")
    return value


@dataclasses.dataclass(frozen=True)
class Placement:
    """How a frame ``(h, w)`` sits in the network's ``(H, W)``: shrunk to ``(sh, sw)`` (``== (h, w)`` when
    it fits) and padded by ``top``/``left`` pixels."""

    frame: Tuple[int, int]
    size: Tuple[int, int]
    shrunk: Tuple[int, int]
    top: int
    left: int

    @classmethod
    def of(cls, frame: Sequence[int], size: Sequence[int]) -> "Placement":
        h, w = (int(v) for v in frame)
        big_h, big_w = (int(v) for v in size)
        if min(h, w, big_h, big_w) < 1:
            raise ValueError(f"frame {h}x{w} and size {big_h}x{big_w} must be positive")
        scale = min(1.0, big_h / h, big_w / w)
        sh, sw = (h, w) if scale >= 1.0 else (max(1, min(big_h, int(round(h * scale)))), max(1, min(big_w, int(round(w * scale)))))
        return cls((h, w), (big_h, big_w), (sh, sw), (big_h - sh) // 2, (big_w - sw) // 2)

    @property
    def resampled(self) -> bool:
        return self.shrunk != self.frame


def place_frames(frames: torch.Tensor, size: Sequence[int], labels: bool = False) -> Tuple[torch.Tensor, Placement]:
    """Frames ``(…, h, w)`` -> ``(…, H, W)`` (module docstring) and their :class:`Placement`; ``labels``
    resamples by nearest neighbour (integer maps keep their dtype)."""
    frames = torch.as_tensor(frames)
    lead, (h, w) = frames.shape[:-2], frames.shape[-2:]
    place = Placement.of((h, w), size)
    x = frames.reshape(-1, 1, h, w)
    if place.resampled:
        if labels:
            x = F.interpolate(x.float(), size=place.shrunk, mode="nearest").to(frames.dtype)
        else:
            x = F.interpolate(x.float(), size=place.shrunk, mode="bilinear", align_corners=False, antialias=True)
    sh, sw = place.shrunk
    out = torch.zeros(x.shape[0], 1, *place.size, dtype=x.dtype)
    out[..., place.top:place.top + sh, place.left:place.left + sw] = x
    return out.reshape(*lead, *place.size), place


def unplace_frames(frames: torch.Tensor, place: Placement, labels: bool = False) -> torch.Tensor:
    """Inverse of :func:`place_frames`: ``(…, H, W)`` -> ``(…, h, w)``."""
    frames = torch.as_tensor(frames)
    if tuple(frames.shape[-2:]) != place.size:
        raise ValueError(f"frames are {tuple(frames.shape[-2:])}, the placement expects {place.size}")
    lead = frames.shape[:-2]
    sh, sw = place.shrunk
    x = frames[..., place.top:place.top + sh, place.left:place.left + sw].reshape(-1, 1, sh, sw)
    if place.resampled:
        mode = {"mode": "nearest"} if labels else {"mode": "bilinear", "align_corners": False}
        x = F.interpolate(x.float(), size=place.frame, **mode).to(frames.dtype)
    return x.reshape(*lead, *place.frame)


@dataclasses.dataclass
class AcdcSample:
    """One training sample or a batch of them (module docstring; batched tensors gain a leading B).
    ``motion`` is optional (``None`` when a sample was built without one; a batch has it only when every
    sample has it)."""

    frames: torch.Tensor
    label: torch.Tensor
    has_label: torch.Tensor
    fname: object
    slice_index: torch.Tensor
    epoch: torch.Tensor
    motion: Optional[torch.Tensor] = None


def collate_acdc(samples: Sequence[AcdcSample]) -> AcdcSample:
    motion = None if any(s.motion is None for s in samples) else torch.stack([s.motion for s in samples])
    return AcdcSample(
        frames=torch.stack([s.frames for s in samples]), label=torch.stack([s.label for s in samples]),
        has_label=torch.stack([s.has_label for s in samples]), fname=[s.fname for s in samples],
        slice_index=torch.stack([s.slice_index for s in samples]), epoch=torch.stack([s.epoch for s in samples]),
        motion=motion)


def motion_map(cine: np.ndarray) -> np.ndarray:
    """The per-pixel motion of a cine ``(T, Z, h, w)``: its standard deviation over time ``(Z, h, w)`` float32,
    in the cine's intensity units (population std, ``ddof = 0``; 0 for a static cine or a single frame)."""
    cine = np.asarray(cine, dtype=np.float32)
    if cine.ndim != 4:
        raise ValueError(f"a cine is (T, Z, h, w), got shape {cine.shape}")
    return cine.std(axis=0)


@dataclasses.dataclass
class _Patient:
    path: Path
    frames: np.ndarray  # (T, Z, H, W) float16, normalised and placed
    motion: np.ndarray  # (Z, H, W) float16, motion_map of the normalised cine, placed
    labels: dict  # 0-based frame -> (Z, H, W) uint8, placed
    ed: int  # 0-based
    es: int


class AcdcFrameDataset(Dataset):
    """Samples of the ACDC patients under ``roots`` (module docstring). ``image_size`` ``(H, W)``: the
    networks' frame size; ``mode`` one of :data:`MODES`; ``neighbour_offsets`` (``"context"``) the time
    offsets of the neighbouring frames, e.g. ``[-1, 1]``. A patient that cannot be read is a
    :class:`~data.formats.FormatError` naming its file, raised when the dataset is built."""

    def __init__(self, roots: Sequence, image_size: Sequence[int], mode: str = "frames",
                 neighbour_offsets: Sequence[int] = ()):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.image_size = tuple(int(s) for s in image_size)
        self.mode, self.offsets, self.epoch = mode, [int(o) for o in neighbour_offsets], 0
        self.patients: List[_Patient] = []
        for root in roots:
            root = Path(root)
            if not root.exists():
                raise FileNotFoundError(f"{root}: data folder not found")
            found = list_acdc_patients(root)
            if not found:
                raise FileNotFoundError(f"{root}: no ACDC patient folders (patient###/ with Info.cfg) inside")
            for path in found:
                self.patients.append(self._load(read_acdc_patient(path, load_cine=True)))
        self.index = self._build_index()
        if not self.index:
            raise FileNotFoundError(f"no {'labelled ' if mode == 'labelled' else ''}frames under {[str(r) for r in roots]}")

    def _load(self, patient: AcdcPatient) -> _Patient:
        cine_path = patient.path / f"{patient.name}_4d.nii.gz"
        cine = patient.cine
        if not np.isfinite(cine).all():
            raise FormatError(cine_path, "-", "non-finite values in the cine")
        try:
            scale = cine_scale(cine)
        except ValueError as exc:
            raise FormatError(cine_path, "-", str(exc)) from None
        normalised = cine / scale
        placed, _ = place_frames(torch.from_numpy(normalised), self.image_size)
        motion, _ = place_frames(torch.from_numpy(motion_map(normalised)), self.image_size)
        labels = {}
        for frame, label in patient.labels.items():
            labels[frame - 1] = place_frames(torch.from_numpy(label), self.image_size, labels=True)[0].numpy().astype(np.uint8)
        return _Patient(patient.path, placed.numpy().astype(np.float16), motion.numpy().astype(np.float16), labels,
                        patient.info.ed - 1, patient.info.es - 1)

    def _build_index(self) -> List[Tuple[int, int, int]]:
        index = []
        for p, patient in enumerate(self.patients):
            t, z = patient.frames.shape[:2]
            frames = sorted(patient.labels) if self.mode == "labelled" else range(t)
            index += [(p, s, f) for s in range(z) for f in frames]
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> AcdcSample:
        p, s, f = self.index[i]
        patient = self.patients[p]
        t = patient.frames.shape[0]
        which = [f]
        if self.mode == "context":
            which += [(f + o) % t for o in self.offsets] + [patient.ed, patient.es]
        frames = torch.from_numpy(patient.frames[which, s].astype(np.float32)).unsqueeze(1)  # (N, 1, H, W)
        if f in patient.labels:
            label, has = torch.from_numpy(patient.labels[f][s].astype(np.int64)), True
        else:
            label, has = torch.full(self.image_size, NO_LABEL, dtype=torch.int64), False
        motion = torch.from_numpy(patient.motion[s].astype(np.float32)).unsqueeze(0)  # (1, H, W)
        return AcdcSample(frames, label, torch.tensor(has), str(patient.path), torch.tensor(s * t + f), torch.tensor(self.epoch),
                          motion)

