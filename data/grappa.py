"""GRAPPA reconstruction of 1-D undersampled multi-coil k-space, calibrated on the ACS block.

Layout: k-space ``(C, H, W)`` or ``(S, C, H, W)``; H is the readout axis (fully sampled), W the
phase-encoding axis that the ``(W,)`` 0/1 mask undersamples. The mask must hold a contiguous, fully
sampled ACS block around the centre column ``W // 2`` (see ``utils.physics.acs_bounds``).

Kernel (``kernel_size = (kh, kw)``): every missing value at ``(y, x)`` is predicted, for all coils at
once, from the ``kh`` readout rows ``y - kh//2 .. y + kh//2`` of the ``kw`` nearest *sampled* columns:
``kw // 2`` on the left of ``x`` and ``kw - kw // 2`` on the right, so the default ``(5, 4)`` is the
classic 5 x 4 GRAPPA kernel with two sampled lines either side. The readout axis is treated as
periodic (its ends hold only noise). Missing columns whose sources sit at the same offsets share one
"sampling pattern" and one kernel: an equispaced mask of acceleration R has R - 1 regular patterns
plus tighter ones beside the ACS and at the width edges; an irregular mask may have hundreds. A
pattern too wide to be fitted on at least ``min_fit`` (default 60 %) of the ACS columns loses its
farthest sources (with a 32-line ACS, R = 4 keeps the 5 x 4 kernel, R = 8 uses the two nearest lines,
which extrapolates far better on test data); near the width edges fewer sources exist.

Calibration per slice and pattern: Tikhonov-regularised least squares over all rows and every ACS
position where the whole kernel (sources and target) lies in the ACS,
``w = (A^H A + lam I)^-1 A^H b`` with ``lam = lamda * ||A^H A||_F / n`` (n unknowns; the scaling of
Lustig's and pygrappa's GRAPPA). Unless given, kernel size, ``lamda`` and ``min_fit`` follow the mask's
acceleration (``GRAPPA_DEFAULTS``: acc 8 is regularised 30x harder than acc 4, because on noisy data its
kernels otherwise amplify noise beyond the zero-filled error). ``A^H A`` and ``A^H b`` of every pattern are sums of blocks of one
shared ACS correlation tensor ``R[d, u, c, v, c'] = sum_y conj(X[y, u, c]) X[y + d, v, c']``, computed
once per slice with ``kh`` matrix products, so a pattern costs only a gather and a Cholesky solve
(complex128). Kernels are applied in complex64 with batched matrix products; the only Python loops run
over patterns, kernel rows/shifts and memory-bounded chunks of slices.

External calibration (``calibration=``, e.g. for cine): the kernels are fitted on a separate fully
sampled calibration k-space ``(G, C, H, Wc)`` (all of its ``Wc`` columns are the "ACS") instead of
the ACS of each item, and one calibration serves ``S // G`` consecutive items, which may each have
their own ``(W,)`` mask (the mask is then ``(S, W)``): the kernel of a pattern is fitted once per
calibration and applied to every item and missing column with that pattern. A cine slice calibrated
on its time-averaged k-space centre and filled frame by frame is this case (``data.cine_baselines``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.contract import IMAGE_SIZE
from utils.physics import acs_bounds, center_crop_or_pad, ifft2c, rss

__all__ = ["GrappaPattern", "GrappaDefaults", "grappa_patterns", "mask_acceleration", "grappa_defaults",
           "grappa_reconstruct", "grappa_image"]

_MEMORY_BUDGET_BYTES = 512 * 2**20  # working memory per chunk of slices (calibration + application)
_SOLVE_BATCH = 16  # kernels calibrated together (one batched gather and Cholesky solve)


@dataclass(frozen=True)
class GrappaPattern:
    """One kernel geometry: source column ``offsets`` (relative to the target, sorted, non-empty)
    and the missing columns ``targets`` ``(n,)`` that use it."""

    offsets: Tuple[int, ...]
    targets: np.ndarray

    @property
    def span(self) -> int:
        """Columns covered by sources and target together, minus one."""
        return max(max(self.offsets), 0) - min(min(self.offsets), 0)


@dataclass(frozen=True)
class GrappaDefaults:
    """Kernel geometry and regularisation used for one acceleration (see ``GRAPPA_DEFAULTS``)."""

    kernel_size: Tuple[int, int]
    lamda: float
    min_fit: float


#: Defaults per acceleration, chosen from leaderboard-masked SSIM (utils.metrics) measured with
#: ``benchmarks/bench_grappa.py --quality`` on noisy simulator volumes (brain/knee, 4 and 16 coils) and
#: on real brain slices (nibabel's example4d EPI) through simulated coils, challenge ``fixed`` masks,
#: 768 x 396. Noise amplification decides: with lamda 0.01 the acc-8 kernels (two nearest lines) are
#: *worse* than zero-filling on real anatomy (SSIM 0.891 vs 0.958 at 16 coils, 0.867 vs 0.953 at 8);
#: lamda 0.1 / 0.3 / 1 / 3 give 0.958 / 0.970 / 0.974 / 0.973 there and 0.917 / 0.925 / 0.922 / 0.912 on
#: the simulator's 16-coil brain (pygrappa's (5, 5) mdgrappa: 0.960 real, 0.877 simulated; zero-filled
#: 0.958, 0.856); 0.3 is the largest value that also stays above pygrappa with only 4 coils (0.857 vs
#: 0.845; lamda 1: 0.841). Wider fits (min_fit 0.3) and taller kernels (7 rows) were worse at acc 8.
#: At acc 4 the regularisation hardly matters (lamda 0.001 / 0.003 / 0.01 / 0.03: real 8 coils 0.9818 /
#: 0.9818 / 0.9821 / 0.9828, real 16 coils 0.9949 / 0.9942 / 0.9937 / 0.9935, simulated 4 coils 0.9484 /
#: 0.9495 / 0.9506 / 0.9514; pygrappa 0.9780, 0.9918, 0.9462): 0.01 stays.
GRAPPA_DEFAULTS: Dict[int, GrappaDefaults] = {
    4: GrappaDefaults((5, 4), 0.01, 0.6),
    8: GrappaDefaults((5, 4), 0.3, 0.6),
}


def mask_acceleration(mask) -> float:
    """Acceleration of a ``(W,)`` mask outside its ACS block (columns / sampled columns there), or of
    ``(S, W)`` per-item masks without ACS (W / mean sampled columns per item)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask) != 0
    if mask.ndim == 2 and mask.shape[0] > 1:
        return float(mask.shape[1] / max(1.0, mask.sum(1).mean()))
    line = mask.reshape(-1)
    try:
        a, b = acs_bounds(torch.from_numpy(line))
    except ValueError:
        a = b = 0
    outside = np.concatenate([line[:a], line[b:]])
    if outside.size == 0:
        return 1.0
    return float(outside.size / max(1, int(outside.sum())))


