"""Cardiac cine undersampling masks over ``(t, ky, kx)`` (CMRxRecon 2023 and 2024).

Every mask is a numpy ``float32`` array of 0/1 shaped ``(t, ky, kx)``: frames, phase-encoding lines,
readout samples, i.e. the last three axes of a CMRxRecon k-space as h5py reads it
(``(t, slices, coils, ky, kx)``; kx is the readout, 2x oversampled in the challenge data). A line mask
is constant along kx; ``kt_radial`` is a genuinely 2-D pattern. One entry point,
:func:`make_cine_mask`, four families (the names used on command lines):

``uniform``
    CMRxRecon 2023 (ACS 24 lines, R 4/8/10) and 2024 Task 1 (``acs=16``): the comb
    ``ky % R == offset`` plus the centred ACS block, the same mask in every frame. The challenge
    generator uses offset 0 (MATLAB ``1:R:ny``); a generator draws the offset from ``[0, R)``.
``kt_uniform``
    2024 Task 2 ktUniform: frame ``t`` samples ``(ky - t - offset) % R == 0`` (the sampling offset
    moves by one line per frame, as the organisers' Toeplitz construction does) plus 16 ACS lines.
``kt_gaussian``
    2024 Task 2 ktGaussian: in every frame a new draw of ``round(ky / R)`` distinct lines over the
    whole ky range with the organisers' variable density ``0.1 + alpha / (1 - alpha) *
    exp(-p**2 / (ky/5)**2)`` (``p`` = line - ``ky // 2``, ``alpha`` 0.2 as their Task 2 generator),
    plus 16 ACS lines (draws landing in the ACS are absorbed by it, as in their generator). The draw is
    weighted sampling without replacement (vectorised over frames); theirs draws with replacement and
    moves duplicates to the nearest free line of the frame: the mean number of lines outside the ACS
    agrees within 1 % (ky 204 and 246, every R).
``kt_radial``
    2024 Task 2 ktRadial: ``floor(180 / (0.6 R))`` straight spokes through the k-space centre
    ``(ky // 2, kx // 2)``, equally spaced in angle over 180 degrees, on the Cartesian grid in pixel
    units (non-square, readout oversampling kept, as the organisers' masks); a pixel is sampled when
    its centre lies within half a pixel of a spoke and within ``max(ky, kx) / 2`` of the centre (their
    ``cropcorner``). The spoke set rotates from frame to frame by the golden angle
    ``180 (3 - sqrt 5) = 137.51`` degrees (``rotation="golden"``, the organisers use 137.5) or by
    ``spacing / t`` (``rotation="uniform"``: over the cycle the spokes interleave evenly). Plus a
    centred 16 x 16 block (ACS). A generator draws the starting angle in ``[0, spacing)``.

Acceleration convention (the organisers'): the ACS is not counted in R. The combs place a line
every R lines over the whole ky range (about ``(ky - acs) / R`` of them outside the ACS), ktGaussian
draws ``ky / R`` lines per frame, both plus the ACS, so the sampled fraction is well above ``1 / R``:
2023 R10 on 246 lines samples 47 lines, 5.2x in total. For ``kt_radial`` R is the organisers'
nominal value (their ``0.6 R`` spoke rule makes ``total / sampled`` roughly R).

Estimation (:func:`estimate_cine_mask`, for routing): the family from the structure (a 2-D pattern,
i.e. some line not constant along kx -> ``kt_radial``; every frame the same -> ``uniform``; each frame a
complete comb of one spacing outside the ACS, with offsets changing -> ``kt_uniform``; otherwise
``kt_gaussian``); the acceleration as the offered R nearest in log scale to: for a comb, its
spacing; for ``kt_gaussian``, the R whose masks from this module have a mean number of lines per frame
outside the ACS (calibrated once per shape on 512 seeded frames) nearest to the observed mean; for
``kt_radial``, likewise with the mean sampled pixels per frame; for any other line mask,
``(ky - n_acs) / mean(lines outside the ACS per frame)`` (``n_acs``: the contiguous block around
``ky // 2`` sampled in every frame). Plain ``total / sampled`` would route the 2023 masks wrongly (R10
on 246 lines is 5.2x in total, nearer 4 than 10), so the ACS is taken out first. A ktGaussian estimate
is statistical: with 12 frames of 246 lines neighbouring R 20 and 24 are about 3 standard deviations
apart.

Training masks: :class:`CineMaskSampler` draws each mask from
:func:`data.masks.sample_rng` ``(seed, epoch, index)`` exactly as the SNU :class:`data.masks.MaskSampler`
does, so a mask is a pure function of ``(seed, epoch, index, shape)``.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from data.masks import acs_block, center_mask, nearest_supported, sample_rng

__all__ = [
    "CINE_FAMILIES",
    "DEFAULT_ACS",
    "ACS_2023",
    "ACS_2024",
    "ACCELERATIONS_2023",
    "ACCELERATIONS_2024_TASK2",
    "OFFERED_ACCELERATIONS",
    "GOLDEN_ANGLE_DEG",
    "RADIAL_SPOKE_FACTOR",
    "GAUSSIAN_ALPHA",
    "make_cine_mask",
    "radial_spokes",
    "gaussian_lines",
    "CineMaskEstimate",
    "estimate_cine_mask",
    "CineMaskSampler",
]

CINE_FAMILIES: Tuple[str, ...] = ("uniform", "kt_uniform", "kt_gaussian", "kt_radial")
ACS_2023 = 24  # CMRxRecon 2023: central ky lines always sampled
ACS_2024 = 16  # CMRxRecon 2024 Task 1 and Task 2 (lines, or the radial 16 x 16 block)
DEFAULT_ACS = {"uniform": ACS_2023, "kt_uniform": ACS_2024, "kt_gaussian": ACS_2024, "kt_radial": ACS_2024}
ACCELERATIONS_2023: Tuple[int, ...] = (4, 8, 10)  # 2023 and 2024 Task 1
ACCELERATIONS_2024_TASK2: Tuple[int, ...] = (4, 8, 12, 16, 20, 24)
OFFERED_ACCELERATIONS: Tuple[int, ...] = (4, 8, 10, 12, 16, 20, 24)
GOLDEN_ANGLE_DEG = 180.0 * (3.0 - math.sqrt(5.0))  # 137.507...
RADIAL_SPOKE_FACTOR = 0.6  # the organisers' ktRadial uses floor(180 / (0.6 R)) spokes
GAUSSIAN_ALPHA = 0.2  # the organisers' Task 2 ktGaussian density parameter
_COMB_FAMILIES = ("uniform", "kt_uniform")
_ROTATIONS = ("golden", "uniform")
_RADIAL_CALIBRATION_FRAMES = 24  # frames averaged for the expected radial count per frame
_GAUSSIAN_CALIBRATION_FRAMES = 512  # seeded frames averaged for the expected ktGaussian count

RngLike = Union[None, int, np.random.Generator]


# --------------------------------------------------------------------------------------------- checks


def _check_family(family) -> str:
    if family not in CINE_FAMILIES:
        raise ValueError(f"unknown cine mask family {family!r}; allowed: {' | '.join(CINE_FAMILIES)}")
    return family


def _check_shape(shape) -> Tuple[int, int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in dims):
        raise ValueError(f"cine mask shape must be three positive integers (t, ky, kx), got {shape!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def _check_acceleration(acceleration, family: str) -> float:
    if isinstance(acceleration, bool) or not isinstance(acceleration, numbers.Real) or not math.isfinite(acceleration):
        raise ValueError(f"{family}: acceleration must be a finite number, got {acceleration!r}")
    if acceleration < 1:
        raise ValueError(f"{family}: acceleration must be >= 1, got {acceleration!r}")
    if family in _COMB_FAMILIES:
        if float(acceleration) != int(acceleration):
            raise ValueError(f"{family}: acceleration must be an integer (comb spacing), got {acceleration!r}")
        return int(acceleration)
    return float(acceleration)


def _check_acs(acs, family: str, size: int) -> int:
    if acs is None:
        acs = DEFAULT_ACS[family]
    if isinstance(acs, bool) or not isinstance(acs, numbers.Integral) or acs < 0:
        raise ValueError(f"{family}: acs must be a non-negative integer, got {acs!r}")
    if acs > size:
        raise ValueError(f"{family}: ACS of {acs} lines does not fit in {size} k-space lines")
    return int(acs)


def _as_rng(rng: RngLike, family: str) -> Optional[np.random.Generator]:
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"{family}: rng must be None, a non-negative int seed or a numpy Generator, got {rng!r}")


# --------------------------------------------------------------------------------------------- generators


def _comb_lines(t: int, ky: int, acc: int, shift: int, offset: int) -> np.ndarray:
    """Boolean ``(t, ky)``: line ``k`` in frame ``f`` when ``(k - shift*f - offset) % acc == 0``."""
    k = np.arange(ky)[None, :]
    f = np.arange(t)[:, None]
    return (k - shift * f - offset) % acc == 0


def gaussian_lines(ky: int, acceleration: float) -> int:
    """Distinct lines ``kt_gaussian`` draws per frame (before the ACS): ``round(ky / R)`` in [1, ky]."""
    return int(min(ky, max(1, round(ky / acceleration))))


def _gaussian_lines(t: int, ky: int, acc: float, acs: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(t, ky)``: per frame ``round(ky / R)`` distinct lines drawn with the variable density,
    plus the ACS.

    Weighted sampling without replacement, vectorised over frames (Efraimidis-Spirakis): each line
    gets the key ``log(u) / w`` with ``u ~ U(0, 1)``; the ``n`` largest keys win.
    """
    n = gaussian_lines(ky, acc)
    p = (np.arange(ky) - ky // 2).astype(np.float64)
    weight = 0.1 + alpha / (1.0 - alpha) * np.exp(-(p**2) / (ky / 5.0) ** 2)
    keys = np.log1p(-rng.random((t, ky))) / weight[None, :]  # log(1 - u): never log(0)
    lines = np.zeros((t, ky), dtype=bool)
    picks = np.argpartition(-keys, n - 1, axis=1)[:, :n]
    np.put_along_axis(lines, picks, True, axis=1)
    return lines | center_mask(ky, acs)[None, :]


def radial_spokes(acceleration: float) -> int:
    """Number of ktRadial spokes for nominal ``R``: ``floor(180 / (0.6 R))`` (the organisers' rule)."""
    return max(1, int(math.floor(180.0 / (RADIAL_SPOKE_FACTOR * acceleration) + 1e-9)))


def _radial(t: int, ky: int, kx: int, acc: float, acs: int, rotation: str, start: float) -> np.ndarray:
    """Boolean ``(t, ky, kx)`` pseudo-radial mask (module docstring), start angle ``start`` radians."""
    spacing = math.pi / radial_spokes(acc)
    step = math.radians(GOLDEN_ANGLE_DEG) if rotation == "golden" else spacing / t
    theta = start + step * np.arange(t)  # (t,)
    dy = (np.arange(ky) - ky // 2).astype(np.float64)[:, None]
    dx = (np.arange(kx) - kx // 2).astype(np.float64)[None, :]
    rho = np.hypot(dy, dx)
    phi = np.arctan2(dy, dx)
    delta = np.mod(phi[None] - theta[:, None, None], spacing)  # angle past the previous spoke
    delta = np.minimum(delta, spacing - delta)
    on_spoke = (rho[None] * np.sin(delta) < 0.5) & (rho[None] <= max(ky, kx) / 2.0)
    rows, cols = acs_block(ky, min(acs, ky)), acs_block(kx, min(acs, kx))
    on_spoke[:, rows[0]:rows[1], cols[0]:cols[1]] = True
    return on_spoke


def make_cine_mask(
    family: str,
    shape: Sequence[int],
    acceleration: float,
    rng: RngLike = None,
    *,
    acs: Optional[int] = None,
    rotation: str = "golden",
    alpha: float = GAUSSIAN_ALPHA,
) -> np.ndarray:
    """One cine mask: float32 ``(t, ky, kx)`` of 0/1 (``shape = (t, ky, kx)``, ky phase, kx readout).

    ``family``: ``uniform | kt_uniform | kt_gaussian | kt_radial`` (module docstring);
    ``acceleration``: R (an integer for the comb families); ``acs``: ACS lines (the square block's side
    for ``kt_radial``), default :data:`DEFAULT_ACS` (24 for ``uniform`` as in 2023, 16 otherwise; give
    16 for 2024 Task 1). ``rng``: ``None`` gives the challenge's deterministic mask (comb offset 0,
    radial start angle 0; ``kt_gaussian`` needs one), an int seeds ``numpy.random.default_rng``, a
    Generator is used as is (random comb offset / start angle / draws). ``rotation``
    (``kt_radial``): ``golden`` or ``uniform``. ``alpha`` (``kt_gaussian``): density in [0, 1).
    """
    family = _check_family(family)
    t, ky, kx = _check_shape(shape)
    acc = _check_acceleration(acceleration, family)
    acs = _check_acs(acs, family, ky if family != "kt_radial" else min(ky, kx))
    gen = _as_rng(rng, family)
    if family in _COMB_FAMILIES:
        offset = 0 if gen is None else int(gen.integers(0, acc))
        lines = _comb_lines(t, ky, acc, 1 if family == "kt_uniform" else 0, offset) | center_mask(ky, acs)[None]
        return np.ascontiguousarray(np.broadcast_to(lines[:, :, None], (t, ky, kx)), dtype=np.float32)
    if family == "kt_gaussian":
        if gen is None:
            raise ValueError("kt_gaussian masks are random: pass rng (a seed or a numpy Generator)")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha < 1.0:
            raise ValueError(f"kt_gaussian: alpha must be a number in [0, 1), got {alpha!r}")
        lines = _gaussian_lines(t, ky, acc, acs, float(alpha), gen)
        return np.ascontiguousarray(np.broadcast_to(lines[:, :, None], (t, ky, kx)), dtype=np.float32)
    if rotation not in _ROTATIONS:
        raise ValueError(f"kt_radial: rotation must be one of {_ROTATIONS}, got {rotation!r}")
    start = 0.0 if gen is None else float(gen.uniform(0.0, math.pi / radial_spokes(acc)))
    return _radial(t, ky, kx, acc, acs, rotation, start).astype(np.float32)


# --------------------------------------------------------------------------------------------- estimation


class CineMaskEstimate(NamedTuple):
    """What :func:`estimate_cine_mask` reads from a mask; unpacks as ``(acceleration, family)``."""

    acceleration: float
    family: str


def _as_kt(mask) -> np.ndarray:
    """Boolean ``(t, ky, kx)`` from a mask given as ``(ky, kx)`` or ``(t, ky, kx)`` (numpy/torch/list)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"cine mask must be (ky, kx) or (t, ky, kx), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"cine mask is empty (shape {tuple(arr.shape)})")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise ValueError("cine mask holds non-finite values")
    out = arr != 0
    if not out.any():
        raise ValueError("cine mask samples nothing")
    return out


def _common_block(lines: np.ndarray) -> Tuple[int, int]:
    """Half-open contiguous block around ``ky // 2`` sampled in every frame of ``(t, ky)`` lines
    (empty ``(c, c)`` when the centre line is missing from some frame)."""
    every = lines.all(axis=0)
    centre = every.size // 2
    if not every[centre]:
        return centre, centre
    missing = np.flatnonzero(~every)
    left_gaps, right_gaps = missing[missing < centre], missing[missing > centre]
    left = int(left_gaps.max()) + 1 if left_gaps.size else 0
    right = int(right_gaps.min()) if right_gaps.size else every.size
    return left, right


def _comb_spacing(outside: np.ndarray, left: int, right: int) -> Optional[int]:
    """Spacing ``s`` when every frame of ``outside`` ``(t, ky)`` is a complete comb of one spacing
    (all lines ``k`` outside ``[left, right)`` with ``k % s`` equal to that frame's residue), else None.

    ``s`` is the smallest gap between lines on the same side of the block; with at most one line per
    side in every frame (small ky, large R) the smallest ``s`` that makes every frame a complete comb.
    """
    t, ky = outside.shape
    frame, line = np.nonzero(outside)
    if frame.size == 0 or np.unique(frame).size != t:
        return None
    side = line >= right  # lines left of the block vs right of it; no gap spans the block
    same = (frame[1:] == frame[:-1]) & (side[1:] == side[:-1])
    gaps = np.diff(line)[same]
    candidates = [int(gaps.min())] if gaps.size else range(2, ky)
    first = np.unique(frame, return_index=True)[1]  # index of each frame's first line
    k = np.arange(ky)
    for spacing in candidates:
        if spacing < 2:
            return None
        residue = line[first] % spacing  # (t,)
        expected = k[None, :] % spacing == residue[:, None]
        expected[:, left:right] = False
        if np.array_equal(expected, outside):
            return spacing
    return None


@functools.lru_cache(maxsize=256)
def _radial_count(ky: int, kx: int, acceleration: float, acs: int) -> float:
    """Mean sampled pixels per frame of this module's ``kt_radial`` mask (golden rotation)."""
    mask = _radial(_RADIAL_CALIBRATION_FRAMES, ky, kx, acceleration, acs, "golden", 0.0)
    return float(mask.sum()) / _RADIAL_CALIBRATION_FRAMES


@functools.lru_cache(maxsize=256)
def _gaussian_outside(ky: int, acs: int, acceleration: float) -> float:
    """Mean lines per frame outside the ``acs`` ACS of this module's ``kt_gaussian`` (seeded draw)."""
    lines = _gaussian_lines(_GAUSSIAN_CALIBRATION_FRAMES, ky, acceleration, acs, GAUSSIAN_ALPHA,
                            np.random.default_rng(0))
    lines[:, center_mask(ky, acs)] = False
    return float(lines.sum()) / _GAUSSIAN_CALIBRATION_FRAMES


def _nearest_by_count(observed: float, expected: Dict[float, float]) -> float:
    """The R whose expected count is nearest to ``observed`` in log scale (ties to the larger R)."""
    if observed <= 0:
        return max(expected)
    distance = {r: abs(math.log(observed / max(e, 1e-9))) for r, e in expected.items()}
    best = min(distance.values())
    return max(r for r, d in distance.items() if d <= best + 1e-12)


def _check_supported(supported) -> Tuple[float, ...]:
    values = tuple(supported)
    if not values or any(isinstance(s, bool) or not isinstance(s, numbers.Real) or not s >= 1 for s in values):
        raise ValueError(f"supported accelerations must be numbers >= 1, got {supported!r}")
    return values


def estimate_cine_mask(mask, supported: Sequence[float] = OFFERED_ACCELERATIONS) -> CineMaskEstimate:
    """Acceleration and family of a cine mask ``(ky, kx)`` or ``(t, ky, kx)``, for routing.

    Returns :class:`CineMaskEstimate` ``(acceleration, family)``: ``acceleration`` one of ``supported``
    (nearest in log scale, ties to the larger), ``family`` one of :data:`CINE_FAMILIES`. The rules are
    in the module docstring. Raises ``ValueError`` for a mask of the wrong rank, empty, non-finite or
    sampling nothing.
    """
    supported = _check_supported(supported)
    kt = _as_kt(mask)
    t, ky, kx = kt.shape
    if not (kt == kt[:, :, :1]).all():  # some line not constant along the readout: a 2-D pattern
        expected = {r: _radial_count(ky, kx, float(r), ACS_2024) for r in supported}
        return CineMaskEstimate(_nearest_by_count(float(kt.sum()) / t, expected), "kt_radial")
    lines = kt[:, :, 0]
    left, right = _common_block(lines)
    outside = lines.copy()
    outside[:, left:right] = False
    spacing = _comb_spacing(outside, left, right)
    if (lines == lines[:1]).all():
        family = "uniform"
    else:
        family = "kt_uniform" if spacing is not None else "kt_gaussian"
    if spacing is not None:  # a comb: R is its spacing
        return CineMaskEstimate(nearest_supported(spacing, supported), family)
    if family == "kt_gaussian":  # against the expected count outside the nominal ACS
        width = right - left
        acs = max([a for a in (ACS_2024, ACS_2023) if a <= width], default=width)
        observed = lines.copy()
        observed[:, center_mask(ky, acs)] = False
        expected = {r: _gaussian_outside(ky, acs, float(r)) for r in supported}
        return CineMaskEstimate(_nearest_by_count(float(observed.sum()) / t, expected), family)
    per_frame = float(outside.sum()) / t
    ratio = (ky - (right - left)) / per_frame if per_frame else math.inf
    return CineMaskEstimate(nearest_supported(ratio, supported), family)


# --------------------------------------------------------------------------------------------- training


def _as_choices(value, name: str) -> Tuple:
    if isinstance(value, (str, numbers.Real)):
        return (value,)
    choices = tuple(value)
    if not choices:
        raise ValueError(f"CineMaskSampler: {name} must not be empty")
    return choices


class CineMaskSampler:
    """Reproducible cine masks for training: ``sample(shape, epoch, index)``.

    ``family`` and ``acceleration`` are one value or a sequence to draw from per sample (a 2024
    Task 2 model sees all three kt patterns and R 4..24). Each call draws, from a fresh
    :func:`data.masks.sample_rng` ``(seed, epoch, index)``, the family, then the acceleration (both
    uniformly by index), then the mask with that generator; so a mask is a pure function of
    ``(seed, epoch, index, shape)``, the same in any DataLoader worker and across runs. Extra keyword
    arguments go to :func:`make_cine_mask` (``acs``, ``rotation``, ``alpha``).
    """

    def __init__(self, family, acceleration, seed: int, **mask_kwargs):
        self.families = tuple(_check_family(f) for f in _as_choices(family, "family"))
        self.accelerations = _as_choices(acceleration, "acceleration")
        self.seed = seed
        self.mask_kwargs = dict(mask_kwargs)
        sample_rng(seed, 0, 0)  # fail early on a bad seed
        for fam in self.families:  # and on bad arguments
            for acc in self.accelerations:
                make_cine_mask(fam, (1, 64, 64), acc, sample_rng(seed, 0, 0), **self.mask_kwargs)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The Generator for ``(epoch, index)`` (:func:`data.masks.sample_rng`)."""
        return sample_rng(self.seed, epoch, index)

    def sample(self, shape: Sequence[int], epoch: int, index: int) -> np.ndarray:
        """Mask for sample ``index`` in ``epoch``: float32 ``(t, ky, kx)`` of 0/1."""
        gen = self.rng(epoch, index)
        family = self.families[int(gen.integers(len(self.families)))] if len(self.families) > 1 else self.families[0]
        acc = self.accelerations[int(gen.integers(len(self.accelerations)))] if len(self.accelerations) > 1 else self.accelerations[0]
        return make_cine_mask(family, shape, acc, gen, **self.mask_kwargs)

    def __repr__(self) -> str:
        return (f"CineMaskSampler(family={self.families!r}, acceleration={self.accelerations!r}, "
                f"seed={self.seed}, {self.mask_kwargs})")
