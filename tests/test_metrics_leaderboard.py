"""utils.leaderboard (the torch-free SNU leaderboard metric evaluate.py runs) held to exactness: per slice
against scikit-image's float64 ``structural_similarity`` of the cv2-masked images (the leaderboard's own
recipe), against the float64 torch path (:func:`utils.metrics.ssim_map`), and PSNR/NMSE against the
plain float64 formulas. The tolerances are far tighter than the 1e-6 the leaderboard needs: the fast
path keeps every mean, (co)variance and map value in float64, and these tests fail when it does not
(window sums taken in float32 miss the skimage scores by up to ~1e-6 here)."""
import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.metrics import structural_similarity

from utils import leaderboard as lb
from utils import metrics

TOL = 1e-10  # per-slice SSIM; measured ~1e-13


def _mr_like(rng, shape, scale=1e-4, offset=0.0):
    """Smooth positive float32 images inside an ellipse (zero outside), like magnitude MR labels."""
    s, h, w = shape
    vol = ndi.gaussian_filter(rng.random(shape), sigma=(0, 3, 3))
    yy, xx = np.mgrid[:h, :w] / np.array([h, w])[:, None, None] - 0.5
    ellipse = (yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1
    return (scale * (offset + vol) * ellipse).astype(np.float32)


def _peer_mask(target2d, threshold):
    """The challenge's own per-slice mask: float64 zeros, threshold, cv2 erode 1, dilate 15, erode 14."""
    kernel = np.ones((3, 3), np.uint8)
    m = np.zeros(target2d.shape)
    m[target2d > threshold] = 1
    m = cv2.erode(m, kernel, iterations=1)
    m = cv2.dilate(m, kernel, iterations=15)
    return cv2.erode(m, kernel, iterations=14)


def _peer_scores(recon, target, maximum, anatomy):
    """The plain loop a user would write: skimage on the cv2-masked float64 images, per slice."""
    threshold = lb.FOREGROUND_THRESHOLDS[anatomy]
    out = []
    for r, t in zip(recon, target):
        m = _peer_mask(t, threshold)
        out.append(structural_similarity(t * m, r * m, win_size=7, K1=0.01, K2=0.03, use_sample_covariance=True,
                                         data_range=maximum))
    return np.array(out)


@pytest.mark.parametrize("anatomy", ["brain", "knee"])
def test_per_slice_ssim_equals_skimage_on_the_masked_images(anatomy):
    rng = np.random.default_rng(0)
    target = _mr_like(rng, (4, 96, 88))
    target[1, :, :3] = 3e-4  # foreground touching the image edge (the support is clipped there)
    target[3] = 0  # an empty slice: both masked images are zero, SSIM exactly 1
    recon = (target + rng.normal(0, 3e-6, target.shape)).astype(np.float32)
    maximum = float(target.max())
    mask = lb.leaderboard_foreground_mask(target, anatomy)
    ours = lb.leaderboard_ssim(recon, target, maximum, mask)
    peer = _peer_scores(recon, target, maximum, anatomy)
    assert ours.dtype == np.float64 and ours.shape == (4,)
    np.testing.assert_allclose(ours, peer, rtol=0, atol=TOL)
    assert ours[3] == 1.0 and np.all(ours[:3] < 1)


def test_high_mean_low_variance_needs_float64_sums():
    """Bright flat anatomy with faint texture: E[xx] - E[x]^2 cancels to ~1e-7 of E[xx]: window sums in float32
    are off by up to ~1e-6 per slice here; the fast path must stay within TOL of skimage."""
    rng = np.random.default_rng(1)
    target = _mr_like(rng, (3, 64, 64), scale=1e-4, offset=50.0)
    recon = (target * (1 + rng.normal(0, 1e-6, target.shape))).astype(np.float32)
    maximum = float(target.max())
    mask = lb.leaderboard_foreground_mask(target, "brain")
    np.testing.assert_allclose(lb.leaderboard_ssim(recon, target, maximum, mask),
                               _peer_scores(recon, target, maximum, "brain"), rtol=0, atol=TOL)


def test_fast_path_equals_the_float64_torch_path():
    rng = np.random.default_rng(2)
    target = _mr_like(rng, (5, 40, 52), scale=1e-3)
    recon = (target + rng.normal(0, 2e-5, target.shape)).astype(np.float32)
    mask = lb.leaderboard_foreground_mask(target, "knee")
    dr = np.linspace(1e-3, 2e-3, 5)
    fast = lb.leaderboard_ssim(recon, target, dr, mask)
    reference = metrics.leaderboard_ssim(torch.from_numpy(recon), torch.from_numpy(target), torch.from_numpy(dr),
                                         torch.from_numpy(mask))
    np.testing.assert_allclose(fast, reference.numpy(), rtol=0, atol=1e-12)
    # utils.metrics sends numpy input down the fast path
    np.testing.assert_array_equal(metrics.leaderboard_ssim(recon, target, dr, mask), fast)
    # no mask, float64 input: the whole image is scored
    r64, t64 = recon.astype(np.float64), target.astype(np.float64)
    np.testing.assert_allclose(lb.leaderboard_ssim(r64, t64, 1e-3),
                               metrics.leaderboard_ssim(torch.from_numpy(r64), torch.from_numpy(t64), 1e-3).numpy(),
                               rtol=0, atol=1e-12)


def test_numeric_masks_are_applied_in_float64_like_the_reference():
    rng = np.random.default_rng(3)
    target = _mr_like(rng, (2, 32, 32))
    recon = (target + rng.normal(0, 5e-6, target.shape)).astype(np.float32)
    soft = ndi.gaussian_filter(lb.leaderboard_foreground_mask(target, "brain").astype(np.float64), (0, 2, 2))
    ref = metrics.leaderboard_ssim(torch.from_numpy(recon), torch.from_numpy(target), 2e-4, torch.from_numpy(soft))
    np.testing.assert_allclose(lb.leaderboard_ssim(recon, target, 2e-4, soft), ref.numpy(), rtol=0, atol=1e-12)
    binary = lb.leaderboard_foreground_mask(target, "brain")
    np.testing.assert_array_equal(lb.leaderboard_ssim(recon, target, 2e-4, binary.astype(np.float32)),
                                  lb.leaderboard_ssim(recon.astype(np.float64), target.astype(np.float64), 2e-4, binary))


def test_volume_scores_equal_ssim_psnr_nmse_of_the_masked_volume():
    rng = np.random.default_rng(4)
    target = _mr_like(rng, (3, 48, 40))
    recon = (target + rng.normal(0, 4e-6, target.shape)).astype(np.float32)
    maximum = float(target.max())
    mask = lb.leaderboard_foreground_mask(target, "brain")
    scores = lb.leaderboard_volume_scores(recon, target, maximum, mask)
    np.testing.assert_array_equal(scores["ssim_slices"], lb.leaderboard_ssim(recon, target, maximum, mask))
    rm, tm = recon.astype(np.float64) * mask, target.astype(np.float64) * mask
    sse, energy = np.sum((tm - rm) ** 2), np.sum(tm**2)
    assert scores["psnr"] == pytest.approx(10 * np.log10(maximum**2 / (sse / tm.size)), rel=1e-13)
    assert scores["nmse"] == pytest.approx(sse / energy, rel=1e-12)
    assert scores["psnr"] == pytest.approx(lb.psnr(rm, tm, maximum), rel=1e-13)
    assert scores["nmse"] == pytest.approx(lb.nmse(rm, tm), rel=1e-12)
    same = lb.leaderboard_volume_scores(target, target, maximum, mask)
    assert same["psnr"] == float("inf") and same["nmse"] == 0.0 and np.all(same["ssim_slices"] == 1.0)
    unmasked = lb.leaderboard_volume_scores(recon, target, maximum)
    assert unmasked["nmse"] == pytest.approx(lb.nmse(recon, target), rel=1e-12)


def test_bad_inputs_raise_one_clear_error():
    x = np.zeros((2, 12, 12), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        lb.leaderboard_ssim(x, x[:, :, :-1], 1.0)
    with pytest.raises(ValueError, match="mask shape"):
        lb.leaderboard_ssim(x, x, 1.0, mask=np.ones((2, 12, 11), bool))
    with pytest.raises(ValueError, match="data_range"):
        lb.leaderboard_ssim(x, x, np.ones(3))
    with pytest.raises(ValueError, match="smaller than"):
        lb.leaderboard_ssim(x[:, :5], x[:, :5], 1.0)


def test_metrics_reexports_the_leaderboard_names():
    for name in ("leaderboard_foreground_mask", "psnr", "nmse", "FOREGROUND_THRESHOLDS", "SSIM_WIN_SIZE",
                 "leaderboard_volume_scores"):
        assert getattr(metrics, name) is getattr(lb, name)
