"""Image-quality metrics: SSIM (one formula: :func:`ssim_map` in torch for the loss, the CMRxRecon ranking
metric and tensor inputs; :mod:`utils.leaderboard`'s torch-free OpenCV float64 path for the SNU
leaderboard on numpy volumes, held to this one by the tests), the SNU FastMRI leaderboard foreground
mask, PSNR and NMSE (defined in :mod:`utils.leaderboard`, re-exported here).

SSIM follows the fastMRI / SNU-challenge formula: a ``7x7`` uniform window applied as a *valid*
convolution (no padding, so a ``(H, W)`` slice gives a ``(H-6, W-6)`` map), ``K1 = 0.01``,
``K2 = 0.03``, ``C = (K * data_range)**2`` and (co)variances scaled by ``NP / (NP - 1)`` with
``NP = 49`` (the unbiased window estimate). A slice's score is the mean of its SSIM map.

The leaderboard metric scores ``recon * mask`` against ``target * mask`` where ``mask`` is the
thresholded label (``> 5e-5`` brain, ``> 2e-5`` knee) cleaned by a 3x3 erode (1x), dilate (15x),
erode (14x) with OpenCV's default borders. Evaluation computes means, (co)variances and the map in
float64 (window sums taken in float64 straight from float32 images); the loss runs in the dtype of its
inputs.

The CMRxRecon (cardiac cine) ranking metric, section "CMRxRecon ranking metric" below, reproduces the
organisers' ``run4Ranking`` (RSS, central two slices, frames 1-3, magnitude, centre crop to
``round(sx/3) x round(sy/2)``, single precision) and their per-image scores: scikit-image's
``structural_similarity`` (7x7 uniform window, K1 0.01, K2 0.03, sample covariance; its reflect-padded
map averaged over the interior equals the valid map computed here) and ``peak_signal_noise_ratio``
with ``data_range`` = the reference's max after a per-image normalisation, and NMSE, for the 2023
(``x / max``), 2024 (z-score) and 2025 (``|x| / p99.5``) protocols.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from utils import leaderboard as _leaderboard
from utils.leaderboard import (  # the torch-free SNU leaderboard metric, re-exported under its old home
    FOREGROUND_THRESHOLDS,
    SSIM_K1,
    SSIM_K2,
    SSIM_WIN_SIZE,
    Axes,
    leaderboard_foreground_mask,
    leaderboard_volume_scores,
    nmse,
    psnr,
)
from utils.physics import center_crop, rss

__all__ = [
    "SSIM_WIN_SIZE",
    "SSIM_K1",
    "SSIM_K2",
    "FOREGROUND_THRESHOLDS",
    "ssim_map",
    "leaderboard_foreground_mask",
    "leaderboard_ssim",
    "leaderboard_volume_scores",
    "psnr",
    "nmse",
    "SSIMLoss",
    "CINE_PROTOCOLS",
    "SWAPPED_PROTOCOLS",
    "RANKING_FRAMES",
    "matlab_round",
    "ranking_crop_shape",
    "ranking_slices",
    "run4ranking",
    "normalize_cine",
    "cine_ranking_metrics",
    "file_scores",
    "aggregate_ranking_scores",
]


ArrayLike = Union[np.ndarray, torch.Tensor]


# ------------------------------------------------------------------------------------------- SSIM core


def _window_sums(x: torch.Tensor, win_size: int, dim: int) -> torch.Tensor:
    """Sums of every ``win_size`` consecutive values along ``dim`` (valid positions only).

    float64: running sums (a cumulative sum, then differences): two passes whatever the window, with
    relative rounding about ``1e-16 x`` the axis length (below 1e-13 for 384 values). Other dtypes:
    ``win_size`` shifted slices added, so each output is a sum of ``win_size`` inputs, as float32
    needs (running sums would lose about 1e-5 there). Differentiable.
    """
    n_out = x.shape[dim] - win_size + 1
    if x.dtype == torch.float64:
        c = x.cumsum(dim)
        first, later, earlier = c.narrow(dim, win_size - 1, 1), c.narrow(dim, win_size, n_out - 1), c.narrow(dim, 0, n_out - 1)
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.cat((first, later - earlier), dim)
        out = torch.empty(c.shape[:dim % c.ndim] + (n_out,) + c.shape[dim % c.ndim + 1 :], dtype=c.dtype, device=c.device)
        out.narrow(dim, 0, 1).copy_(first)
        torch.sub(later, earlier, out=out.narrow(dim, 1, n_out - 1))  # no concatenation copy
        return out
    out = x.narrow(dim, 0, n_out).clone()
    for i in range(1, win_size):
        out += x.narrow(dim, i, n_out)
    return out


def _box_mean(x: torch.Tensor, win_size: int) -> torch.Tensor:
    """Mean over every ``win_size x win_size`` window of the last two axes, valid positions only:
    ``(..., H, W) -> (..., H - win_size + 1, W - win_size + 1)``. Separable window sums
    (:func:`_window_sums`); differentiable; faster on CPU than ``unfold(...).sum`` and
    ``avg_pool2d``."""
    return _window_sums(_window_sums(x, win_size, -1), win_size, -2) / (win_size * win_size)


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: Union[float, torch.Tensor],
    win_size: int = SSIM_WIN_SIZE,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
    sample_covariance: bool = True,
) -> torch.Tensor:
    """SSIM map of ``x`` against ``y``, both ``(B, H, W)``; ``data_range`` a scalar or ``(B,)``.

    Returns ``(B, H - win_size + 1, W - win_size + 1)`` in the dtype of ``x``: one value per window
    lying wholly inside the image (scikit-image's map cropped by ``(win_size - 1) // 2``, the part it
    averages). ``sample_covariance``: (co)variances scaled by ``NP / (NP - 1)`` (scikit-image's
    ``use_sample_covariance=True``, fastMRI); ``False`` uses the population estimate. Differentiable.
    """
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"ssim_map expects two (B, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} SSIM window")
    data_range = torch.as_tensor(data_range, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    if data_range.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"data_range must be a scalar or ({x.shape[0]},), got {data_range.shape[0]} values")
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # One box-filter call for the four window means: E[x], E[y], E[xx + yy], E[xy] (vx and vy only
    # appear as vx + vy, so E[xx] and E[yy] need not be filtered separately).
    mx, my, mss, mxy = _box_mean(torch.stack((x, y, x * x + y * y, x * y)), win_size).unbind(0)
    # NP / (NP - 1): unbiased window (co)variances; 1: population (co)variances
    cov_norm = win_size**2 / (win_size**2 - 1) if sample_covariance else 1.0
    m2, mxmy = mx * mx + my * my, mx * my
    # (2 mx my + C1)(2 vxy + C2) / ((mx^2 + my^2 + C1)(vx + vy + C2)), v = cov_norm * (E[ab] - E[a]E[b]);
    # factors of 2 are exact in floating point, so x == y gives exactly 1.
    numerator = (2 * mxmy + c1) * ((2 * cov_norm) * (mxy - mxmy) + c2)
    denominator = (m2 + c1) * (cov_norm * (mss - m2) + c2)
    return numerator / denominator


# ------------------------------------------------------------------------------------ leaderboard metric


def _as_float64_tensor(a: ArrayLike) -> torch.Tensor:
    return a.to(torch.float64) if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a, dtype=np.float64))


def leaderboard_ssim(
    recon: ArrayLike,
    target: ArrayLike,
    data_range: Union[float, ArrayLike],
    mask: Optional[ArrayLike] = None,
    chunk: int = 4,
) -> ArrayLike:
    """Per-slice SSIM scores ``(S,)`` of ``recon`` vs ``target`` (both ``(S, H, W)``), in float64.

    ``data_range``: the volume's ``max`` attribute (scalar) or one value per slice. ``mask``
    (``(S, H, W)``, e.g. :func:`leaderboard_foreground_mask`) multiplies both images first, as the
    leaderboard does. Numpy in -> numpy out, computed by :func:`utils.leaderboard.leaderboard_ssim`
    (OpenCV float64 window sums, no torch); a tensor ``recon`` -> a float64 tensor from
    :func:`ssim_map` in float64 (the reference path the tests hold the numpy one to), ``chunk``
    slices per call (bounds memory).
    """
    if not isinstance(recon, torch.Tensor):
        return _leaderboard.leaderboard_ssim(recon, _as_numpy(target), _as_numpy(data_range), _as_numpy(mask))
    x, y = _as_float64_tensor(recon), _as_float64_tensor(target)
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"recon and target must be (S, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if mask is not None:
        m = _as_float64_tensor(mask).to(x.device)
        if m.shape != x.shape:
            raise ValueError(f"mask shape {tuple(m.shape)} differs from image shape {tuple(x.shape)}")
        x, y = x * m, y * m
    dr = _as_float64_tensor(data_range).to(x.device).reshape(-1)
    if dr.numel() not in (1, x.shape[0]):
        raise ValueError(f"data_range must be a scalar or ({x.shape[0]},), got {dr.numel()} values")
    dr = dr.expand(x.shape[0]) if dr.numel() == 1 else dr
    parts = [
        ssim_map(x[i : i + chunk], y[i : i + chunk], dr[i : i + chunk]).mean(dim=(-2, -1))
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else x.new_zeros(0)


def _as_numpy(a):
    """A tensor as a numpy array (CPU); anything else unchanged."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


