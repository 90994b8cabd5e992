"""Seeding and derived random streams for reproducible runs.

Every random choice in the pipeline (data order, masks, augmentation) comes from a stream derived from
``(seed, epoch, index)`` through numpy's SeedSequence, so it is reproducible, independent of the number
of DataLoader workers and of how a run was interrupted, and different across epochs and samples.
"""
from __future__ import annotations

import os
import random
from typing import Sequence

import numpy as np
import torch


def seed_fix(seed: int, deterministic: bool = False) -> None:
    """Seed torch, numpy and random; cudnn deterministic. With ``deterministic`` also
    ``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=":16:8"``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
        torch.use_deterministic_algorithms(True)


def derived_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy Generator for the stream ``(seed, *keys)``, e.g. ``derived_rng(seed, epoch, index)``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit integer seed for the stream ``(seed, *keys)`` (for torch generators)."""
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2, np.uint32)
               .astype(np.uint64).dot(np.array([1, 2**32], np.uint64)) >> np.uint64(1))


def torch_generator(seed: int, *keys: Sequence[int]) -> torch.Generator:
    """A CPU torch.Generator seeded from the stream ``(seed, *keys)``."""
    return torch.Generator().manual_seed(derived_seed(seed, *keys))


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker init: give each worker distinct global numpy/random/torch seeds derived from
    torch's per-worker base seed (itself derived from the seeded loader generator). Sample-level
    randomness should still come from :func:`derived_rng` so results do not depend on worker count."""
    base = torch.initial_seed() % 2**32
    random.seed(base)
    np.random.seed(base)