def grappa_defaults(acceleration: float) -> GrappaDefaults:
    """The ``GRAPPA_DEFAULTS`` entry of the tabulated acceleration nearest ``acceleration`` (log scale)."""
    keys = sorted(GRAPPA_DEFAULTS)
    return GRAPPA_DEFAULTS[min(keys, key=lambda r: abs(math.log(max(acceleration, 1.0) / r)))]


# ----------------------------------------------------------------------------- input checks


def _to_kspace(kspace) -> Tuple[torch.Tensor, bool]:
    """Complex k-space as a ``(S, C, H, W)`` tensor, and whether the input had no slice axis."""
    if isinstance(kspace, np.ndarray):
        kspace = torch.from_numpy(np.ascontiguousarray(kspace))
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"grappa: kspace must be a torch tensor or numpy array, got {type(kspace).__name__}")
    if not torch.is_complex(kspace):
        raise ValueError(f"grappa: kspace must be complex, got dtype {kspace.dtype}")
    if kspace.dim() not in (3, 4):
        raise ValueError(f"grappa: kspace must be (C, H, W) or (S, C, H, W), got shape {tuple(kspace.shape)}")
    single = kspace.dim() == 3
    return (kspace.unsqueeze(0) if single else kspace), single


def _to_mask(mask, width: int) -> np.ndarray:
    """A ``(W,)`` boolean numpy mask from a numpy/torch mask of W entries (singleton axes allowed)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 0 or any(n != 1 for n in mask.shape[:-1]):
        raise ValueError(f"grappa: mask must be 1-D (W,) (per-item (S, W) masks need a calibration), "
                         f"got shape {mask.shape}")
    mask = mask.reshape(-1)
    if mask.size != width:
        raise ValueError(f"grappa: mask has {mask.size} entries but k-space width W is {width}")
    return mask != 0


def _to_item_masks(mask, items: int, width: int) -> np.ndarray:
    """Boolean ``(S, W)`` masks from a ``(W,)`` mask (shared) or ``(S, W)`` / ``(1, W)`` masks."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.ndim != 2 or mask.shape[0] not in (1, items) or mask.shape[1] != width:
        raise ValueError(f"grappa: mask must be (W,) or (S, W) = (1 or {items}, {width}), got shape {mask.shape}")
    return np.broadcast_to(mask != 0, (items, width))


