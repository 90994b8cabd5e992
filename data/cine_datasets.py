"""Cine training samples from CMRxRecon FullSample files: one sample per (file, slice, frame).

As the PromptMR+ reference does for CMRxRecon, a sample's "adjacent slices" are the ``num_adj``
neighbouring **time frames** of one slice, taken circularly in time (``(t + i) % T``); the loss is on the
centre frame. Masks are drawn on the fly for the whole cycle from ``(seed, epoch, index)``
(:class:`data.cine_masks.CineMaskSampler`), and each adjacent frame keeps its own mask row, so kt masks
(a different pattern per frame) and 2-D ktRadial masks reach the model as acquired.

Model layout. CMRxRecon k-space (h5py order) is ``(t, slices, coils, ky, kx)``: phase encoding (the
undersampled axis) is ``ky``, the second-last axis, whereas the reconstruction models undersample along
their last axis W. :func:`to_model_layout` swaps the last two axes, so a model sees ``(…, kx, ky)``: H is
the (2x oversampled) readout, W the phase encoding; :func:`from_model_layout` swaps back for writing.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from data.cine import FULL_KEY, find_cine_sets, list_fullsample, open_cine_kspace
from data.cine_masks import CineMaskSampler
from data.formats import FormatError
from data.transforms import TrainingSample
from utils.inference import circular_frame_table  # noqa: F401 - re-exported beside circular_frames
from utils.physics import ifft2c, rss

RADIAL_ACS = 16  # centre block of ktRadial masks: the coil-map ACS width the reference passes (test_num_low_frequencies)


def circular_frames(frame: int, num_frames: int, num_adj: int) -> np.ndarray:
    """The ``num_adj`` (odd) frames centred on ``frame``, wrapping around the cardiac cycle."""
    return circular_frame_table(num_frames, num_adj)[frame]


def to_model_layout(x):
    """``(…, ky, kx)`` → ``(…, kx, ky)`` (phase encoding last), for numpy arrays and tensors."""
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


from_model_layout = to_model_layout  # the swap is its own inverse


def is_line_mask(mask) -> bool:
    """True when every frame's mask is constant along kx (a set of ky lines): ``mask`` ``(…, ky, kx)``."""
    mask = np.asarray(mask)
    return bool((mask == mask[..., :1]).all())


def cine_acs_width(mask) -> int:
    """ACS width (columns in model layout) for the model's coil maps: 0 (derive it from the sampled
    block, as for line masks) or :data:`RADIAL_ACS` for 2-D masks, whose centre block is not a set of
    fully sampled lines."""
    return 0 if is_line_mask(mask) else RADIAL_ACS


