"""utils.physics against numpy and against its own adjoint identities."""
import numpy as np
import pytest
import torch

from utils import physics as P


def _crandn(*shape, generator=None, dtype=torch.complex128):
    return torch.randn(*shape, generator=generator, dtype=dtype)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("shape", [(3, 16, 12), (2, 4, 15, 9)])
def test_fft2c_matches_numpy(shape, gen):
    x = _crandn(*shape, generator=gen)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(P.fft2c(x).numpy(), ref, atol=1e-12)
    refi = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(P.ifft2c(x).numpy(), refi, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 8, 8), (3, 7, 10)])
def test_fft2c_orthonormal_and_inverse(shape, gen):
    x = _crandn(*shape, generator=gen)
    k = P.fft2c(x)
    assert torch.allclose(k.norm(), x.norm())
    assert torch.allclose(P.ifft2c(k), x, atol=1e-12)
    y = _crandn(*shape, generator=gen)
    # <F x, y> == <x, F^H y>
    lhs = torch.vdot(k.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), P.ifft2c(y).flatten())
    assert torch.allclose(lhs, rhs)


def test_centred_dc():
    x = torch.ones(1, 6, 8, dtype=torch.complex64)
    k = P.fft2c(x)
    assert torch.argmax(k.abs().flatten()).item() == 3 * 8 + 4


def test_fft2c_rejects_real():
    with pytest.raises(TypeError):
        P.fft2c(torch.ones(4, 4))


