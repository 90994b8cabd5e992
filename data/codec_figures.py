"""Figures of the TiTok-MRI codec (arrays in, PNG out; matplotlib with the Agg backend, files written
atomically): the strip of original | decoded | error frames with the segmenter's contours
(:func:`save_codec_strip`, ``scripts/codec.py evaluate --figures``) and the rate-distortion plot of the
codec against the standard codecs (:func:`save_rd_plot`, ``scripts/codec_report.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from utils.io import atomic_path

__all__ = ["STRUCTURE_COLOURS", "save_codec_strip", "save_rd_plot", "RD_PANELS"]

#: Contour colours of the ACDC structures (label value -> (name, colour)).
STRUCTURE_COLOURS = {1: ("RV", "#1f77b4"), 2: ("MYO", "#2ca02c"), 3: ("LV", "#d62728")}

#: The rate-distortion panels: (summary key(s), y label). A tuple of keys plots their mean.
RD_PANELS = ((("psnr",), "PSNR (dB)"), (("dice_rv", "dice_myo", "dice_lv"), "mean Dice (RV, MYO, LV)"),
             (("lv_ef_error",), "LV EF error (%, absolute)"), (("rv_ef_error",), "RV EF error (%, absolute)"))


def _save_png(fig, path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically, close it and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _contours(ax, labels: np.ndarray) -> None:
    for value, (_, colour) in STRUCTURE_COLOURS.items():
        mask = (labels == value).astype(np.float32)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=0.9)


def save_codec_strip(path, original: np.ndarray, decoded: np.ndarray, labels_original: Optional[np.ndarray] = None,
                     labels_decoded: Optional[np.ndarray] = None, rows: Sequence[str] = ("ED", "ES"),
                     decoded_name: str = "decoded", title: str = "") -> Path:
    """One row per phase (``rows``), columns original | decoded | |decoded - original|.

    ``original``/``decoded`` ``(R, h, w)`` (any intensity unit); ``labels_*`` ``(R, h, w)`` label maps
    (0 background, 1 RV, 2 myocardium, 3 LV) drawn as contours on the original and decoded frames. The
    frames share one grey scale (the original's 99.5th percentile); the error panels their own (0 to the
    largest error's 99.5th percentile, named in the column title). Returns the PNG path."""
    original, decoded = np.asarray(original, dtype=np.float32), np.asarray(decoded, dtype=np.float32)
    if original.ndim != 3 or original.shape != decoded.shape or len(rows) != original.shape[0]:
        raise ValueError(f"original {original.shape} and decoded {decoded.shape} must be (R, h, w) with R = {len(rows)}")
    for name, labels in (("labels_original", labels_original), ("labels_decoded", labels_decoded)):
        if labels is not None and np.shape(labels) != original.shape:
            raise ValueError(f"{name} {np.shape(labels)} must match the frames {original.shape}")
    plt = _pyplot()
    error = np.abs(decoded - original)
    vmax = float(np.percentile(original, 99.5)) or 1.0
    emax = float(np.percentile(error, 99.5)) or 1.0
    h, w = original.shape[-2:]
    inch = 2.0 / max(h, w)
    fig, axes = plt.subplots(len(rows), 3, figsize=(inch * w * 3 + 1.0, inch * h * len(rows) + 0.9), dpi=110,
                             squeeze=False)
    columns = ("original", decoded_name, f"|error| (0-{emax:.3g})")
    for r, phase in enumerate(rows):
        panels = ((original[r], labels_original), (decoded[r], labels_decoded), (error[r], None))
        for c, (image, labels) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray" if c < 2 else "magma", vmin=0.0, vmax=vmax if c < 2 else emax)
            if labels is not None:
                _contours(ax, np.asarray(labels)[r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
        axes[r, 0].set_ylabel(phase, fontsize=9)
    handles = [plt.Line2D([], [], color=colour, label=name) for name, colour in STRUCTURE_COLOURS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 0.93 if title else 1))
    return _save_png(fig, path)


def _panel_value(point: Mapping, keys: Sequence[str]) -> Optional[float]:
    values = [point.get(k) for k in keys]
    if any(v is None or not np.isfinite(v) for v in values):
        return None
    return float(np.mean(values))


def save_rd_plot(path, series: Mapping[str, Sequence[Mapping]], references: Optional[Mapping[str, float]] = None,
                 title: str = "") -> Path:
    """Rate-distortion panels (:data:`RD_PANELS`) against bytes per frame (log axis).

    ``series``: method name -> points, each a mapping with ``bytes_per_frame`` and the summary keys of
    :data:`RD_PANELS` (``scripts/codec.py evaluate --json``'s ``summary``), ``over_budget`` (drawn as a
    hollow marker) and ``label`` (annotated, e.g. ``K=64``); one line per method through its points in
    order of bytes. ``references``: summary key -> value drawn as a dashed grey line (e.g. the Dice of the
    original frames). Returns the PNG path."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    references = dict(references or {})
    xs = [pt["bytes_per_frame"] for points in series.values() for pt in points if pt.get("bytes_per_frame")]
    xlim = (min(xs) / 1.5, max(xs) * 1.5) if xs else (1.0, 10.0)
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 7.0), dpi=110, squeeze=False)
    markers = "osD^v<>p"
    for p, (keys, ylabel) in enumerate(RD_PANELS):
        ax = axes.flat[p]
        drawn = False
        for m, (name, points) in enumerate(series.items()):
            pts = sorted((pt for pt in points if pt.get("bytes_per_frame")), key=lambda pt: pt["bytes_per_frame"])
            xy = [(pt["bytes_per_frame"], _panel_value(pt, keys), pt) for pt in pts]
            xy = [(x, y, pt) for x, y, pt in xy if y is not None]
            if not xy:
                continue
            drawn = True
            colour = f"C{m % 10}"  # one colour per method in every panel
            ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], "-", color=colour, marker=markers[m % len(markers)],
                    markersize=5, label=name)
            for x, y, pt in xy:
                if pt.get("over_budget"):
                    ax.plot([x], [y], marker=markers[m % len(markers)], markersize=9, markerfacecolor="white",
                            markeredgecolor=colour, linestyle="none")
                if pt.get("label") and p == 0:
                    ax.annotate(str(pt["label"]), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=6,
                                color=colour)
        ref_keys = [k for k in keys if k in references]
        if ref_keys and len(ref_keys) == len(keys):
            ax.axhline(float(np.mean([references[k] for k in keys])), color="grey", linestyle="--", linewidth=0.8,
                       label="original frames")
        if not drawn:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xscale("log")
        ax.set_xlim(*xlim)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bytes per frame")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if p == 0:
            ax.legend(fontsize=7)
    notes = []
    if references:
        notes.append("dashed grey: the segmenter on the original frames")
    if any(pt.get("over_budget") for points in series.values() for pt in points):
        notes.append("hollow marker: over the token budget (the standard codec's smallest stream is larger)")
    if notes:
        fig.text(0.5, 0.01, "; ".join(notes), ha="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95 if title else 1))
    return _save_png(fig, path)
