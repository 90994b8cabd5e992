"""Per-sample transforms: fully sampled k-space -> (masked k-space, mask, target) for training,
and the undersampled leaderboard k-space -> model input for reconstruction.

Shapes: k-space complex64 ``(S, C, H, W)`` (S adjacent slices, C coils); targets float32 ``(384, 384)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch

from utils.contract import IMAGE_SIZE
from utils.metrics import leaderboard_foreground_mask
from utils.seed import derived_rng
from utils.physics import center_crop_or_pad, fft2c, ifft2c, rss

# Image-space height (rows) kept before masking: the brain's 2x readout oversampling is cut to the
# 384-row FOV; knee keeps a small margin above the 384-row target.
HEIGHT_CUT = {"brain": 384, "knee": 416}


def height_cut_images(images: torch.Tensor, rows: int) -> torch.Tensor:
    """Centre-crop (or zero-pad) coil images ``(..., H, W)`` to ``rows`` rows."""
    return center_crop_or_pad(images, (rows, images.shape[-1]))


def height_cut_kspace(kspace: torch.Tensor, rows: int) -> torch.Tensor:
    """Image-space height cut of k-space ``(..., H, W)``: ifft2c -> keep ``rows`` centre rows -> fft2c."""
    if kspace.shape[-2] == rows:
        return kspace
    return fft2c(height_cut_images(ifft2c(kspace), rows))


def undersampled_model_input(kspace: torch.Tensor, mask: torch.Tensor, anatomy: str) -> torch.Tensor:
    """Leaderboard k-space ``(S, C, H, W)`` (zeros off ``mask`` ``(W,)``) as a model sees it: the anatomy's
    image-space height cut, then exact zeros off the mask again (the cut's FFT round trip leaves tiny
    values there). Used identically by reconstruction and by training-time validation."""
    k = height_cut_kspace(kspace, HEIGHT_CUT[anatomy])
    return k * mask.to(device=k.device, dtype=k.dtype)


def rss_target(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """RSS over coils of coil images ``(C, H, W)``, centre-cropped/padded to ``(size, size)``."""
    return center_crop_or_pad(rss(images, dim=-3), (size, size))


@dataclasses.dataclass
class TrainingSample:
    """One training example (a batch adds a leading B axis to every tensor)."""

    masked_kspace: torch.Tensor  # complex64 (S, C, H_cut, W)
    mask: torch.Tensor  # float32 (W,)
    target: torch.Tensor  # float32 (384, 384)
    foreground: torch.Tensor  # bool (384, 384): the leaderboard foreground mask of the target
    max_value: float  # the volume's attr max (SSIM data range)
    anatomy: str  # "brain" | "knee", from the file name (training only)
    fname: str
    slice_index: int
    num_low_frequencies: int = 0  # ACS width for the coil maps; 0: derived from the mask


ImageAugment = Callable[[torch.Tensor, int, np.random.Generator], torch.Tensor]
_AUGMENT_STREAM = 0xA06  # keeps augmentation randomness apart from the mask stream of (seed, epoch, index)


class TrainingTransform:
    """Fully sampled adjacent-slice k-space -> :class:`TrainingSample`.

    Order: height cut in image space (per anatomy) -> optional augmentation of the complex coil images
    (the target is then recomputed as the RSS of the augmented centre slice) -> k-space -> mask drawn
    for ``(epoch, index)`` -> masked k-space. ``mask_fn(width, epoch, index) -> (W,)`` 0/1 array;
    ``augment(images, t, rng)`` receives the 0-based epoch index ``t = epoch - 1`` of the engine's
    1-based ``epoch`` (MRAugment's schedule convention) and an rng derived from ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        mask_fn: Callable[[int, int, int], np.ndarray],
        augment: Optional[ImageAugment] = None,
        seed: int = 0,
    ):
        self.mask_fn = mask_fn
        self.augment = augment
        self.seed = seed

    def __call__(
        self,
        kspace: np.ndarray,
        target: np.ndarray,
        max_value: float,
        anatomy: str,
        fname: str,
        slice_index: int,
        epoch: int,
        index: int,
    ) -> TrainingSample:
        k = torch.from_numpy(np.ascontiguousarray(kspace))
        images = height_cut_images(ifft2c(k), HEIGHT_CUT[anatomy])
        target_t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))
        if self.augment is not None:
            # the schedule counts epochs from 0 as MRAugment does (engine epoch e -> t = e - 1)
            augmented = self.augment(images, epoch - 1, derived_rng(self.seed, epoch, index, _AUGMENT_STREAM))
            if augmented is not images:
                images = augmented
                target_t = rss_target(images[images.shape[0] // 2]).to(torch.float32)
        k = fft2c(images)
        mask = torch.from_numpy(np.asarray(self.mask_fn(k.shape[-1], epoch, index), dtype=np.float32))
        masked = (k * mask).to(torch.complex64)
        foreground = torch.from_numpy(leaderboard_foreground_mask(target_t.numpy(), anatomy))
        return TrainingSample(masked, mask, target_t, foreground, float(max_value), anatomy, fname, int(slice_index))

