"""E2E-VarNet, its U-Nets and sensitivity network: shapes, gradients, parameter count, physics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.unet import NormUnet, SensitivityNet, Unet
from models.varnet import VarNet, VarNetCascade, VarNetConfig
from utils import physics


def _mask(batch: int, width: int, acs: int = 5, acc: int = 3, seed: int = 0) -> torch.Tensor:
    """(B, W) float mask: ``acs`` centred lines plus every ``acc``-th line from a random offset."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, width)
    start = (width - acs + 1) // 2
    mask[:, start : start + acs] = 1
    for b in range(batch):
        offset = int(torch.randint(acc, (1,), generator=gen))
        mask[b, offset::acc] = 1
    return mask


def _kspace(batch, slices, coils, h, w, mask, seed=0) -> torch.Tensor:
    """Random masked k-space (B, S, C, H, W) complex64 of a smooth-ish image times coil phases."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, slices, coils, h, w, 2, generator=gen)
    k = physics.fft2c(torch.view_as_complex(image))
    return k * (mask[:, None, None, None, :] != 0)


def _model(seed=0, **overrides) -> VarNet:
    torch.manual_seed(seed)
    return VarNet(VarNetConfig.from_dict(overrides, preset="tiny"))


def _zero_networks(model: VarNet) -> None:
    """Make every cascade's network term exactly zero (DC only)."""
    for cascade in model.cascades:
        cascade.refinement = lambda current, sens: torch.zeros_like(current)


def _numpy_zero_filled(k: torch.Tensor) -> np.ndarray:
    """Independent reference: RSS of the centred orthonormal inverse FFT, (B, H, W)."""
    x = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return np.sqrt((np.abs(x) ** 2).sum(axis=-3))


# ----------------------------------------------------------------------------------------- config


def test_fastmri_parameter_count_matches_paper():
    with torch.device("meta"):
        model = VarNet(VarNetConfig.from_dict({}, preset="fastmri"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 29.94e6) / 29.94e6 < 1e-3, count
    assert all(p.is_meta for p in model.parameters())


def test_presets_are_ordered_by_size():
    counts = {}
    for preset in ("fastmri", "demo", "tiny"):
        with torch.device("meta"):
            counts[preset] = sum(p.numel() for p in VarNet(VarNetConfig.from_dict({}, preset=preset)).parameters())
    assert counts["fastmri"] > counts["demo"] > counts["tiny"] > 0


@pytest.mark.parametrize(
    "values, preset",
    [({"num_casades": 3}, None), ({}, "huge"), ({"num_adj_slices": 2}, None), ({"pools": 0}, None),
     ({"chans": 2.5}, None), ({"use_checkpoint": 1}, None)],
)
def test_bad_hyperparameters_raise(values, preset):
    with pytest.raises(ValueError):
        VarNetConfig.from_dict(values, preset=preset)


def test_config_round_trip():
    cfg = VarNetConfig.from_dict({"num_adj_slices": 3, "use_checkpoint": True}, preset="demo")
    assert VarNetConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------- forward/backward


@pytest.mark.parametrize("coils, slices, adj", [(1, 1, 1), (2, 3, 1), (3, 3, 3), (5, 1, 1)])
def test_forward_backward_tiny(coils, slices, adj):
    h, w, batch = 21, 19, 2
    mask = _mask(batch, w, seed=coils)
    k = _kspace(batch, slices, coils, h, w, mask, seed=coils)
    model = _model(num_adj_slices=adj)
    out = model(k, mask)
    assert out.shape == (batch, 384, 384) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # centre crop/pad: the tiny image sits in the middle, zeros around it
    assert out[:, :100].abs().max() == 0 and out[:, 182:201, 183:200].abs().min() > 0
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the first cascade starts from the measurement, so its DC term (and weight gradient) is zero
    assert model.cascades[0].dc.weight.grad == 0
    assert all(c.dc.weight.grad.abs() > 0 for c in model.cascades[1:])


def test_large_input_is_centre_cropped_like_zero_filled():
    h, w = 389, 387
    mask = _mask(1, w, acs=31, acc=4)
    k = _kspace(1, 1, 2, h, w, mask)
    model = _model()
    _zero_networks(model)
    with torch.no_grad():
        out = model(k, mask)
    ref = _numpy_zero_filled(k[:, 0])[:, 2:386, 1:385]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise():
    model = _model()
    mask = _mask(1, 12)
    k = _kspace(1, 1, 2, 10, 12, mask)
    with pytest.raises(ValueError):
        model(k.abs(), mask)  # real k-space
    with pytest.raises(ValueError):
        model(k[:, 0], mask)  # missing slice axis
    with pytest.raises(ValueError):
        model(k, mask[:, :-1])  # width mismatch
    with pytest.raises(ValueError):
        _model(num_adj_slices=3)(k, mask)  # fewer slices than needed


# -------------------------------------------------------------------------------------- checkpoint


def test_checkpointing_gives_same_outputs_and_gradients():
    mask = _mask(2, 17)
    k = _kspace(2, 3, 3, 15, 17, mask)
    plain = _model(seed=3, num_adj_slices=3)
    ckpt = VarNet(VarNetConfig.from_dict({"num_adj_slices": 3, "use_checkpoint": True}, preset="tiny"))
    ckpt.load_state_dict(plain.state_dict())
    outs = []
    for model in (plain, ckpt):
        out = model(k, mask)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------- physics


def test_cascade_without_network_is_a_gradient_step():
    """With G = 0 a cascade is k - w M (k - y): measured lines pulled to y, others untouched."""
    torch.manual_seed(0)
    cascade = VarNetCascade(chans=2, pools=1)
    cascade.refinement = lambda current, sens: torch.zeros_like(current)
    mask = _mask(2, 9)
    current = torch.randn(2, 1, 3, 8, 9, dtype=torch.complex64)
    measured = _kspace(2, 1, 3, 8, 9, mask, seed=1)
    m = mask[:, None, None, None, :].bool()
    for weight in (0.3, 1.0):
        with torch.no_grad():
            cascade.dc.weight.fill_(weight)
        out = cascade(current, measured, m, None)
        expected = current.numpy() - weight * mask.numpy()[:, None, None, None, :] * (current - measured).numpy()
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-6, atol=1e-6)
    # weight 1: exactly the measurement on sampled lines
    sampled = mask[0].numpy() > 0
    np.testing.assert_allclose(out.detach().numpy()[0][..., sampled], measured.numpy()[0][..., sampled], atol=1e-6)
    np.testing.assert_array_equal(out.detach().numpy()[0][..., ~sampled], current.numpy()[0][..., ~sampled])


