"""Tests for PromptMR+ (models/promptmr.py): shapes, parameter-count fidelity, checkpointing, physics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.promptmr import PromptMR, PromptMRCascade, PromptMRConfig, acs_column_mask


def tiny_model(seed: int = 0, **overrides) -> PromptMR:
    torch.manual_seed(seed)
    return PromptMR(PromptMRConfig.from_dict(overrides, preset="tiny"))


def make_batch(batch: int, coils: int, h: int, w: int, adj: int = 3, acs: int = 6, seed: int = 1,
               dtype=torch.complex64):
    """Random undersampled k-space (B, adj, C, H, W) with a centred ACS block and random outer lines."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, w, generator=g) < 0.3
    c = w // 2
    mask[:, c - acs // 2: c - acs // 2 + acs] = True
    kspace = torch.randn(batch, adj, coils, h, w, dtype=dtype, generator=g)
    return kspace * mask.view(batch, 1, 1, 1, w), mask.float()


# ----------------------------------------------------------------------------------------------------------
# forward / backward
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch,coils,h,w", [(1, 1, 21, 27), (2, 3, 19, 30), (1, 5, 24, 17)])
def test_forward_backward_odd_sizes(batch, coils, h, w):
    model = tiny_model()
    kspace, mask = make_batch(batch, coils, h, w)
    out = model(kspace, mask)
    assert out.shape == (batch, 384, 384) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.cascades[0].dc_weight.grad.abs() > 0


def test_output_is_centre_crop_of_large_input():
    model = tiny_model(n_history=0)
    kspace, mask = make_batch(1, 2, 392, 390, acs=24)
    with torch.no_grad():
        out = model(kspace, mask)
    assert out.shape == (1, 384, 384) and torch.isfinite(out).all()
    assert (out > 0).float().mean() > 0.99  # a crop, not zero padding


def test_bad_inputs_raise():
    model = tiny_model()
    kspace, mask = make_batch(1, 2, 16, 18)
    with pytest.raises(ValueError, match="adjacent slices"):
        model(kspace[:, :1], mask)
    with pytest.raises(ValueError, match="mask"):
        model(kspace, mask[:, :-1])
    out_1d = model(kspace, mask[0])  # a (W,) mask is accepted
    assert out_1d.shape == (1, 384, 384)


# ----------------------------------------------------------------------------------------------------------
# config and parameter counts
# ----------------------------------------------------------------------------------------------------------
def count_params(preset: str):
    with torch.device("meta"):
        model = PromptMR(PromptMRConfig.from_dict({}, preset=preset))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, total, trainable


def test_pmr_plus_parameter_count_matches_reference():
    model, total, trainable = count_params("pmr_plus")
    assert abs(total - 92.86e6) / 92.86e6 < 1e-3
    assert abs(trainable - 82.49e6) / 82.49e6 < 1e-3
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.endswith("prompts") for n in frozen)


def test_challenge_parameter_count_sanity():
    _, total, trainable = count_params("challenge")
    assert 30e6 < total < 40e6 and trainable < total
    assert abs(total - 34.225e6) / 34.225e6 < 1e-3  # our figure; frozen prompts = total - trainable
    _, total_tiny, _ = count_params("tiny")
    assert total_tiny < 1e5


def test_learnable_prompt_makes_all_trainable():
    model = tiny_model(learnable_prompt=True)
    assert all(p.requires_grad for p in model.parameters())


def test_config_strict_and_roundtrip():
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        PromptMRConfig.from_dict({"num_cascades": 3})
    with pytest.raises(ValueError, match="num_adj_slices"):
        PromptMRConfig.from_dict({"num_adj_slices": 4})
    with pytest.raises(ValueError, match="feature_dim"):
        PromptMRConfig.from_dict({"feature_dim": [8, 8]})
    with pytest.raises(ValueError, match="n_buffer"):
        PromptMRConfig.from_dict({"n_buffer": 2})
    with pytest.raises(ValueError, match="unknown preset"):
        PromptMRConfig.from_dict({}, preset="nope")
    cfg = PromptMRConfig.from_dict({"feature_dim": [8, 12, 16]}, preset="challenge")
    assert cfg.feature_dim == (8, 12, 16) and cfg.cascade == 8 and cfg.compute_sens_per_coil
    d = cfg.to_dict()
    assert d["feature_dim"] == [8, 12, 16]
    assert PromptMRConfig.from_dict(d) == cfg


