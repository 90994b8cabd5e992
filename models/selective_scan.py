"""Selective scan (Mamba S6) with three interchangeable backends.

``selective_scan`` follows ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (same
arguments, tensor layouts and semantics; real ``A`` only)::

    delta' = softplus(delta + delta_bias)            (softplus only if delta_softplus)
    h_t    = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t     (per channel d and state n, h_{-1} = 0)
    y_t    = sum_n C_t[n] h_t[n] + D u_t ;  out = y * silu(z)

Backends:

- ``"cuda"``: mamba-ssm's fused kernel (imported lazily; only when installed and tensors are on CUDA).
- ``"parallel"``: a scan written here in PyTorch (CPU and GPU). On CPU, when a time step updates at
  least ``_LOOP_MIN_STEP_ELEMS`` state elements (batch * dim * d_state; :class:`_LoopScan`), time
  is cut into blocks of about ``_BLOCK_ELEMS`` state elements laid out time-major; a block's decays
  and drives are built in reused buffers and the drives become states in place, one fused
  ``addcmul_`` per step over the whole (batch, dim, d_state) slice (the sequential recurrence's own
  arithmetic, so it equals the reference to round-off for any decays, including 0 and > 1).
  Backward rebuilds one block at a time from its kept entering state and runs one reverse scan for
  ``dL/dh``; the gradients are then products and batched contractions of the block tensors. On GPUs and
  for smaller steps (:class:`_ParallelScan`) chunks of ``chunk_size`` steps are scanned with a log-depth (Kogge-Stone)
  scan on the pairs (cumulative decay, state), the chunk end-states are combined by a second
  log-depth scan over chunks, and the block's final state is carried to the next block. Both
  exponentiate only ``delta' * A`` (non-positive for Mamba's ``A < 0``) and then only multiply, so
  nothing overflows for any magnitude of ``delta * A``. Both are custom autograd functions that save
  the inputs and one state per block, so memory is O(batch * dim * L) plus a few blocks.
- ``"sequential"``: the plain reference recurrence (a Python loop over L; used by tests).

``"auto"`` picks cuda when available and applicable, else parallel.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_sequential", "selective_scan_parallel", "cuda_scan_available", "BACKENDS"]

BACKENDS = ("auto", "cuda", "parallel", "sequential")
DEFAULT_CHUNK = 16
# Number of fp32 state elements (batch * dim * steps * d_state) per block of the parallel backend:
# on CPU three such buffers are reused by every block (cache-sized), on GPU few kernel launches.
_BLOCK_ELEMS = {"cpu": 1 << 20, "cuda": 1 << 26}
# Smallest batch * dim * d_state for which the CPU uses the one-step-per-time-step loop.
_LOOP_MIN_STEP_ELEMS = 256

Tensor = torch.Tensor
ScanOut = Union[Tensor, Tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------------------------
# input checks and layout helpers
# ----------------------------------------------------------------------------------------------
def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ``ValueError`` naming the argument whose shape/dtype does not fit mamba-ssm's layout."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.is_complex() or B.is_complex() or C.is_complex():
        raise ValueError("selective_scan: complex A/B/C are not supported (real A only)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 2:
            ok = tuple(m.shape) == (dim, d_state)
        elif m.dim() == 3:
            ok = tuple(m.shape) == (batch, d_state, length)
        elif m.dim() == 4:
            ok = m.shape[0] == batch and m.shape[2:] == (d_state, length) and m.shape[1] >= 1 and dim % m.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (dim, d_state), (batch, d_state, L) or (batch, groups, d_state, L) "
                f"with dim % groups == 0 (dim={dim}, d_state={d_state}, L={length}), got {tuple(m.shape)}"
            )
    if B.dim() == 4 and C.dim() == 4 and B.shape[1] != C.shape[1]:
        raise ValueError(f"selective_scan: grouped B and C need the same number of groups, got {B.shape[1]} and {C.shape[1]}")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got {tuple(v.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def _groups(B: Tensor, C: Tensor) -> int:
    """Number of channel groups sharing one variable B/C (1 for 3-D or time-invariant B/C)."""
    for m in (B, C):
        if m.dim() == 4:
            return m.shape[1]
    return 1


def _bc5(m: Tensor, groups: int, dim: int) -> Tensor:
    """B or C as a view broadcastable to (batch, groups, dim/groups, L, d_state)."""
    if m.dim() == 2:  # time-invariant (dim, d_state)
        return m.reshape(1, groups, dim // groups, 1, m.shape[-1])
    if m.dim() == 3:  # (batch, d_state, L) shared by all channels
        return m.transpose(-1, -2)[:, None, None]
    return m.transpose(-1, -2)[:, :, None]  # (batch, groups, d_state, L)


def _pre_delta(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    """``softplus(delta + bias)`` in fp32 (same threshold-20 softplus as mamba-ssm's kernel)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``(y + D u) * silu(z)`` cast to the input dtype."""
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype)


