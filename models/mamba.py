"""Mamba (v1) mixer block, state-dict compatible with ``mamba_ssm.Mamba``.

Parameters (names and shapes as mamba-ssm; ``d_inner = expand * d_model``)::

    A_log          (d_inner, d_state)            S4D-real init: log(1..d_state)
    D              (d_inner,)                    ones
    in_proj.weight (2 * d_inner, d_model)        [+ in_proj.bias if bias]
    conv1d.weight  (d_inner, 1, d_conv)          depthwise causal conv [+ conv1d.bias if conv_bias]
    x_proj.weight  (dt_rank + 2 * d_state, d_inner)
    dt_proj.weight (d_inner, dt_rank), dt_proj.bias (d_inner,)   inverse-softplus dt init
    out_proj.weight (d_model, d_inner)           [+ out_proj.bias if bias]

``forward(hidden_states (B, L, d_model), bc_modulation=None) -> (B, L, d_model)``. The forward is
split into small steps (``project`` -> ``short_conv`` -> ``ssm_params`` -> ``modulate_bc`` ->
``scan`` -> ``out_proj``) so that variants (HiFi-Mamba's guidance-modulated B and C) can reuse them.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.selective_scan import BACKENDS, selective_scan

__all__ = ["Mamba", "causal_conv1d"]

Tensor = torch.Tensor


@functools.lru_cache(maxsize=1)
def _causal_conv1d_fn():
    """``causal_conv1d.causal_conv1d_fn`` when that package is installed, else None."""
    try:
        from causal_conv1d import causal_conv1d_fn  # type: ignore
    except Exception:
        return None
    return causal_conv1d_fn


def causal_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Depthwise causal conv then SiLU: x (B, C, L), weight (C, 1, K) -> (B, C, L).

    Uses the fused ``causal_conv1d`` kernel on CUDA when installed, else ``F.conv1d`` with K-1
    zero padding on both sides trimmed to the first L outputs (output t sees inputs t-K+1..t).
    """
    fused = _causal_conv1d_fn() if x.is_cuda else None
    if fused is not None:
        return fused(x, weight.squeeze(1), bias, activation="silu")
    k = weight.shape[-1]
    out = F.conv1d(x, weight, bias, padding=k - 1, groups=x.shape[1])
    return F.silu(out[..., : x.shape[-1]])


class Mamba(nn.Module):
    """Mamba v1 mixer: ``(B, L, d_model) -> (B, L, d_model)``; hyperparameters as ``mamba_ssm.Mamba``.

    ``scan_backend`` selects :func:`models.selective_scan.selective_scan`'s backend (auto: the
    mamba-ssm kernel on CUDA when installed, else the PyTorch parallel scan).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank="auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"Mamba: scan_backend must be one of {BACKENDS}, got {scan_backend!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **kw)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        self._init_dt(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))  # S4D-real: A = -(1..d_state), kept in fp32
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    @torch.no_grad()
    def _init_dt(self, dt_init: str, dt_scale: float, dt_min: float, dt_max: float, floor: float) -> None:
        """dt_proj weight ~ U(+-dt_rank^-0.5 * scale) (or constant); bias = softplus^-1(dt), dt log-uniform."""
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_dt = torch.rand(self.d_inner, device=self.dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min))
        dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True

    # ---- steps (reusable by subclasses) --------------------------------------------------------
    def project(self, hidden_states: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, L, d_model) -> x, z each (B, d_inner, L)."""
        xz = self.in_proj(hidden_states).transpose(1, 2)
        return xz.chunk(2, dim=1)

    def short_conv(self, x: Tensor) -> Tensor:
        """Causal depthwise conv + SiLU: (B, d_inner, L) -> (B, d_inner, L)."""
        return causal_conv1d(x, self.conv1d.weight, self.conv1d.bias)

    def ssm_params(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Input-dependent dt (B, d_inner, L) before bias/softplus, and B, C (B, d_state, L)."""
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2 d_state)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return dt, b.transpose(1, 2), c.transpose(1, 2)

    def modulate_bc(self, b: Tensor, c: Tensor, bc_modulation=None) -> Tuple[Tensor, Tensor]:
        """Hook for per-step modulation of B and C (B, d_state, L).

        Default: ``bc_modulation`` is None (no change) or a pair ``(db, dc)`` of (B, L, d_state)
        tensors (either may be None) added to B and C, e.g. a gated projection of a guidance signal.
        Subclasses may override with another rule.
        """
        if bc_modulation is None:
            return b, c
        db, dc = bc_modulation
        if db is not None:
            b = b + db.transpose(1, 2).to(b.dtype)
        if dc is not None:
            c = c + dc.transpose(1, 2).to(c.dtype)
        return b, c

    def scan(self, x: Tensor, dt: Tensor, b: Tensor, c: Tensor, z: Tensor) -> Tensor:
        """Selective scan with this block's A, D, dt bias (softplus), gated by SiLU(z): (B, d_inner, L)."""
        a = -torch.exp(self.A_log.float())
        return selective_scan(x, dt, a, b, c, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                              delta_softplus=True, backend=self.scan_backend)

    def forward(self, hidden_states: Tensor, bc_modulation=None) -> Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: hidden_states must be (B, L, {self.d_model}), got {tuple(hidden_states.shape)}")
        x, z = self.project(hidden_states)
        x = self.short_conv(x)
        dt, b, c = self.ssm_params(x)
        b, c = self.modulate_bc(b, c, bc_modulation)
        y = self.scan(x, dt, b, c, z)
        return self.out_proj(y.transpose(1, 2))
