"""Datasets over the challenge layout.

* :class:`SliceDataset` — training slices of one anatomy: adjacent-slice k-space and the label slice,
  turned into a :class:`~data.transforms.TrainingSample` by a transform that draws masks and
  augmentation from ``(seed, epoch, index)``.
* :class:`VolumeImageDataset` — whole volumes of ``image_grappa`` (or ``image_input``) with the
  brain/knee label from the file name, for the anatomy classifier.

Every file is checked when the dataset is built (headers only), so a corrupt or malformed file is one
clear error before any training starts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from data.formats import (
    ANATOMIES,
    IMAGE_KEYS,
    FormatError,
    anatomy_from_name,
    kspace_shape,
    open_h5,
    read_image_file,
    read_max_attr,
    require_dataset,
)
from data.transforms import TrainingSample, TrainingTransform
from utils.inference import adjacent_indices


def anatomy_folder(root, anatomy: Optional[str]) -> Path:
    """The folder holding ``kspace/`` and ``image/`` for ``anatomy`` under ``root``.

    ``root`` may be that folder itself, or a ``Data/train``-style folder with ``{brain,knee}/``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    if anatomy is not None and (root / anatomy / "kspace").is_dir():
        return root / anatomy
    if (root / "kspace").is_dir():
        return root
    raise FileNotFoundError(f"{root}: no kspace/ folder (nor {anatomy}/kspace/) inside")


@dataclasses.dataclass(frozen=True)
class _Volume:
    kspace_path: Path
    image_path: Path
    anatomy: str
    num_slices: int
    max_value: float


def _index_volumes(folder: Path, anatomy: Optional[str]) -> List[_Volume]:
    kfiles = sorted((folder / "kspace").glob("*.h5"))
    volumes = []
    for kpath in kfiles:
        name_anatomy = anatomy_from_name(kpath)
        if anatomy is not None and name_anatomy != anatomy:
            continue
        ipath = folder / "image" / kpath.name
        if not ipath.is_file():
            raise FormatError(kpath, "-", f"k-space file has no image file {ipath}")
        shape = kspace_shape(kpath)
        with open_h5(ipath) as f:
            label_slices = require_dataset(f, ipath, "image_label").shape[0]
            max_value = read_max_attr(f, ipath)
        if label_slices != shape[0]:
            raise FormatError(kpath, "kspace", f"{shape[0]} slices but {ipath.name} has {label_slices}")
        volumes.append(_Volume(kpath, ipath, name_anatomy, shape[0], max_value))
    if not volumes:
        raise FileNotFoundError(f"{folder / 'kspace'}: no {anatomy or ''} .h5 files")
    return volumes


def _read_slices(ds: h5py.Dataset, indices: np.ndarray, path) -> np.ndarray:
    lo, hi = int(indices.min()), int(indices.max()) + 1
    try:
        block = ds[lo:hi]
    except (OSError, RuntimeError) as exc:
        raise FormatError(path, ds.name.lstrip("/"), f"cannot read slices {lo}..{hi - 1} ({exc.__class__.__name__})") from None
    return block[indices - lo]


class SliceDataset(Dataset):
    """Training slices of one anatomy (``anatomy=None``: every file in the folder).

    Item ``i`` -> :class:`TrainingSample` built by ``transform`` from the ``num_adj_slices`` adjacent
    slices (edges clamped) of the fully sampled k-space and the label slice. Call :meth:`set_epoch`
    before iterating an epoch: masks and augmentation depend on ``(epoch, i)``.
    """

    def __init__(self, root, anatomy: Optional[str], num_adj_slices: int, transform: TrainingTransform):
        if anatomy is not None and anatomy not in ANATOMIES:
            raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
        self.folder = anatomy_folder(root, anatomy)
        self.volumes = _index_volumes(self.folder, anatomy)
        self.num_adj_slices = num_adj_slices
        adjacent_indices(0, 1, num_adj_slices)  # validates num_adj_slices
        self.transform = transform
        self.index = [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.num_slices)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> TrainingSample:
        v, s = self.index[i]
        vol = self.volumes[v]
        adj = adjacent_indices(s, vol.num_slices, self.num_adj_slices)
        with open_h5(vol.kspace_path) as f:
            kspace = _read_slices(require_dataset(f, vol.kspace_path, "kspace"), adj, vol.kspace_path)
        with open_h5(vol.image_path) as f:
            label = require_dataset(f, vol.image_path, "image_label")
            target = _read_slices(label, np.array([s]), vol.image_path)[0]
        # fname is the k-space file's path: the engine names it (with the slice) if the loss is not finite
        return self.transform(kspace, target, vol.max_value, vol.anatomy, str(vol.kspace_path), s, self.epoch, i)


class VolumeImageDataset(Dataset):
    """Whole-volume images for the anatomy classifier: item -> (images float32 (S, H, W), label).

    Label 0 brain, 1 knee, from the file name (training only; routing never looks at names).
    ``roots``: folders holding ``image/`` (e.g. ``Data/train/brain`` and ``Data/train/knee``) or a
    ``Data/train``-style folder with both anatomies.
    """

    def __init__(self, roots: Sequence, key: str = "image_grappa"):
        if key not in IMAGE_KEYS:
            raise ValueError(f"key must be one of {IMAGE_KEYS}, got {key!r}")
        self.key = key
        files: List[Path] = []
        for root in roots:
            root = Path(root)
            if not root.is_dir():
                raise FileNotFoundError(f"{root}: data folder not found")
            found = sorted(root.glob("image/*.h5")) or sorted(root.glob("*/image/*.h5"))
            files += found
        if not files:
            raise FileNotFoundError(f"no image/*.h5 files under {[str(r) for r in roots]}")
        self.files = files
        self.labels = [ANATOMIES.index(anatomy_from_name(p)) for p in files]
        for p in files:  # header check before training starts
            with open_h5(p) as f:
                require_dataset(f, p, key)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        images = read_image_file(self.files[i], keys=(self.key,))[self.key]
        return torch.from_numpy(images), torch.tensor(self.labels[i])


def collate_training(samples: Sequence[TrainingSample]) -> TrainingSample:
    """Stack samples into a batch (all samples must share S, C, H, W; batch size 1 always works)."""
    return TrainingSample(
        masked_kspace=torch.stack([s.masked_kspace for s in samples]),
        mask=torch.stack([s.mask for s in samples]),
        target=torch.stack([s.target for s in samples]),
        foreground=torch.stack([s.foreground for s in samples]),
        max_value=torch.tensor([s.max_value for s in samples], dtype=torch.float32),
        anatomy=[s.anatomy for s in samples],
        fname=[s.fname for s in samples],
        slice_index=torch.tensor([s.slice_index for s in samples]),
        num_low_frequencies=torch.tensor([s.num_low_frequencies for s in samples]),
    )