# ----------------------------------------------------------------------------------------------
# sequential reference
# ----------------------------------------------------------------------------------------------
def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False) -> ScanOut:
    """Reference recurrence, one Python step per time step. Shapes as :func:`selective_scan`."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    groups = _groups(B, C)
    dt = _pre_delta(delta, delta_bias, delta_softplus)
    uf = u.float()
    b5, c5 = _bc5(B.float(), groups, dim), _bc5(C.float(), groups, dim)
    heads = dim // groups
    dt5 = dt.reshape(batch, groups, heads, length, 1)
    u5 = uf.reshape(batch, groups, heads, length, 1)
    decay = torch.exp(dt5 * A.float().reshape(1, groups, heads, 1, -1))  # (b, g, h, L, n)
    drive = dt5 * u5 * b5
    h = u.new_zeros((batch, groups, heads, A.shape[1]), dtype=torch.float32)
    # unbind (not indexing) so that backward costs O(L), not O(L^2)
    c_steps = c5.unbind(3) if c5.shape[3] > 1 else (c5[:, :, :, 0],) * length
    ys = []
    for decay_t, drive_t, c_t in zip(decay.unbind(3), drive.unbind(3), c_steps):
        h = decay_t * h + drive_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, dim, length)
    out = _finish(y, uf, D, z, u.dtype)
    return (out, h.reshape(batch, dim, -1)) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# parallel scan: core on (..., T, N) tensors, time at dim -2
# ----------------------------------------------------------------------------------------------
def _kogge_stone(a: Tensor, b: Tensor, reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Inclusive scan of ``h_t = a_t h_{t-1} + b_t`` (h_{-1} = 0) along dim -2, log2(T) steps.

    ``reverse=True`` scans from the end: ``h_t = a_t h_{t+1} + b_t``. Returns ``(P, h)`` with ``P_t``
    the product of the decays from the scan's start up to and including ``t``. Decays ``a`` lie in
    [0, 1] for Mamba, so products only shrink (no overflow). Inputs are not modified.
    """
    steps = a.shape[-2]
    k = 1
    while k < steps:
        # out-of-place: writing into slices of a preallocated buffer (out=) is unsafe with broadcast inputs
        head, tail = slice(0, steps - k), slice(k, steps)
        if reverse:
            b = torch.cat([torch.addcmul(b[..., head, :], a[..., head, :], b[..., tail, :]), b[..., steps - k :, :]], dim=-2)
            a = torch.cat([a[..., head, :] * a[..., tail, :], a[..., steps - k :, :]], dim=-2)
        else:
            b = torch.cat([b[..., :k, :], torch.addcmul(b[..., tail, :], a[..., tail, :], b[..., head, :])], dim=-2)
            a = torch.cat([a[..., :k, :], a[..., tail, :] * a[..., head, :]], dim=-2)
        k *= 2
    return a, b


