"""Tests for data/augment.py (MRAugment): schedule, each transform, determinism, coil consistency."""

import argparse
import math

import numpy as np
import pytest
import torch

from data.augment import (
    AugmentConfig,
    AugmentParams,
    MRAugment,
    affine,
    augment_kspace,
    rot90,
    schedule_probability,
    translate,
)
from utils.physics import fft2c, ifft2c

NAMES = ("fliph", "flipv", "rot90", "translation", "rotation", "shearing", "scaling")


def make_aug(*names, strength=1.0, schedule="constant", **kw):
    """Augmenter in which each transform in ``names`` fires with probability 1 (from epoch index 0)."""
    weights = {f"aug_weight_{n}": 1.0 for n in names}
    cfg = AugmentConfig(aug_on=True, aug_strength=strength, aug_schedule=schedule, num_epochs=10, **weights, **kw)
    return MRAugment(cfg)


def rand_complex(*shape, seed=0, dtype=torch.complex64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def gaussian(h, w, sig_u, sig_v, phase=0.0, dtype=torch.complex128):
    """Smooth complex blob centred on the geometric image centre."""
    v = torch.arange(h, dtype=torch.float64)[:, None] - (h - 1) / 2
    u = torch.arange(w, dtype=torch.float64)[None, :] - (w - 1) / 2
    f = torch.exp(-0.5 * ((u / sig_u) ** 2 + (v / sig_v) ** 2))
    return (f * complex(math.cos(phase), math.sin(phase))).to(dtype)


# ----------------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------------
def test_exp_schedule_endpoints_monotone_and_formula():
    cfg = AugmentConfig(aug_on=True, aug_strength=0.55, aug_delay=5, num_epochs=45, aug_exp_decay=5.0)
    aug = MRAugment(cfg)
    assert aug.probability(0) == 0.0 and aug.probability(4) == 0.0 and aug.probability(5) == 0.0  # t = D: 0
    assert aug.probability(45) == pytest.approx(0.55, abs=1e-12)
    ps = [aug.probability(t) for t in range(0, 46)]
    assert all(b >= a for a, b in zip(ps, ps[1:])) and ps[6] > 0
    t, d, big_t = 25, 5, 45
    c = 5.0 / (big_t - d)
    expected = 0.55 * (1 - math.exp(-c * (t - d))) / (1 - math.exp(-c * (big_t - d)))
    assert aug.probability(t) == pytest.approx(expected, rel=1e-12)
    assert aug.probability(100) == pytest.approx(0.55)  # clipped at T: never above p_max


def test_constant_ramp_and_off_schedules():
    """MRAugment's schedule_p with its 0-based current_epoch t: p = 0 for t < D, then the schedule from t = D
    (constant: p_max already at t = D; ramp and exp: 0 at t = D)."""
    const = AugmentConfig(aug_on=True, aug_strength=0.3, aug_delay=2, aug_schedule="constant", num_epochs=10)
    assert [schedule_probability(t, const) for t in (0, 1, 2, 3, 9)] == [0.0, 0.0, 0.3, 0.3, 0.3]
    ramp = AugmentConfig(aug_on=True, aug_strength=0.8, aug_delay=2, aug_schedule="ramp", num_epochs=10)
    # hand-computed MRAugment values (t - D) / (T - D) * p_max over a 10-epoch run (t = 0 .. 9)
    expected = [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert [schedule_probability(t, ramp) for t in range(10)] == pytest.approx(expected, abs=1e-15)
    assert schedule_probability(10, ramp) == pytest.approx(0.8)
    off = AugmentConfig(aug_on=False, aug_strength=0.8, aug_schedule="constant")
    assert schedule_probability(50, off) == 0.0


def test_fire_rate_follows_weight_times_p_independently():
    aug = MRAugment(AugmentConfig(aug_on=True, aug_strength=0.8, aug_schedule="constant",
                                  aug_weight_fliph=0.5, aug_weight_flipv=1.0))
    rng = np.random.default_rng(1)
    draws = [aug.sample_params(rng, aug.probability(1)) for _ in range(4000)]
    h = np.array([d.fliph for d in draws])
    v = np.array([d.flipv for d in draws])
    assert h.mean() == pytest.approx(0.4, abs=0.03) and v.mean() == pytest.approx(0.8, abs=0.03)
    assert (h & v).mean() == pytest.approx(0.32, abs=0.03)  # transforms fire independently


def test_config_validation_and_cli():
    with pytest.raises(ValueError, match="aug_schedule"):
        AugmentConfig(aug_schedule="linear")
    with pytest.raises(ValueError, match="num_epochs"):
        AugmentConfig(aug_on=True, aug_delay=10, num_epochs=10)
    with pytest.raises(ValueError, match="aug_weight_rotation"):
        AugmentConfig(aug_weight_rotation=-1.0)
    cfg = AugmentConfig.from_mapping({"aug_on": True, "aug_strength": 0.5, "num_epochs": 20, "lr": 1e-3})
    assert cfg.aug_on and cfg.aug_strength == 0.5 and cfg.num_epochs == 20
    parser = AugmentConfig.add_argparse_args(argparse.ArgumentParser())
    args = parser.parse_args(["--aug_on", "--aug_weight_fliph", "0.5", "--aug_schedule", "ramp"])
    cfg = AugmentConfig.from_mapping({**vars(args), "num_epochs": 5})
    assert cfg.aug_on and cfg.aug_weight_fliph == 0.5 and cfg.aug_schedule == "ramp" and cfg.aug_upsample is False
    default = AugmentConfig()
    assert not default.aug_on and all(default.weight(n) == 0.0 for n in NAMES)


# ----------------------------------------------------------------------------------------------
# identity cases
# ----------------------------------------------------------------------------------------------
def test_zero_probability_returns_input_bit_identical():
    x = rand_complex(2, 3, 16, 12)
    aug = make_aug(*NAMES, aug_delay=3)
    for epoch in (0, 2):  # t < D
        out = aug(x, epoch, np.random.default_rng(0))
        assert out.dtype == x.dtype and torch.equal(out, x)
    off = MRAugment(AugmentConfig())
    assert torch.equal(off(x, 5, np.random.default_rng(0)), x)


def test_bad_input_raises():
    aug = make_aug("fliph")
    with pytest.raises(TypeError, match="complex"):
        aug(torch.zeros(2, 8, 8), 1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="AugmentConfig"):
        MRAugment({"aug_on": True})


# ----------------------------------------------------------------------------------------------
# pixel-preserving transforms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dim", [("fliph", -1), ("flipv", -2)])
def test_flips_are_exact(name, dim):
    x = rand_complex(2, 3, 10, 7)
    aug = make_aug(name)
    out = aug(x, 1, np.random.default_rng(0))
    assert torch.equal(out, torch.flip(x, dims=(dim,)))
    assert torch.equal(aug(out, 1, np.random.default_rng(5)), x)  # twice = identity


def test_rot90_square_matches_torch_rot90():
    x = rand_complex(2, 3, 12, 12)
    aug = make_aug("rot90")
    seen = set()
    for seed in range(12):
        k = aug.sample_params(np.random.default_rng(seed), 1.0).rot90_k
        out = aug(x, 1, np.random.default_rng(seed))
        assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1)))
        seen.add(k)
    assert seen == {1, 2, 3}


