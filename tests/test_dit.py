"""DiT decoder: adaLN-Zero blocks start as the identity, cross-attention key masks, the rectified-flow pair
and deterministic, batch-independent few-step sampling."""
import pytest
import torch

from models import build_model
from models.dit import DiTBlock, TokenDiT, flow_pair
from models.titok_blocks import Attention, patchify, unpatchify


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values in the zero-initialised layers, so the network does something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("final.linear"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def test_adaln_zero_block_starts_as_identity():
    torch.manual_seed(0)
    block = DiTBlock(32, 4)
    block.zero_init()
    x, c, ctx = torch.randn(2, 9, 32), torch.randn(2, 32), torch.randn(2, 5, 32)
    assert torch.equal(block(x, c, ctx), x)
    _perturb(block)
    assert not torch.allclose(block(x, c, ctx), x)


def test_untrained_dit_predicts_zero_velocity():
    torch.manual_seed(0)
    model = build_model("titok_dit", "tiny")
    x = torch.randn(2, 1, 48, 48)
    v = model(x, torch.rand(2), torch.randn(2, 8, 12), stage1=x)
    assert torch.equal(v, torch.zeros_like(v))
    assert all(torch.equal(b.adaLN_modulation[-1].weight, torch.zeros_like(b.adaLN_modulation[-1].weight))
               for b in model.blocks)


def test_cross_attention_key_mask_hides_tokens():
    torch.manual_seed(0)
    attn = Attention(16, 2)
    x, ctx = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[True, True, False, True, False, False], [True] * 6])
    out = attn(x, ctx, mask)
    # masked keys have no influence: changing them changes nothing; removing them gives the same result
    ctx2 = ctx.clone()
    ctx2[0, [2, 4, 5]] = torch.randn(3, 16) * 10
    assert torch.allclose(attn(x, ctx2, mask), out, atol=1e-6)
    kept = attn(x[:1], ctx[:1, [0, 1, 3]])
    assert torch.allclose(out[:1], kept, atol=1e-6)
    # unmasking changes the output (the test can fail)
    assert not torch.allclose(attn(x, ctx, torch.ones_like(mask)), out, atol=1e-4)
    # a sample with every key masked gets zeros, not NaN
    none = attn(x, ctx, torch.zeros_like(mask))
    assert torch.isfinite(none).all() and torch.equal(none, torch.zeros_like(none))


def test_dit_ignores_absent_neighbours_and_segmentation():
    torch.manual_seed(0)
    model = build_model("titok_dit", "tiny").eval()
    _perturb(model)
    b = 2
    x, t, codes = torch.randn(b, 1, 48, 48), torch.rand(b), torch.randn(b, 8, 12)
    nbr, seg = torch.randn(b, 2, 8, 12), torch.randn(b, 2, 4, 48, 48)
    nmask, smask = torch.tensor([[True, False], [False, False]]), torch.tensor([[False, True], [True, True]])
    base = model(x, t, codes, stage1=x, neighbour_codes=nbr, neighbour_mask=nmask, seg_features=seg, seg_mask=smask)
    nbr2, seg2 = nbr.clone(), seg.clone()
    nbr2[0, 1], nbr2[1] = torch.randn(8, 12), torch.randn(2, 8, 12)
    seg2[0, 0] = torch.randn(4, 48, 48)
    same = model(x, t, codes, stage1=x, neighbour_codes=nbr2, neighbour_mask=nmask, seg_features=seg2, seg_mask=smask)
    assert torch.allclose(base, same, atol=1e-5)
    nbr2[0, 0] = torch.randn(8, 12)  # a present neighbour matters
    assert not torch.allclose(base, model(x, t, codes, stage1=x, neighbour_codes=nbr2, neighbour_mask=nmask,
                                          seg_features=seg2, seg_mask=smask), atol=1e-5)
    # no context given at all equals everything masked
    empty = model(x, t, codes, stage1=x)
    masked = model(x, t, codes, stage1=x, neighbour_codes=nbr, neighbour_mask=torch.zeros(b, 2, dtype=torch.bool),
                   seg_features=seg, seg_mask=torch.zeros(b, 2, dtype=torch.bool))
    assert torch.allclose(empty, masked, atol=1e-5)
    with pytest.raises(ValueError, match="seg_features must be"):
        model(x, t, codes, stage1=x, seg_features=torch.randn(b, 2, 3, 48, 48))


def test_sampling_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_model("titok_dit", "tiny").eval()
    _perturb(model, 1)
    codes, stage1 = torch.randn(3, 8, 12), torch.rand(3, 1, 48, 48)
    a = model.sample(codes, steps=3, stage1=stage1)
    b = model.sample(codes, steps=3, stage1=stage1)
    assert torch.equal(a, b)
    alone = model.sample(codes[1:2], steps=3, stage1=stage1[1:2])
    assert torch.allclose(alone, a[1:2], atol=1e-5)
    assert not torch.allclose(model.sample(codes, steps=3, seed=5, stage1=stage1), a, atol=1e-4)
    assert not torch.allclose(model.sample(codes, steps=1, stage1=stage1), a, atol=1e-4)
    with pytest.raises(ValueError, match="steps must be 1..8"):
        model.sample(codes, steps=9, stage1=stage1)


def test_flow_pair_and_one_step_euler_recovers_a_perfect_velocity():
    x, eps, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([0.0, 0.25])
    xt, v = flow_pair(x, eps, t)
    assert torch.allclose(xt[0], eps[0]) and torch.allclose(xt[1], 0.25 * x[1] + 0.75 * eps[1])
    assert torch.allclose(v, x - eps)
    assert torch.allclose(xt + (1 - t.view(-1, 1, 1, 1)) * v, x, atol=1e-6)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 16, 24)
    tokens = patchify(x, 8)
    assert tokens.shape == (2, 6, 192)
    assert torch.equal(tokens[0, 1], x[0, :, :8, 8:16].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(tokens, 8, 16, 24), x)


def test_config_checks():
    with pytest.raises(ValueError, match="sample_steps"):
        build_model("titok_dit", "tiny", sample_steps=9)
    with pytest.raises(ValueError, match="seg_patch_size"):
        build_model("titok_dit", "tiny", seg_patch_size=5)
    assert isinstance(build_model("titok_dit", "tiny", seg_channels=0, num_neighbours=0, stage1_input=False), TokenDiT)
