"""PNG figures of reconstructions: zero-filled | GRAPPA | reconstruction | target | error.

Takes arrays (no file formats here); ``evaluate.py --figures DIR`` feeds it leaderboard slices.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from utils.io import atomic_path


def save_comparison(
    path,
    images: Mapping[str, np.ndarray],
    target: np.ndarray,
    title: str = "",
    scores: Optional[Mapping[str, float]] = None,
    error_gain: float = 5.0,
) -> Path:
    """Write one row of panels: each of ``images`` (name -> ``(H, W)``), the ``target`` and
    ``error_gain`` x |last image - target|, on the target's grey scale; ``scores`` (name -> SSIM) go into
    the panel titles. Returns the PNG path (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    panels = [(n, images[n]) for n in names] + [("target", target)]
    panels.append((f"|{names[-1]} - target| x{error_gain:g}", error_gain * np.abs(images[names[-1]] - target)))
    vmax = float(np.percentile(target, 99.5)) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.3), dpi=100)
    for ax, (name, image) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=vmax)
        label = name if not scores or name not in scores else f"{name}\nSSIM {scores[name]:.4f}"
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if title else None)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
