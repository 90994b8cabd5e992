"""Tests for data/masks.py: challenge and fastMRI masks, sampler reproducibility, estimation."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from data.masks import (
    CHALLENGE_KINDS,
    MASK_KINDS,
    MaskSampler,
    acs_block,
    acs_width,
    adjusted_step,
    estimate_acceleration,
    make_mask,
)
from utils.physics import acs_bounds

WIDTHS = (320, 368, 372, 396)


def rng(seed=0):
    return np.random.default_rng(seed)


def columns(mask):
    return np.flatnonzero(mask)


# ---------------------------------------------------------------------------------------------
# shape / dtype / ACS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("acc", (4, 8))
def test_mask_dtype_shape_values_and_acs(kind, acc):
    for width in WIDTHS:
        mask = make_mask(kind, width, acc, rng(width))
        assert mask.dtype == np.float32 and mask.shape == (width,)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        n_acs = acs_width(width)
        left, right = acs_block(width, n_acs)
        assert right - left == n_acs and left <= width // 2 < right
        assert mask[left:right].all(), "ACS must be fully sampled"
        # the contiguous block physics finds around the centre contains the nominal ACS
        found_left, found_right = acs_bounds(torch.from_numpy(mask))
        assert found_left <= left and found_right >= right


def test_acs_rounding_and_centering():
    assert acs_width(396) == 32  # 31.68 rounds to 32 (int() would give 31)
    assert acs_width(368) == 29 and acs_width(372) == 30 and acs_width(320) == 26
    assert acs_block(396, 32) == (182, 214)  # [W//2 - acs//2, W//2 - acs//2 + acs)
    assert acs_block(372, 30) == (171, 201)
    assert acs_block(368, 29) == (170, 199)  # odd ACS: centre column 184 in the middle
    left, right = acs_block(368, 29)
    assert 184 - left == right - 1 - 184


# ---------------------------------------------------------------------------------------------
# challenge masks
# ---------------------------------------------------------------------------------------------
def test_fixed_mask_line_counts_w396():
    assert make_mask("fixed", 396, 4).sum() == 123
    assert make_mask("fixed", 396, 8).sum() == 77


@pytest.mark.parametrize("acc", (2, 3, 4, 5, 8))
def test_fixed_mask_is_comb_through_centre(acc):
    for width in WIDTHS + (11, 64):
        mask = make_mask("fixed", width, acc).astype(bool)
        left, right = acs_block(width, acs_width(width))
        outside = np.ones(width, bool)
        outside[left:right] = False
        cols = np.arange(width)
        np.testing.assert_array_equal(mask[outside], (cols % acc == (width // 2) % acc)[outside])
        assert mask[width // 2]


def test_random_offset_is_equispaced_with_random_offset():
    width, acc = 396, 8
    left, right = acs_block(width, acs_width(width))
    offsets = set()
    for seed in range(40):
        mask = make_mask("random_offset", width, acc, rng(seed)).astype(bool)
        outside = np.r_[columns(mask[:left]), right + columns(mask[right:])]
        residues = set(outside % acc)
        assert len(residues) == 1
        offsets |= residues
        left_side = outside[outside < left]
        assert (np.diff(left_side) == acc).all()
    assert offsets == set(range(acc))  # every offset in [0, acc) occurs over 40 draws
    pinned = make_mask("random_offset", width, acc, offset=3)
    assert (columns(pinned[:left]) % acc == 3).all()


@pytest.mark.parametrize("acc", (4, 8))
def test_random_spaced_one_line_per_bin(acc):
    for width in WIDTHS:
        mask = make_mask("random_spaced", width, acc, rng(width + acc)).astype(bool)
        left, right = acs_block(width, acs_width(width))
        starts = np.arange(0, width, acc)
        for start in starts:
            stop = min(start + acc, width)
            bin_hits = mask[start:stop].sum()
            if stop <= left or start >= right:  # bin wholly outside the ACS
                assert bin_hits == 1
            else:
                assert bin_hits >= 1
    # positions inside a bin are uniform: all offsets occur
    hits = np.zeros(acc)
    for seed in range(30):
        mask = make_mask("random_spaced", 396, acc, rng(seed))
        hits += mask[:acc * 20].reshape(20, acc).sum(0)
    assert (hits > 0).all()


# ---------------------------------------------------------------------------------------------
# fastMRI masks
# ---------------------------------------------------------------------------------------------
def test_fastmri_random_expected_count():
    width, acc = 368, 4
    counts = [make_mask("random", width, acc, rng(s)).sum() for s in range(200)]
    assert abs(np.mean(counts) - width / acc) < 2.0  # E[n] = W / acc; sd of mean ~0.5
    assert np.std(counts) > 3  # Bernoulli, not deterministic


def test_fastmri_equispaced_comb():
    mask = make_mask("equispaced", 100, 4, offset=1, center_fraction=0.1)
    expected = set(range(1, 100, 4)) | set(range(45, 55))
    assert set(columns(mask)) == expected
    offsets = {columns(make_mask("equispaced", 100, 4, rng(s), center_fraction=0.0))[0] for s in range(40)}
    assert offsets == {0, 1, 2, 3}


def test_fastmri_equispaced_fraction_hand_computed():
    # W=20, cf=0.2 -> 4 ACS columns [8, 12); step = 2*16/(20-8) = 8/3; offset 1:
    # 1, 3.67, 6.33, 9, 11.67, 14.33, 17 -> rounded 1, 4, 6, 9, 12, 14, 17
    assert adjusted_step(20, 4, 2) == pytest.approx(8 / 3)
    mask = make_mask("equispaced_fraction", 20, 2, center_fraction=0.2, offset=1)
    assert set(columns(mask)) == {1, 4, 6, 8, 9, 10, 11, 12, 14, 17}


@pytest.mark.parametrize("acc", (4, 8))
def test_fastmri_equispaced_fraction_matches_acceleration(acc):
    for width in WIDTHS:
        n = make_mask("equispaced_fraction", width, acc, rng(width)).sum()
        assert abs(width / n - acc) / acc < 0.08


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="fixed, random_offset, random_spaced, random, equispaced"):
        make_mask("poisson", 396, 4, rng())
    for bad_acc in (0, 0.5, -4):
        with pytest.raises(ValueError, match=">= 1"):
            make_mask("fixed", 396, bad_acc)
    with pytest.raises(ValueError, match="integer"):
        make_mask("random_offset", 396, 4.5, rng())
    with pytest.raises(ValueError, match="positive integer"):
        make_mask("fixed", 0, 4)
    with pytest.raises(ValueError, match="Generator"):
        make_mask("random_spaced", 396, 4, None)
    with pytest.raises(ValueError, match="must be < width"):
        make_mask("random", 100, 8, rng(), center_fraction=0.2)
    with pytest.raises(ValueError, match="offset"):
        make_mask("random_offset", 396, 4, offset=4)
    with pytest.raises(ValueError, match="give acc"):
        make_mask("fixed", 396, None)
    with pytest.raises(ValueError, match="allowed kinds"):
        MaskSampler("bogus", 4, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        MaskSampler("random_spaced", 4, seed=0).sample(396, epoch=-1, index=0)
    with pytest.raises(ValueError, match="centre"):
        estimate_acceleration(np.zeros(16))
    with pytest.raises(ValueError, match="1-D"):
        estimate_acceleration(np.ones((4, 16)))


# ---------------------------------------------------------------------------------------------
# reproducible sampling
# ---------------------------------------------------------------------------------------------
def test_rng_reproducibility():
    a = make_mask("random_spaced", 396, 4, rng(7))
    b = make_mask("random_spaced", 396, 4, rng(7))
    c = make_mask("random_spaced", 396, 4, rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sampler_is_pure_function_of_seed_epoch_index():
    sampler = MaskSampler("random_spaced", 4, seed=3)
    again = MaskSampler("random_spaced", 4, seed=3)
    m = sampler.sample(396, epoch=1, index=5)
    np.testing.assert_array_equal(m, again.sample(396, epoch=1, index=5))
    np.testing.assert_array_equal(m, sampler.sample(396, epoch=1, index=5))  # no hidden state
    others = [
        sampler.sample(396, epoch=2, index=5),
        sampler.sample(396, epoch=1, index=6),
        MaskSampler("random_spaced", 4, seed=4).sample(396, epoch=1, index=5),
    ]
    assert all(not np.array_equal(m, o) for o in others)
    # SeedSequence([seed, epoch, index]) keeps (1, 23) and (12, 3) apart
    assert not np.array_equal(sampler.sample(396, 1, 23), sampler.sample(396, 12, 3))


class _MaskDataset(Dataset):
    """Tiny dataset whose items are masks drawn by a MaskSampler (epoch set by the loop)."""

    def __init__(self, sampler, n=6, width=64):
        self.sampler, self.n, self.width, self.epoch = sampler, n, width, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        return torch.from_numpy(self.sampler.sample(self.width, self.epoch, index)), worker


def _run_epochs(num_workers, epochs=(0, 1)):
    dataset = _MaskDataset(MaskSampler("random_offset", 8, seed=11, center_fraction=0.0))
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    out, workers = [], set()
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for mask, worker in loader:
            out.append(mask[0].numpy())
            workers.add(int(worker))
    return np.stack(out), workers


def test_sampler_in_dataloader_workers():
    parallel, workers = _run_epochs(num_workers=2)
    serial, _ = _run_epochs(num_workers=0)
    assert workers == {0, 1}
    np.testing.assert_array_equal(parallel, serial)  # independent of the worker count
    first, second = parallel[:6], parallel[6:]
    offsets = [int(columns(m)[0]) for m in parallel]
    # workers 0 and 1 handle alternate indices; they must not repeat one stream
    assert len(set(offsets[:6])) > 1 and offsets[0:6:2] != offsets[1:6:2]
    assert not np.array_equal(first, second)  # epochs differ


# ---------------------------------------------------------------------------------------------
# acceleration estimate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", CHALLENGE_KINDS + ("equispaced",))
@pytest.mark.parametrize("acc", (4, 8))
def test_estimate_round_trip(kind, acc):
    for width in WIDTHS:
        for seed in range(5):
            mask = make_mask(kind, width, acc, rng(1000 * width + seed))
            est = estimate_acceleration(mask, supported=(4, 8))
            assert est.acc == acc, (kind, width, seed, est)
            assert est.width == width and est.n_sampled == int(mask.sum())
            assert est.ratio == pytest.approx(width / mask.sum())
            assert acs_width(width) <= est.acs_width <= acs_width(width) + 4
            assert abs(est.spacing - acc) < 0.5


def test_estimate_fixed_acc6_and_nearest_supported():
    mask = make_mask("fixed", 396, 6)
    est = estimate_acceleration(mask)
    assert est.spacing == 6.0
    assert est.acc == 8  # log-nearest: 6/4 = 1.5 > 8/6
    assert estimate_acceleration(mask, supported=(4, 6, 8)).acc == 6
    assert estimate_acceleration(mask, supported=(4, 5, 8)).acc == 5
    # an unseen 9x challenge mask routes to 8 (spacing outside the ACS)
    assert estimate_acceleration(make_mask("fixed", 396, 9), supported=(4, 5, 8)).acc == 8


def test_estimate_exact_fields_fixed_w396():
    est = estimate_acceleration(make_mask("fixed", 396, 4))
    # column 214 (214 % 4 == 2) touches the ACS [182, 214), so the contiguous block is 33 wide
    assert (est.acs_left, est.acs_right, est.acs_width) == (182, 215, 33)
    assert est.n_sampled == 123 and est.n_outside == 90 and est.spacing == 4.0


def test_estimate_accepts_torch_and_unit_axes():
    mask = make_mask("fixed", 372, 8)
    a = estimate_acceleration(mask)
    b = estimate_acceleration(torch.from_numpy(mask).reshape(1, 1, 372, 1))
    assert a == b


def test_estimate_degenerate_masks():
    full = estimate_acceleration(np.ones(64))
    assert full.spacing == 1.0 and full.ratio == 1.0 and full.acc == 4
    acs_only = estimate_acceleration(make_mask("fixed", 64, 64))
    assert acs_only.n_outside == 0 and acs_only.acc == 8
