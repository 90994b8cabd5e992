"""KGMgT (models/kgmgt.py, models/kgmgt_blocks.py) at tiny scale: matching, deformable convolution,
window/stripe attention masks, data consistency, the two passes, odd sizes, the paper parameter count."""
import math

import pytest
import torch
import torch.nn.functional as F

from models import build_config, build_model
from models.kgmgt import KGMgT, KGMgTConfig, coil_sensitivities, load_extractor_weights
from models.kgmgt_blocks import (
    DeformableAggregation,
    MixedAttention,
    WindowAttention,
    global_patch_match,
    local_patch_match,
    modulated_deform_conv2d,
    neighbour_offsets,
)
from utils import physics


def _tiny(**overrides) -> KGMgT:
    torch.manual_seed(0)
    return build_model("kgmgt", "tiny", **overrides)


# ------------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize("matcher", ["local", "global"])
def test_matching_recovers_a_known_shift_as_flow(matcher):
    torch.manual_seed(1)
    ref = torch.randn(2, 16, 14, 15)
    shift = (2, -1)
    target = torch.roll(ref, shifts=shift, dims=(2, 3))  # target(p) = ref(p - shift)
    flow, sim = local_patch_match(target, ref, 3) if matcher == "local" else global_patch_match(target, ref)
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert torch.equal(flow[:, 0][inner], torch.full_like(flow[:, 0][inner], -shift[0]))
    assert torch.equal(flow[:, 1][inner], torch.full_like(flow[:, 1][inner], -shift[1]))
    assert torch.allclose(sim[:, 0][inner], torch.ones_like(sim[:, 0][inner]), atol=1e-4)
    assert flow.shape == (2, 2, 14, 15) and sim.shape == (2, 1, 14, 15)


def test_local_search_stays_in_its_window_and_prefers_no_motion_on_ties():
    ref = torch.randn(1, 8, 12, 12)
    flow, _ = local_patch_match(torch.roll(ref, (5, 0), (2, 3)), ref, 2)
    assert flow.abs().max() <= 2  # the true shift (5) is outside the window: never returned
    flat = torch.ones(1, 4, 10, 10)  # every patch equal: every displacement ties
    flow, sim = local_patch_match(flat, flat, 2)
    assert torch.equal(flow, torch.zeros_like(flow))


def test_asa_recovers_an_image_shift_at_every_scale():
    model = _tiny(search_radius=3)
    torch.manual_seed(3)
    ref = torch.randn(1, 2, 64, 64)  # a textured 2-channel image
    target = torch.roll(ref, shifts=(4, -8), dims=(2, 3))  # whole quarter-scale pixels: (1, -2)
    with torch.no_grad():
        align = model.align(target, ref)
    for flow, factor in zip(align["flow"], (1, 2, 4)):  # full, half, quarter resolution
        m = 20 // factor  # away from the borders and the roll's seam
        inner = flow[:, :, m:-m, m:-m]
        assert torch.equal(inner[:, 0], torch.full_like(inner[:, 0], -4.0 / factor)), factor
        assert torch.equal(inner[:, 1], torch.full_like(inner[:, 1], 8.0 / factor)), factor
    assert align["offsets"][0].shape == (1, 9, 2, 64, 64) and align["sim"][2].shape == (1, 1, 16, 16)


def test_neighbour_offsets_take_the_flow_of_each_taps_neighbour():
    flow = torch.arange(2 * 4 * 5, dtype=torch.float32).view(1, 2, 4, 5)
    taps = neighbour_offsets(flow)
    assert taps.shape == (1, 9, 2, 4, 5)
    assert torch.equal(taps[:, 4], flow)  # centre tap
    assert torch.equal(taps[0, 0, :, 1:, 1:], flow[0, :, :-1, :-1])  # tap (-1, -1) reads p + (-1, -1)
    assert torch.equal(taps[0, 8, :, :-1, :-1], flow[0, :, 1:, 1:])  # tap (+1, +1)


# ------------------------------------------------------------------------------------------- deformable conv


def _bilinear_reference(img, y, x):
    """Bilinear sample of img (C, H, W) at real (y, x), zero outside (written out per corner)."""
    c, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out += img[:, yy, xx] * (1 - abs(y - yy)) * (1 - abs(x - xx))
    return out


