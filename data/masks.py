"""Undersampling masks along the phase-encoding axis (k-space width ``W``).

Every mask is a numpy ``float32`` array of shape ``(W,)`` holding 0/1 (1 = column sampled).

Two families, one entry point (:func:`make_mask`):

* Challenge masks (SNU FastMRI challenge convention; ``acc`` = average spacing of the sampled
  columns *outside* the ACS, an integer):

  - ``fixed``: columns ``c`` with ``c % acc == (W // 2) % acc``, plus the ACS;
  - ``random_offset``: the same equispaced comb with an offset drawn from ``[0, acc)``;
  - ``random_spaced``: one column drawn uniformly in each bin ``[k*acc, (k+1)*acc)`` tiling
    ``[0, W)`` (the last bin may be shorter), plus the ACS.

* fastMRI masks (``acceleration`` = ``W / n_sampled`` in expectation, ACS included), for training on
  public fastMRI data (``train.py --mask_type random|equispaced|equispaced_fraction``):

  - ``random``: each non-ACS column kept with ``p = (W/acc - n_acs) / (W - n_acs)``;
  - ``equispaced``: the comb ``offset::acc`` (``offset`` in ``[0, round(acc))``), plus the ACS;
  - ``equispaced_fraction``: columns ``round(offset + k*s)`` below ``W - 1`` with the adjusted
    step ``s = acc (W - n_acs) / (W - acc n_acs)`` and ``offset`` in ``[0, round(s))``, so that
    ``n_sampled ~ W / acc`` (this is the mask of the fastMRI multi-coil brain data).

ACS rounding: ``n_acs = round(center_fraction * W)`` with Python's :func:`round`, exactly as
fastMRI's ``subsample.py`` does (``round(num_cols * center_fraction)``). The SNU baseline does not
generate masks (its masks ship inside the h5 files), so fastMRI is the reference. For the default
fraction 0.08 the product ``0.08 W = 2W/25`` is never an exact half, so half-up and
half-to-even agree; note that truncation (``int``) would differ (W = 396: 31 instead of 32).
The ACS block is ``[W//2 - n_acs//2, W//2 - n_acs//2 + n_acs)``, which contains the centre
column ``W // 2``; it equals fastMRI's ``pad = (W - n_acs + 1) // 2`` unless W is odd and
``n_acs`` even (then fastMRI's block starts one column later). One convention is used for all
kinds so that :func:`utils.physics.acs_bounds` recovers it.

Reproducible training masks: :class:`MaskSampler` draws each mask from
``numpy.random.default_rng(SeedSequence([seed, epoch, index]))``, so a mask depends only on
``(seed, epoch, index)``: identical across runs and across DataLoader worker counts, different
across epochs and samples.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from utils.physics import acs_bounds

CHALLENGE_KINDS: Tuple[str, ...] = ("fixed", "random_offset", "random_spaced")
FASTMRI_KINDS: Tuple[str, ...] = ("random", "equispaced", "equispaced_fraction")
MASK_KINDS: Tuple[str, ...] = CHALLENGE_KINDS + FASTMRI_KINDS
DEFAULT_CENTER_FRACTION = 0.08
# Integer-only accelerations: kinds that place columns on an integer comb or integer bins.
_INTEGER_ACC_KINDS = ("fixed", "random_offset", "random_spaced", "equispaced")


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_kind(kind: str) -> str:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; allowed kinds: {', '.join(MASK_KINDS)}")
    return kind


def _check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"mask width must be a positive integer, got {width!r}")
    return int(width)


def _check_acc(acc, kind: str) -> float:
    if isinstance(acc, bool) or not isinstance(acc, numbers.Real) or not math.isfinite(acc):
        raise ValueError(f"acceleration for kind {kind!r} must be a finite number, got {acc!r}")
    if acc < 1:
        raise ValueError(f"acceleration for kind {kind!r} must be >= 1, got {acc!r}")
    if kind in _INTEGER_ACC_KINDS:
        if float(acc) != int(acc):
            raise ValueError(f"acceleration for kind {kind!r} must be an integer, got {acc!r}")
        return int(acc)
    return float(acc)


def _check_fraction(center_fraction) -> float:
    if (
        isinstance(center_fraction, bool)
        or not isinstance(center_fraction, numbers.Real)
        or not 0.0 <= center_fraction <= 1.0
    ):
        raise ValueError(f"center fraction must be a number in [0, 1], got {center_fraction!r}")
    return float(center_fraction)


def _need_rng(rng, kind: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"mask kind {kind!r} is random: pass rng=numpy.random.Generator, got {type(rng).__name__}"
        )
    return rng


def _check_offset(offset, high: int, kind: str) -> Optional[int]:
    if offset is None:
        return None
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or not 0 <= offset < high:
        raise ValueError(
            f"offset for kind {kind!r} must be an integer in [0, {high}), got {offset!r}"
        )
    return int(offset)


# ----------------------------------------------------------------------------------------------
# ACS
# ----------------------------------------------------------------------------------------------
def acs_width(width: int, center_fraction: float = DEFAULT_CENTER_FRACTION) -> int:
    """Number of ACS columns: ``round(center_fraction * width)`` (Python/fastMRI rounding)."""
    return int(round(_check_width(width) * _check_fraction(center_fraction)))


def acs_block(width: int, n_acs: int) -> Tuple[int, int]:
    """Half-open ACS column range ``[left, left + n_acs)`` with ``left = width//2 - n_acs//2``."""
    width = _check_width(width)
    if not 0 <= n_acs <= width:
        raise ValueError(f"ACS width {n_acs} does not fit in mask width {width}")
    left = width // 2 - n_acs // 2
    return left, left + n_acs


