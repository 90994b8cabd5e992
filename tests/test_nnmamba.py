"""Mamba mixer block (mamba-ssm state-dict compatibility, causality) and nnMamba seg/cls models."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.mamba import Mamba
from models.nnmamba import MICCSS, NNMambaCls, NNMambaClsConfig, NNMambaSeg, NNMambaSegConfig

# mamba_ssm.Mamba(d_model=16) state dict (defaults d_state=16, d_conv=4, expand=2, dt_rank=ceil(16/16)=1,
# conv_bias=True, bias=False), written from mamba_ssm/modules/mamba_simple.py.
MAMBA_SSM_D16 = {
    "A_log": (32, 16),
    "D": (32,),
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,),
    "x_proj.weight": (33, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "out_proj.weight": (16, 32),
}


def test_mamba_state_dict_matches_mamba_ssm():
    sd = Mamba(16).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == MAMBA_SSM_D16
    with_bias = Mamba(16, bias=True, conv_bias=False, dt_rank=3).state_dict()
    assert "in_proj.bias" in with_bias and "out_proj.bias" in with_bias and "conv1d.bias" not in with_bias
    assert tuple(with_bias["x_proj.weight"].shape) == (3 + 32, 32)


def test_mamba_init_and_round_trip():
    torch.manual_seed(0)
    m = Mamba(16, dt_min=0.01, dt_max=0.05)
    torch.testing.assert_close(m.A_log[0], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(m.D, torch.ones(32))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    bound = 1.0 * m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    other = Mamba(16)
    other.load_state_dict(m.state_dict(), strict=True)
    x = torch.randn(2, 11, 16)
    torch.testing.assert_close(other(x), m(x), rtol=0, atol=0)


def test_mamba_backends_agree_and_causal():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 23, 8, requires_grad=True)
    outs = {}
    for backend in ("sequential", "parallel"):
        m.scan_backend = backend
        y = m(x)
        outs[backend] = (y.detach(), torch.autograd.grad(y.square().sum(), [x, m.A_log, m.in_proj.weight]))
    torch.testing.assert_close(outs["parallel"][0], outs["sequential"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs["parallel"][1], outs["sequential"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # causality: changing inputs after step t0 leaves outputs up to t0 unchanged, and changes later ones
    m.scan_backend = "parallel"
    t0 = 9
    x2 = x.detach().clone()
    x2[:, t0 + 1:] += torch.randn_like(x2[:, t0 + 1:])
    y1, y2 = m(x.detach()), m(x2)
    torch.testing.assert_close(y1[:, : t0 + 1], y2[:, : t0 + 1], rtol=0, atol=1e-6)
    assert (y1[:, t0 + 1:] - y2[:, t0 + 1:]).abs().max() > 1e-3


def test_mamba_bc_modulation():
    torch.manual_seed(0)
    m = Mamba(8, d_state=4)
    x = torch.randn(1, 10, 8)
    zeros = torch.zeros(1, 10, 4)
    torch.testing.assert_close(m(x, bc_modulation=(zeros, zeros)), m(x))
    db = torch.randn(1, 10, 4)
    assert (m(x, bc_modulation=(db, None)) - m(x)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="hidden_states"):
        m(torch.randn(1, 10, 7))


def test_miccss_commutes_with_flips():
    """Averaging the four flipped scans makes the token mixing equivariant to sequence/channel flips."""
    torch.manual_seed(0)
    layer = MICCSS(2, 6, d_state=4)
    tokens = torch.randn(2, 15, 6)
    mixed = layer.mix(tokens)
    torch.testing.assert_close(layer.mix(tokens.flip(1)), mixed.flip(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.mix(tokens.flip(2)), mixed.flip(2), rtol=1e-5, atol=1e-6)
    layer.multi_scan = False
    assert (layer.mix(tokens.flip(1)) - layer.mix(tokens).flip(1)).abs().max() > 1e-4


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 37, 20)), (3, (1, 1, 9, 13, 18)), (3, (2, 1, 16, 16, 16))])
def test_seg_shapes(dims, shape):
    torch.manual_seed(0)
    cfg = NNMambaSegConfig.from_dict({"spatial_dims": dims, "multi_scan": dims == 3}, preset="tiny")
    model = NNMambaSeg(cfg)
    x = torch.randn(*shape, requires_grad=True)
    out = model(x)
    assert out.shape == (shape[0], cfg.num_classes) + shape[2:]
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.stages[0][1].mamba is model.stages[0][-1].mamba  # one MICCSS shared within a stage
    with pytest.raises(ValueError, match="NNMambaSeg"):
        model(torch.randn(1, 2, *shape[2:]))


def test_configs():
    assert NNMambaSegConfig.from_dict({}, preset="paper").channels == 32
    assert NNMambaClsConfig.from_dict({}, preset="tiny").channels == 4
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        NNMambaSegConfig.from_dict({"chanels": 3})
    with pytest.raises(ValueError, match="spatial_dims"):
        NNMambaClsConfig.from_dict({"spatial_dims": 1})
    with pytest.raises(ValueError, match="scan_backend"):
        NNMambaSegConfig.from_dict({"scan_backend": "gpu"})
    cfg = NNMambaClsConfig.from_dict({"channels": 8}, preset="tiny")
    assert NNMambaClsConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("dims", [2, 3])
def test_cls_routing_contract(dims):
    torch.manual_seed(0)
    model = NNMambaCls(NNMambaClsConfig.from_dict({"spatial_dims": dims}, preset="tiny")).eval()
    images = torch.rand(2, 3, 24, 20) * 1e-4
    logits = model(images)
    assert logits.shape == (2, 2) and logits.dtype == torch.float32
    torch.testing.assert_close(model(images * 1e5), logits, rtol=1e-4, atol=1e-4)  # z-score: scale invariant
    labels, conf = model.predict(images)
    assert labels.shape == (2,) and ((conf >= 0.5) & (conf <= 1)).all()
    with pytest.raises(ValueError, match="NNMambaCls"):
        model(torch.rand(2, 24, 20))


def test_cls_fits_eight_samples():
    torch.manual_seed(0)
    model = NNMambaCls(NNMambaClsConfig.from_dict({}, preset="tiny"))
    images = torch.randn(8, 2, 16, 16)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = F.cross_entropy(model(images), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert torch.equal(model(images).argmax(-1), labels)
    assert math.isfinite(loss.item())