def _deform_reference(x, offset, mask, weight, bias, groups):
    b, cin, h, w = x.shape
    cout = weight.shape[0]
    cg = cin // groups
    out = torch.zeros(b, cout, h, w, dtype=x.dtype)
    for n in range(b):
        for py in range(h):
            for px in range(w):
                cols = torch.zeros(cin, 9, dtype=x.dtype)
                for g in range(groups):
                    for k in range(9):
                        i, j = divmod(k, 3)
                        dy = float(offset[n, 2 * (g * 9 + k), py, px])
                        dx = float(offset[n, 2 * (g * 9 + k) + 1, py, px])
                        v = _bilinear_reference(x[n, g * cg:(g + 1) * cg], py + i - 1 + dy, px + j - 1 + dx)
                        cols[g * cg:(g + 1) * cg, k] = v * mask[n, g * 9 + k, py, px]
                out[n, :, py, px] = (weight.view(cout, cin, 9) * cols).sum((1, 2)) + bias
    return out


def test_deformable_conv_matches_a_direct_per_tap_reference():
    torch.manual_seed(2)
    b, cin, cout, h, w, g = 2, 4, 3, 5, 6, 2
    x = torch.randn(b, cin, h, w, dtype=torch.float64)
    offset = 2.5 * torch.randn(b, 2 * g * 9, h, w, dtype=torch.float64)  # some samples fall outside
    mask = torch.rand(b, g * 9, h, w, dtype=torch.float64)
    weight = torch.randn(cout, cin, 3, 3, dtype=torch.float64)
    bias = torch.randn(cout, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, g)
    assert torch.allclose(out, _deform_reference(x, offset, mask, weight, bias, g), atol=1e-10)


def test_deformable_conv_at_zero_offset_is_plain_convolution():
    torch.manual_seed(3)
    x = torch.randn(2, 8, 7, 9)
    weight, bias = torch.randn(5, 8, 3, 3), torch.randn(5)
    out = modulated_deform_conv2d(x, torch.zeros(2, 2 * 4 * 9, 7, 9), torch.ones(2, 4 * 9, 7, 9), weight, bias, 4)
    assert torch.allclose(out, F.conv2d(x, weight, bias, padding=1), atol=1e-5)
    # an integer offset of +1 column everywhere is the convolution of the image shifted left by one column
    # (except in column 0, whose left taps read image column 0 rather than the shifted image's zero padding)
    offset = torch.zeros(2, 2 * 4 * 9, 7, 9)
    offset[:, 1::2] = 1.0
    shifted = F.pad(x[..., 1:], (0, 1))
    out = modulated_deform_conv2d(x, offset, torch.ones(2, 36, 7, 9), weight, bias, 4)
    assert torch.allclose(out[..., 1:], F.conv2d(shifted, weight, bias, padding=1)[..., 1:], atol=1e-5)


def test_aggregation_starts_at_the_matching_offsets():
    torch.manual_seed(4)
    agg = DeformableAggregation(8, 4)
    ref, cond = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    pre = torch.zeros(1, 9, 2, 6, 6)
    out = agg(ref, cond, pre, torch.ones(1, 1, 6, 6))  # zero-initialised offset/mask conv: offsets 0, masks 0.5
    assert torch.allclose(out, 0.5 * F.conv2d(ref, agg.weight, None, padding=1) + agg.bias.view(1, -1, 1, 1), atol=1e-5)


# ------------------------------------------------------------------------------------------- attention


def test_shifted_windows_never_attend_across_the_wrap():
    torch.manual_seed(5)
    attn = WindowAttention(dim=8, window=4, heads=2)
    x = torch.randn(1, 8, 8, 8)  # (B, H, W, C)
    y = x.clone()
    y[0, 0, 0] += 10.0  # top-left pixel: rolled into the bottom-right window with the bottom/right border
    with torch.no_grad():
        d = (attn(y, shift=2) - attn(x, shift=2)).abs().sum(-1)[0]
        assert d[7, 7] == 0 and d[7, 0] == 0 and d[0, 7] == 0  # same rolled window, other side of the wrap
        assert d[1, 1] > 0  # same window, same side
        d0 = (attn(y, shift=0) - attn(x, shift=0)).abs().sum(-1)[0]
        assert d0[3, 3] > 0 and d0[4, 4] == 0 and d0[1, 1] > 0  # unshifted: exactly its own 4x4 window
        assert (d0[:4, :4] > 0).all() and d0[4:].abs().sum() == 0 and d0[:, 4:].abs().sum() == 0