def test_rot90_non_square_keeps_shape_and_centred_content():
    x = torch.zeros(3, 10, 6, dtype=torch.complex64)
    x[:, 2:8, :] = rand_complex(3, 6, 6)  # content inside the central 6x6 square
    for k in (1, 2, 3):
        out = rot90(x, k)
        assert out.shape == x.shape
        assert torch.equal(out[:, 2:8, :], torch.rot90(x[:, 2:8, :], k, dims=(-2, -1)))
        assert not out[:, :2].any() and not out[:, 8:].any()
        assert torch.equal(make_aug("rot90").apply(x, AugmentParams(rot90_k=k)), out)  # gather path


def reflect_shift_reference(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[i, j] = x[i - dy, j - dx]`` with numpy 'reflect' padding (independent reference)."""
    py, px = abs(dy), abs(dx)
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(py, py), (px, px)], mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., py - dy:py - dy + h, px - dx:px - dx + w]


@pytest.mark.parametrize("dy, dx", [(3, -2), (-4, 5), (0, 7), (9, 0)])
def test_translate_matches_reflect_reference(dy, dx):
    x = rand_complex(2, 10, 12)
    out = translate(x, dy, dx)
    np.testing.assert_array_equal(out.numpy(), reflect_shift_reference(x.numpy(), dy, dx))
    if dy >= 0 and dx >= 0:  # content moves towards +index
        assert torch.equal(out[..., dy:, dx:], x[..., :x.shape[-2] - dy, :x.shape[-1] - dx])


def test_translation_follows_mraugment_axes():
    """MRAugment's "x" translation is along the height, as a fraction of H, and a positive value moves the
    content up (pad bottom, crop from the top); its "y" is along the width, positive to the right."""
    from data.augment import AugmentParams

    aug = make_aug("translation")
    x = torch.zeros(8, 12, dtype=torch.complex64)
    x[4, 5] = 1.0
    out = aug.apply(x, AugmentParams(translation_x=0.25, translation_y=0.25))  # 2 rows up, 3 columns right
    assert out[2, 8] == 1.0 and out.abs().sum() == 1.0
    out = aug.apply(x, AugmentParams(translation_x=-0.3, translation_y=-0.2))  # int(2.4)=2 down, int(2.4)=2 left
    assert out[6, 3] == 1.0 and out.abs().sum() == 1.0
    assert AugmentParams(translation_x=0.5).shift_pixels(8, 12) == (-4, 0)  # x: height only
    assert AugmentParams(translation_y=0.5).shift_pixels(8, 12) == (0, 6)  # y: width only


def test_translation_uses_drawn_amount():
    aug = make_aug("translation", aug_max_translation_x=0.3, aug_max_translation_y=0.1)
    x = rand_complex(2, 3, 20, 24)
    for seed in range(6):
        params = aug.sample_params(np.random.default_rng(seed), 1.0)
        dy, dx = params.shift_pixels(20, 24)
        assert abs(dy) <= 6 and abs(dx) <= 2  # max_translation_x bounds the rows, _y the columns
        assert (dy, dx) == (-int(params.translation_x * 20), int(params.translation_y * 24))
        out = aug(x, 1, np.random.default_rng(seed))
        np.testing.assert_array_equal(out.numpy(), reflect_shift_reference(x.numpy(), dy, dx))
    shifts = {aug.sample_params(np.random.default_rng(s), 1.0).shift_pixels(20, 24) for s in range(6)}
    assert any(dy and dx for dy, dx in shifts)


def test_combined_pixel_transforms_compose_in_order():
    aug = make_aug("fliph", "flipv", "rot90", "translation", aug_max_translation_x=0.3, aug_max_translation_y=0.3)
    x = rand_complex(2, 16, 16)
    params = aug.sample_params(np.random.default_rng(3), 1.0)
    ref = torch.rot90(torch.flip(x, dims=(-1, -2)), params.rot90_k, dims=(-2, -1))
    ref = translate(ref, *params.shift_pixels(16, 16))
    assert torch.equal(aug(x, 1, np.random.default_rng(3)), ref)


# ----------------------------------------------------------------------------------------------
# affine
# ----------------------------------------------------------------------------------------------
def test_affine_identity_parameters_are_identity():
    x = rand_complex(2, 3, 14, 18)
    torch.testing.assert_close(affine(x, 0.0, 0.0, 0.0, 1.0), x, atol=1e-6, rtol=0)
    params = AugmentParams(affine=True)  # fired but neutral values
    torch.testing.assert_close(make_aug("rotation").apply(x, params), x, atol=1e-6, rtol=0)


def test_affine_rotation_by_90_equals_clockwise_rot90():
    x = rand_complex(3, 16, 16)
    torch.testing.assert_close(affine(x, rotation=90.0), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_affine_matches_analytic_gaussian_non_square():
    h, w = 48, 64
    x = gaussian(h, w, 7.0, 4.0, phase=0.7)
    rot, shx, shy, s = 30.0, 10.0, -5.0, 1.15
    out = affine(x, rot, shx, shy, s)
    # independent reference: out(p) = f(A^{-1} p), A = s R Sx Sy on (column, row) centred coordinates
    t, ax, ay = math.radians(rot), math.radians(shx), math.radians(shy)
    a = s * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) \
        @ np.array([[1, math.tan(ax)], [0, 1]]) @ np.array([[1, 0], [math.tan(ay), 1]])
    a_inv = np.linalg.inv(a)
    v, u = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    su = a_inv[0, 0] * u + a_inv[0, 1] * v
    sv = a_inv[1, 0] * u + a_inv[1, 1] * v
    expected = np.exp(-0.5 * ((su / 7.0) ** 2 + (sv / 4.0) ** 2)) * np.exp(0.7j)
    np.testing.assert_allclose(out.numpy(), expected, atol=0.02)


def test_rotation_preserves_energy_and_scaling_scales_it():
    x = gaussian(64, 64, 6.0, 9.0, dtype=torch.complex64)
    energy = x.abs().square().sum()
    for angle in (17.0, -63.0, 140.0):
        assert affine(x, rotation=angle).abs().square().sum() / energy == pytest.approx(1.0, abs=0.01)
    assert affine(x, scaling=1.2).abs().square().sum() / energy == pytest.approx(1.44, rel=0.02)


def test_upsampled_affine_is_close_to_plain():
    x = gaussian(32, 40, 5.0, 4.0, dtype=torch.complex64)
    up = affine(x, 25.0, upsample_factor=2)
    assert up.shape == x.shape and up.dtype == x.dtype
    torch.testing.assert_close(up, affine(x, 25.0), atol=0.03, rtol=0)


# ----------------------------------------------------------------------------------------------
# determinism and shared transform
# ----------------------------------------------------------------------------------------------
def test_same_seed_same_output_different_seed_differs():
    aug = make_aug(*NAMES, strength=0.9)
    x = rand_complex(2, 3, 20, 16)
    a = aug(x, 4, np.random.default_rng(123))
    b = aug(x, 4, np.random.default_rng(123))
    assert torch.equal(a, b)
    c = aug(x, 4, np.random.default_rng(124))
    assert a.shape == c.shape and not torch.equal(a, c)


def test_rng_consumption_does_not_depend_on_weights():
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    make_aug("fliph").sample_params(r1, 1.0)
    make_aug(*NAMES).sample_params(r2, 1.0)
    assert r1.random() == r2.random()


def test_all_coils_and_slices_get_the_same_transform():
    aug = make_aug(*NAMES, aug_max_translation_x=0.2, aug_max_translation_y=0.2)
    base = gaussian(24, 20, 4.0, 6.0, dtype=torch.complex64) + 0.1 * rand_complex(24, 20, seed=3)
    scales = rand_complex(2, 4, 1, 1, seed=4)  # (slices, coils): each coil image is a multiple of base
    x = scales * base
    params = aug.sample_params(np.random.default_rng(11), 1.0)
    assert params.affine and params.rot90_k
    out = aug(x, 1, np.random.default_rng(11))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, scales * aug.apply(base, params), atol=1e-5, rtol=1e-5)
    y = rand_complex(3, 2, 18, 18, seed=5)  # unrelated slices: each equals the 2-D transform alone
    out = aug.apply(y, params)
    for s in range(3):
        for c in range(2):
            torch.testing.assert_close(out[s, c], aug.apply(y[s, c], params), atol=1e-6, rtol=0)


def test_complex128_preserved():
    aug = make_aug(*NAMES)
    x = rand_complex(2, 12, 10, dtype=torch.complex128)
    out = aug(x, 1, np.random.default_rng(0))
    assert out.dtype == torch.complex128 and out.shape == x.shape


# ----------------------------------------------------------------------------------------------
# k-space
# ----------------------------------------------------------------------------------------------
def test_augment_kspace_round_trip():
    aug = make_aug(*NAMES)
    k = rand_complex(2, 3, 16, 14)
    out = augment_kspace(k, np.random.default_rng(2), aug, epoch=1)
    assert out.shape == k.shape and out.dtype == k.dtype
    params = aug.sample_params(np.random.default_rng(2), 1.0)
    torch.testing.assert_close(ifft2c(out), aug.apply(ifft2c(k), params), atol=1e-5, rtol=1e-5)
    nothing = make_aug()  # aug_on but every weight 0: no transform fires, no FFT round trip
    assert nothing.augment_kspace(k, 1, np.random.default_rng(2)) is k
    flip = make_aug("fliph")
    torch.testing.assert_close(flip.augment_kspace(k, 1, np.random.default_rng(0)),
                               fft2c(torch.flip(ifft2c(k), dims=(-1,))))
