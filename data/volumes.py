"""The challenge's image triplet from fully sampled multi-coil k-space, and writing a kspace/image pair.

Shared by the simulator and the fastMRI converter: ``image_input`` is the zero-filled RSS,
``image_grappa`` the RSS of a GRAPPA reconstruction from the ACS, ``image_label`` the fully sampled
RSS, each float32 ``(S, 384, 384)`` (centre crop, or zero pad where the image is narrower).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from data.formats import write_image_file, write_kspace_file
from data.grappa import grappa_image
from utils.contract import IMAGE_SIZE
from utils.physics import center_crop_or_pad, ifft2c, rss

_CHUNK_ELEMENTS = 2**25  # complex values per chunk of (slices, C, H, W): bounds temporary memory


def slice_chunks(slices: int, per_slice: int) -> Iterator[slice]:
    """Consecutive slice ranges holding at most ``_CHUNK_ELEMENTS`` values of ``per_slice`` each."""
    step = max(1, _CHUNK_ELEMENTS // max(per_slice, 1))
    for s in range(0, slices, step):
        yield slice(s, min(s + step, slices))


def rss_image(kspace: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RSS of ``ifft2c(kspace * mask)`` centre-cropped (or padded) to 384x384: float32 ``(S, 384, 384)``."""
    S, C, H, W = kspace.shape
    out = torch.empty((S, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
    for part in slice_chunks(S, C * H * W):
        k = kspace[part] if mask is None else kspace[part] * mask
        out[part] = center_crop_or_pad(rss(ifft2c(k)), (IMAGE_SIZE, IMAGE_SIZE))
    return out


def volume_images(kspace: torch.Tensor, mask: np.ndarray) -> Dict[str, np.ndarray]:
    """``image_input`` (zero-filled), ``image_grappa`` and ``image_label`` (full) of fully sampled
    ``kspace`` ``(S, C, H, W)`` under ``mask`` ``(W,)``: float32 ``(S, 384, 384)`` numpy arrays."""
    m = torch.from_numpy(np.asarray(mask, np.float32))
    under = kspace * m
    return {
        "image_input": rss_image(under).numpy(),
        "image_grappa": grappa_image(under, m, out_shape=(IMAGE_SIZE, IMAGE_SIZE)).numpy(),
        "image_label": rss_image(kspace).numpy(),
    }


def write_challenge_pair(
    kspace_path: Path, image_path: Path, kspace: torch.Tensor, mask: np.ndarray, undersample: bool
) -> Tuple[Path, Path]:
    """Write a k-space file (fully sampled, or undersampled by ``mask`` for a leaderboard) and its image
    file from fully sampled ``kspace`` complex64 ``(S, C, H, W)``. Both or neither: when the image file
    cannot be written, the k-space file just written is removed again (no file without its partner)."""
    images = volume_images(kspace, mask)
    stored = kspace * torch.from_numpy(np.asarray(mask, np.float32)) if undersample else kspace
    write_kspace_file(kspace_path, stored.numpy(), mask)
    try:
        write_image_file(image_path, images["image_input"], images["image_grappa"], images["image_label"])
    except BaseException:
        with contextlib.suppress(OSError):
            Path(kspace_path).unlink()
        raise
    return Path(kspace_path), Path(image_path)