@pytest.mark.parametrize("vertical", [False, True])
def test_anchor_stripe_attention_stays_in_its_stripe(vertical):
    torch.manual_seed(6)
    attn = MixedAttention(dim=8, heads=2, stripe=(4, 8), down=2, cpb_hidden=16)
    x = torch.randn(1, 16, 16, 8)
    y = x.clone()
    p = (3, 1) if vertical else (1, 3)  # inside the first stripe, away from its border (anchor conv reach)
    y[0, p[0], p[1]] += 10.0
    with torch.no_grad():
        d = (attn(y, vertical) - attn(x, vertical)).abs().sum(-1)[0]
    rows, cols = (8, 4) if vertical else (4, 8)  # a vertical stripe is the transposed rectangle
    assert (d[:rows, :cols] > 0).all()
    outside = d.clone()
    outside[:rows, :cols] = 0
    assert outside.abs().sum() == 0


def test_blocks_alternate_shift_and_stripe_orientation():
    model = build_model("kgmgt", "demo")
    blocks = model.net.body_down_large.groups[0].blocks
    assert [b.shift for b in blocks] == [0, 2] and [b.vertical for b in blocks] == [False, True]
    square = build_model("kgmgt", "demo", stripe_alternate=False)
    assert [b.vertical for b in square.net.body_down_large.groups[0].blocks] == [False, False]


# ------------------------------------------------------------------------------------------- data consistency


def test_dc_keeps_the_measured_lines_when_eta_is_large():
    model = _tiny()
    with torch.no_grad():
        model.log_eta.fill_(40.0)  # η = e^40
    torch.manual_seed(7)
    h, w = 12, 10
    image = torch.randn(2, 2, h, w)
    measured = torch.randn(2, 1, h, w, dtype=torch.complex64)
    mask = (torch.rand(2, 1, 1, w) > 0.5)
    sens = torch.ones(2, 1, h, w, dtype=torch.complex64)  # one coil, unit map: F^H of DC k-space is exact
    with torch.no_grad():
        out = model.data_consistency(image, measured, mask, sens)
    k_out = physics.fft2c(torch.complex(out[:, 0], out[:, 1]).unsqueeze(1))
    k_in = physics.fft2c(torch.complex(image[:, 0], image[:, 1]).unsqueeze(1))
    m = mask.expand_as(k_out)
    assert torch.allclose(k_out[m], measured[m], atol=1e-5)
    assert torch.allclose(k_out[~m], k_in[~m], atol=1e-5)
    with torch.no_grad():
        model.log_eta.fill_(0.0)  # η = 1: the average on sampled lines
        out = model.data_consistency(image, measured, mask, sens)
    k_out = physics.fft2c(torch.complex(out[:, 0], out[:, 1]).unsqueeze(1))
    assert torch.allclose(k_out[m], (k_in[m] + measured[m]) / 2, atol=1e-5)


def test_coil_maps_from_the_time_averaged_centre_have_unit_rss(cine_batch):
    kspace, mask = cine_batch()
    mask5 = physics.model_mask(mask, tuple(kspace.shape))
    sens = coil_sensitivities(kspace, mask5)
    assert sens.shape == (2, 3, 24, 20)
    assert torch.allclose(physics.rss(sens, dim=1), torch.ones(2, 24, 20), atol=1e-3)


# ------------------------------------------------------------------------------------------- the model


def test_both_passes_run_one_shared_network_with_pass_one_knowledge(cine_batch):
    model = _tiny()
    calls = []
    model.net.register_forward_hook(lambda mod, args, out: calls.append((args, out)))
    kspace, mask = cine_batch()
    with torch.no_grad():
        model(kspace, mask)
    assert len(calls) == 2
    (args1, out1), (args2, _) = calls
    assert all(k2 is a for k2, a in zip(args2[2], out1[1]))  # pass 2's knowledge = pass 1's aggregated maps
    assert args1[2][0] is args1[1][0]  # pass 1's knowledge = the reference's own features
    assert len([m for m in model.modules() if type(m).__name__ == "RestorationNetwork"]) == 1