@pytest.mark.parametrize("mask_kind", ["vector", "batched"])
def test_sense_operator_adjoint(mask_kind, gen):
    B, C, H, W = 2, 5, 12, 10
    sens = _crandn(B, C, H, W, generator=gen)
    mask = (torch.rand(W, generator=gen) > 0.5).float()
    if mask_kind == "batched":
        mask = (torch.rand(B, 1, 1, W, generator=gen) > 0.5)
    op = P.SenseOperator(sens, mask)
    x = _crandn(B, 1, H, W, generator=gen)
    y = _crandn(B, C, H, W, generator=gen)
    lhs = torch.vdot(op(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert torch.allclose(lhs, rhs, atol=1e-10)
    # normal operator is Hermitian positive semi-definite
    n = torch.vdot(x.flatten(), op.normal(x).flatten())
    assert abs(n.imag) < 1e-9 and n.real >= 0


def test_sens_expand_reduce_identity_for_normalised_maps(gen):
    C, H, W = 4, 8, 8
    sens = _crandn(C, H, W, generator=gen)
    sens = sens / P.rss(sens, dim=0)
    x = _crandn(1, H, W, generator=gen)
    assert torch.allclose(P.sens_reduce(P.sens_expand(x, sens), sens), x, atol=1e-12)


def test_rss_matches_numpy(gen):
    x = _crandn(2, 6, 5, 4, generator=gen)
    ref = np.sqrt((np.abs(x.numpy()) ** 2).sum(axis=1))
    np.testing.assert_allclose(P.rss(x, dim=1).numpy(), ref, rtol=1e-12)
    r = torch.randn(3, 4, 5, generator=gen)
    np.testing.assert_allclose(P.rss(r, dim=0).numpy(), np.sqrt((r.numpy() ** 2).sum(0)), rtol=1e-6)


def test_data_consistency_variants(gen):
    C, H, W = 2, 4, 6
    pred, meas = _crandn(C, H, W, generator=gen), _crandn(C, H, W, generator=gen)
    mask = torch.tensor([1, 0, 1, 1, 0, 0.0])
    m = mask.bool()
    hard = P.hard_data_consistency(pred, meas, mask)
    assert torch.equal(hard[..., m], meas[..., m]) and torch.equal(hard[..., ~m], pred[..., ~m])
    soft1 = P.soft_data_consistency(pred, meas, mask, 1.0)
    assert torch.allclose(soft1, hard)
    soft0 = P.soft_data_consistency(pred, meas, mask, 0.0)
    assert torch.equal(soft0, pred)
    eta = 3.0
    nw = P.noise_weighted_data_consistency(pred, meas, mask, eta)
    assert torch.allclose(nw[..., m], (pred[..., m] + eta * meas[..., m]) / (1 + eta))
    assert torch.equal(nw[..., ~m], pred[..., ~m])
    assert torch.allclose(P.noise_weighted_data_consistency(pred, meas, mask, 1e12), hard)


def test_soft_dc_module_learns():
    dc = P.SoftDataConsistency(init=0.5)
    pred = torch.zeros(1, 2, 4, dtype=torch.complex64)
    meas = torch.ones(1, 2, 4, dtype=torch.complex64)
    out = dc(pred, meas, torch.ones(4))
    out.abs().sum().backward()
    assert dc.weight.grad is not None and dc.weight.grad.item() != 0


def test_acs_bounds():
    mask = torch.zeros(20)
    mask[[0, 4, 8, 12, 16]] = 1
    mask[8:13] = 1
    assert P.acs_bounds(mask) == (8, 13)
    assert P.acs_bounds(torch.ones(7)) == (0, 7)
    with pytest.raises(ValueError):
        P.acs_bounds(torch.tensor([1.0, 0, 0, 0, 1]))


def _cols(mask, n=None, convention="fastmri"):
    return [row.nonzero().flatten().tolist() for row in P.acs_columns(mask, n, convention)]


def test_acs_conventions_on_hand_computed_masks():
    """fastMRI/PromptMR+ (symmetric window of 2 min(left, right) columns, start (W - n + 1) // 2) and the
    contiguous block, on masks worked out by hand (c = W // 2; left counts c-1, c-2, ..., right c, c+1, ...)."""
    # W = 20, c = 10: ACS [8, 12) with the comb line 12 adjoining it (the SNU challenge case) and comb 0, 4, 16
    snu = torch.zeros(20)
    snu[[0, 4, 8, 9, 10, 11, 12, 16]] = 1  # left 2 (8, 9), right 3 (10, 11, 12)
    assert _cols(snu) == [[8, 9, 10, 11]]  # n = 4, start (20 - 4 + 1) // 2 = 8
    assert _cols(snu, convention="contiguous") == [[8, 9, 10, 11, 12]]
    # W = 15 (odd), c = 7: block [5, 10): left 2, right 3 -> n = 4, start (15 - 4 + 1) // 2 = 6
    odd = torch.zeros(15)
    odd[[1, 5, 6, 7, 8, 9, 13]] = 1
    assert _cols(odd) == [[6, 7, 8, 9]]
    assert _cols(odd, convention="contiguous") == [[5, 6, 7, 8, 9]]
    # W = 16, c = 8: block [7, 9): left 1, right 1 -> n = 2 -> [7, 9) in both
    narrow = torch.zeros(16)
    narrow[[2, 7, 8, 13]] = 1
    assert _cols(narrow) == _cols(narrow, convention="contiguous") == [[7, 8]]
    # only the centre column: left 0 -> fastMRI's floor of one column; the block is that column too
    single = torch.zeros(10)
    single[[1, 5, 8]] = 1
    assert _cols(single) == _cols(single, convention="contiguous") == [[5]]
    # batches: per element, given widths (> 0) win, 0 derives; both conventions share the given window
    batch = torch.stack([snu, snu])
    assert _cols(batch, torch.tensor([6, 0])) == [[7, 8, 9, 10, 11, 12], [8, 9, 10, 11]]
    assert _cols(batch, 3, "contiguous") == [[9, 10, 11]] * 2
    with pytest.raises(ValueError, match="batch element 1: mask has no sampled centre line"):
        P.acs_columns(torch.stack([snu, torch.ones(20) - snu * 0 - (torch.arange(20) == 10).float()]))
    with pytest.raises(ValueError, match="exceeds the width"):
        P.acs_columns(batch, 21)
    with pytest.raises(ValueError, match="convention"):
        P.acs_columns(batch, convention="grappa")
    assert torch.equal(P.acs_column_mask(batch), P.acs_columns(batch, convention="fastmri"))  # PromptMR+'s


def test_acs_conventions_differ_on_most_challenge_masks():
    """Where a comb line touches the ACS block the block is lopsided and fastMRI's window is narrower:
    the window always lies inside the block, and the two differ on most challenge masks."""
    from data.masks import CHALLENGE_KINDS, make_mask

    masks = [torch.from_numpy(make_mask(kind, 356 + 2 * i, acc, np.random.default_rng(i)))
             for kind in CHALLENGE_KINDS for acc in (4, 8) for i in range(20)]
    differ = 0
    for mask in masks:
        fast, block = P.acs_columns(mask), P.acs_columns(mask, convention="contiguous")
        assert bool((fast <= block).all())
        differ += int(not torch.equal(fast, block))
    assert len(masks) // 2 < differ < len(masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_crop_pad_roundtrip(dtype):
    x = torch.arange(7 * 9, dtype=torch.float32).reshape(7, 9).to(dtype)
    padded = P.center_pad(x, (12, 13))
    assert padded.shape == (12, 13)
    assert torch.equal(P.center_crop(padded, (7, 9)), x)
    assert padded.abs().sum() == x.abs().sum()
    both = P.center_crop_or_pad(x, (5, 12))
    assert both.shape == (5, 12)
    assert torch.equal(both[:, 1:10], P.center_crop(x, (5, 9)))
    with pytest.raises(ValueError):
        P.center_crop(x, (8, 9))


def test_center_crop_matches_fastmri_convention():
    # an odd-size crop keeps the centre pixel (index H//2) at the centre of the output
    x = torch.zeros(10, 10)
    x[5, 5] = 1
    out = P.center_crop(x, (4, 4))
    assert out[2, 2] == 1


def test_physics_imports_only_torch():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(P))
    mods = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"torch", "typing", "__future__"}