def _to_calibration(calibration, items: int, coils: int, height: int) -> torch.Tensor:
    """Calibration k-space as complex64 ``(G, C, H, Wc)``, checked against the k-space ``(S, C, H, W)``."""
    cal, _ = _to_kspace(calibration)
    G, Cc, Hc, Wc = cal.shape
    if Cc != coils or Hc != height:
        raise ValueError(f"grappa: calibration {tuple(cal.shape)} must have the k-space's {coils} coils and "
                         f"{height} readout rows")
    if items % G:
        raise ValueError(f"grappa: {G} calibrations do not divide the {items} k-space items")
    if Wc < 3:
        raise ValueError(f"grappa: calibration of {Wc} column(s) is too narrow to calibrate")
    return cal.to(torch.complex64)


def _acs_range(mask: np.ndarray) -> Tuple[int, int]:
    """Half-open ACS column range ``[a, b)``; ValueError if missing or narrower than 3 columns."""
    try:
        a, b = acs_bounds(torch.from_numpy(mask))
    except ValueError as err:
        raise ValueError(f"grappa: mask has no ACS block ({err})") from None
    if b - a < 3:
        raise ValueError(f"grappa: ACS block of {b - a} column(s) around W//2 is too narrow to calibrate")
    return a, b


def _check_kernel(kernel_size: Sequence[int]) -> Tuple[int, int]:
    kh, kw = (int(k) for k in kernel_size)
    if kh < 1 or kh % 2 == 0 or kw < 1:
        raise ValueError(f"grappa: kernel_size must be (odd rows >= 1, source columns >= 1), got {kernel_size}")
    return kh, kw


# ----------------------------------------------------------------------------- sampling patterns


def _nearest_sources(sampled: np.ndarray, missing: np.ndarray, kw: int) -> np.ndarray:
    """Offsets ``(n_missing, kw)`` of the ``kw`` nearest sampled columns (0 marks 'none there')."""
    n_left = kw // 2
    first_right = np.searchsorted(sampled, missing)  # index of the first sampled column > x
    steps = np.concatenate([-np.arange(n_left, 0, -1), np.arange(kw - n_left)])
    idx = first_right[:, None] + steps[None, :]
    valid = (idx >= 0) & (idx < sampled.size)
    offsets = sampled[np.clip(idx, 0, sampled.size - 1)] - missing[:, None]
    return np.where(valid, offsets, 0)


def _shrink(offsets: Tuple[int, ...], max_span) -> Tuple[int, ...]:
    """Drop the farthest sources until the pattern's span fits ``max_span(n_sources)``."""
    offsets = list(offsets)
    while offsets:
        span = max(max(offsets), 0) - min(min(offsets), 0)
        if span <= max_span(len(offsets)):
            break
        offsets.remove(max(offsets, key=abs))
    return tuple(offsets)


