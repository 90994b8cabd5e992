"""TiTok tokenizer: the vector quantiser (nearest code, straight-through gradient, commitment term, EMA,
deterministic dead-code re-seeding), the token round trip and the config checks."""
import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.titok import MAX_CODEBOOK, TiTokConfig, VectorQuantizer


def _vq(n=16, d=4, **kw):
    torch.manual_seed(0)
    return VectorQuantizer(n, d, **kw)


def test_quantizer_picks_the_nearest_normalised_code():
    vq = _vq(32, 5).eval()
    z = torch.randn(3, 7, 5) * 4.0  # any scale: inputs are l2-normalised first
    out = vq(z)
    zn = F.normalize(z, dim=-1)
    brute = torch.cdist(zn.reshape(-1, 5), vq.codebook).argmin(dim=1).reshape(3, 7)
    assert torch.equal(out["ids"], brute)
    assert torch.allclose(out["quantized"], vq.codebook[brute], atol=1e-6)
    assert torch.allclose(vq.codebook.norm(dim=1), torch.ones(32), atol=1e-6)


def test_straight_through_gradient_and_commitment_term():
    vq = _vq(16, 4, commitment_weight=0.25).eval()
    z = torch.randn(2, 5, 4, requires_grad=True)
    out = vq(z)
    zn = F.normalize(z.detach(), dim=-1)
    q = vq.codebook[out["ids"]]
    expected = 0.25 * (zn - q).square().sum(-1).mean()
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert torch.allclose(out["commitment"], expected / 0.25, atol=1e-6)
    # straight-through: d(<quantized, g>)/dz equals the gradient through the normalisation alone
    g = torch.randn(2, 5, 4)
    (grad_st,) = torch.autograd.grad((out["quantized"] * g).sum(), z, retain_graph=True)
    z2 = z.detach().clone().requires_grad_(True)
    (grad_id,) = torch.autograd.grad((F.normalize(z2, dim=-1) * g).sum(), z2)
    assert torch.allclose(grad_st, grad_id, atol=1e-6)
    # the commitment term pulls z towards its code: its gradient is that of 0.25 * ||z_n - sg(q)||^2
    (grad_c,) = torch.autograd.grad(out["loss"], z)
    z3 = z.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(0.25 * (F.normalize(z3, dim=-1) - q).square().sum(-1).mean(), z3)
    assert torch.allclose(grad_c, grad_ref, atol=1e-6) and grad_c.abs().sum() > 0


def test_statistics_and_evaluation_mode_leaves_the_codebook_alone():
    vq = _vq(8, 3).eval()
    z = vq.codebook[torch.tensor([[0, 0, 1, 2]])] * 3.0  # exactly three codes, counts 2, 1, 1
    out = vq(z)
    assert out["ids"].tolist() == [[0, 0, 1, 2]]
    p = torch.tensor([0.5, 0.25, 0.25])
    assert torch.isclose(out["perplexity"], torch.exp(-(p * p.log()).sum()))
    assert torch.isclose(out["usage"], torch.tensor(3 / 8))
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(4, 6, 3))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_ema_update_and_deterministic_dead_code_reseeding():
    def run():
        vq = _vq(16, 4, ema_decay=0.5, reseed_every=2, dead_code_threshold=0.05, reseed_seed=3).train()
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            vq(torch.randn(2, 6, 4, generator=gen) + torch.tensor([3.0, 0, 0, 0]))  # all near one direction
        return vq

    a, b = run(), run()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert int(a.steps) == 4
    start = _vq(16, 4).codebook
    moved = (a.codebook - start).norm(dim=1) > 1e-4
    assert moved.sum() > 1  # used codes moved (EMA) and dead codes were re-seeded from the inputs
    assert torch.allclose(a.codebook.norm(dim=1), torch.ones(16), atol=1e-5)
    # re-seeded codes come from the batch: they all point near +x
    assert (a.codebook[moved][:, 0] > 0.5).all()
    # another seed re-seeds differently
    c = _vq(16, 4, ema_decay=0.5, reseed_every=2, dead_code_threshold=0.05, reseed_seed=4).train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        c(torch.randn(2, 6, 4, generator=gen) + torch.tensor([3.0, 0, 0, 0]))
    assert not torch.equal(c.codebook, a.codebook)


def test_tokenizer_round_trip_and_shapes():
    torch.manual_seed(0)
    model = build_model("titok", "tiny").eval()
    cfg = model.config
    x = torch.rand(3, 1, *cfg.image_size)
    ids = model.encode(x)
    assert ids.shape == (3, cfg.num_latent_tokens) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.codebook_size
    out = model(x)
    assert torch.equal(out.ids, ids)
    # ids -> uint16 -> ids decodes to the same frames as the forward pass
    ids16 = ids.numpy().astype("uint16")
    again = model.decode_ids(torch.from_numpy(ids16.astype("int64")))
    assert torch.allclose(again, out.reconstruction, atol=1e-6)
    assert out.reconstruction.shape == x.shape
    with pytest.raises(ValueError, match="token ids must be in"):
        model.decode_ids(torch.full((1, cfg.num_latent_tokens), cfg.codebook_size))
    with pytest.raises(ValueError, match=r"frames must be \(B, 1, 48, 48\)"):
        model.encode(torch.rand(1, 1, 40, 48))


def test_training_step_reduces_the_loss():
    torch.manual_seed(0)
    model = build_model("titok", "tiny", reseed_every=0).train()
    x = torch.rand(4, 1, 48, 48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(x)
        loss = (out.reconstruction - x).abs().mean() + out.quantizer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_config_checks_and_presets():
    assert TiTokConfig.from_dict({}, "paper").num_latent_tokens == 64
    assert TiTokConfig.from_dict({}, "paper").codebook_size == 4096 and TiTokConfig().token_size == 12
    assert TiTokConfig.from_dict({}, "paper_l32").num_latent_tokens == 32
    assert TiTokConfig.from_dict({}, "paper_s128").num_latent_tokens == 128
    with pytest.raises(ValueError, match="uint16"):
        TiTokConfig.from_dict({"codebook_size": MAX_CODEBOOK + 1}, "tiny")
    with pytest.raises(ValueError, match="multiples of patch_size"):
        TiTokConfig.from_dict({"image_size": (50, 48)}, "tiny")
    with pytest.raises(ValueError, match="in_channels"):
        TiTokConfig.from_dict({"in_channels": 3}, "tiny")
    two = build_model("titok", "tiny", in_channels=2).eval()
    assert two(torch.rand(1, 2, 48, 48)).reconstruction.shape == (1, 2, 48, 48)
