"""Tests for data/cine_masks.py: CMRxRecon 2023/2024 kt masks, reproducible drawing, estimation."""

import math

import numpy as np
import pytest
import torch

from data.cine_masks import (
    ACCELERATIONS_2023,
    CINE_FAMILIES,
    GOLDEN_ANGLE_DEG,
    OFFERED_ACCELERATIONS,
    CineMaskSampler,
    estimate_cine_mask,
    gaussian_lines,
    make_cine_mask,
    radial_spokes,
)
from data.masks import MaskSampler

SAX = (12, 246, 512)  # CMRxRecon short-axis (t, ky, kx), kx 2x oversampled readout
LAX = (12, 204, 448)
LINE_FAMILIES = ("uniform", "kt_uniform", "kt_gaussian")


def lines(mask):
    """(t, ky) boolean lines of a line mask (checks it is constant along kx)."""
    assert (mask == mask[:, :, :1]).all(), "line masks must be constant along kx"
    return mask[:, :, 0] != 0


def outside(line_mask, acs):
    ky = line_mask.shape[1]
    left = ky // 2 - acs // 2
    out = line_mask.copy()
    out[:, left:left + acs] = False
    return out


# --------------------------------------------------------------------------------------------- shape, ACS


@pytest.mark.parametrize("family", CINE_FAMILIES)
def test_dtype_shape_values_and_acs(family):
    for shape in (SAX, (5, 96, 128)):
        mask = make_cine_mask(family, shape, 8, np.random.default_rng(1))
        assert mask.dtype == np.float32 and mask.shape == shape
        assert set(np.unique(mask)) <= {0.0, 1.0}
        t, ky, kx = shape
        if family == "kt_radial":  # 16 x 16 centre block in every frame
            assert mask[:, ky // 2 - 8:ky // 2 + 8, kx // 2 - 8:kx // 2 + 8].all()
            assert not (mask == mask[:, :, :1]).all(), "ktRadial is a 2-D pattern"
        else:
            acs = 24 if family == "uniform" else 16
            assert lines(mask)[:, ky // 2 - acs // 2:ky // 2 + acs // 2].all()


def test_uniform_2023_is_the_challenge_comb_plus_24_acs_lines():
    mask = make_cine_mask("uniform", SAX, 4)  # no generator: offset 0 as MATLAB's 1:R:end
    expected = sorted(set(range(0, 246, 4)) | set(range(111, 135)))
    for frame in lines(mask):
        assert np.flatnonzero(frame).tolist() == expected  # the same mask every frame
    task1 = lines(make_cine_mask("uniform", SAX, 10, acs=16))[0]
    assert np.flatnonzero(task1).tolist() == sorted(set(range(0, 246, 10)) | set(range(115, 131)))
    drawn = {int(np.flatnonzero(lines(make_cine_mask("uniform", SAX, 8, s))[0])[0]) for s in range(80)}
    assert drawn == set(range(8)), "a generator draws the comb offset from [0, R)"


@pytest.mark.parametrize("family", LINE_FAMILIES)
@pytest.mark.parametrize("acc", OFFERED_ACCELERATIONS)
def test_sampled_fraction_matches_acceleration(family, acc):
    t, ky, kx = SAX
    acs = 24 if family == "uniform" else 16
    mask = make_cine_mask(family, SAX, acc, np.random.default_rng(acc))
    per_frame = outside(lines(mask), acs).sum(axis=1)
    fraction = float(mask.mean())
    if family == "kt_gaussian":  # round(ky / R) lines per frame, some absorbed by the ACS
        n = gaussian_lines(ky, acc)
        assert n == round(ky / acc) and ((per_frame <= n) & (per_frame >= n - acs)).all()
        assert (acs + 0.6 * ky / acc) / ky < fraction < (acs + ky / acc) / ky
        no_acs = lines(make_cine_mask(family, SAX, acc, np.random.default_rng(acc), acs=0))
        assert (no_acs.sum(axis=1) == n).all()
    else:  # a comb line every R lines over the whole range; the ACS absorbs those inside it
        assert np.abs(per_frame - (ky - acs) / acc).max() < 2.0
        assert fraction == pytest.approx((acs + (ky - acs) / acc) / ky, rel=0.05)


@pytest.mark.parametrize("acc", OFFERED_ACCELERATIONS)
def test_radial_total_acceleration_near_nominal(acc):
    for shape in (SAX, LAX):  # the organisers' 0.6 R spoke rule makes total/sampled about R
        mask = make_cine_mask("kt_radial", shape, acc, np.random.default_rng(0))
        assert mask.size / mask.sum() == pytest.approx(acc, rel=0.2)
    assert radial_spokes(4) == 75 and radial_spokes(24) == 12


# --------------------------------------------------------------------------------------------- kt structure


def test_kt_uniform_offset_shifts_one_line_per_frame():
    for acc in (4, 8, 12):
        for rng in (None, np.random.default_rng(acc)):
            out = outside(lines(make_cine_mask("kt_uniform", SAX, acc, rng)), 16)
            residues = []
            for frame in out:
                k = np.flatnonzero(frame)
                assert np.unique(k % acc).size == 1, "each frame is one comb"
                residues.append(int(k[0] % acc))
            steps = np.diff(residues) % acc
            assert (steps == 1).all(), residues
    base = outside(lines(make_cine_mask("kt_uniform", SAX, 8)), 16)
    assert [int(np.flatnonzero(f)[0] % 8) for f in base][:3] == [0, 1, 2]  # organisers' phase


def test_kt_gaussian_new_draw_per_frame_and_variable_density():
    mask = lines(make_cine_mask("kt_gaussian", (64, 246, 8), 8, np.random.default_rng(5)))
    assert all(not np.array_equal(mask[i], mask[i + 1]) for i in range(63))
    out = outside(mask, 16)
    ky = 246
    dist = np.abs(np.arange(ky) - ky // 2)
    density_centre = out[:, (dist >= 8) & (dist < 40)].mean()
    density_edge = out[:, dist >= 90].mean()
    assert density_centre > 2.0 * density_edge


def _spoke_angle(frame, spacing, r_lo=40, r_hi=100):
    """Circular mean of the sampled pixels' angles modulo the spoke spacing, on a ring (radians)."""
    ky, kx = frame.shape
    dy, dx = np.meshgrid(np.arange(ky) - ky // 2, np.arange(kx) - kx // 2, indexing="ij")
    rho = np.hypot(dy, dx)
    ring = (frame != 0) & (rho >= r_lo) & (rho <= r_hi)
    phi = np.arctan2(dy[ring], dx[ring])
    z = np.exp(1j * 2 * np.pi * phi / spacing).mean()
    return (np.angle(z) * spacing / (2 * np.pi)) % spacing


@pytest.mark.parametrize("rotation", ("golden", "uniform"))
def test_kt_radial_rotates_per_frame(rotation):
    acc, t = 12, 6
    mask = make_cine_mask("kt_radial", (t, 246, 512), acc, rotation=rotation)
    spacing = math.pi / radial_spokes(acc)
    step = math.radians(GOLDEN_ANGLE_DEG) if rotation == "golden" else spacing / t
    for f in range(t):
        found = _spoke_angle(mask[f], spacing)
        want = (f * step) % spacing
        err = min(abs(found - want), spacing - abs(found - want))
        assert err < 0.08 * spacing, (f, found, want)
    assert not np.array_equal(mask[0], mask[1])


# --------------------------------------------------------------------------------------------- reproducibility


def test_generator_reproducibility():
    for family in CINE_FAMILIES:
        a = make_cine_mask(family, (6, 96, 128), 8, 7)
        b = make_cine_mask(family, (6, 96, 128), 8, np.random.default_rng(7))
        c = make_cine_mask(family, (6, 96, 128), 8, 9)
        np.testing.assert_array_equal(a, b)
        # different seeds give different masks (comb offsets / draws / start angles)
        others = [make_cine_mask(family, (6, 96, 128), 8, s) for s in range(10, 14)]
        assert any(not np.array_equal(a, o) for o in [c] + others)


def test_sampler_is_pure_function_of_seed_epoch_index():
    for family in CINE_FAMILIES:
        sampler = CineMaskSampler(family, 8, seed=3)
        m = sampler.sample((6, 96, 128), epoch=1, index=5)
        np.testing.assert_array_equal(m, CineMaskSampler(family, 8, seed=3).sample((6, 96, 128), 1, 5))
        np.testing.assert_array_equal(m, sampler.sample((6, 96, 128), 1, 5))  # no hidden state
        others = [sampler.sample((6, 96, 128), e, i) for e, i in ((2, 5), (1, 6), (0, 0), (3, 9), (1, 23))]
        assert any(not np.array_equal(m, o) for o in others)
    # the same (seed, epoch, index) convention as the SNU masks
    cine, snu = CineMaskSampler("uniform", 4, seed=11), MaskSampler("random_offset", 4, seed=11)
    assert cine.rng(2, 7).random() == snu.rng(2, 7).random()


def test_sampler_draws_family_and_acceleration_per_sample():
    sampler = CineMaskSampler(("kt_uniform", "kt_gaussian", "kt_radial"), (4, 8, 12, 16, 20, 24), seed=0)
    seen = {tuple(estimate_cine_mask(sampler.sample(SAX, 0, i))) for i in range(40)}
    assert {f for _, f in seen} == {"kt_uniform", "kt_gaussian", "kt_radial"}
    assert len({a for a, _ in seen}) >= 5
    with pytest.raises(ValueError):
        CineMaskSampler("bogus", 4, seed=0)
    with pytest.raises(ValueError):
        CineMaskSampler("uniform", 4, seed=0).sample(SAX, epoch=-1, index=0)


# --------------------------------------------------------------------------------------------- estimation


@pytest.mark.parametrize("family", CINE_FAMILIES)
def test_estimate_round_trip_every_family_and_acceleration(family):
    for shape in (SAX, LAX):
        for acc in OFFERED_ACCELERATIONS:
            rngs = [0, 1] if family == "kt_gaussian" else [None, 0, 1]
            for rng in rngs:
                est = estimate_cine_mask(make_cine_mask(family, shape, acc, rng))
                assert est == (acc, family), (shape, acc, rng, est)
    if family == "kt_radial":
        uniform_rotation = make_cine_mask(family, SAX, 16, 2, rotation="uniform")
        assert estimate_cine_mask(uniform_rotation) == (16, "kt_radial")


def _organiser_gaussian(t, ky, acc, rng, acs=16, alpha=0.2):
    """The organisers' ktGaussian procedure (CMRxRecon2024 ktGaussianSampling): round(ky/R) draws per
    frame with replacement from the density, a duplicate moved to the nearest free line of its frame,
    then the ACS; written out independently here as a reference."""
    p = np.arange(ky) - ky // 2
    prob = 0.1 + alpha / (1 - alpha) * np.exp(-(p**2) / (ky / 5) ** 2)
    out = np.zeros((t, ky), bool)
    for f in range(t):
        for k in rng.choice(ky, round(ky / acc), p=prob / prob.sum()):
            free = np.flatnonzero(~out[f])
            out[f, k if not out[f, k] else free[np.argmin(np.abs(free - k))]] = True
    out[:, ky // 2 - acs // 2:ky // 2 + acs // 2] = True
    return np.repeat(out[:, :, None], 4, axis=2)


def test_estimate_routes_the_organisers_kt_gaussian_masks():
    for acc in (4, 8, 12, 16, 20, 24):
        for seed in (0, 1):
            mask = _organiser_gaussian(12, 246, acc, np.random.default_rng(seed))
            assert estimate_cine_mask(mask, supported=(4, 8, 12, 16, 20, 24)) == (acc, "kt_gaussian")


def test_estimate_2023_masks_and_inputs():
    for acc in ACCELERATIONS_2023:  # the mask files' (ky, kx), numpy or torch
        mask2d = make_cine_mask("uniform", SAX, acc)[0]
        assert estimate_cine_mask(mask2d, supported=ACCELERATIONS_2023) == (acc, "uniform")
        assert estimate_cine_mask(torch.from_numpy(mask2d)) == (acc, "uniform")
        # plain total/sampled would say ~2.9x / 4.4x / 5.2x: the ACS is taken out first
        assert mask2d.size / mask2d.sum() < acc
    # small tiny-preset matrices still round-trip at the 2023 accelerations
    for acc in ACCELERATIONS_2023:
        assert estimate_cine_mask(make_cine_mask("uniform", (6, 48, 96), acc)) == (acc, "uniform")
    acc, family = estimate_cine_mask(make_cine_mask("kt_uniform", SAX, 8))
    assert (acc, family) == (8, "kt_uniform")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown cine mask family"):
        make_cine_mask("random", SAX, 4)
    with pytest.raises(ValueError, match="shape"):
        make_cine_mask("uniform", (246, 512), 4)
    with pytest.raises(ValueError, match="integer"):
        make_cine_mask("kt_uniform", SAX, 4.5)
    with pytest.raises(ValueError, match=">= 1"):
        make_cine_mask("kt_radial", SAX, 0.5)
    with pytest.raises(ValueError, match="rng"):
        make_cine_mask("kt_gaussian", SAX, 4)
    with pytest.raises(ValueError, match="does not fit"):
        make_cine_mask("uniform", (2, 16, 32), 4)
    with pytest.raises(ValueError, match="rotation"):
        make_cine_mask("kt_radial", SAX, 4, rotation="spiral")
    with pytest.raises(ValueError, match="shape"):
        estimate_cine_mask(np.ones((2, 2, 3, 4)))
    with pytest.raises(ValueError, match="nothing"):
        estimate_cine_mask(np.zeros((3, 16, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        estimate_cine_mask(np.full((3, 16, 8), np.nan))
    with pytest.raises(ValueError, match="supported"):
        estimate_cine_mask(np.ones((3, 16, 8)), supported=())