def grappa_patterns(mask, kernel_width: int = 4, max_span=None) -> List[GrappaPattern]:
    """Group the missing columns of a ``(W,)`` mask by the offsets of their ``kernel_width`` nearest
    sampled columns. ``max_span(n_sources) -> int`` bounds a pattern's span (default: unbounded);
    columns left with no usable source are omitted (they stay zero-filled).
    """
    mask = np.asarray(mask).reshape(-1) != 0
    sampled, missing = np.flatnonzero(mask), np.flatnonzero(~mask)
    if missing.size == 0 or sampled.size == 0:
        return []
    raw = _nearest_sources(sampled, missing, kernel_width)
    unique, inverse = np.unique(raw, axis=0, return_inverse=True)
    own = []
    for row in unique:
        offsets = tuple(sorted(int(o) for o in row if o != 0))
        own.append(_shrink(offsets, max_span) if max_span is not None else offsets)
    per_column = [own[u] for u in inverse.reshape(-1)]
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for x, offsets in zip(missing.tolist(), per_column):
        if offsets:
            groups.setdefault(offsets, []).append(x)
    return [GrappaPattern(o, np.asarray(t, dtype=np.int64)) for o, t in sorted(groups.items())]


# ----------------------------------------------------------------------------- calibration and application


_CORRELATION_DTYPE = torch.complex128  # ACS correlations and solves; application runs in complex64


def _acs_correlations(kl: torch.Tensor, acs: Tuple[int, int], kh: int) -> torch.Tensor:
    """ACS correlations ``(S, 2kh - 1, Wa, C, Wa, C)``; index ``d + kh - 1`` of axis 1 holds
    ``R_d[u, c, v, c'] = sum_y conj(X[y, a + u, c]) X[(y + d) mod H, a + v, c']`` for ``|d| < kh``.

    ``kl``: channels-last k-space ``(S, H, W, C)``; ``acs = (a, b)`` its ACS columns.
    """
    a, b = acs
    S, H, _, C = kl.shape
    m = kl[:, :, a:b].reshape(S, H, (b - a) * C).to(_CORRELATION_DTYPE)
    mh = m.mH
    pos = [mh @ torch.roll(m, -d, dims=1) for d in range(kh)]  # R_d, d = 0 .. kh-1
    neg = [r.mH for r in pos[:0:-1]]  # R_{-d} = R_d^H, d = kh-1 .. 1
    return torch.stack(neg + pos, dim=1).reshape(S, 2 * kh - 1, b - a, C, b - a, C)


def _diagonal_prefix(corr: torch.Tensor) -> torch.Tensor:
    """Prefix sums along ACS diagonals, ``(2Wa - 1, Wa + 1, S, 2kh - 1, C, C)``.

    ``P[d + Wa - 1, u] = sum_{u' < u} corr[:, :, u', :, u' + d, :]`` (terms beyond the ACS are zero), so
    a sum of correlation blocks over a run of targets is a difference of two entries.
    """
    Wa = corr.shape[2]
    d = torch.arange(-(Wa - 1), Wa, device=corr.device)[:, None]
    u = torch.arange(Wa, device=corr.device)[None, :].expand(d.shape[0], Wa)
    v = u + d
    valid = ((v >= 0) & (v < Wa)).to(corr.real.dtype)
    diag = corr[:, :, u, :, v.clamp(0, Wa - 1), :]  # (2Wa-1, Wa, S, 2kh-1, C, C)
    prefix = torch.cumsum(diag * valid[:, :, None, None, None, None], dim=1)
    return torch.cat([torch.zeros_like(prefix[:, :1]), prefix], dim=1)


