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


def _grey_axes(ax, image: np.ndarray, vmax: float) -> None:
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])


def save_cine_strip(
    path,
    images: Mapping[str, np.ndarray],
    target: np.ndarray,
    frames,
    title: str = "",
    scores: Optional[Mapping[str, float]] = None,
    error_gain: float = 5.0,
) -> Path:
    """Frames over the cardiac cycle, one row per method: each of ``images`` (name -> ``(T, H, W)``),
    the ``target`` ``(T, H, W)``, then ``error_gain`` x |last image - target|; columns are ``frames``
    (indices into T). ``scores`` (name -> SSIM) label the rows. One grey scale (the target's 99.5th
    percentile) for every panel. Returns the PNG path (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    rows = [(n, images[n]) for n in names] + [("target", target)]
    rows.append((f"|{names[-1]} - target| x{error_gain:g}", error_gain * np.abs(images[names[-1]] - target)))
    frames = list(frames)
    vmax = float(np.percentile(target, 99.5)) or 1.0
    h, w = target.shape[-2:]
    inch = 1.6 / max(h, w)  # the longer side of a panel is 1.6 inches
    fig, axes = plt.subplots(len(rows), len(frames), figsize=(inch * w * len(frames) + 1.2, inch * h * len(rows) + 0.6),
                             dpi=100, squeeze=False)
    for r, (name, stack) in enumerate(rows):
        for c, t in enumerate(frames):
            _grey_axes(axes[r, c], stack[t], vmax)
            if r == 0:
                axes[r, c].set_title(f"frame {t}", fontsize=8)
        label = name if not scores or name not in scores else f"{name}\nSSIM {scores[name]:.4f}"
        axes[r, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def save_cine_gif(path, images: Mapping[str, np.ndarray], target: np.ndarray, fps: float = 8.0) -> Path:
    """An animated GIF of one slice over the cycle: the panels of ``images`` (name -> ``(T, H, W)``) and
    the ``target`` side by side, one GIF frame per time frame, looping. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    panels = list(images.items()) + [("target", target)]
    vmax = float(np.percentile(target, 99.5)) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.8), dpi=80, squeeze=False)
    artists = []
    for ax, (name, stack) in zip(axes[0], panels):
        artists.append(ax.imshow(stack[0], cmap="gray", vmin=0.0, vmax=vmax))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    pictures = []
    for t in range(target.shape[0]):
        for artist, (_, stack) in zip(artists, panels):
            artist.set_data(stack[t])
        fig.canvas.draw()
        pictures.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).convert("P", palette=Image.ADAPTIVE))
    plt.close(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0)
    return path