def test_dc_only_varnet_returns_zero_filled_rss():
    """DC weight 1, no network: the measured k-space is a fixed point, output = zero-filled RSS."""
    mask = _mask(2, 13)
    k = _kspace(2, 3, 4, 11, 13, mask)
    model = _model()
    _zero_networks(model)
    with torch.no_grad():
        out = model(k, mask)
    ref = physics.center_pad(torch.from_numpy(_numpy_zero_filled(k[:, 1])), (384, 384))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-7)


def test_output_is_scale_equivariant():
    """NormUnets normalise, maps are RSS-normalised, DC is linear: f(a k) = a f(k) for a > 0."""
    mask = _mask(1, 15)
    k = _kspace(1, 1, 3, 14, 15, mask)
    model = _model(seed=1)
    with torch.no_grad():
        out, out_scaled = model(k, mask), model(k * 1e-3, mask)
    torch.testing.assert_close(out_scaled * 1e3, out, rtol=1e-4, atol=1e-4 * out.abs().max().item())


def test_output_is_invariant_to_coil_order():
    mask = _mask(1, 15)
    k = _kspace(1, 1, 4, 14, 15, mask)
    model = _model(seed=2)
    with torch.no_grad():
        out, out_perm = model(k, mask), model(k[:, :, [2, 0, 3, 1]], mask)
    torch.testing.assert_close(out_perm, out, rtol=1e-5, atol=1e-5 * out.abs().max().item())


def test_only_centre_slices_are_used():
    mask = _mask(1, 15)
    k = _kspace(1, 5, 2, 14, 15, mask)
    single, triple = _model(seed=4), _model(seed=4, num_adj_slices=3)
    with torch.no_grad():
        torch.testing.assert_close(single(k, mask), single(k[:, 2:3], mask))
        torch.testing.assert_close(triple(k, mask), triple(k[:, 1:4], mask))
        # the adjacent slices do matter for a 3-slice model
        assert not torch.allclose(triple(k[:, 1:4], mask), triple(k[:, 0:3], mask))