# ------------------------------------------------------------------------------------------------ loss


class SSIMLoss(nn.Module):
    """``1 - mean SSIM`` for training: the leaderboard formula (:func:`ssim_map`) on ``(B, H, W)``.

    ``forward(recon, target, data_range, mask=None)``: ``data_range`` a scalar or ``(B,)`` (the
    volumes' ``max``); ``mask`` ``(B, H, W)`` multiplies both images as in the leaderboard metric.
    Computes in the dtype of ``recon``; gradients flow to ``recon``.
    """

    def __init__(self, win_size: int = SSIM_WIN_SIZE, k1: float = SSIM_K1, k2: float = SSIM_K2):
        super().__init__()
        self.win_size, self.k1, self.k2 = win_size, k1, k2

    def forward(
        self,
        recon: torch.Tensor,
        target: torch.Tensor,
        data_range: Union[float, torch.Tensor],
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        target = target.to(recon)  # recon's dtype and device
        if mask is not None:
            if mask.shape != recon.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} differs from image shape {tuple(recon.shape)}")
            mask = mask.to(recon)
            recon, target = recon * mask, target * mask
        s = ssim_map(recon, target, data_range, self.win_size, self.k1, self.k2)
        return 1 - s.mean()

    def extra_repr(self) -> str:
        return f"win_size={self.win_size}, k1={self.k1}, k2={self.k2}"


