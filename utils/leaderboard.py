"""The SNU FastMRI leaderboard metric without torch: foreground mask, per-slice SSIM, PSNR and NMSE.

``evaluate.py`` scores with this module alone (numpy, OpenCV), so its start-up does not pay for
importing torch; :mod:`utils.metrics` re-exports every public name here, and its torch
:func:`utils.metrics.ssim_map` (the training loss, the cine metric, tensor inputs) computes the same
formula.

SSIM follows the fastMRI / SNU-challenge formula: a ``7x7`` uniform window applied as a *valid*
convolution (a ``(H, W)`` slice gives a ``(H-6, W-6)`` map, the part of scikit-image's reflect-padded
map that it averages), ``K1 = 0.01``, ``K2 = 0.03``, ``C = (K * data_range)**2`` and (co)variances
scaled by ``NP / (NP - 1)`` with ``NP = 49``. A slice's score is the mean of its map.

The leaderboard scores ``recon * mask`` against ``target * mask`` where ``mask`` is the thresholded
label (``> 5e-5`` brain, ``> 2e-5`` knee) cleaned by a 3x3 erode (1x), dilate (15x), erode (14x) with
OpenCV's default borders.

Precision: the images stay in their dtype (float32 from the files: multiplying by a 0/1 mask is
exact in any dtype, so no float64 copy of the volume is made), and every sum is taken in float64 by
OpenCV straight from them: window sums (``boxFilter``/``sqrBoxFilter`` with a float64 output, which
square float32 values exactly in float64), ``x * y`` (``multiply`` to float64: exact for float32
inputs) and the PSNR/NMSE squared norms (``cv2.norm``, float64 accumulation of float64 differences).
Window means, (co)variances and the SSIM map are float64, so per-slice scores agree with
scikit-image's float64 ``structural_similarity`` of the masked float64 images to about 1e-13.
Windows whose 7x7 support lies wholly outside the mask's bounding box see two all-zero images and
score exactly 1 (``C1 C2 / (C1 C2)``), so only the bounding box, widened by the window, is computed.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import cv2
import numpy as np

__all__ = [
    "SSIM_WIN_SIZE",
    "SSIM_K1",
    "SSIM_K2",
    "FOREGROUND_THRESHOLDS",
    "leaderboard_foreground_mask",
    "leaderboard_ssim",
    "leaderboard_volume_scores",
    "psnr",
    "nmse",
]

SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03

#: Label intensity above which a pixel is foreground, per anatomy (leaderboard evaluation).
FOREGROUND_THRESHOLDS = {"brain": 5e-5, "knee": 2e-5}
#: (operation, iterations) applied in order with a 3x3 kernel of ones.
_MORPHOLOGY = (("erode", 1), ("dilate", 15), ("erode", 14))
_MORPH_KERNEL = np.ones((3, 3), np.uint8)
#: Rows between stacked slices in the mask morphology: more than any one operation reaches (15 rows).
_SEPARATOR = 1 + max(iterations for _, iterations in _MORPHOLOGY)
_NATIVE = (np.float32, np.float64)  # dtypes OpenCV filters directly; others are scored in float64


# ------------------------------------------------------------------------------------------------ mask


def leaderboard_foreground_mask(target: np.ndarray, anatomy: str) -> np.ndarray:
    """Leaderboard foreground mask of a label ``(S, H, W)`` or ``(H, W)``: bool, same shape.

    Threshold by anatomy, then 3x3 erode x1, dilate x15, erode x14 per slice with OpenCV's default
    borders (outside pixels never erode or dilate the image). 0/1 values make uint8 morphology equal
    to the reference's float64 morphology. The slices are stacked vertically as one uint8 image, each
    followed by :data:`_SEPARATOR` rows that play OpenCV's border (set to 1 before an erosion, 0
    before a dilation; deeper than any operation reaches), so each cv2 call does a whole volume.
    """
    if anatomy not in FOREGROUND_THRESHOLDS:
        raise ValueError(f"anatomy must be one of {sorted(FOREGROUND_THRESHOLDS)}, got {anatomy!r}")
    target = np.asarray(target)
    if target.ndim not in (2, 3):
        raise ValueError(f"target must be (H, W) or (S, H, W), got shape {target.shape}")
    stack = target[None] if target.ndim == 2 else target
    s, h, w = stack.shape
    buf = np.empty((s, h + _SEPARATOR, w), np.uint8)
    np.greater(stack, FOREGROUND_THRESHOLDS[anatomy], out=buf[:, :h].view(bool))
    tall = buf.reshape(s * (h + _SEPARATOR), w)
    for op, iterations in _MORPHOLOGY:
        buf[:, h:] = 1 if op == "erode" else 0  # outside pixels never erode (1) or dilate (0) a slice
        fn = cv2.erode if op == "erode" else cv2.dilate
        fn(tall, _MORPH_KERNEL, dst=tall, iterations=iterations)  # in place (documented by OpenCV)
    mask = np.ascontiguousarray(buf[:, :h]).view(bool)  # 0/1 bytes are valid bools
    return mask[0] if target.ndim == 2 else mask


# ------------------------------------------------------------------------------------------------ SSIM


def _as_native(a) -> np.ndarray:
    """A real numpy array in float32 or float64 (other dtypes converted to float64)."""
    a = np.asarray(a)
    return a if a.dtype in _NATIVE else a.astype(np.float64)


def _masked(image: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """``image * mask``: in ``image``'s dtype for a bool mask (exact), else in float64 (as the reference)."""
    if mask is None:
        return image
    if mask.dtype == bool:
        return np.multiply(image, mask.view(np.uint8), dtype=image.dtype)  # no bool -> float cast per pixel
    return np.multiply(image, mask, dtype=np.float64)


