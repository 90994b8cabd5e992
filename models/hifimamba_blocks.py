"""Building blocks of HiFi-Mamba (Chen, Fang et al., AAAI 2026, arXiv 2508.09179).

The dual-stream block (:class:`DualStreamBlock`) works on a feature map ``(B, D, h, w)`` at one
resolution:

1. split the channels in two halves ``[a, b]``;
2. the W-Laplacian block (:class:`WLaplacianBlock`) refines ``b`` with an inverted bottleneck and
   splits it into a low-frequency part (binomial ``[1, 4, 6, 4, 1]`` low-pass + 2x decimation,
   bilinear 2x expansion) and the high-frequency residual ``high = b - low``;
3. the high-frequency stream ``a + high`` goes through an inverted bottleneck -> guidance ``g``, and a
   second one -> the stream's output;
4. only the low-frequency stream is scanned, by :class:`GuidedSSM` (a :class:`models.mamba.Mamba`
   subclass): ONE unidirectional selective scan over the row-major token sequence, whose B and C are
   modulated by a gated projection of ``g`` and, like dt, refined by a dilated depthwise conv along
   the sequence;
5. channel attention over the concatenated streams, stochastic depth, residual.

Layout notes follow the authors' public code (PengchengFang-cs/HiFi-Mamba, ``mamba_sys_final.py``),
read for reference only.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.mamba import Mamba

__all__ = [
    "binomial_kernel",
    "laplacian_split",
    "DWInvertedBottleneck",
    "WLaplacianBlock",
    "SimpleGate1D",
    "GuidedSSM",
    "ChannelAttention",
    "DualStreamBlock",
    "drop_path",
]

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- utilities
def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples with probability ``prob``, rescale survivors by 1/(1-prob)."""
    if prob <= 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


