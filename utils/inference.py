"""Model inference over whole volumes: adjacent-slice stacks, slices batched, no gradients.

The caller prepares the k-space (routing, image-space height cut); this module only runs the model.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def adjacent_indices(slice_index: int, num_slices: int, num_adj: int) -> np.ndarray:
    """Indices of ``num_adj`` (odd) slices centred on ``slice_index``, clamped at the volume edges."""
    if num_adj < 1 or num_adj % 2 == 0:
        raise ValueError(f"num_adj_slices must be odd and positive, got {num_adj}")
    half = num_adj // 2
    return np.clip(np.arange(slice_index - half, slice_index + half + 1), 0, num_slices - 1)


def adjacent_stack_index(num_slices: int, num_adj: int) -> np.ndarray:
    """``(num_slices, num_adj)`` table: row ``s`` holds the adjacent slice indices of slice ``s``."""
    half = num_adj // 2
    if num_adj < 1 or num_adj % 2 == 0:
        raise ValueError(f"num_adj_slices must be odd and positive, got {num_adj}")
    offsets = np.arange(-half, half + 1)
    return np.clip(np.arange(num_slices)[:, None] + offsets[None, :], 0, num_slices - 1)


def circular_frame_table(num_frames: int, num_adj: int) -> np.ndarray:
    """``(num_frames, num_adj)`` table: row ``t`` holds the ``num_adj`` (odd) frames centred on frame
    ``t``, wrapping around the cardiac cycle (cine: adjacent "slices" are neighbouring time frames)."""
    if num_adj < 1 or num_adj % 2 == 0:
        raise ValueError(f"num_adj_slices must be odd and positive, got {num_adj}")
    half = num_adj // 2
    return (np.arange(num_frames)[:, None] + np.arange(-half, half + 1)[None, :]) % max(num_frames, 1)


@torch.no_grad()
def reconstruct_cine(
    model: nn.Module,
    kspace: torch.Tensor,
    mask: torch.Tensor,
    num_adj: int,
    acs_width: int = 0,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Reconstruct every frame of every slice of an undersampled cine acquisition.

    ``kspace``: complex64 ``(T, S, C, H, W)`` in model layout (the undersampled axis last, zeros off the
    mask); ``mask``: ``(H|1, W)`` (the same every frame) or ``(T, H|1, W)`` (per frame). Each frame goes
    through the model with its ``num_adj`` circular neighbours and their own masks, ``batch_size``
    frames at a time; ``acs_width`` > 0 is passed as the coil-map ACS width (2-D masks). Returns float32
    ``(T, S, *output)`` on the CPU.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    frames_total, slices = kspace.shape[:2]
    table = torch.from_numpy(circular_frame_table(frames_total, num_adj))
    masks = mask.to(torch.float32)
    masks = (masks.unsqueeze(0) if masks.dim() == 2 else masks).expand(frames_total, -1, -1)  # (T, H|1, W)
    pairs = torch.cartesian_prod(torch.arange(slices), torch.arange(frames_total))  # (S*T, 2): slice, frame
    outputs = []
    for start in range(0, pairs.shape[0], batch_size):
        s, t = pairs[start : start + batch_size].unbind(1)
        frames = table[t]  # (b, adj)
        batch = kspace[frames, s[:, None]].to(device)  # (b, adj, C, H, W)
        extra = (torch.full((len(s),), acs_width, dtype=torch.long),) if acs_width > 0 else ()
        outputs.append(model(batch, masks[frames].to(device), *extra).float().cpu())
    model.train(was_training)
    out = torch.cat(outputs)  # (S*T, ...) in (slice, frame) order
    return out.view(slices, frames_total, *out.shape[1:]).transpose(0, 1).contiguous()


@torch.no_grad()
def reconstruct_volume(
    model: nn.Module,
    kspace: torch.Tensor,
    mask: torch.Tensor,
    num_adj_slices: int,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Reconstruct every slice of an undersampled volume.

    ``kspace``: complex64 ``(S, C, H, W)`` (zeros off the mask, height already cut); ``mask``: ``(W,)``.
    Returns float32 ``(S, 384, 384)`` on the CPU. Slices go through the model ``batch_size`` at a time,
    each with its ``num_adj_slices`` neighbours (edges clamped).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    table = torch.from_numpy(adjacent_stack_index(kspace.shape[0], num_adj_slices))
    outputs = []
    mask_row = mask.to(torch.float32).reshape(1, -1)
    for start in range(0, kspace.shape[0], batch_size):
        rows = table[start : start + batch_size]
        batch = kspace[rows].to(device)  # (b, adj, C, H, W)
        out = model(batch, mask_row.expand(rows.shape[0], -1).to(device))
        outputs.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(outputs)