# ----------------------------------------------------------------------------------------------------------
# checkpointing and per-coil sensitivity computation are exact re-arrangements
# ----------------------------------------------------------------------------------------------------------
def _loss_and_grads(model: PromptMR, kspace, mask):
    model.zero_grad()
    out = model(kspace, mask)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("field", ["use_checkpoint", "compute_sens_per_coil"])
def test_memory_options_do_not_change_results(field):
    plain = tiny_model(seed=3)
    other = PromptMR(PromptMRConfig.from_dict({field: True}, preset="tiny"))
    other.load_state_dict(plain.state_dict())
    kspace, mask = make_batch(2, 3, 20, 22)
    out_a, grads_a = _loss_and_grads(plain, kspace, mask)
    out_b, grads_b = _loss_and_grads(other, kspace, mask)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------------------------------------
# physics
# ----------------------------------------------------------------------------------------------------------
def _np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


class _ZeroNet(nn.Module):
    def forward(self, image, history=None):
        return torch.zeros_like(image), history


def test_cascade_without_network_is_a_gradient_step():
    """With the network term removed, a cascade is x - w (A^H A x - A^H y), checked with numpy FFTs."""
    cfg = PromptMRConfig.from_dict({}, preset="tiny")
    cascade = PromptMRCascade(cfg, nn.PReLU()).double()
    cascade.net = _ZeroNet()
    with torch.no_grad():
        cascade.dc_weight.fill_(0.7)
    g = torch.Generator().manual_seed(0)
    b, s, c, h, w = 2, 3, 4, 10, 12
    x = torch.randn(b, s, h, w, dtype=torch.complex128, generator=g)
    x0 = torch.randn(b, s, h, w, dtype=torch.complex128, generator=g)
    sens = torch.randn(b, s, c, h, w, dtype=torch.complex128, generator=g)
    mask = torch.rand(b, w, generator=g) < 0.5
    with torch.no_grad():
        out, latent, _ = cascade(x, x0, x0, sens, mask.view(b, 1, 1, 1, w))

    xn, sn, mn = x.numpy(), sens.numpy(), mask.numpy()[:, None, None, None, :]
    normal = (sn.conj() * _np_ifft2c(_np_fft2c(sn * xn[:, :, None]) * mn)).sum(axis=2)
    expected = xn - 0.7 * (normal - x0.numpy())
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert latent is not None and latent.abs().max() == 0


def test_output_scales_with_kspace():
    """Inputs are normalised inside every network, so scaling k-space by c > 0 scales the output by c."""
    model = tiny_model(seed=5).double()
    kspace, mask = make_batch(1, 3, 18, 21, dtype=torch.complex128)
    with torch.no_grad():
        out = model(kspace, mask)
        out_scaled = model(kspace * 37.5, mask)
    torch.testing.assert_close(out_scaled, out * 37.5, rtol=1e-9, atol=1e-12)


def test_sensitivity_maps_have_unit_rss():
    model = tiny_model()
    kspace, mask = make_batch(2, 3, 16, 20)
    with torch.no_grad():
        sens = model.sens_net(kspace, acs_column_mask(mask != 0))
    assert sens.shape == kspace.shape
    rss = sens.abs().square().sum(dim=2).sqrt()
    torch.testing.assert_close(rss, torch.ones_like(rss), rtol=1e-5, atol=1e-5)