def _scan_block(a: Tensor, b: Tensor, h0: Tensor, chunk: int, reverse: bool = False) -> Tensor:
    """States ``h`` (..., T, N) of ``h_t = a_t h_{t-1} + b_t`` entered with ``h0`` (..., N).

    ``T`` must be a multiple of ``chunk``. Chunks are scanned in parallel, their end-states are
    combined by a scan over chunks, and each chunk adds its decayed entering state.
    ``reverse=True`` runs time backwards (``h_t = a_t h_{t+1} + b_t``, ``h0`` enters after the end).
    """
    steps = a.shape[-2]
    nc = steps // chunk
    cum, local = _kogge_stone(a.unflatten(-2, (nc, chunk)), b.unflatten(-2, (nc, chunk)), reverse)
    end = 0 if reverse else -1  # position where a chunk's full effect is collected
    first = -1 if reverse else 0  # chunk that receives h0
    ends = local[..., end, :].clone()  # (..., nc, N)
    decays = cum[..., end, :]
    ends[..., first, :] += decays[..., first, :] * h0
    _, carried = _kogge_stone(decays, ends, reverse)  # full state at each chunk's collecting end
    h0 = h0.unsqueeze(-2)
    h_in = torch.cat([carried[..., 1:, :], h0] if reverse else [h0, carried[..., :-1, :]], dim=-2)
    return torch.addcmul(local, cum, h_in.unsqueeze(-2)).flatten(-3, -2)