def _normal_equations(prefix: torch.Tensor, offsets: torch.Tensor, kh: int):
    """``(A^H A, A^H b)`` of B patterns with k sources each: ``(B, S, n, n)`` and ``(B, S, n, C)``,
    ``n = kh * k * C``; ``offsets``: ``(B, k)`` long.

    Unknowns are ordered (row shift, source, coil); a pattern's fit runs over all rows and every
    ACS-relative target ``t`` with ``t`` and all ``t + offsets`` inside the ACS.
    """
    n_diag, _, S, _, C, _ = prefix.shape
    Wa = (n_diag + 1) // 2
    B, k = offsets.shape
    t0 = -offsets.min(dim=1).values.clamp(max=0)  # targets [t0, t1) per pattern
    t1 = Wa - offsets.max(dim=1).values.clamp(min=0)
    shifts = torch.arange(kh, device=prefix.device)
    o = offsets[:, None, None]  # (B, 1, 1, k)
    # Gram blocks (source row i, source j) x (source row i', source j'): indices (B, kh, kh, k, k).
    lag = (shifts[None, :] - shifts[:, None] + kh - 1)[None, :, :, None, None]
    diag = (o[..., None, :] - o[..., :, None] + Wa - 1)
    start, end = (o + t0[:, None, None, None])[..., None], (o + t1[:, None, None, None])[..., None]
    gram = prefix[diag, end, :, lag] - prefix[diag, start, :, lag]  # (B, kh, kh, k, k, S, C, C)
    gram = gram.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(B, S, kh * k * C, kh * k * C)
    # Right-hand side: source (i, j) against the target column at the centre row, indices (B, kh, k).
    tgt_lag = (kh // 2 - shifts + kh - 1)[None, :, None]
    o = offsets[:, None, :]
    tgt_diag = Wa - 1 - o
    start, end = o + t0[:, None, None], o + t1[:, None, None]
    rhs = prefix[tgt_diag, end, :, tgt_lag] - prefix[tgt_diag, start, :, tgt_lag]  # (B, kh, k, S, C, C)
    rhs = rhs.permute(0, 3, 1, 2, 4, 5).reshape(B, S, kh * k * C, C)
    return gram, rhs


def _solve_kernel(gram: torch.Tensor, rhs: torch.Tensor, lamda: float) -> torch.Tensor:
    """Tikhonov solve ``(G + lam I) w = r`` with ``lam = lamda * ||G||_F / n`` per matrix.

    ``gram``: ``(..., n, n)`` Hermitian; ``rhs``: ``(..., n, C)``.
    """
    n = gram.shape[-1]
    lam = lamda * torch.linalg.matrix_norm(gram) / n
    lam = torch.where(lam > 0, lam, torch.ones_like(lam))  # an all-zero slice gets zero kernels
    gram = gram + torch.diag_embed(lam[..., None].expand(*lam.shape, n).to(gram.dtype))
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(gram))


def _apply(kl_padded: torch.Tensor, weights: torch.Tensor, cols: torch.Tensor, height: int) -> torch.Tensor:
    """Predicted values ``(S, H, n_t, C)`` at one pattern's targets.

    ``kl_padded``: ``(S, H + kh - 1, W, C)``, rows wrapped periodically; ``weights``: ``(S, kh, k*C, C)``;
    ``cols``: ``(n_t, k)`` source columns.
    """
    src = kl_padded[:, :, cols]  # (S, H + kh - 1, n_t, k, C)
    S, _, n_t, k, C = src.shape
    out = None
    for i in range(weights.shape[1]):
        term = src[:, i:i + height].reshape(S, height * n_t, k * C) @ weights[:, i]
        out = term if out is None else out.add_(term)
    return out.reshape(S, height, n_t, C)