# ----------------------------------------------------------------------- W-Laplacian (low/high)
def binomial_kernel(dtype=torch.float32, device=None) -> Tensor:
    """Normalised 1-D binomial kernel ``[1, 4, 6, 4, 1] / 16`` (5,)."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=dtype, device=device)
    return k / k.sum()


def laplacian_split(x: Tensor, kernel: Tensor) -> Tuple[Tensor, Tensor]:
    """One Laplacian-pyramid level: ``x (B, C, h, w)`` -> ``(low, high)`` each ``(B, C, h, w)``.

    ``low``: reflect-pad 2, separable low-pass with ``kernel`` (5,), decimation by 2 on both axes, then
    bilinear expansion back to ``(h, w)``; ``high = x - low`` so ``low + high == x``. Needs h, w >= 3.
    """
    if x.dim() != 4 or min(x.shape[-2:]) < 3:
        raise ValueError(f"laplacian_split: need (B, C, h, w) with h, w >= 3, got {tuple(x.shape)}")
    channels, (h, w) = x.shape[1], x.shape[-2:]
    k = kernel.to(dtype=x.dtype, device=x.device)
    half = k.numel() // 2
    y = F.pad(x, (half,) * 4, mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), stride=2, groups=channels)
    low = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return low, x - low


class DWInvertedBottleneck(nn.Module):
    """Residual inverted bottleneck ``(B, C, h, w) -> (B, C, h, w)``.

    1x1 conv C -> e*C, GroupNorm(1), GELU, 3x3 depthwise conv, GroupNorm(1), GELU, 1x1 conv -> C,
    GELU; plus the input. No biases; conv weights ~ truncated normal(0.02).
    """

    def __init__(self, channels: int, expansion: int = 5):
        super().__init__()
        hidden = channels * expansion
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.GroupNorm(1, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.GroupNorm(1, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.GELU(),
        )
        for m in self.block:
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class WLaplacianBlock(nn.Module):
    """W-Laplacian block: inverted bottleneck, then :func:`laplacian_split` -> ``(low, high)``."""

    def __init__(self, channels: int, expansion: int = 5):
        super().__init__()
        self.conv = DWInvertedBottleneck(channels, expansion)
        self.register_buffer("kernel", binomial_kernel(), persistent=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        return laplacian_split(self.conv(x), self.kernel)


# ------------------------------------------------------------------------- guided selective SSM
class SimpleGate1D(nn.Module):
    """Gated MLP on the last axis: ``fc2(GELU(u) * v)`` with ``[u, v] = fc1(x)``; (..., d) -> (..., d)."""

    def __init__(self, dim: int, expansion: int = 6):
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        u, v = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.gelu(u) * v)


def _dilated_dwconv(channels: int, kernel: int, dilation: int) -> nn.Conv1d:
    """Depthwise 1-D conv along the sequence, 'same' length (symmetric padding), no bias."""
    return nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                     groups=channels, bias=False)


class GuidedSSM(Mamba):
    """HiFi-Mamba's low-frequency mixer: a Mamba v1 block with ONE unidirectional scan, guided B/C.

    ``forward(x (B, L, d_model), hw=(h, w), guidance (B, L, d_model)) -> (B, L, d_model)`` where the
    L = h*w tokens are in row-major order. Differences from :class:`models.mamba.Mamba` (as in the
    authors' code): the short conv is a 3x3 depthwise 2-D conv on the ``(h, w)`` grid; the low-rank
    dt, B and C are refined by dilated depthwise 1-D convs (kernel ``bc_kernel``, ``bc_dilation``) along
    the sequence; before that refinement, B and C get ``SimpleGate1D(x_proj_low(in_proj_low(g)))``.
    The selective scan itself (``scan``) is the inherited one: causal along the sequence.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2,
                 bc_kernel: int = 7, bc_dilation: int = 2, gate_expansion: int = 6, dropout: float = 0.0,
                 scan_backend: str = "auto"):
        if d_conv % 2 != 1 or bc_kernel % 2 != 1:
            raise ValueError(f"GuidedSSM: d_conv and bc_kernel must be odd, got {d_conv}, {bc_kernel}")
        super().__init__(d_model, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        del self.conv1d  # replaced by a 2-D depthwise conv on the token grid
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=d_conv // 2, groups=self.d_inner)
        self.conv_dt = _dilated_dwconv(self.dt_rank, bc_kernel, bc_dilation)
        self.conv_b = _dilated_dwconv(d_state, bc_kernel, bc_dilation)
        self.conv_c = _dilated_dwconv(d_state, bc_kernel, bc_dilation)
        self.in_proj_low = nn.Linear(d_model, self.d_inner, bias=False)
        self.x_proj_low = nn.Linear(self.d_inner, 2 * d_state, bias=False)
        with torch.no_grad():  # the authors initialise the guidance projection as a copy of x_proj
            self.x_proj_low.weight.copy_(self.x_proj.weight[self.dt_rank:])
        self.gate_b = SimpleGate1D(d_state, gate_expansion)
        self.gate_c = SimpleGate1D(d_state, gate_expansion)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def short_conv(self, x: Tensor, hw: Optional[Sequence[int]] = None) -> Tensor:
        """3x3 depthwise conv on the (h, w) token grid + SiLU: (B, d_inner, L) -> (B, d_inner, L)."""
        if hw is None or hw[0] * hw[1] != x.shape[-1]:
            raise ValueError(f"GuidedSSM.short_conv: need hw with h*w = L = {x.shape[-1]}, got {hw}")
        grid = x.unflatten(-1, (int(hw[0]), int(hw[1])))
        return F.silu(self.conv2d(grid)).flatten(-2)

    def ssm_params(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """dt (B, d_inner, L) before bias/softplus, with the low-rank dt refined along the sequence; B, C raw."""
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.conv_dt(dt.transpose(1, 2))
        dt = F.linear(dt.transpose(1, 2), self.dt_proj.weight).transpose(1, 2)
        return dt, b.transpose(1, 2), c.transpose(1, 2)

    def guidance_bc(self, guidance: Tensor) -> Tuple[Tensor, Tensor]:
        """Gated projection of the guidance (B, L, d_model) -> (dB, dC) each (B, L, d_state)."""
        db, dc = self.x_proj_low(self.in_proj_low(guidance)).chunk(2, dim=-1)
        return self.gate_b(db), self.gate_c(dc)

    def modulate_bc(self, b: Tensor, c: Tensor, bc_modulation=None) -> Tuple[Tensor, Tensor]:
        """Add the guidance (inherited rule), then the dilated depthwise refinement along the sequence."""
        b, c = super().modulate_bc(b, c, bc_modulation)
        return self.conv_b(b), self.conv_c(c)

    def forward(self, hidden_states: Tensor, hw: Sequence[int] = None, guidance: Optional[Tensor] = None) -> Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"GuidedSSM: hidden_states must be (B, L, {self.d_model}), got {tuple(hidden_states.shape)}")
        if guidance is not None and guidance.shape != hidden_states.shape:
            raise ValueError(f"GuidedSSM: guidance {tuple(guidance.shape)} must match {tuple(hidden_states.shape)}")
        x, z = self.project(hidden_states)
        x = self.short_conv(x, hw)
        dt, b, c = self.ssm_params(x)
        b, c = self.modulate_bc(b, c, None if guidance is None else self.guidance_bc(guidance))
        y = self.scan(x, dt, b, c, z)
        return self.dropout(self.out_proj(y.transpose(1, 2)))


# ------------------------------------------------------------------------------ dual-stream block
class ChannelAttention(nn.Module):
    """``x * sigmoid(dw3x3(GELU(conv1x1(avgpool(x)))))`` on ``(B, C, h, w)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(channels, channels, 1)
        self.conv3x3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv3x3(F.gelu(self.conv1x1(x.mean(dim=(-2, -1), keepdim=True))))
        return x * torch.sigmoid(w)


class DualStreamBlock(nn.Module):
    """HiFi-Mamba dual-stream block ``(B, dim, h, w) -> (B, dim, h, w)`` (see the module docstring).

    ``dim`` must be even; each stream has ``dim // 2`` channels. h, w >= 3.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 3, expand: float = 2, bc_kernel: int = 7,
                 bc_dilation: int = 2, gate_expansion: int = 6, bottleneck_expansion: int = 5,
                 drop_path: float = 0.0, attn_drop: float = 0.0, scan_backend: str = "auto"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"DualStreamBlock: dim must be even, got {dim}")
        half = dim // 2
        self.wl_block = WLaplacianBlock(half, bottleneck_expansion)
        self.conv_guide = DWInvertedBottleneck(half, bottleneck_expansion)
        self.conv_high = DWInvertedBottleneck(half, bottleneck_expansion)
        self.norm_low = nn.LayerNorm(half, eps=1e-6)
        self.norm_guide = nn.LayerNorm(half, eps=1e-6)
        self.ssm = GuidedSSM(half, d_state=d_state, d_conv=d_conv, expand=expand, bc_kernel=bc_kernel,
                             bc_dilation=bc_dilation, gate_expansion=gate_expansion, dropout=attn_drop,
                             scan_backend=scan_backend)
        self.channel_attention = ChannelAttention(dim)
        self.drop_path = float(drop_path)

    def streams(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Split and separate: ``(low, guidance, high_out)`` each (B, dim/2, h, w)."""
        high_in, low_in = x.chunk(2, dim=1)
        low, high_detail = self.wl_block(low_in)
        guidance = self.conv_guide(high_in + high_detail)
        return low, guidance, self.conv_high(guidance)

    def scan_low(self, low: Tensor, guidance: Tensor) -> Tensor:
        """The guided scan of the low-frequency stream: (B, c, h, w) x2 -> (B, c, h, w)."""
        h, w = low.shape[-2:]
        seq = self.norm_low(low.flatten(2).transpose(1, 2))  # row-major tokens (B, h*w, c)
        guide = self.norm_guide(guidance.flatten(2).transpose(1, 2))
        out = self.ssm(seq, (h, w), guide)
        return out.transpose(1, 2).unflatten(-1, (h, w))

    def forward(self, x: Tensor) -> Tensor:
        low, guidance, high_out = self.streams(x)
        y = self.channel_attention(torch.cat([high_out, self.scan_low(low, guidance)], dim=1))
        return x + drop_path(y, self.drop_path, self.training)