# ----------------------------------------------------------------------- CMRxRecon ranking metric
#
# Shapes are in h5py order (MATLAB's reversed): a cine image series is (t, slices, [coils,] ny, nx),
# MATLAB (nx, ny, [coils,] slices, t) with sx = nx (readout, the last h5py axis) and sy = ny. The
# organisers' run4Ranking output, MATLAB (round(sx/3), round(sy/2), 2, 3), is (3, 2, round(ny/2),
# round(nx/3)) here. Every score is invariant to transposing both images, so the 2-D orientation never
# matters.

#: Per-image normalisation of each challenge year (see :func:`normalize_cine`).
CINE_PROTOCOLS = ("2023", "2024", "2025")
#: Years whose scoring scripts call ``calmetric(gt, recon)`` against its ``(pred_recon, gt_recon)``
#: signature (2024 ``Test_Score2024.py``/``Val_Score2024.py``, 2025 ``Val_Score2025*.py``): the
#: reconstruction then plays the reference, so ``data_range`` is the normalised reconstruction's max
#: and NMSE is divided by the reconstruction's energy. 2023's ``Main_Score.py`` calls it the right way.
SWAPPED_PROTOCOLS = ("2024", "2025")
#: Cine frames kept for ranking (MATLAB ``1:3``).
RANKING_FRAMES = 3
ZSCORE_EPS = 1e-8  # 2024: (x - mean) / (std + 1e-8)
PERCENTILE = 99.5  # 2025: |x| / percentile(|x|, 99.5), linear interpolation (numpy's default)
RANKING_METRICS = ("psnr", "ssim", "nmse")