def center_mask(width: int, n_acs: int) -> np.ndarray:
    """Boolean ``(width,)`` mask of the ``n_acs`` centred ACS columns."""
    left, right = acs_block(width, n_acs)
    out = np.zeros(width, dtype=bool)
    out[left:right] = True
    return out


# ----------------------------------------------------------------------------------------------
# challenge masks (acc = spacing outside the ACS)
# ----------------------------------------------------------------------------------------------
def _comb(width: int, step: int, offset: int) -> np.ndarray:
    """Boolean ``(width,)`` mask of the columns ``c`` with ``c % step == offset``."""
    return np.arange(width) % step == offset


def fixed_mask(width: int, acc: int, center_fraction: float = DEFAULT_CENTER_FRACTION) -> np.ndarray:
    """Challenge ``fixed`` mask: comb with offset ``(W//2) % acc`` plus ACS; float32 ``(W,)``."""
    width, acc = _check_width(width), _check_acc(acc, "fixed")
    lines = _comb(width, acc, (width // 2) % acc) | center_mask(width, acs_width(width, center_fraction))
    return lines.astype(np.float32)


def _comb_with_acs(
    kind: str, width: int, acc: int, rng: Optional[np.random.Generator], center_fraction: float, offset: Optional[int]
) -> np.ndarray:
    """Comb ``offset::acc`` (offset drawn from ``[0, acc)`` unless given) plus the ACS; float32 ``(W,)``."""
    width, acc = _check_width(width), _check_acc(acc, kind)
    offset = _check_offset(offset, acc, kind)
    if offset is None:
        offset = int(_need_rng(rng, kind).integers(0, acc))
    lines = _comb(width, acc, offset) | center_mask(width, acs_width(width, center_fraction))
    return lines.astype(np.float32)


def random_offset_mask(
    width: int,
    acc: int,
    rng: np.random.Generator,
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    offset: Optional[int] = None,
) -> np.ndarray:
    """Challenge ``random_offset`` mask: comb with offset in ``[0, acc)`` plus ACS; float32 ``(W,)``."""
    return _comb_with_acs("random_offset", width, acc, rng, center_fraction, offset)


def random_spaced_mask(
    width: int, acc: int, rng: np.random.Generator, center_fraction: float = DEFAULT_CENTER_FRACTION
) -> np.ndarray:
    """Challenge ``random_spaced`` mask: one uniform column per bin of width ``acc``, plus ACS.

    Bins ``[k*acc, min((k+1)*acc, W))`` tile ``[0, W)``; returns float32 ``(W,)``.
    """
    width, acc = _check_width(width), _check_acc(acc, "random_spaced")
    rng = _need_rng(rng, "random_spaced")
    starts = np.arange(0, width, acc)
    sizes = np.minimum(starts + acc, width) - starts
    picks = starts + rng.integers(0, sizes)
    lines = center_mask(width, acs_width(width, center_fraction))
    lines[picks] = True
    return lines.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# fastMRI masks (acc = W / n_sampled, ACS included)
# ----------------------------------------------------------------------------------------------
def _outside_budget(width: int, n_acs: int, acc: float, kind: str) -> None:
    """fastMRI kinds need ``n_acs * acc < W`` (otherwise the ACS alone exceeds ``W / acc``)."""
    if n_acs * acc >= width:
        raise ValueError(
            f"kind {kind!r}: ACS of {n_acs} columns times acceleration {acc} must be < width {width}"
        )


def fastmri_random_mask(
    width: int, acc: float, rng: np.random.Generator, center_fraction: float = DEFAULT_CENTER_FRACTION
) -> np.ndarray:
    """fastMRI ``random``: Bernoulli columns, ``E[n_sampled] = W / acc``, plus ACS; float32 ``(W,)``."""
    width, acc = _check_width(width), _check_acc(acc, "random")
    n_acs = acs_width(width, center_fraction)
    _outside_budget(width, n_acs, acc, "random")
    prob = (width / acc - n_acs) / (width - n_acs)
    lines = (_need_rng(rng, "random").random(width) < prob) | center_mask(width, n_acs)
    return lines.astype(np.float32)


def fastmri_equispaced_mask(
    width: int,
    acc: int,
    rng: Optional[np.random.Generator],
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    offset: Optional[int] = None,
) -> np.ndarray:
    """fastMRI ``equispaced``: comb ``offset::acc``, offset in ``[0, acc)``, plus ACS; float32 ``(W,)``."""
    return _comb_with_acs("equispaced", width, acc, rng, center_fraction, offset)


def adjusted_step(width: int, n_acs: int, acc: float) -> float:
    """Step of ``equispaced_fraction`` so that ``n_acs + (W - n_acs)/step = W / acc``."""
    return acc * (width - n_acs) / (width - acc * n_acs)


def fastmri_equispaced_fraction_mask(
    width: int,
    acc: float,
    rng: Optional[np.random.Generator],
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    offset: Optional[int] = None,
) -> np.ndarray:
    """fastMRI ``equispaced_fraction``: columns ``round(offset + k*step) < W - 1`` plus ACS.

    ``step = adjusted_step(W, n_acs, acc)``; ``offset`` in ``[0, round(step))``; float32 ``(W,)``.
    """
    width, acc = _check_width(width), _check_acc(acc, "equispaced_fraction")
    n_acs = acs_width(width, center_fraction)
    _outside_budget(width, n_acs, acc, "equispaced_fraction")
    step = adjusted_step(width, n_acs, acc)
    offset = _check_offset(offset, round(step), "equispaced_fraction")
    if offset is None:
        offset = int(_need_rng(rng, "equispaced_fraction").integers(0, round(step)))
    positions = np.round(np.arange(offset, width - 1, step)).astype(np.int64)
    lines = center_mask(width, n_acs)
    lines[positions] = True
    return lines.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def make_mask(
    kind: str,
    width: int,
    acc: float,
    rng: Optional[np.random.Generator] = None,
    *,
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    offset: Optional[int] = None,
) -> np.ndarray:
    """Build one mask of ``kind`` (see :data:`MASK_KINDS`) for k-space width ``width`` at acceleration
    ``acc`` with ACS fraction ``center_fraction`` (default 0.08). ``rng`` (a numpy Generator) is required
    by every random kind. ``offset`` pins the comb offset of ``random_offset`` / ``equispaced`` /
    ``equispaced_fraction``. Returns float32 ``(width,)`` of 0/1.
    """
    kind = _check_kind(kind)
    width = _check_width(width)
    if acc is None:
        raise ValueError(f"mask kind {kind!r}: give acc")
    cf = _check_fraction(center_fraction)
    if offset is not None and kind not in ("random_offset", "equispaced", "equispaced_fraction"):
        raise ValueError(
            f"offset applies only to random_offset/equispaced/equispaced_fraction, not {kind!r}"
        )

    if kind == "fixed":
        return fixed_mask(width, acc, cf)
    if kind == "random_offset":
        return random_offset_mask(width, acc, rng, cf, offset)
    if kind == "random_spaced":
        return random_spaced_mask(width, acc, rng, cf)
    if kind == "random":
        return fastmri_random_mask(width, acc, rng, cf)
    if kind == "equispaced":
        return fastmri_equispaced_mask(width, acc, rng, cf, offset)
    return fastmri_equispaced_fraction_mask(width, acc, rng, cf, offset)


# ----------------------------------------------------------------------------------------------
# reproducible sampling for training
# ----------------------------------------------------------------------------------------------
def _check_counter(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"MaskSampler {name} must be a non-negative integer, got {value!r}")
    return int(value)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The training-mask Generator: ``default_rng(SeedSequence([seed, epoch, index]))`` (all >= 0)."""
    entropy = [_check_counter(seed, "seed"), _check_counter(epoch, "epoch"), _check_counter(index, "index")]
    return np.random.default_rng(np.random.SeedSequence(entropy))


class MaskSampler:
    """Reproducible mask source for training: ``sample(width, epoch, index)``.

    Each call uses a fresh ``default_rng(SeedSequence([seed, epoch, index]))``, so the mask is a
    pure function of ``(seed, epoch, index, width)``: no state is shared between DataLoader
    workers, and the masks do not depend on the number of workers or the order of calls.
    Extra keyword arguments go to :func:`make_mask` (e.g. ``center_fraction``, ``accelerations``).
    """

    def __init__(self, kind: str, acc: Optional[float], seed: int, **mask_kwargs):
        self.kind = _check_kind(kind)
        self.acc = acc
        self.seed = _check_counter(seed, "seed")
        self.mask_kwargs = dict(mask_kwargs)
        make_mask(self.kind, 396, self.acc, self.rng(0, 0), **self.mask_kwargs)  # fail early on bad args

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The Generator for ``(epoch, index)``: ``default_rng(SeedSequence([seed, epoch, index]))``."""
        return sample_rng(self.seed, epoch, index)

    def sample(self, width: int, epoch: int, index: int) -> np.ndarray:
        """Mask for sample ``index`` in ``epoch``: float32 ``(width,)`` of 0/1."""
        return make_mask(self.kind, width, self.acc, self.rng(epoch, index), **self.mask_kwargs)

    def __repr__(self) -> str:
        return f"MaskSampler(kind={self.kind!r}, acc={self.acc!r}, seed={self.seed}, {self.mask_kwargs})"


# ----------------------------------------------------------------------------------------------
# acceleration estimate
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccelerationEstimate:
    """What a 1-D mask says about its sampling (all counts in columns).

    ``acs_left``/``acs_right``: half-open contiguous sampled block around ``W // 2`` (it includes
    any sampled column adjacent to the nominal ACS). ``spacing``: mean gap between consecutive
    sampled columns outside that block (challenge meaning of acc); ``inf`` when only that block is
    sampled (no acceleration can be read: :func:`data.formats.read_kspace_file` rejects such masks, and
    ``inf`` is not JSON, so report it as null). ``ratio``: ``W / n_sampled`` (fastMRI meaning, for
    information). ``acc``: the supported acceleration nearest (in log scale) to ``spacing``.
    """

    width: int
    n_sampled: int
    acs_left: int
    acs_right: int
    acs_width: int
    n_outside: int
    spacing: float
    ratio: float
    acc: float


def _as_line(mask) -> np.ndarray:
    """Boolean ``(W,)`` view of a mask given as numpy/torch/array-like with one non-unit axis."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    line = np.asarray(mask)
    if line.ndim != 1:
        if sum(s != 1 for s in line.shape) > 1:
            raise ValueError(f"mask must be 1-D (W,) up to unit axes, got shape {tuple(line.shape)}")
        line = line.reshape(-1)
    if line.size == 0:
        raise ValueError("mask is empty")
    return line != 0


def _outside_gaps(columns: np.ndarray, left: int, right: int) -> np.ndarray:
    """Gaps between consecutive sampled columns on each side of the ACS block (no gap crosses it)."""
    return np.concatenate([np.diff(columns[columns < left]), np.diff(columns[columns >= right])])


def nearest_supported(value: float, supported: Sequence[float]) -> float:
    """Supported value nearest to ``value`` in log scale (ties go to the larger one)."""
    options = sorted(supported)
    if math.isinf(value):
        return options[-1]
    distance = [abs(math.log(value / s)) for s in options]
    best = min(distance)
    return max(s for s, d in zip(options, distance) if d <= best + 1e-12)


def estimate_acceleration(mask, supported: Sequence[float] = (4, 8)) -> AccelerationEstimate:
    """Estimate ACS, spacing and the nearest supported acceleration of a ``(W,)`` mask in the challenge
    meaning (acc = mean spacing outside the ACS; e.g. an unseen 9x routes to 8). Raises ``ValueError`` for
    a mask without a sampled centre column ``W // 2``.
    """
    supported = tuple(supported)
    if not supported or any(
        isinstance(s, bool) or not isinstance(s, numbers.Real) or not s >= 1 for s in supported
    ):
        raise ValueError(f"supported accelerations must be numbers >= 1, got {supported!r}")
    line = _as_line(mask)
    width = line.size
    try:
        left, right = acs_bounds(torch.from_numpy(line))
    except ValueError as err:
        raise ValueError(f"cannot estimate acceleration: {err}") from None
    columns = np.flatnonzero(line)
    n_outside = int(columns.size - (right - left))
    gaps = _outside_gaps(columns, left, right)
    if gaps.size:
        spacing = float(gaps.mean())
    elif n_outside:
        spacing = (width - (right - left)) / n_outside
    else:
        spacing = 1.0 if right - left == width else math.inf
    return AccelerationEstimate(
        width=width,
        n_sampled=int(columns.size),
        acs_left=left,
        acs_right=right,
        acs_width=right - left,
        n_outside=n_outside,
        spacing=spacing,
        ratio=width / columns.size,
        acc=nearest_supported(spacing, supported),
    )
