"""Selective scan: parallel vs sequential backends (values and gradients), stability, errors."""
import pytest
import torch

import models.selective_scan as ss
from models.selective_scan import cuda_scan_available, selective_scan


@pytest.fixture(params=["loop", "logdepth"])
def strategy(request, monkeypatch):
    """Force the parallel backend's CPU loop or its log-depth (GPU / small-step) scan at any size."""
    monkeypatch.setattr(ss, "_scan_strategy", lambda device, step_elems: request.param)
    return request.param


def _inputs(batch, dim, n, length, bc="var", groups=2, seed=0, delta_scale=1.0, a_scale=2.0, device="cpu"):
    """Random fp32 leaf tensors (u, delta, A, B, C, D, z, delta_bias) in mamba-ssm's layouts."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    if bc == "var":
        b_shape = (batch, n, length)
    elif bc == "group":
        b_shape = (batch, groups, n, length)
    else:  # time-invariant
        b_shape = (dim, n)
    tensors = [
        rnd(batch, dim, length),
        rnd(batch, dim, length) * delta_scale,
        -(torch.rand(dim, n, generator=g) * a_scale + 0.05),
        rnd(*b_shape),
        rnd(*b_shape),
        rnd(dim),
        rnd(batch, dim, length),
        rnd(dim),
    ]
    return [t.to(device).requires_grad_() for t in tensors]


def _run(backend, tensors, use_d=True, use_z=True, use_bias=True, softplus=True, chunk=8):
    u, delta, A, B, C, D, z, bias = tensors
    out, last = selective_scan(u, delta, A, B, C, D if use_d else None, z if use_z else None,
                               bias if use_bias else None, delta_softplus=softplus, return_last_state=True,
                               backend=backend, chunk_size=chunk)
    g = torch.Generator().manual_seed(123)
    w_out = torch.randn(out.shape, generator=g).to(out.device)
    w_last = torch.randn(last.shape, generator=g).to(out.device)
    loss = (out * w_out).sum() + (last * w_last).sum()
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return out.detach(), last.detach(), grads


def _assert_close(a, b, what):
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3e} (scale {scale:.3e})"


def _compare(tensors, **kw):
    ref = _run("sequential", tensors, **kw)
    par = _run("parallel", tensors, **kw)
    _assert_close(par[0], ref[0], "out")
    _assert_close(par[1], ref[1], "last_state")
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    for name, gp, gr in zip(names, par[2], ref[2]):
        assert (gp is None) == (gr is None), name
        if gr is not None:
            _assert_close(gp, gr, f"grad {name}")


@pytest.mark.parametrize(
    "batch,dim,n,length,bc,chunk",
    [
        (2, 4, 3, 1, "var", 8),
        (2, 4, 3, 7, "var", 8),
        (1, 6, 4, 33, "group", 8),
        (2, 4, 5, 100, "var", 16),
        (2, 4, 4, 37, "const", 4),
        (1, 8, 2, 17, "group", 1),
    ],
)
def test_parallel_matches_sequential(batch, dim, n, length, bc, chunk, strategy):
    _compare(_inputs(batch, dim, n, length, bc=bc, groups=2 if dim % 2 == 0 else 3), chunk=chunk)


@pytest.mark.parametrize("use_d,use_z,use_bias,softplus", [(False, False, False, False), (True, False, True, True)])
def test_optional_arguments(use_d, use_z, use_bias, softplus):
    # without softplus delta may be negative: keep it small so the recurrence stays bounded
    tensors = _inputs(2, 4, 3, 21, delta_scale=0.2)
    _compare(tensors, use_d=use_d, use_z=use_z, use_bias=use_bias, softplus=softplus, chunk=4)


def test_multi_block_carry(monkeypatch, strategy):
    """Tiny block budget: the state is carried across many blocks forward and backward."""
    monkeypatch.setitem(ss._BLOCK_ELEMS, "cpu", 64)
    assert ss._block_len(2, 4, 4, 101, 4, torch.device("cpu")) == 4
    _compare(_inputs(2, 4, 4, 101, bc="group"), chunk=4)


def test_large_delta_a_is_stable(strategy):
    """delta * A down to about -1e4 per step: no overflow, same values as the reference."""
    tensors = _inputs(1, 4, 4, 40, delta_scale=50.0, a_scale=200.0)
    par = _run("parallel", tensors, chunk=8)
    assert all(torch.isfinite(x).all() for x in (par[0], par[1], *par[2]))
    _compare(tensors, chunk=8)


def test_matches_naive_formula():
    """Independent check of the semantics at L = 3 with a hand-written recurrence."""
    u, delta, A, B, C, D, z, bias = [t.detach() for t in _inputs(1, 2, 2, 3)]
    dt = torch.nn.functional.softplus(delta + bias[:, None])
    h = torch.zeros(1, 2, 2)
    ys = []
    for t in range(3):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[..., t])
    expected = torch.stack(ys, -1) * torch.nn.functional.silu(z)
    for backend in ("sequential", "parallel"):
        out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend=backend)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_dtype_and_auto_backend():
    u, delta, A, B, C, D, z, bias = [t.detach() for t in _inputs(1, 4, 3, 9)]
    out = selective_scan(u.double(), delta, A, B, C, D, z, bias, delta_softplus=True)
    assert out.dtype == torch.float64 and out.shape == (1, 4, 9)
    ref = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend="sequential")
    torch.testing.assert_close(out.float(), ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise():
    u, delta, A, B, C, D, z, bias = [t.detach() for t in _inputs(1, 4, 3, 5)]
    with pytest.raises(ValueError, match="complex"):
        selective_scan(u, delta, A.to(torch.complex64), B, C)
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[..., :4], C)
    with pytest.raises(ValueError, match="groups"):
        selective_scan(u, delta, A, torch.randn(1, 3, 3, 5), C)  # 4 channels into 3 groups
    with pytest.raises(ValueError, match="backend"):
        selective_scan(u, delta, A, B, C, backend="fast")
    if not cuda_scan_available(u.cuda() if torch.cuda.is_available() else u):
        with pytest.raises(RuntimeError, match="mamba-ssm"):
            selective_scan(u, delta, A, B, C, backend="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parallel_on_cuda_matches_sequential():
    tensors = _inputs(2, 8, 4, 50, bc="group", device="cuda")
    ref = _run("sequential", tensors)
    par = _run("parallel", tensors)
    for a, b in zip((par[0], par[1], *par[2]), (ref[0], ref[1], *ref[2])):
        _assert_close(a, b, "cuda parallel")


@pytest.mark.skipif(not (torch.cuda.is_available() and ss._mamba_ssm_scan() is not None), reason="needs mamba-ssm + CUDA")
def test_cuda_backend_matches_parallel():
    tensors = _inputs(2, 8, 4, 64, bc="var", device="cuda")
    u, delta, A, B, C, D, z, bias = tensors
    outs = {}
    for backend in ("cuda", "parallel"):
        out = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend=backend)
        grads = torch.autograd.grad(out.square().sum(), tensors)
        outs[backend] = (out.detach(), grads)
    torch.testing.assert_close(outs["cuda"][0], outs["parallel"][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(outs["cuda"][1], outs["parallel"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_strategy_choice():
    cpu = torch.device("cpu")
    assert ss._scan_strategy(cpu, 2 * 128 * 16) == "loop"
    assert ss._scan_strategy(cpu, ss._LOOP_MIN_STEP_ELEMS - 1) == "logdepth"
    assert ss._scan_strategy(torch.device("cuda"), 2 * 128 * 16) == "logdepth"


# ----------------------------------------------------------------------------------------------
# against a float64 sequential recurrence written here (independent of the module's reference)
# ----------------------------------------------------------------------------------------------
def _reference64(u, delta, A, B, C, D, z, bias, softplus):
    """mamba-ssm's selective scan in float64, one step at a time: (out, last_state)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    n = A.shape[1]
    dt = delta if bias is None else delta + bias.double()[:, None]
    if softplus:
        dt = torch.nn.functional.softplus(dt)

    def at(m, t):  # B or C at step t as (batch, dim, n)
        if m.dim() == 2:
            return m.expand(batch, dim, n)
        if m.dim() == 3:
            return m[:, None, :, t].expand(batch, dim, n)
        groups = m.shape[1]
        return m[:, :, None, :, t].expand(batch, groups, dim // groups, n).reshape(batch, dim, n)

    h = u.new_zeros(batch, dim, n)
    ys = []
    for t in range(length):
        h = torch.exp(dt[..., t, None] * A) * h + (dt[..., t] * u[..., t])[..., None] * at(B, t)
        ys.append((h * at(C, t)).sum(-1))
    out = torch.stack(ys, -1)
    if D is not None:
        out = out + D.double()[:, None] * u
    if z is not None:
        out = out * torch.nn.functional.silu(z.double())
    return out, h


def _weighted_grads(out, last, leaves):
    """Gradients of a fixed random weighting of ``out`` and ``last`` (same weights at any dtype)."""
    g = torch.Generator().manual_seed(7)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    loss = (out * w_out).sum() + (last * w_last).sum()
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _check_vs_float64(tensors, use_d=True, use_z=True, use_bias=True, softplus=True, chunk=8, tol=2e-5):
    u, delta, A, B, C, D, z, bias = tensors
    opt = (D if use_d else None, z if use_z else None, bias if use_bias else None)
    out, last = selective_scan(u, delta, A, B, C, *opt, delta_softplus=softplus, return_last_state=True,
                               backend="parallel", chunk_size=chunk)
    grads = _weighted_grads(out, last, tensors)
    leaves64 = [t.detach().double().requires_grad_() for t in tensors]
    u6, d6, A6, B6, C6, D6, z6, b6 = leaves64
    out64, last64 = _reference64(u6, d6, A6, B6, C6, D6 if use_d else None, z6 if use_z else None,
                                 b6 if use_bias else None, softplus)
    grads64 = _weighted_grads(out64, last64, leaves64)
    assert out.dtype == torch.float32 and last.shape == last64.shape
    for what, got, ref in [("out", out, out64), ("last_state", last, last64)] + [
        (f"grad {name}", gp, gr) for name, gp, gr in zip("u delta A B C D z delta_bias".split(), grads, grads64)
    ]:
        assert (got is None) == (ref is None), what
        if ref is None:
            continue
        assert torch.isfinite(got).all(), what
        scale = max(1.0, ref.abs().max().item())
        err = (got.double() - ref).abs().max().item()
        assert err <= tol * scale, f"{what}: max error {err:.3e} vs float64 (scale {scale:.3e})"


@pytest.mark.parametrize(
    "batch,dim,n,length,bc",
    [(2, 4, 3, 1, "var"), (1, 3, 2, 2, "var"), (2, 4, 5, 13, "var"), (1, 6, 4, 31, "group"), (2, 4, 3, 19, "const")],
)
def test_matches_float64_reference(batch, dim, n, length, bc, strategy):
    """Lengths 1, 2 and not powers of two; shared, grouped and time-invariant B/C."""
    _check_vs_float64(_inputs(batch, dim, n, length, bc=bc, groups=2 if dim % 2 == 0 else 3))


def test_matches_float64_reference_across_blocks(monkeypatch, strategy):
    """Blocks of one and of three steps: the entering state and dL/dh are carried between blocks."""
    for budget, steps in ((24, 1), (72, 3)):
        monkeypatch.setitem(ss._BLOCK_ELEMS, "cpu", budget)
        assert ss._block_len(2, 4, 3, 11, 1, torch.device("cpu")) == steps
        _check_vs_float64(_inputs(2, 4, 3, 11), chunk=steps)


def test_zero_and_growing_decays_match_float64(strategy):
    """Decays exactly 0 (exp underflow of delta * A ~ -1e5), exactly 1 (delta = 0) and > 1 (delta < 0)."""
    u, delta, A, B, C, D, z, bias = [t.detach() for t in _inputs(2, 4, 3, 12)]
    A[0, :] = -1e5  # softplus(delta) >= ~0.05 here: every decay of channel 0 underflows to 0
    delta = delta * 0.3
    delta[:, 1, ::3] = 0.0  # no softplus below: decay 1 and no drive at these steps
    tensors = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    assert (torch.exp(torch.nn.functional.softplus(delta[:, 0] + bias[0]).min() * A[0]) == 0).all()
    _check_vs_float64(tensors)  # softplus: decays in [0, 1], some exactly 0
    tensors = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]
    A_small = tensors[2].detach().clamp(min=-2.0).requires_grad_()  # keep growth bounded over 12 steps
    tensors[2] = A_small
    dt = tensors[1].detach()
    assert (dt < 0).any() and (dt == 0).any()
    _check_vs_float64(tensors, use_bias=False, softplus=False)  # decays above 1, exactly 1, below 1


def test_bitwise_deterministic(strategy):
    """Same inputs, same outputs and gradients bit for bit (CPU)."""
    runs = []
    for _ in range(2):
        tensors = _inputs(2, 6, 4, 45, bc="group", groups=3)
        out, last, grads = _run("parallel", tensors)
        runs.append([out, last, *grads])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