def test_acs_columns_derived_symmetrically_or_given():
    w = 20
    mask = torch.zeros(2, w, dtype=torch.bool)
    mask[0, 7:14] = True  # contiguous block around centre 10: 3 left, 4 right -> 6 symmetric lines
    mask[1, 9:12] = True  # 1 left, 2 right -> 2 lines
    mask[:, [2, 17]] = True
    derived = acs_column_mask(mask)
    assert derived[0].nonzero().flatten().tolist() == list(range(7, 13))
    assert derived[1].nonzero().flatten().tolist() == [9, 10]
    given = acs_column_mask(mask, torch.tensor([4, 0]))  # 0 -> derive for that element
    assert given[0].nonzero().flatten().tolist() == [8, 9, 10, 11]
    assert torch.equal(given[1], derived[1])
    with pytest.raises(ValueError, match="centre"):
        acs_column_mask(torch.zeros(1, w, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------------
# identity_init: the untrained model is the classical reconstruction
# ----------------------------------------------------------------------------------------------------------
def test_identity_init_presets():
    """Off in the reference configuration and the cine presets (the shipped cine weights were trained without
    it), on in the small SNU presets."""
    assert not PromptMRConfig().identity_init
    for preset in ("demo", "tiny"):
        assert PromptMRConfig.from_dict({}, preset=preset).identity_init
    for preset in ("pmr_plus", "challenge", "cine_demo", "cine_tiny", "cine_challenge"):
        assert not PromptMRConfig.from_dict({}, preset=preset).identity_init, preset


def test_identity_init_starts_from_acs_maps_and_data_consistency():
    """Untrained with identity_init: every U-Net returns its input's mean (zero last convolution), the coil maps
    are the ACS coil images (plus that constant) over their RSS, and the model's output is the output of the
    same data-consistency steps with the networks removed."""
    model = tiny_model(seed=3, identity_init=True).double()
    kspace, mask = make_batch(1, 4, 20, 24, dtype=torch.complex128)
    acs = acs_column_mask(mask != 0)
    images = torch.from_numpy(_np_ifft2c((kspace * acs.view(1, 1, 1, 1, -1)).numpy()))
    net_in = images.transpose(1, 2).reshape(4, 3, 20, 24)
    with torch.no_grad():
        out, _ = model.sens_net.net(net_in)
        flat = torch.cat([net_in.real, net_in.imag], dim=1).reshape(4, -1).mean(dim=1)
        torch.testing.assert_close(out, torch.complex(flat, flat).view(4, 1, 1, 1).expand_as(out))
        maps = model.sens_net(kspace, acs)
        expected = images + out.view(1, 4, 3, 20, 24).transpose(1, 2)
        torch.testing.assert_close(maps, expected / expected.abs().square().sum(2, keepdim=True).sqrt())
    untrained = model(kspace, mask)
    for cascade in model.cascades:
        cascade.net = _MeanNet()
    with torch.no_grad():
        torch.testing.assert_close(model(kspace, mask), untrained)


class _MeanNet(nn.Module):
    """The cascade U-Net with a zero last layer: the input's joint re/im mean, latent outputs likewise."""

    def forward(self, image, history=None):
        flat = torch.cat([image.real, image.imag], dim=1).reshape(image.shape[0], -1).mean(dim=1)
        return torch.complex(flat, flat).view(-1, 1, 1, 1).expand_as(image), history


def test_identity_init_is_not_below_zero_filled(tiny_data):
    """On a simulated volume the untrained identity_init model scores at least the zero-filled input's SSIM
    (the reference start scores well below it)."""
    import h5py

    from utils.leaderboard import leaderboard_foreground_mask
    from utils.metrics import leaderboard_ssim

    kfile = tiny_data / "leaderboard" / "acc4" / "kspace" / "brain_test1.h5"
    with h5py.File(kfile) as f:
        kspace, mask = torch.from_numpy(f["kspace"][()]), torch.from_numpy(f["mask"][()])
    with h5py.File(tiny_data / "leaderboard" / "acc4" / "image" / "brain_test1.h5") as f:
        label, zero_filled, peak = f["image_label"][()], f["image_input"][()], f.attrs["max"]
    s = kspace.shape[0]
    adjacent = torch.tensor([[min(max(i + d, 0), s - 1) for d in (-1, 0, 1)] for i in range(s)])
    fg = leaderboard_foreground_mask(label, "brain")
    scores = {}
    for init in (True, False):
        model = tiny_model(seed=0, identity_init=init).eval()
        with torch.no_grad():
            out = torch.cat([model(kspace[adjacent[i]][None], mask[None]) for i in range(s)]).numpy()
        scores[init] = float(leaderboard_ssim(out, label, peak, fg).mean())
    baseline = float(leaderboard_ssim(zero_filled, label, peak, fg).mean())
    assert scores[True] >= baseline - 0.005 and scores[True] > scores[False] + 0.03, (scores, baseline)