def _slice_chunk(shape: Tuple[int, ...], patterns: List[GrappaPattern], acs_width: int, kh: int) -> int:
    """Slices per chunk so that correlation, normal-equation and application buffers fit the budget."""
    _, H, W, C = shape
    k = max(len(p.offsets) for p in patterns)
    n_t = max(p.targets.size for p in patterns)
    lags = 2 * kh - 1
    corr = lags * (acs_width * C) ** 2 * 16 * 3 + H * acs_width * C * 16 * 2  # correlations + prefix sums
    system = min(len(patterns), _SOLVE_BATCH) * (kh * k * C) ** 2 * 16 * 4
    apply = (H + kh) * n_t * (k + 2) * C * 8 + H * W * C * 8 * 3
    return max(1, _MEMORY_BUDGET_BYTES // (corr + system + apply))


def _pattern_batches(patterns: List[GrappaPattern]) -> List[List[GrappaPattern]]:
    """Patterns grouped by their number of sources, at most ``_SOLVE_BATCH`` per group."""
    by_k: Dict[int, List[GrappaPattern]] = {}
    for p in patterns:
        by_k.setdefault(len(p.offsets), []).append(p)
    return [group[i:i + _SOLVE_BATCH] for _, group in sorted(by_k.items()) for i in range(0, len(group), _SOLVE_BATCH)]


def _reconstruct_chunk(kl: torch.Tensor, patterns: List[GrappaPattern], acs: Tuple[int, int],
                       kh: int, lamda: float) -> torch.Tensor:
    """Fill the missing columns of channels-last k-space ``(S, H, W, C)``; returns a new tensor."""
    S, H, W, C = kl.shape
    ph = kh // 2
    padded = torch.cat([kl[:, H - ph:], kl, kl[:, :ph]], dim=1) if ph else kl
    prefix = _diagonal_prefix(_acs_correlations(kl, acs, kh))
    out = kl.clone()
    for batch in _pattern_batches(patterns):
        offsets = torch.as_tensor([p.offsets for p in batch], dtype=torch.long, device=kl.device)
        weights = _solve_kernel(*_normal_equations(prefix, offsets, kh), lamda)
        weights = weights.to(kl.dtype).reshape(len(batch), S, kh, offsets.shape[1] * C, C)
        for pattern, o, w in zip(batch, offsets, weights):
            targets = torch.as_tensor(pattern.targets, dtype=torch.long, device=kl.device)
            out[:, :, targets] = _apply(padded, w, targets[:, None] + o[None, :], H)
    return out


def _span_rule(acs_width: int, kh: int, coils: int, height: int, min_fit: float):
    """``max_span(n_sources)``: fit every kernel on at least ``min_fit`` of the ``acs_width``
    calibration columns, and keep the fit over-determined."""

    def max_span(n_sources: int) -> int:
        fit_columns = max(1, math.ceil(min_fit * acs_width), math.ceil(kh * n_sources * coils / height))
        return acs_width - fit_columns

    return max_span


def grappa_reconstruct(kspace, mask, kernel_size: Optional[Sequence[int]] = None, lamda: Optional[float] = None,
                       min_fit: Optional[float] = None, calibration=None) -> torch.Tensor:
    """GRAPPA-filled k-space, complex64 with the input's shape ``(C, H, W)`` or ``(S, C, H, W)``.

    ``kspace``: complex torch tensor or numpy array; values at unsampled columns are ignored.
    ``mask``: ``(W,)`` 0/1 (numpy or torch) with a centred ACS block. ``kernel_size = (kh, kw)``:
    ``kh`` (odd) readout rows by ``kw`` nearest sampled columns (see the module docstring).
    ``lamda``: relative Tikhonov weight. ``min_fit``: least fraction of ACS columns a kernel must be
    fitted on; wider patterns lose their farthest sources (with the default 0.6 and a 32-line ACS,
    R = 4 kernels keep all 4 sources, R = 8 ones the nearest 2, which generalise better there). Sampled columns are
    returned unchanged; missing columns are predicted; columns with no usable source stay zero.

    ``calibration`` (optional): fully sampled calibration k-space ``(G, C, H, Wc)`` or ``(C, H, Wc)``
    (G = 1), complex, every column used as ACS, ``G`` dividing ``S``; item ``s`` is filled with the
    kernels fitted on calibration ``s // (S // G)``. The mask may then be ``(S, W)``, one per item
    (e.g. per-frame kt masks; no ACS needed in them), or ``(W,)`` for all.

    ``kernel_size``, ``lamda``, ``min_fit`` left ``None`` take the per-acceleration defaults
    (:func:`grappa_defaults` of :func:`mask_acceleration`: acc 4 (5, 4) / 0.01 / 0.6, acc 8 (5, 4) /
    0.3 / 0.6; see ``GRAPPA_DEFAULTS`` for the measurements behind them).
    """
    if kernel_size is None or lamda is None or min_fit is None:
        chosen = grappa_defaults(mask_acceleration(mask))
        kernel_size = chosen.kernel_size if kernel_size is None else kernel_size
        lamda = chosen.lamda if lamda is None else lamda
        min_fit = chosen.min_fit if min_fit is None else min_fit
    kh, kw = _check_kernel(kernel_size)
    k, single = _to_kspace(kspace)
    S, C, H, W = k.shape
    if H < kh:
        raise ValueError(f"grappa: readout size H={H} is smaller than the kernel height {kh}")
    if calibration is not None:
        out = _grappa_calibrated(k, _to_item_masks(mask, S, W), _to_calibration(calibration, S, C, H),
                                 kh, kw, lamda, min_fit)
        return out[0] if single else out
    m = _to_mask(mask, W)
    acs = _acs_range(m)
    max_span = _span_rule(acs[1] - acs[0], kh, C, H, min_fit)
    patterns = grappa_patterns(m, kw, max_span)
    sampled = torch.as_tensor(m, device=k.device)
    kl = torch.where(sampled, k, torch.zeros((), dtype=k.dtype, device=k.device))  # drop unsampled values
    kl = kl.to(torch.complex64).permute(0, 2, 3, 1).contiguous()  # (S, H, W, C)
    if patterns:
        step = _slice_chunk(tuple(kl.shape), patterns, acs[1] - acs[0], kh)
        kl = torch.cat([_reconstruct_chunk(kl[s:s + step], patterns, acs, kh, lamda) for s in range(0, S, step)])
    out = kl.permute(0, 3, 1, 2).contiguous()
    return out[0] if single else out


@dataclass(frozen=True)
class _ItemPattern:
    """One kernel geometry over several items: target ``(items[i], targets[i])`` pairs, ``(n,)`` each."""

    offsets: Tuple[int, ...]
    items: np.ndarray
    targets: np.ndarray


def _item_patterns(masks: np.ndarray, kw: int, max_span) -> List[_ItemPattern]:
    """The sampling patterns of ``(S, W)`` masks, each with the items and columns that use it."""
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    table: Dict[Tuple[int, ...], List[Tuple[np.ndarray, np.ndarray]]] = {}
    for u, m in enumerate(unique):
        items = np.flatnonzero(inverse == u)
        for p in grappa_patterns(m, kw, max_span):
            table.setdefault(p.offsets, []).append((np.repeat(items, p.targets.size), np.tile(p.targets, items.size)))
    return [_ItemPattern(o, np.concatenate([i for i, _ in pairs]), np.concatenate([t for _, t in pairs]))
            for o, pairs in sorted(table.items())]


def _apply_pairs(kl_padded: torch.Tensor, weights: torch.Tensor, items: torch.Tensor, cols: torch.Tensor,
                 groups: torch.Tensor, height: int) -> torch.Tensor:
    """Predicted values ``(n, H, C)`` at ``n`` (item, column) targets.

    ``kl_padded``: ``(S, H + kh - 1, W, C)``; ``weights``: ``(G, kh, k*C, C)``; ``items``, ``groups``
    (calibration of each item): ``(n,)``; ``cols``: ``(n, k)`` source columns.
    """
    src = kl_padded[items[:, None], :, cols].permute(0, 2, 1, 3)  # (n, H + kh - 1, k, C)
    n, _, k, C = src.shape
    out = None
    for i in range(weights.shape[1]):
        rows = src[:, i:i + height].reshape(n, height, k * C)
        term = rows @ (weights[0, i] if weights.shape[0] == 1 else weights[groups, i])
        out = term if out is None else out.add_(term)
    return out


def _grappa_calibrated(k: torch.Tensor, masks: np.ndarray, cal: torch.Tensor, kh: int, kw: int,
                       lamda: float, min_fit: float) -> torch.Tensor:
    """``grappa_reconstruct`` with external calibration: k-space ``(S, C, H, W)``, masks ``(S, W)``,
    calibration ``(G, C, H, Wc)``; returns ``(S, C, H, W)`` complex64."""
    S, C, H, W = k.shape
    G, Wc = cal.shape[0], cal.shape[-1]
    per = S // G
    max_span = _span_rule(Wc, kh, C, H, min_fit)
    sampled = torch.as_tensor(np.array(masks), device=k.device)[:, None, None, :]
    kl = torch.where(sampled, k, torch.zeros((), dtype=k.dtype, device=k.device))
    kl = kl.to(torch.complex64).permute(0, 2, 3, 1).contiguous()  # (S, H, W, C)
    cl = cal.permute(0, 2, 3, 1).contiguous()  # (G, H, Wc, C)
    ph = kh // 2
    k_max = kw
    per_group = ((2 * kh - 1) * (Wc * C) ** 2 * 16 * 3 + H * Wc * C * 16 * 2
                 + _SOLVE_BATCH * (kh * k_max * C) ** 2 * 16 * 4 + per * H * W * C * 8 * 3)
    step = max(1, _MEMORY_BUDGET_BYTES // per_group)
    pair_bytes = (H + kh) * k_max * C * 8 * 3 + H * C * 8 * 2 + kh * k_max * C * C * 8
    pair_chunk = max(1, _MEMORY_BUDGET_BYTES // pair_bytes)
    chunks = []
    for g0 in range(0, G, step):
        g1 = min(G, g0 + step)
        part = kl[g0 * per:g1 * per]
        out = part.clone()
        patterns = _item_patterns(masks[g0 * per:g1 * per], kw, max_span)
        if patterns:
            padded = torch.cat([part[:, H - ph:], part, part[:, :ph]], dim=1) if ph else part
            prefix = _diagonal_prefix(_acs_correlations(cl[g0:g1], (0, Wc), kh))
            for batch in _pattern_batches(patterns):
                offsets = torch.as_tensor([p.offsets for p in batch], dtype=torch.long, device=k.device)
                weights = _solve_kernel(*_normal_equations(prefix, offsets, kh), lamda)
                weights = weights.to(torch.complex64).reshape(len(batch), g1 - g0, kh, offsets.shape[1] * C, C)
                for pattern, o, w in zip(batch, offsets, weights):
                    items = torch.as_tensor(pattern.items, dtype=torch.long, device=k.device)
                    targets = torch.as_tensor(pattern.targets, dtype=torch.long, device=k.device)
                    for a in range(0, items.numel(), pair_chunk):
                        it, tg = items[a:a + pair_chunk], targets[a:a + pair_chunk]
                        out[it, :, tg] = _apply_pairs(padded, w, it, tg[:, None] + o[None, :], it // per, H)
        chunks.append(out)
    return torch.cat(chunks).permute(0, 3, 1, 2).contiguous()


def grappa_image(kspace, mask, out_shape: Sequence[int] = (IMAGE_SIZE, IMAGE_SIZE), **grappa_kwargs) -> torch.Tensor:
    """RSS image of the GRAPPA reconstruction, float32 ``(S, h, w)`` (``(h, w)`` for ``(C, H, W)`` input).

    Coil images ``ifft2c`` of the filled k-space are combined by root-sum-of-squares and centre-cropped
    (or zero-padded, where the image is smaller) to ``out_shape = (h, w)``. Extra keyword arguments go
    to ``grappa_reconstruct``.
    """
    filled = grappa_reconstruct(kspace, mask, **grappa_kwargs)
    image = rss(ifft2c(filled), dim=-3)
    return center_crop_or_pad(image, out_shape).to(torch.float32).contiguous()