def test_num_low_frequencies_matches_derived_acs():
    mask = torch.zeros(2, 16)
    mask[:, 6:10] = 1  # ACS of 4 centred lines, isolated from the other sampled lines
    mask[:, [0, 3, 12, 15]] = 1
    k = _kspace(2, 1, 2, 12, 16, mask)
    model = _model()
    with torch.no_grad():
        derived = model(k, mask)
        torch.testing.assert_close(model(k, mask, num_low_frequencies=4), derived)
        torch.testing.assert_close(model(k, mask, num_low_frequencies=torch.tensor([4, 4])), derived)
        assert not torch.allclose(model(k, mask, num_low_frequencies=2), derived)


def test_varnet_derives_the_acs_as_fastmri_does():
    """A lopsided ACS block [6, 11) around c = 8 (2 columns left of c, 3 from c): fastMRI's rule takes the
    symmetric 2 * min(2, 3) = 4 columns [6, 10), not the 5-column block."""
    mask = torch.zeros(1, 16)
    mask[:, 6:11] = 1
    mask[:, [0, 3, 14]] = 1
    k = _kspace(1, 1, 2, 12, 16, mask)
    model = _model()
    with torch.no_grad():
        derived = model(k, mask)
        torch.testing.assert_close(model(k, mask, num_low_frequencies=4), derived)
        torch.testing.assert_close(model(k, mask, num_low_frequencies=0), derived)  # 0: derive (fastMRI)
        assert not torch.allclose(model(k, mask, num_low_frequencies=5), derived)  # the whole block differs


# ------------------------------------------------------------------------------------ U-Net parts


@pytest.mark.parametrize("h, w", [(12, 19), (16, 9), (11, 17)])
def test_unet_keeps_odd_sizes(h, w):
    net = Unet(3, 2, chans=2, num_pools=3)
    assert net(torch.randn(2, 3, h, w)).shape == (2, 2, h, w)


def test_norm_unet_pads_as_fastmri():
    """fastMRI's NormUnet.pad: to ((n - 1) | 15) + 1, floor before and ceil after, whatever the depth;
    only below 2 ** (num_pools + 1) (where its bottleneck would be one pixel) is more padding added."""
    from models.unet import _pad_amounts

    def fastmri(n):
        extra = (((n - 1) | 15) + 1) - n
        return math.floor(extra / 2), math.ceil(extra / 2)

    for n in (33, 100, 368, 384, 385, 396, 416, 640):
        assert _pad_amounts(n, 4) == fastmri(n) and _pad_amounts(n, 2) == fastmri(n)
    assert _pad_amounts(385, 4) == (7, 8) and _pad_amounts(396, 4) == (2, 2)
    assert _pad_amounts(10, 4) == (11, 11) and _pad_amounts(10, 3) == (3, 3)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 2), (7, 13), (16, 9)])
def test_norm_unet_keeps_any_size(h, w):
    net = NormUnet(chans=2, num_pools=3)
    x = torch.randn(2, 1, h, w, dtype=torch.complex64)
    assert net(x).shape == (2, 1, h, w)