def _block_len(batch: int, dim: int, n: int, length: int, chunk: int, device: torch.device) -> int:
    """Steps per block: a multiple of ``chunk`` holding about ``_BLOCK_ELEMS`` state elements."""
    budget = _BLOCK_ELEMS["cuda" if device.type == "cuda" else "cpu"]
    steps = max(chunk, (budget // max(1, batch * dim * n)) // chunk * chunk)
    return min(steps, -(-length // chunk) * chunk)


def _pad_time(x: Tensor, steps: int, dim: int, value: float = 0.0) -> Tensor:
    """Pad ``x`` with ``value`` at the end of time dimension ``dim`` to ``steps`` entries."""
    missing = steps - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - (dim % x.dim()) - 1) + [0, missing]
    return F.pad(x, pad, value=value)


def _time_slice(m: Tensor, t0: int, t1: int, steps: int) -> Tensor:
    """Steps ``t0:t1`` of a (.., L, N) B/C view (time-invariant ones pass through), zero-padded."""
    return m if m.shape[3] == 1 else _pad_time(m[:, :, :, t0:t1], steps, 3)


class _ParallelScan(torch.autograd.Function):
    """Core ``y_t = sum_n C_t h_t`` with ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``.

    Inputs (fp32): u, dt (batch, groups, heads, L); A (1, groups, heads, 1, N); b5, c5 broadcastable
    to (batch, groups, heads, L, N). Outputs y (batch, groups, heads, L) and the last state
    (batch, groups, heads, N). Gradients flow to every input, including through the last state.
    Padded steps (dt = 0) have decay 1 and no drive, so they leave the state unchanged.
    """

    @staticmethod
    def forward(ctx, u, dt, A, b5, c5, chunk: int, block: int):
        length = u.shape[-1]
        h = u.new_zeros(u.shape[:-1] + (A.shape[-1],))
        starts, ys = [], []
        for t0 in range(0, length, block):
            starts.append(h)
            t1 = min(t0 + block, length)
            steps = -(-(t1 - t0) // chunk) * chunk
            dt_b = _pad_time(dt[..., t0:t1], steps, -1).unsqueeze(-1)
            u_b = _pad_time(u[..., t0:t1], steps, -1).unsqueeze(-1)
            decay = torch.exp(dt_b * A)  # dt * A <= 0 for Mamba: never overflows
            states = _scan_block(decay, (dt_b * u_b) * _time_slice(b5, t0, t1, steps), h, chunk)
            ys.append((states * _time_slice(c5, t0, t1, steps)).sum(-1)[..., : t1 - t0])
            h = states[..., -1, :]
        ctx.save_for_backward(u, dt, A, b5, c5, torch.stack(starts))
        ctx.chunk, ctx.block = chunk, block
        return torch.cat(ys, dim=-1), h

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, b5, c5, starts = ctx.saved_tensors
        chunk, block = ctx.chunk, ctx.block
        length = u.shape[-1]
        du, ddt = torch.empty_like(u), torch.empty_like(dt)
        dA = torch.zeros_like(A)
        db5 = torch.zeros(b5.shape, dtype=b5.dtype, device=b5.device)
        dc5 = torch.zeros(c5.shape, dtype=c5.dtype, device=c5.device)
        carry = dlast.float() if dlast is not None else torch.zeros_like(starts[0])
        block_starts = list(range(0, length, block))
        for i in reversed(range(len(block_starts))):
            t0 = block_starts[i]
            t1 = min(t0 + block, length)
            n_valid = t1 - t0
            steps = -(-n_valid // chunk) * chunk
            dt_b = _pad_time(dt[..., t0:t1], steps, -1).unsqueeze(-1)
            u_b = _pad_time(u[..., t0:t1], steps, -1).unsqueeze(-1)
            b_b, c_b = _time_slice(b5, t0, t1, steps), _time_slice(c5, t0, t1, steps)
            decay = torch.exp(dt_b * A)
            h0 = starts[i]
            states = _scan_block(decay, (dt_b * u_b) * b_b, h0, chunk)
            dy_b = _pad_time(dy[..., t0:t1], steps, -1).unsqueeze(-1)
            # total dL/dh_t = dy_t C_t + a_{t+1} dL/dh_{t+1}: a reverse scan with decays shifted by one
            next_decay = _pad_time(decay[..., 1:, :], steps, -2, value=1.0)
            grad_h = _scan_block(next_decay, dy_b * c_b, carry, chunk, reverse=True)
            carry = decay[..., 0, :] * grad_h[..., 0, :]
            prev = torch.cat([h0.unsqueeze(-2), states[..., :-1, :]], dim=-2)
            dlog_a = grad_h * decay * prev  # dL/d(dt_t A)
            g_b = (grad_h * b_b).sum(-1)  # sum_n dL/dh_t B_t: (b, g, h, T)
            dA += (dlog_a * dt_b).sum(dim=(0, 3), keepdim=True)
            ddt[..., t0:t1] = ((dlog_a * A).sum(-1) + u_b[..., 0] * g_b)[..., :n_valid]
            du[..., t0:t1] = (dt_b[..., 0] * g_b)[..., :n_valid]
            d_b = (grad_h * (dt_b * u_b)).sum_to_size(b_b.shape)
            d_c = (dy_b * states).sum_to_size(c_b.shape)
            for full, part in ((db5, d_b), (dc5, d_c)):
                if full.shape[3] == 1:
                    full += part
                else:
                    full[:, :, :, t0:t1] = part[:, :, :, :n_valid]
        return du, ddt, dA, db5, dc5, None, None


# ----------------------------------------------------------------------------------------------
# CPU: blocked time-major scan, one in-place step per time step, one reverse scan in backward
# ----------------------------------------------------------------------------------------------
def _scan_strategy(device: torch.device, step_elems: int) -> str:
    """``"loop"`` (:class:`_LoopScan`) or ``"logdepth"`` (:class:`_ParallelScan`) for the parallel backend.

    ``step_elems`` = batch * dim * d_state, the state elements updated per time step. On CPU one fused
    in-place step per time step is cheaper than the log-depth scan's ``log2(chunk)`` full passes once
    a step carries at least ``_LOOP_MIN_STEP_ELEMS`` elements (measured, one thread: 0.23x the
    log-depth time at 2048, 0.4-0.7x at 128-256, 2-7x slower at 32-64 where per-call overhead
    dominates). On a GPU every step would be a kernel launch, so the log-depth scan is used there.
    """
    return "loop" if device.type == "cpu" and step_elems >= _LOOP_MIN_STEP_ELEMS else "logdepth"


def _steps_forward(a: Tuple[Tensor, ...], s: Tuple[Tensor, ...], h0: Tensor) -> None:
    """In place ``s[t] <- a[t] * s[t-1] + s[t]`` with ``s[-1] = h0``: drives become states."""
    prev = h0
    for a_t, s_t in zip(a, s):
        s_t.addcmul_(a_t, prev)
        prev = s_t


def _steps_reverse(a: Tuple[Tensor, ...], g: Tuple[Tensor, ...], n: int, carry: Tensor) -> None:
    """In place ``g[t] <- g[t] + a[t+1] g[t+1]`` for ``t = n-1 .. 0`` with ``a[n] g[n] = carry``."""
    g[n - 1].add_(carry)
    for t in range(n - 2, -1, -1):
        g[t].addcmul_(a[t + 1], g[t + 1])


def _sum_n(x: Tensor, m: Tensor) -> Tensor:
    """``sum_n x * m``: x (T, b, g, h, N); m time-major (T, b, g|1, N) or time-invariant (g, h, N).

    Returns (T, b, g, h). The time-major case is one batched (1, N) @ (N, h) product.
    """
    if m.dim() == 3:
        return (x * m).sum(-1)
    return torch.matmul(m.unsqueeze(-2), x.transpose(-1, -2)).squeeze(-2)


def _sum_h(v: Tensor, x: Tensor, m: Tensor) -> Tensor:
    """Gradient of B or C shaped like ``m``: ``sum v * x`` over every axis that ``m`` broadcasts.

    v (T, b, g, h), x (T, b, g, h, N); m time-major (T, b, g|1, N) -> sum over h (and g if m's is 1),
    time-invariant (g, h, N) -> sum over T and b.
    """
    if m.dim() == 3:
        return torch.einsum("tbgh,tbghn->ghn", v, x)
    return torch.matmul(v.unsqueeze(-2), x).squeeze(-2).sum_to_size(m.shape)


def _block_bc(m: Tensor, t0: int, t1: int, squeeze: bool = False) -> Tensor:
    """Steps ``t0:t1`` of a time-major B/C (T, b, g|1, N) as (T, b, g|1, 1, N) (``squeeze``: as is).

    Time-invariant (g, h, N) B/C pass through."""
    if m.dim() == 3:
        return m
    m = m[t0:t1]
    return m if squeeze else m.unsqueeze(-2)


def _time_major_bc(m: Tensor, groups: int, dim: int) -> Tensor:
    """B or C for :class:`_LoopScan`: (L, batch, groups|1, d_state) contiguous, or (groups, heads, d_state)."""
    if m.dim() == 2:  # time-invariant (dim, d_state)
        return m.reshape(groups, dim // groups, m.shape[-1])
    if m.dim() == 3:  # (batch, d_state, L) shared by all channels
        return m.permute(2, 0, 1).unsqueeze(2).contiguous()
    return m.permute(3, 0, 1, 2).contiguous()  # (batch, groups, d_state, L)


class _LoopScan(torch.autograd.Function):
    """``y_t = sum_n C_t h_t`` with ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``, time-major, CPU.

    Inputs (fp32): u (b, g, h, L) in the caller's layout; dt (L, b, g, h); A (g, h, N); B, C either
    time-major (L, b, g or 1, N) or time-invariant (g, h, N). Outputs y (L, b, g, h) and the last
    state (b, g, h, N). Time is processed in blocks of ``block`` steps: the block's decays and drives
    are built in two reused buffers of (block, b, g, h, N), the drives are turned into states in
    place by one ``addcmul_`` per step (the same arithmetic as the sequential reference), and the
    state entering each block is kept. Backward rebuilds one block at a time (forward steps from the
    kept state) and runs one reverse scan for ``dL/dh``; every gradient is then a product or a
    batched contraction of these block tensors. Memory: O(b * dim * L) plus three block buffers.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, block: int):
        length = dt.shape[0]
        state_shape = dt.shape[1:] + A.shape[-1:]
        buf_a = dt.new_empty((min(block, length),) + state_shape)
        buf_s = torch.empty_like(buf_a)
        steps_a, steps_s = buf_a.unbind(0), buf_s.unbind(0)  # views reused by every block
        y = dt.new_empty(dt.shape)
        h = dt.new_zeros(state_shape)
        starts = []
        for t0 in range(0, length, block):
            t1 = min(t0 + block, length)
            n = t1 - t0
            starts.append(h)
            dt_b = dt[t0:t1]
            a = torch.mul(dt_b.unsqueeze(-1), A, out=buf_a[:n]).exp_()
            s = torch.mul((dt_b * u[..., t0:t1].permute(3, 0, 1, 2)).unsqueeze(-1), _block_bc(B, t0, t1), out=buf_s[:n])
            _steps_forward(steps_a[:n], steps_s[:n], h)
            y[t0:t1] = _sum_n(s, _block_bc(C, t0, t1, squeeze=True))
            h = s[-1].clone()
        ctx.save_for_backward(u, dt, A, B, C, torch.stack(starts))
        ctx.block = block
        return y, h

    @staticmethod
    def backward(ctx, dy, dlast):
        u, dt, A, B, C, starts = ctx.saved_tensors
        block = ctx.block
        length = dt.shape[0]
        x_dim, n_state = A.shape[0] * A.shape[1], A.shape[-1]
        dy = dy.contiguous() if dy is not None else torch.zeros_like(dt)
        du = torch.empty((length,) + dt.shape[1:], dtype=dt.dtype, device=dt.device)  # time-major
        ddt = torch.empty_like(dt)
        dA = torch.zeros_like(A)
        dB, dC = (torch.zeros_like(m) if m.dim() == 3 else torch.empty_like(m) for m in (B, C))
        buf_a = dt.new_empty((min(block, length),) + starts.shape[1:])
        buf_s, buf_g = torch.empty_like(buf_a), torch.empty_like(buf_a)
        steps_a, steps_s, steps_g = buf_a.unbind(0), buf_s.unbind(0), buf_g.unbind(0)
        carry = dlast.contiguous() if dlast is not None else torch.zeros_like(starts[0])
        a_flat = A.reshape(x_dim, n_state, 1)
        for i in reversed(range(starts.shape[0])):
            t0 = i * block
            t1 = min(t0 + block, length)
            n = t1 - t0
            h0 = starts[i]
            dt_b, u_b, dy_b = dt[t0:t1], u[..., t0:t1].permute(3, 0, 1, 2), dy[t0:t1]
            dtu_b = dt_b * u_b
            b_b, c_b = _block_bc(B, t0, t1), _block_bc(C, t0, t1)
            a = torch.mul(dt_b.unsqueeze(-1), A, out=buf_a[:n]).exp_()
            s = torch.mul(dtu_b.unsqueeze(-1), b_b, out=buf_s[:n])
            _steps_forward(steps_a[:n], steps_s[:n], h0)  # states h_t of the block
            # dL/dh_t = dy_t C_t + a_{t+1} dL/dh_{t+1}: one reverse scan entered with the later blocks' carry
            g = torch.mul(dy_b.unsqueeze(-1), c_b, out=buf_g[:n])
            _steps_reverse(steps_a[:n], steps_g[:n], n, carry)
            carry = a[0] * g[0]
            q = a.mul_(g)  # dL/d(dt_t A) = dL/dh_t * a_t * h_{t-1}, built in a's buffer
            q[1:].mul_(s[:-1])
            q[0].mul_(h0)
            q_x = q.view(-1, x_dim, n_state).transpose(0, 1)  # (g*h, n*b, N)
            g_b = _sum_n(g, _block_bc(B, t0, t1, squeeze=True))  # sum_n dL/dh_t B_t
            dlog = torch.bmm(q_x, a_flat).squeeze(-1).t().reshape(dt_b.shape)  # sum_n q A
            ddt[t0:t1] = torch.addcmul(dlog, u_b, g_b)
            torch.mul(dt_b, g_b, out=du[t0:t1])
            dA += torch.bmm(q_x.transpose(1, 2), dt_b.reshape(-1, x_dim).t().unsqueeze(-1)).view(A.shape)
            for full, v, x, m in ((dB, dtu_b, g, B), (dC, dy_b, s, C)):
                if m.dim() == 3:
                    full += _sum_h(v, x, m)
                else:
                    full[t0:t1] = _sum_h(v, x, m[t0:t1])
        return du.permute(1, 2, 3, 0), ddt, dA, dB, dC, None


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                            return_last_state=False, chunk_size: int = DEFAULT_CHUNK) -> ScanOut:
    """Scan written in PyTorch (CPU loop or log-depth; see the module notes). Shapes as :func:`selective_scan`."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if int(chunk_size) < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size!r}")
    batch, dim, length = u.shape
    n = A.shape[1]
    groups = _groups(B, C)
    heads = dim // groups
    uf = u.float()
    dt = _pre_delta(delta, delta_bias, delta_softplus)
    chunk = int(chunk_size)
    if _scan_strategy(u.device, batch * dim * n) == "loop":
        y, last = _LoopScan.apply(
            uf.reshape(batch, groups, heads, length),
            dt.reshape(batch, groups, heads, length).permute(3, 0, 1, 2).contiguous(),
            A.float().reshape(groups, heads, n),
            _time_major_bc(B.float(), groups, dim),
            _time_major_bc(C.float(), groups, dim),
            _block_len(batch, dim, n, length, 1, u.device),
        )
        out = _finish(y.permute(1, 2, 3, 0).reshape(batch, dim, length), uf, D, z, u.dtype)
        return (out, last.reshape(batch, dim, n)) if return_last_state else out
    block = _block_len(batch, dim, n, length, chunk, u.device)
    y, last = _ParallelScan.apply(
        uf.reshape(batch, groups, heads, length),
        dt.reshape(batch, groups, heads, length),
        A.float().reshape(1, groups, heads, 1, n),
        _bc5(B.float(), groups, dim),
        _bc5(C.float(), groups, dim),
        chunk,
        block,
    )
    out = _finish(y.reshape(batch, dim, length), uf, D, z, u.dtype)
    return (out, last.reshape(batch, dim, n)) if return_last_state else out


# ----------------------------------------------------------------------------------------------
# CUDA (mamba-ssm) and dispatch
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """mamba-ssm's ``selective_scan_fn`` or None when the package (or its CUDA extension) is missing."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore
    except Exception:  # ImportError, or a broken CUDA extension raising at import
        return None
    return selective_scan_fn


def cuda_scan_available(*tensors: Tensor) -> bool:
    """True when mamba-ssm imports and every given tensor lives on a CUDA device."""
    return all(t.is_cuda for t in tensors) and torch.cuda.is_available() and _mamba_ssm_scan() is not None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str = "auto", chunk_size: int = DEFAULT_CHUNK) -> ScanOut:
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics.

    u, delta: (batch, dim, L); A: (dim, d_state) real; B, C: (batch, d_state, L),
    (batch, groups, d_state, L) or time-invariant (dim, d_state); D, delta_bias: (dim,);
    z: (batch, dim, L). Returns out (batch, dim, L) in u's dtype, plus the final state
    (batch, dim, d_state) fp32 if ``return_last_state``. ``backend``: auto | cuda | parallel |
    sequential. ``chunk_size`` only affects the parallel backend's log-depth scan (GPUs).
    """
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {BACKENDS}, got {backend!r}")
    present = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if backend in ("auto", "cuda"):
        if cuda_scan_available(*present) and not A.is_complex():
            _check_inputs(u, delta, A, B, C, D, z, delta_bias)
            return _mamba_ssm_scan()(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        if backend == "cuda":
            raise RuntimeError("selective_scan: backend='cuda' needs mamba-ssm installed and all tensors on a CUDA device")
    if backend == "sequential":
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_parallel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, chunk_size)
