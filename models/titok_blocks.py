"""Transformer pieces shared by the TiTok tokenizer (:mod:`models.titok`) and the DiT decoder (:mod:`models.dit`).

* :class:`Attention` -- multi-head attention, self (``context=None``) or cross, through
  :func:`torch.nn.functional.scaled_dot_product_attention`; an optional key mask ``(B, L_k)`` (True = may be
  attended) hides padded or absent context tokens. A query row whose keys are all masked gets a zero output
  (no NaN), so a sample without any context behaves as if the attention branch were absent.
* :class:`Mlp` -- Linear -> GELU(tanh) -> Linear.
* :class:`Block` -- the pre-LayerNorm residual block of ViT/TiTok: ``x + attn(ln(x))``, ``x + mlp(ln(x))``.
* :func:`sincos_2d` -- fixed 2-D sine-cosine positional embeddings (DiT, MAE convention), ``(gh*gw, dim)``.
* :func:`patchify` / :func:`unpatchify` -- ``(B, C, H, W) <-> (B, (H/p)(W/p), p*p*C)`` in row-major patch
  order, the order of the token sequences everywhere in these models.

Shapes: token sequences are ``(B, L, dim)``; images ``(B, C, H, W)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Mlp", "Block", "sincos_2d", "patchify", "unpatchify", "trunc_normal_", "init_linear_xavier"]


class Attention(nn.Module):
    """Multi-head attention of ``x (B, L_q, dim)`` over ``context (B, L_k, context_dim)`` (``x`` itself
    when ``context`` is None). ``key_mask (B, L_k)`` bool: False hides a key. Returns ``(B, L_q, dim)``."""

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, lq, d = x.shape
        ctx = x if context is None else context
        lk = ctx.shape[1]
        h = self.heads
        q = self.q(x).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None
        if key_mask is not None:
            if key_mask.shape != (b, lk):
                raise ValueError(f"Attention: key_mask must be (B, L_k) = {(b, lk)}, got {tuple(key_mask.shape)}")
            key_mask = key_mask.to(torch.bool)
            # an all-masked row would be NaN: let it attend to everything, then zero its output below
            empty = ~key_mask.any(dim=1)
            mask = (key_mask | empty[:, None])[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, lq, d))
        if key_mask is not None:
            out = out * (~empty).to(out.dtype)[:, None, None]
        return out


class Mlp(nn.Sequential):
    """``Linear(dim, ratio*dim) -> GELU(tanh) -> Linear(ratio*dim, dim)``."""

    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(round(dim * ratio))
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``; ``(B, L, dim)`` in and out."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings ``(grid_h * grid_w, dim)`` (row-major): half the channels encode
    the row, half the column, each as ``[sin(pos w_k), cos(pos w_k)]`` with ``w_k = 10000^(-k/(dim/4))``."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def embed(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.to(torch.float64)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([embed(rows.reshape(-1)), embed(cols.reshape(-1))], dim=1).to(torch.float32)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), p*p*C)``: patches in row-major order, each flattened as
    ``(p, p, C)``."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patchify: image {h}x{w} is not a multiple of the patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, (h/p)(w/p), p*p*C) -> (B, C, h, w)``."""
    b, n, d = tokens.shape
    c = d // (p * p)
    if n != (h // p) * (w // p) or c * p * p != d:
        raise ValueError(f"unpatchify: {tuple(tokens.shape)} does not hold {h}x{w} images in {p}x{p} patches")
    x = tokens.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal init (``[-2 std, 2 std]``), the ViT convention; returns ``tensor``."""
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_linear_xavier(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` under ``module``; LayerNorms at 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