def test_norm_unet_complex_channels_and_scale_equivariance():
    torch.manual_seed(0)
    net = NormUnet(chans=2, num_pools=2, in_complex=3, out_complex=3)
    x = torch.randn(2, 3, 11, 6, dtype=torch.complex64)
    y = net(x)
    assert y.shape == x.shape and y.dtype == torch.complex64
    torch.testing.assert_close(net(5.0 * x), 5.0 * y, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        net(x.real)
    assert torch.isfinite(net(torch.zeros_like(x))).all()


def test_sensitivity_maps_have_unit_rss_and_only_see_acs():
    torch.manual_seed(0)
    sens_net = SensitivityNet(chans=2, num_pools=2)
    mask = _mask(1, 15)
    k = _kspace(1, 1, 4, 12, 15, mask)
    acs = physics.acs_columns(mask, convention="contiguous")[:, None, None, None, :]
    maps = sens_net(k, acs)
    assert maps.shape == k.shape
    torch.testing.assert_close(physics.rss(maps, dim=-3), torch.ones(1, 1, 12, 15))
    outside = k.clone()
    outside[..., ~acs[0, 0, 0, 0]] *= 7  # change only non-ACS lines
    torch.testing.assert_close(sens_net(outside, acs), maps)


# ------------------------------------------------------------- fused InstanceNorm + in-place LeakyReLU


def _unfused_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``net`` with every fused norm-act replaced by the pre-fusion modules:
    ``nn.InstanceNorm2d(C)`` then a non-inplace ``nn.LeakyReLU(0.2)`` (the old code path)."""
    import copy

    from models.unet import InstanceNormLeakyReLU

    ref = copy.deepcopy(net)
    for seq in [m for m in ref.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for prev, name in zip(names, names[1:]):
            if isinstance(seq._modules[name], InstanceNormLeakyReLU):
                chans = seq._modules[prev].out_channels
                seq._modules[name] = torch.nn.Sequential(torch.nn.InstanceNorm2d(chans), torch.nn.LeakyReLU(0.2))
    assert not any(isinstance(m, InstanceNormLeakyReLU) for m in ref.modules())
    return ref


def _set_fused(net: torch.nn.Module, fused) -> None:
    from models.unet import InstanceNormLeakyReLU

    for m in net.modules():
        if isinstance(m, InstanceNormLeakyReLU):
            m.fused = fused


def _loss_and_grads(model, *inputs):
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    loss = (out - 0.3).abs().mean() + out.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _varnet64(seed=5, **overrides):
    torch.manual_seed(seed)
    cfg = VarNetConfig.from_dict(dict({"num_cascades": 2, "chans": 3, "pools": 2, "sens_chans": 2, "sens_pools": 2},
                                      **overrides))
    return VarNet(cfg).double()


def _input64(coils=3, h=13, w=14, slices=1):
    mask = _mask(1, w, acs=4, acc=3)
    k = _kspace(1, slices, coils, h, w, mask).to(torch.complex128)
    return k, mask


def test_inplace_native_path_is_bit_identical_to_the_old_unfused_path():
    """Native batch-norm kernel + in-place LeakyReLU (the non-CPU path, forced here): loss and every gradient
    bit-identical to nn.InstanceNorm2d + non-inplace nn.LeakyReLU, with and without checkpointing (float64)."""
    k, mask = _input64()
    for ckpt in (False, True):
        model = _varnet64(use_checkpoint=ckpt)
        ref = _unfused_copy(model)
        _set_fused(model, False)
        loss, grads = _loss_and_grads(model, k, mask)
        ref_loss, ref_grads = _loss_and_grads(ref, k, mask)
        assert torch.equal(loss, ref_loss)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            assert torch.equal(grads[name], ref_grads[name]), name


def test_fused_cpu_path_matches_the_old_unfused_path():
    """The CPU default (hand-written backward, output-only saving): loss and gradients equal the old path to
    rounding (float64), through gradient checkpointing too, and checkpointing changes no bit."""
    k, mask = _input64()
    results = []
    for ckpt in (False, True):
        model = _varnet64(use_checkpoint=ckpt)
        ref = _unfused_copy(model)
        loss, grads = _loss_and_grads(model, k, mask)
        ref_loss, ref_grads = _loss_and_grads(ref, k, mask)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
        for name in grads:
            scale = ref_grads[name].abs().max()
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=0, atol=1e-11 * scale, msg=name)
        results.append((loss, grads))
    assert torch.equal(results[0][0], results[1][0])
    for name in results[0][1]:
        assert torch.equal(results[0][1][name], results[1][1][name]), name


@pytest.mark.parametrize("n", [1, 3])
def test_fused_norm_act_gradcheck_and_leaves_its_input_alone(n):
    from models.unet import InstanceNormLeakyReLU

    layer = InstanceNormLeakyReLU(0.2)
    x = (torch.randn(n, 2, 5, 4, dtype=torch.float64) * 3 + 1).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,))
    before = x.detach().clone()
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.detach(), before)  # in place only on its own output
    ref = torch.nn.functional.leaky_relu(torch.nn.functional.instance_norm(before), 0.2)
    torch.testing.assert_close(y.detach(), ref, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError):
        InstanceNormLeakyReLU(0.0)


def test_float32_channels_last_unet_matches_float64():
    """On CPU float32 the U-Net runs channels-last; its output is contiguous and agrees with float64."""
    torch.manual_seed(0)
    net = Unet(2, 2, chans=4, num_pools=2)
    x = torch.randn(2, 2, 24, 20)
    y = net(x)
    assert y.is_contiguous()
    y64 = net.double()(x.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-5)


def test_parameter_names_survive_the_fusion():
    """Checkpoints keep loading: conv weights stay at modules 0/4 of every block, the up-conv at 0."""
    names = set(Unet(2, 2, chans=2, num_pools=2).state_dict())
    assert names == {"encoder.0.0.weight", "encoder.0.4.weight", "encoder.1.0.weight", "encoder.1.4.weight",
                     "bottleneck.0.weight", "bottleneck.4.weight", "up.0.0.weight", "up.1.0.weight",
                     "decoder.0.0.weight", "decoder.0.4.weight", "decoder.1.0.weight", "decoder.1.4.weight",
                     "head.weight", "head.bias"}