def _window_sums(a: np.ndarray, half: int, win_size: int, sqr: bool = False) -> np.ndarray:
    """Valid ``win_size x win_size`` window sums of ``a`` (``(h, w)`` -> ``(h - 2 half, w - 2 half)``),
    float64: OpenCV's running window sums in float64 (squares first, in float64, when ``sqr``)."""
    fn = cv2.sqrBoxFilter if sqr else cv2.boxFilter
    full = fn(a, cv2.CV_64F, (win_size, win_size), normalize=False, borderType=cv2.BORDER_REFLECT_101)
    return full[half : full.shape[0] - half, half : full.shape[1] - half]


def _ssim_sum(x: np.ndarray, y: np.ndarray, data_range: float, win_size: int, k1: float, k2: float) -> float:
    """Sum of the valid SSIM map of two ``(h, w)`` images (one dtype, float32 or float64), in float64.

    With window sums ``Sx, Sy, Sxy, Sss = S(xx) + S(yy)`` over ``N = win_size**2`` pixels,
    ``P = Sx Sy`` and ``Q = Sx^2 + Sy^2``, the map ``(2 mx my + C1)(2 vxy + C2) / ((mx^2 + my^2 + C1)
    (vx + vy + C2))`` (means ``S/N``, sample (co)variances ``(N S(ab) - Sa Sb) / (N (N - 1))``) equals
    ``(2P + N^2 C1)(2 (N Sxy - P) + N (N-1) C2) / ((Q + N^2 C1)(N Sss - Q + N (N-1) C2))``: the
    normalisations cancel, and each factor is one fused OpenCV pass (``addWeighted``) in float64.
    """
    n, half = win_size * win_size, win_size // 2
    c1, c2 = (k1 * data_range) ** 2 * n * n, (k2 * data_range) ** 2 * n * (n - 1)
    sx, sy = _window_sums(x, half, win_size), _window_sums(y, half, win_size)
    sss = _window_sums(x, half, win_size, sqr=True)
    sss += _window_sums(y, half, win_size, sqr=True)
    sxy = _window_sums(cv2.multiply(x, y, dtype=cv2.CV_64F), half, win_size)  # exact for float32 images
    p = cv2.multiply(sx, sy)
    q = cv2.multiply(sx, sx)
    q += cv2.multiply(sy, sy)
    numerator = cv2.addWeighted(p, 2.0, p, 0.0, c1)
    numerator *= cv2.addWeighted(sxy, 2.0 * n, p, -2.0, c2)
    denominator = cv2.addWeighted(sss, float(n), q, -1.0, c2)
    q += c1
    denominator *= q
    return float(cv2.divide(numerator, denominator).sum())