class CineTrainingTransform:
    """Fully sampled adjacent frames → :class:`~data.transforms.TrainingSample` in model layout.

    ``__call__(kspace (adj, C, ky, kx) complex64, frames (adj,) frame indices, num_frames, view, fname,
    sample_id, epoch, index)``: the mask for the whole cycle ``(T, ky, kx)`` is drawn from
    ``(epoch, index)``; the sample holds ``masked_kspace`` ``(adj, C, kx, ky)``, ``mask``
    ``(adj, kx|1, ky)`` float32 (a line mask keeps kx = 1), ``target`` the RSS of the fully sampled
    centre frame ``(kx, ky)``, ``max_value`` its maximum (the SSIM data range), ``foreground`` all true.
    """

    def __init__(self, sampler: CineMaskSampler):
        self.sampler = sampler

    def __call__(self, kspace: np.ndarray, frames: np.ndarray, num_frames: int, view: str, fname: str,
                 sample_id: int, epoch: int, index: int) -> TrainingSample:
        adj, _, ky, kx = kspace.shape
        cycle = self.sampler.sample((num_frames, ky, kx), epoch, index)  # (T, ky, kx)
        mask = cycle[np.asarray(frames)]  # (adj, ky, kx): each frame its own pattern
        acs = cine_acs_width(mask)
        if acs == 0:
            mask = mask[..., :1]  # line mask: (adj, ky, 1)
        k = to_model_layout(torch.from_numpy(np.ascontiguousarray(kspace)))  # (adj, C, kx, ky)
        m = to_model_layout(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))  # (adj, kx|1, ky)
        masked = (k * m.unsqueeze(1)).to(torch.complex64)
        target = rss(ifft2c(k[adj // 2]), dim=-3).to(torch.float32)  # (kx, ky)
        return TrainingSample(
            masked_kspace=masked, mask=m, target=target, foreground=torch.ones(target.shape, dtype=torch.bool),
            max_value=float(target.max()), anatomy=f"cine_{view}", fname=fname, slice_index=int(sample_id),
            num_low_frequencies=acs,
        )


@dataclasses.dataclass(frozen=True)
class _CineFile:
    path: Path
    view: str
    num_frames: int
    num_slices: int


class CineSliceDataset(Dataset):
    """Every (file, slice, frame) of the FullSample files under ``roots`` (CMRxRecon set folders or any
    folder above them), optionally restricted to ``views`` (e.g. ``("sax", "lax")``).

    Headers (shape, complex dtype, declared size) are checked when the dataset is built, so a malformed
    file is one :class:`~data.formats.FormatError` naming it before training starts. Call
    :meth:`set_epoch` before each epoch: masks depend on ``(epoch, index)``. Sample ids
    (``slice_index``) are ``slice * T + frame``.
    """

    def __init__(self, roots: Sequence, num_adj_slices: int, transform: CineTrainingTransform,
                 views: Optional[Sequence[str]] = None):
        circular_frames(0, 1, num_adj_slices)  # validates num_adj_slices
        self.num_adj_slices, self.transform, self.epoch = num_adj_slices, transform, 0
        self.files: List[_CineFile] = []
        for root in roots:
            root = Path(root)
            if not root.exists():
                raise FileNotFoundError(f"{root}: data folder not found")
            sets = find_cine_sets(root)
            if not sets:
                raise FileNotFoundError(f"{root}: no CMRxRecon cine set folder (with FullSample/P###/cine_*.mat) inside")
            for set_dir in sets:
                for full in list_fullsample(set_dir, views):
                    with open_cine_kspace(full.path, FULL_KEY) as var:
                        t, s = var.shape[:2]
                    if t < 1 or s < 1:
                        raise FormatError(full.path, var.key, f"no frames or slices (shape {var.shape})")
                    self.files.append(_CineFile(full.path, full.view, t, s))
        if not self.files:
            raise FileNotFoundError(f"no FullSample cine files{f' of views {list(views)}' if views else ''} under {[str(r) for r in roots]}")
        self.index = [(f, s, t) for f, cf in enumerate(self.files) for s in range(cf.num_slices) for t in range(cf.num_frames)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> TrainingSample:
        f, s, t = self.index[i]
        cf = self.files[f]
        frames = circular_frames(t, cf.num_frames, self.num_adj_slices)
        unique, inverse = np.unique(frames, return_inverse=True)  # h5py reads increasing indices only
        with open_cine_kspace(cf.path, FULL_KEY) as var:
            block = var[unique.tolist(), s]  # (n_unique, C, ky, kx)
        kspace = block[inverse]
        if not np.isfinite(kspace).all():
            raise FormatError(cf.path, FULL_KEY, f"non-finite values in slice {s}, frames {sorted(set(frames.tolist()))}")
        try:
            return self.transform(kspace, frames, cf.num_frames, cf.view, str(cf.path), s * cf.num_frames + t, self.epoch, i)
        except ValueError as exc:  # e.g. a k-space too small for the mask family: name the file
            raise FormatError(cf.path, FULL_KEY, f"slice {s}, frame {t}: {' '.join(str(exc).split())}") from None
