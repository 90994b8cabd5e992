"""The recipe's learning-rate schedule as a pure function of (fractional) epoch.

Linear warm-up from 0 to ``max_lr`` over ``warmup_epochs`` starting at ``origin_epoch``, then a cosine
from ``max_lr`` down to ``min_lr`` reaching ``min_lr`` at epoch ``num_epochs`` (absolute epoch numbers,
so a step that starts at epoch 15 with ``num_epochs=35`` plans its cosine over epochs 15..35; the run
itself may stop earlier at ``stop_epoch``). Stepped per optimizer step with
``epoch = completed_epochs + step_in_epoch / steps_per_epoch``.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    max_lr: float
    min_lr: float
    warmup_epochs: float
    num_epochs: float
    origin_epoch: float = 0.0

    def __post_init__(self):
        if self.max_lr < 0 or self.min_lr < 0 or self.min_lr > self.max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={self.min_lr}, max_lr={self.max_lr}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.num_epochs <= self.origin_epoch + self.warmup_epochs:
            raise ValueError(
                f"num_epochs ({self.num_epochs}) must exceed the start epoch ({self.origin_epoch}) plus "
                f"warmup_epochs ({self.warmup_epochs})"
            )

    def __call__(self, epoch: float) -> float:
        """Learning rate at fractional absolute epoch ``epoch`` (e.g. 15.5 = half-way through epoch 16)."""
        t = epoch - self.origin_epoch
        if t < self.warmup_epochs:
            return self.max_lr * max(t, 0.0) / self.warmup_epochs
        span = self.num_epochs - self.origin_epoch - self.warmup_epochs
        progress = min(max((t - self.warmup_epochs) / span, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.max_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))