@pytest.mark.parametrize("two_d", [False, True])
def test_odd_sizes_forward_and_backward(two_d, cine_batch):
    model = _tiny()
    kspace, mask = cine_batch(h=21, w=19, two_d=two_d)
    acs = torch.tensor([6, 6]) if two_d else None
    out = model(kspace, mask, acs)
    assert out.shape == (2, 21, 19) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_contract_errors_and_released_preset(cine_batch):
    model = _tiny()
    kspace, mask = cine_batch()
    with pytest.raises(ValueError, match="3 frames"):
        model(kspace[:, :1], mask[:, :1])
    with pytest.raises(ValueError, match="complex"):
        model(kspace.real, mask)
    released = build_model("kgmgt", "tiny", dc=False, global_search=True)
    assert not hasattr(released, "log_eta")
    with torch.no_grad():
        assert released(kspace, mask).shape == (2, 24, 20)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(cine_batch):
    kspace, mask = cine_batch(b=1)
    plain, ckpt = _tiny(), _tiny(use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    outs = []
    for model in (plain, ckpt):
        out = model(kspace, mask)
        out.sum().backward()
        outs.append((out.detach(), model.net.head.weight.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5) and torch.allclose(outs[0][1], outs[1][1], atol=1e-4)


def test_every_layer_is_saved_no_hidden_randomness(cine_batch):
    kspace, mask = cine_batch()
    torch.manual_seed(11)
    a = build_model("kgmgt", "tiny").eval()
    torch.manual_seed(12)
    b = build_model("kgmgt", "tiny").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a(kspace, mask), b(kspace, mask))


def test_paper_parameter_count_from_the_registry_on_meta():
    with torch.device("meta"):
        model = build_model("kgmgt", "paper")
    counts = model.parameter_counts()
    # the notes' analytic count of the released net_g: 5.40 M (5.28 M U-shape + 0.11 M refinement CNN)
    assert 5.39e6 < counts["restoration"] < 5.41e6 and 0.11e6 < counts["refinement"] < 0.12e6
    assert counts["extractor"] == 2 * 554_752 and counts["reference_features"] == 554_752
    assert counts["total"] == counts["restoration"] + 3 * 554_752 + 1


def test_config_presets_validation_and_lr_scales():
    assert build_config("kgmgt", "cine_demo") == build_config("kgmgt", "demo")
    assert build_config("kgmgt", "released").stripe_size == (8, 8)
    for bad in ({"num_heads": (3, 3)}, {"stripe_size": (3, 8)}, {"num_adj_slices": 5}, {"groups": 3}):
        with pytest.raises(ValueError, match="KGMgTConfig"):
            build_config("kgmgt", "paper", **bad)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        build_config("kgmgt", "paper", window=8)
    model = _tiny()
    scales = {n: model.parameter_lr_scale(n) for n, _ in model.named_parameters()}
    assert scales["net.agg_up_small.offset_conv1.weight"] == 1e-3
    assert scales["net.agg_down_medium.dcn.conv_offset_mask.bias"] == 1e-2
    assert scales["net.agg_up_large.offset_conv2.weight"] == 1.0 and scales["net.agg_up_small.dcn.weight"] == 1.0
    assert build_config("kgmgt", "tiny", pretrained_extractor="x.pt").to_dict()["pretrained_extractor"] is None


def test_pretrained_extractor_loads_from_a_local_file_only(tmp_path):
    from safetensors.torch import save_file

    source = _tiny()
    released_names = {k.replace("target.", "feature_extraction_image1.model.").replace(
        "reference.", "feature_extraction_image2_1.model."): v.clone() for k, v in source.extractor.state_dict().items()}
    path = tmp_path / "extractor.safetensors"
    save_file(released_names, str(path))
    torch.manual_seed(99)
    model = build_model("kgmgt", "tiny", pretrained_extractor=str(path), freeze_extractor=True)
    assert all(torch.equal(a, b) for a, b in zip(model.extractor.state_dict().values(), source.extractor.state_dict().values()))
    assert not any(p.requires_grad for p in model.extractor.parameters())
    torch.save({"params": source.extractor.state_dict()}, tmp_path / "basicsr.pth")
    load_extractor_weights(model.extractor, tmp_path / "basicsr.pth")
    with pytest.raises(ValueError, match="not found"):
        build_model("kgmgt", "tiny", pretrained_extractor=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="shape mismatch"):
        build_model("kgmgt", "demo", pretrained_extractor=str(path))
