"""Training objectives: ``objective(model, batch, device) -> scalar loss``.

* :class:`ReconstructionObjective` — reconstruction models on a training batch (``masked_kspace``,
  ``mask``, ``target``, ``foreground``, ``max_value``): the leaderboard SSIM loss restricted to the
  leaderboard foreground mask with ``data_range`` = the volume's max (``loss="ssim"``), or the L1 loss on
  the magnitude normalised by the volume's max (``loss="l1"``, HiFi-Mamba's recipe).
* :class:`ClassificationObjective` — classifiers on ``(images (B, S, H, W), labels (B,))``: cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.metrics import SSIMLoss

RECONSTRUCTION_LOSSES = ("ssim", "l1")


class ReconstructionObjective:
    def __init__(self, loss: str = "ssim"):
        if loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"loss must be one of {RECONSTRUCTION_LOSSES}, got {loss!r}")
        self.loss = loss
        self.ssim = SSIMLoss()

    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        acs = getattr(batch, "num_low_frequencies", None)
        if isinstance(acs, torch.Tensor) and bool((acs > 0).any()):  # e.g. ktRadial cine masks
            output = model(batch.masked_kspace, batch.mask, acs).float()
        else:
            output = model(batch.masked_kspace, batch.mask).float()
        target = batch.target.float()
        if self.loss == "ssim":
            return self.ssim(output, target, batch.max_value, batch.foreground)
        scale = batch.max_value.view(-1, 1, 1)
        return F.l1_loss(output / scale, target / scale)


class ClassificationObjective:
    def __call__(self, model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(model(images).float(), labels)