def _support(mask: np.ndarray, win_size: int) -> Tuple[slice, slice]:
    """Rows and columns of a 2-D mask's bounding box widened by ``win_size - 1`` each side (clipped):
    every window touching a mask pixel lies inside it. Empty slices for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    pad = win_size - 1
    return (slice(max(0, rows[0] - pad), rows[-1] + 1 + pad), slice(max(0, cols[0] - pad), cols[-1] + 1 + pad))


def _check_inputs(recon, target, data_range, mask, win_size):
    """Validated ``(x, y, data_range (S,), mask or None)`` for the leaderboard functions."""
    x, y = _as_native(recon), _as_native(target)
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"recon and target must be (S, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        x, y = x.astype(np.float64), y.astype(np.float64)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images {tuple(x.shape[-2:])} are smaller than the {win_size}x{win_size} SSIM window")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from image shape {tuple(x.shape)}")
        if mask.dtype != bool:  # a numeric mask is applied in float64, as the reference does
            x, y = x.astype(np.float64), y.astype(np.float64)
    dr = np.asarray(data_range, np.float64).reshape(-1)
    if dr.size not in (1, x.shape[0]):
        raise ValueError(f"data_range must be a scalar or ({x.shape[0]},), got {dr.size} values")
    return x, y, np.broadcast_to(dr, (x.shape[0],)), mask


def _slice_scores(x, y, dr, mask, win_size, k1, k2, norms: bool):
    """Per-slice SSIM (and, when ``norms``, the float64 sums ``||y - x||^2`` and ``||y||^2`` over the
    masked volume). Slices are scored on their mask's support; the rest of the map is exactly 1."""
    s, h, w = x.shape
    n_map = (h - win_size + 1) * (w - win_size + 1)
    ssim = np.empty(s, np.float64)
    sse = energy = 0.0
    for i in range(s):
        if mask is None:
            rows, cols = slice(0, h), slice(0, w)
            xs, ys = x[i], y[i]
        else:
            rows, cols = _support(mask[i], win_size)
            m = mask[i, rows, cols]
            xs, ys = _masked(x[i, rows, cols], m), _masked(y[i, rows, cols], m)
        hs, ws = xs.shape
        if hs < win_size or ws < win_size:  # no foreground: both masked images are zero, SSIM exactly 1
            ssim[i] = 1.0
            continue
        inside = (hs - win_size + 1) * (ws - win_size + 1)
        ssim[i] = (_ssim_sum(xs, ys, float(dr[i]), win_size, k1, k2) + (n_map - inside)) / n_map
        if norms:
            sse += cv2.norm(ys, xs, cv2.NORM_L2SQR)
            energy += cv2.norm(ys, cv2.NORM_L2SQR)
    return ssim, sse, energy