def matlab_round(x: float) -> int:
    """MATLAB's ``round``: to the nearest integer, halves away from zero (Python's ``round`` goes to
    even: ``round(12.5) == 12`` where MATLAB gives 13)."""
    r = math.floor(abs(x) + 0.5)
    return int(r if x >= 0 else -r)


def ranking_crop_shape(ny: int, nx: int) -> Tuple[int, int]:
    """The ranking crop ``(round(ny / 2), round(nx / 3))`` of an ``(ny, nx)`` image (h5py order), i.e.
    MATLAB's ``[round(sx/3), round(sy/2)]`` with ``sx = nx``, ``sy = ny``, MATLAB rounding."""
    return matlab_round(ny / 2), matlab_round(nx / 3)


def ranking_slices(n_slices: int) -> slice:
    """Slices kept for ranking: all when ``n_slices < 3``, else MATLAB ``round(sz/2)-1 : round(sz/2)``
    (1-based, inclusive), which is 0-based ``[round(sz/2) - 2, round(sz/2))``: sz 3 -> 0,1; 4 -> 0,1;
    5 -> 1,2; 6 -> 1,2."""
    if n_slices < 1:
        raise ValueError(f"need at least one slice, got {n_slices}")
    if n_slices < 3:
        return slice(0, n_slices)
    centre = matlab_round(n_slices / 2)
    return slice(centre - 2, centre)


def run4ranking(images: ArrayLike) -> torch.Tensor:
    """The organisers' ``run4Ranking`` for cine (2024 version, which adds the ``sz < 3`` case).

    ``images``: ``(t, slices, coils, ny, nx)`` coil images (combined here by root-sum-of-squares) or
    ``(t, slices, ny, nx)`` combined ones, complex or real, numpy or torch, h5py axis order. Keeps
    frames 1-3 and :func:`ranking_slices`, takes the magnitude, centre-crops ``(ny, nx)`` to
    :func:`ranking_crop_shape` with MATLAB ``crop.m`` offsets and returns single precision
    ``(3, n_kept_slices, round(ny/2), round(nx/3))`` (a torch tensor on the input's device).
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.ndim not in (4, 5):
        raise ValueError(f"cine images must be (t, slices, [coils,] ny, nx), got shape {tuple(x.shape)}")
    if x.shape[0] < RANKING_FRAMES:
        raise ValueError(f"ranking needs at least {RANKING_FRAMES} frames, got {x.shape[0]}")
    x = x[:RANKING_FRAMES, ranking_slices(x.shape[1])]
    x = rss(x, dim=2) if x.ndim == 5 else x.abs()  # rss is already a magnitude
    return center_crop(x, ranking_crop_shape(*x.shape[-2:]), matlab=True).to(torch.float32)


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Row-wise ``numpy.percentile(values, q)`` with linear interpolation: ``(B, N) -> (B,)``. Only the
    top ``N - floor(q/100 (N-1))`` values are ordered (``topk``), not the whole row."""
    n = values.shape[-1]
    pos = q / 100 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    top = values.topk(n - lo, dim=-1, sorted=True).values  # descending: ascending index i is n - 1 - i
    a, b = top[:, n - 1 - lo], top[:, n - 1 - hi]
    return a + (b - a) * (pos - lo)


