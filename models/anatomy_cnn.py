"""Volume-level brain/knee classifier for inference-time routing.

Works on image-space slices only (``image_grappa`` or ``image_input``), never on file names.
Each slice is z-score normalised, passed through a small CNN
(``[3x3 conv -> InstanceNorm -> ReLU -> 2x2 max-pool] x len(channels)``, adaptive average pool to a
``pool_grid x pool_grid`` map, flatten, linear layer to 2 logits); the volume's logits are the mean of
its slices' logits. The pooled grid keeps the spatial layout (a global average of instance-normalised
features keeps almost none, and learns brain vs knee far more slowly) while accepting any H, W.
Label 0 is brain, 1 is knee.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import torch
from torch import nn

from models.config import ModelConfig

__all__ = ["AnatomyCNNConfig", "AnatomyCNN", "LABELS"]

LABELS: Tuple[str, str] = ("brain", "knee")

# Lower bound of the per-slice standard deviation: a constant slice normalises to zeros, not NaN,
# while real images (std >= 1e-8 at any scale we know) are normalised exactly (scale invariant).
_STD_MIN = 1e-12


@dataclasses.dataclass
class AnatomyCNNConfig(ModelConfig):
    """Classifier hyperparameters: ``in_channels`` (fixed 1) and the width of each conv block."""

    in_channels: int = 1
    channels: Tuple[int, ...] = (16, 32, 64)
    pool_grid: int = 8

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "default": {},
        "tiny": {"channels": (4, 8, 8), "pool_grid": 4},
    }

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):
            self.channels = tuple(self.channels)

    def validate(self) -> None:
        if self.in_channels != 1:
            raise ValueError(f"AnatomyCNNConfig: in_channels must be 1, got {self.in_channels!r}")
        if (
            not isinstance(self.channels, tuple)
            or not self.channels
            or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.channels)
        ):
            raise ValueError(f"AnatomyCNNConfig: channels must be a non-empty tuple of ints >= 1, got {self.channels!r}")
        if isinstance(self.pool_grid, bool) or not isinstance(self.pool_grid, int) or self.pool_grid < 1:
            raise ValueError(f"AnatomyCNNConfig: pool_grid must be an int >= 1, got {self.pool_grid!r}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """``3x3 conv -> InstanceNorm(affine) -> ReLU -> 2x2 max-pool``: ``(N, c_in, H, W) -> (N, c_out, H//2, W//2)``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class AnatomyCNN(nn.Module):
    """``forward(images (B, S, H, W) float) -> logits (B, 2)`` (0 brain, 1 knee); any H, W >= 2**blocks."""

    def __init__(self, config: AnatomyCNNConfig):
        super().__init__()
        config.validate()
        self.config = config
        widths = (config.in_channels,) + config.channels
        self.features = nn.Sequential(*(_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.pool = nn.AdaptiveAvgPool2d(config.pool_grid)
        self.head = nn.Linear(widths[-1] * config.pool_grid**2, len(LABELS))

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """Per-slice z-score over (H, W): ``(x - mean) / max(std, 1e-12)``, same shape."""
        mean = images.mean(dim=(-2, -1), keepdim=True)
        std = images.std(dim=(-2, -1), keepdim=True, unbiased=False)
        return (images - mean) / std.clamp_min(_STD_MIN)

    def _check(self, images: torch.Tensor) -> None:
        min_size = 2 ** len(self.config.channels)
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"AnatomyCNN: images must be float (B, S, H, W), got {tuple(images.shape)} {images.dtype}")
        if min(images.shape[-2:]) < min_size or images.shape[1] < 1:
            raise ValueError(f"AnatomyCNN: need S >= 1 and H, W >= {min_size}, got {tuple(images.shape)}")

    def slice_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every slice: ``(B, S, H, W) -> (B, S, 2)``."""
        self._check(images)
        b, s, h, w = images.shape
        x = self.normalise(images.float()).reshape(b * s, 1, h, w)
        features = self.pool(self.features(x)).flatten(1)  # (B*S, channels[-1] * pool_grid**2)
        return self.head(features).reshape(b, s, len(LABELS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.slice_logits(images).mean(dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(labels (B,) long, confidence (B,) float)``: argmax and softmax probability of the volume logits."""
        probs = self.forward(images).softmax(dim=-1)
        confidence, labels = probs.max(dim=-1)
        return labels, confidence