def leaderboard_ssim(
    recon,
    target,
    data_range: Union[float, np.ndarray],
    mask: Optional[np.ndarray] = None,
    win_size: int = SSIM_WIN_SIZE,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> np.ndarray:
    """Per-slice SSIM scores, float64 ``(S,)``, of ``recon`` vs ``target`` (numpy, both ``(S, H, W)``).

    ``data_range``: the volume's ``max`` attribute (scalar) or one value per slice. ``mask``
    (``(S, H, W)``, e.g. :func:`leaderboard_foreground_mask`; bool, or numbers applied in float64)
    multiplies both images first, as the leaderboard does. Raises ``ValueError`` for mismatched
    shapes, a wrong number of ``data_range`` values or slices smaller than the window.
    """
    x, y, dr, mask = _check_inputs(recon, target, data_range, mask, win_size)
    return _slice_scores(x, y, dr, mask, win_size, k1, k2, norms=False)[0]


def leaderboard_volume_scores(recon, target, data_range: float, mask: Optional[np.ndarray] = None) -> Dict[str, object]:
    """A volume's leaderboard scores in one pass over its slices: ``{"ssim_slices": (S,) float64,
    "psnr": dB (float, ``inf`` for identical masked volumes), "nmse": float}``.

    Same inputs as :func:`leaderboard_ssim` with a scalar ``data_range``. PSNR and NMSE are those of
    :func:`psnr` and :func:`nmse` on the masked volumes (``recon * mask`` vs ``target * mask``).
    """
    x, y, dr, mask = _check_inputs(recon, target, data_range, mask, SSIM_WIN_SIZE)
    if mask is not None and mask.dtype != bool:  # the norms of numeric masks: the plain float64 path
        ssim = _slice_scores(x, y, dr, mask, SSIM_WIN_SIZE, SSIM_K1, SSIM_K2, norms=False)[0]
        xm, ym = x * mask, y * mask
        return {"ssim_slices": ssim, "psnr": psnr(xm, ym, float(dr[0])), "nmse": nmse(xm, ym)}
    ssim, sse, energy = _slice_scores(x, y, dr, mask, SSIM_WIN_SIZE, SSIM_K1, SSIM_K2, norms=mask is not None)
    if mask is None:
        sse, energy, _ = _squared_norms(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero masked target: inf or NaN, as numpy
        nmse_value = float(np.float64(sse) / energy)
    return {"ssim_slices": ssim, "psnr": _psnr_from(sse, x.size, float(dr[0])), "nmse": nmse_value}


# -------------------------------------------------------------------------------------------- PSNR/NMSE


Axes = Optional[Tuple[int, ...]]


def _squared_norms(recon, target, axis: Axes = None):
    """``(||target - recon||^2, ||target||^2, target)`` in float64 over ``axis`` (None: all values,
    as Python floats; else arrays over the remaining axes); shapes must match."""
    recon, target = np.asarray(recon, np.float64), np.asarray(target, np.float64)
    if recon.shape != target.shape:
        raise ValueError(f"recon shape {recon.shape} differs from target shape {target.shape}")
    if axis is None:
        diff = (target - recon).ravel()
        return float(np.dot(diff, diff)), float(np.dot(target.ravel(), target.ravel())), target
    diff = target - recon
    return _sum_squares(diff, axis), _sum_squares(target, axis), target


def _sum_squares(a: np.ndarray, axis: Tuple[int, ...]) -> np.ndarray:
    """``sum(a * a)`` over ``axis`` without the ``a * a`` temporary."""
    axes = sorted(ax % a.ndim for ax in axis)
    keep = [i for i in range(a.ndim) if i not in axes]
    flat = np.moveaxis(a, axes, list(range(a.ndim - len(axes), a.ndim))).reshape(*(a.shape[i] for i in keep), -1)
    return np.einsum("...i,...i->...", flat, flat)


def _psnr_from(sse: float, count: int, peak: float) -> float:
    mse = sse / count
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def psnr(recon: np.ndarray, target: np.ndarray, data_range=None, axis: Axes = None):
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    ``axis=None``: one float for the whole array (a volume); ``data_range`` defaults to
    ``target.max()`` (fastMRI). ``axis`` a tuple such as ``(-2, -1)``: one value per image, a float64
    array over the remaining axes; ``data_range`` then a scalar or an array of that shape, default
    each image's ``target.max()`` (scikit-image's ``peak_signal_noise_ratio`` per image). Identical
    images give ``inf``.
    """
    sse, _, target = _squared_norms(recon, target, axis)
    if axis is None:
        return _psnr_from(sse, target.size, float(target.max()) if data_range is None else float(data_range))
    count = math.prod(target.shape[a] for a in axis)
    peak = target.max(axis=axis) if data_range is None else np.asarray(data_range, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 10 * np.log10(peak**2 / (sse / count))


def nmse(recon: np.ndarray, target: np.ndarray, axis: Axes = None):
    """Normalised MSE ``||target - recon||^2 / ||target||^2`` (fastMRI): a float for the whole array
    (``axis=None``) or, with ``axis`` a tuple such as ``(-2, -1)``, a float64 array of one value per
    image over the remaining axes."""
    sse, energy, _ = _squared_norms(recon, target, axis)
    if axis is None:
        return sse / energy
    with np.errstate(divide="ignore", invalid="ignore"):
        return sse / energy