def normalize_cine(images: torch.Tensor, protocol: str) -> torch.Tensor:
    """Per-image normalisation of ``(B, H, W)`` real images, in their dtype.

    ``"2023"``: ``x / x.max()``; ``"2024"``: ``(x - mean) / (std + 1e-8)`` (population std);
    ``"2025"``: ``|x| / percentile(|x|, 99.5)``, or ``|x|`` unscaled when that percentile is 0.
    """
    if protocol not in CINE_PROTOCOLS:
        raise ValueError(f"protocol must be one of {CINE_PROTOCOLS}, got {protocol!r}")
    flat = images.reshape(images.shape[0], -1)
    if protocol == "2023":
        return images / flat.amax(dim=1).view(-1, 1, 1)
    if protocol == "2024":
        centred = images - flat.mean(dim=1).view(-1, 1, 1)
        # numpy's two-pass std, sqrt(mean(|x - mean|^2)) (torch.std is several times slower here)
        std = centred.reshape(images.shape[0], -1).square().mean(dim=1).sqrt().view(-1, 1, 1)
        return centred / (std + ZSCORE_EPS)
    magnitude = images.abs()
    p = _percentile(magnitude.reshape(images.shape[0], -1), PERCENTILE)
    return magnitude / torch.where(p == 0, torch.ones_like(p), p).view(-1, 1, 1)


