"""Rectified flow (Liu et al. 2022; the SiT/SD3 convention): the one definition of the training pair,
shared by the DiT decoder (models/dit.py) and its training objective (utils/objectives.py).

Time runs from noise (``t = 0``) to data (``t = 1``): ``x_t = t x + (1 - t) eps`` and the velocity is
``dx_t/dt = x - eps``; a network ``v(x_t, t)`` trained on it decodes by integrating from ``t = 0``.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["flow_pair"]


def flow_pair(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, velocity)`` for data ``x (B, …)``, noise of the same shape and times ``t (B,)`` in [0, 1]."""
    tt = t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return tt * x + (1 - tt) * noise, x - noise