def cine_ranking_metrics(
    recon: ArrayLike,
    target: ArrayLike,
    protocol: str,
    swap: Optional[bool] = None,
    chunk: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """Per-image PSNR (dB), SSIM and NMSE of ranking crops, as the organisers score them.

    ``recon``, ``target``: real ``(..., H, W)`` of one shape (e.g. ``(3, 2, cy, cx)`` from
    :func:`run4ranking`), numpy or torch; computed in float64 on the CPU. Both are normalised per
    image by ``protocol`` (:func:`normalize_cine`); then, with ``ref`` the normalised target and
    ``test`` the normalised reconstruction, ``data_range = ref.max()`` per image, SSIM =
    scikit-image's ``structural_similarity(ref, test, data_range)`` (7x7 uniform window, K1 0.01,
    K2 0.03, sample covariance), PSNR = ``peak_signal_noise_ratio(ref, test, data_range)`` and
    NMSE = ``||ref - test||^2 / ||ref||^2``.

    ``swap``: ``None`` follows the protocol (:data:`SWAPPED_PROTOCOLS`: 2024 and 2025 exchange ``ref``
    and ``test``, as the organisers' scoring scripts do); ``True``/``False`` forces it. All images of
    the batch go through one SSIM call per ``chunk`` images (default: about 32k pixels per call, which
    keeps the intermediate maps in cache). Returns float64 arrays shaped
    ``recon.shape[:-2]`` under ``"psnr"``, ``"ssim"``, ``"nmse"``; NaN where the normalisation is
    undefined (an all-zero image in 2023), ``inf`` PSNR for identical images.
    """
    x, y = _as_float64_tensor(recon).cpu(), _as_float64_tensor(target).cpu()
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"recon and target must be (..., H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    x, y = normalize_cine(x.reshape(-1, h, w), protocol), normalize_cine(y.reshape(-1, h, w), protocol)
    if swap is None:
        swap = protocol in SWAPPED_PROTOCOLS
    ref, test = (x, y) if swap else (y, x)
    data_range = ref.amax(dim=(-2, -1))
    chunk = chunk or max(1, 2**15 // (h * w))
    ssim = torch.cat(
        [
            ssim_map(test[i : i + chunk], ref[i : i + chunk], data_range[i : i + chunk]).mean(dim=(-2, -1))
            for i in range(0, ref.shape[0], chunk)
        ]
    )
    ref_np, test_np = ref.numpy(), test.numpy()
    return {
        "psnr": psnr(test_np, ref_np, data_range.numpy(), axis=(-2, -1)).reshape(lead),
        "ssim": ssim.numpy().reshape(lead),
        "nmse": nmse(test_np, ref_np, axis=(-2, -1)).reshape(lead),
    }


def _nanmean(values) -> float:
    """Mean of the non-NaN values (pandas' ``mean``), NaN when there are none; no warning."""
    a = np.asarray(values, np.float64).ravel()
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def file_scores(image_metrics: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """One file's scores: the NaN-skipping mean over its images of each metric, plus ``"images"``."""
    out = {m: _nanmean(image_metrics[m]) for m in RANKING_METRICS}
    out["images"] = int(np.asarray(image_metrics["ssim"]).size)
    return out


def aggregate_ranking_scores(
    records: Iterable[Tuple[str, Optional[Mapping[str, float]]]], protocol: str
) -> Dict[str, object]:
    """Group and overall scores from ``(group, file_scores or None)`` records (``None``: a missing or
    failed file, which still counts as expected).

    Per group (e.g. view x acceleration): ``psnr``/``ssim``/``nmse`` = mean over the successful files
    (NaN-skipping, as pandas' ``mean`` in the organisers' scripts; NaN when none succeeded), and the
    adjusted ``*_adj`` = sum over successes / number of expected files (a failure counts as 0), except
    2025's ``nmse_adj = nmse * (2 - n_success / n_files)`` (``Val_Score2025_v3.py``). Overall: the
    NaN-skipping mean over groups of each of the six. Returns ``{"psnr", "ssim", "nmse", "psnr_adj",
    "ssim_adj", "nmse_adj", "n_files", "n_success", "groups": {group: {same keys}}}``, groups sorted.
    """
    if protocol not in CINE_PROTOCOLS:
        raise ValueError(f"protocol must be one of {CINE_PROTOCOLS}, got {protocol!r}")
    by_group: Dict[str, list] = {}
    for group, scores in records:
        by_group.setdefault(group, []).append(scores)
    groups: Dict[str, Dict[str, object]] = {}
    for group in sorted(by_group):
        ok = [s for s in by_group[group] if s is not None]
        n_files, n_ok = len(by_group[group]), len(ok)
        entry: Dict[str, object] = {"n_files": n_files, "n_success": n_ok}
        for m in RANKING_METRICS:
            values = np.array([s[m] for s in ok], np.float64)
            entry[m] = _nanmean(values)
            if m == "nmse" and protocol == "2025":
                entry[f"{m}_adj"] = entry[m] * (2 - n_ok / n_files)
            else:
                entry[f"{m}_adj"] = float(np.nansum(values)) / n_files
        groups[group] = entry
    keys = [k for m in RANKING_METRICS for k in (m, f"{m}_adj")]
    result: Dict[str, object] = {k: _nanmean([g[k] for g in groups.values()]) for k in keys}
    result["n_files"] = sum(g["n_files"] for g in groups.values())
    result["n_success"] = sum(g["n_success"] for g in groups.values())
    result["groups"] = groups
    return result


# ------------------------------------------------------------------------------------------- segmentation


def dice_scores(pred: np.ndarray, target: np.ndarray, labels: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """Dice ``2 |P ∩ T| / (|P| + |T|)`` of integer label maps of one shape (any dimensionality, scored as
    one volume), one float64 per entry of ``labels`` (ACDC default: 1 RV, 2 myocardium, 3 LV); NaN where
    the structure is absent from both."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"dice_scores: label maps differ in shape: {pred.shape} vs {target.shape}")
    out = np.empty(len(labels), dtype=np.float64)
    for i, label in enumerate(labels):
        p, t = pred == label, target == label
        total = np.count_nonzero(p) + np.count_nonzero(t)
        out[i] = 2.0 * np.count_nonzero(p & t) / total if total else np.nan
    return out
