"""TiTok-MRI decoder: a patchified diffusion transformer (DiT, Peebles & Xie 2023) with adaLN-Zero blocks,
conditioned through cross-attention on a frame's tokens and on segmentation features, sampled by a
few-step rectified flow (registry ``"titok_dit"``).

Written from the paper and shared/research/cine_tokenizer.md §3.3. Shapes: frames ``(B, C, H, W)`` at the
tokenizer's ``image_size``; patch ``p``, ``N = (H/p)(W/p)`` image tokens of ``width`` channels.

* **Input**: the noisy frame ``x_t`` -- with ``stage1_input`` concatenated on the channel axis with the
  tokenizer's stage-1 decode of the same tokens (a deterministic function of the tokens, so no extra
  bytes) -- patch-embedded (``Conv(p, stride p)``) plus fixed 2-D sine-cosine positions.
* **adaLN-Zero blocks** (:class:`DiTBlock`): ``c = t_embed(t) + Linear(mean of the frame's codes)``
  (the timestep, sinusoidal 256 -> MLP, plus one global cue); ``SiLU -> Linear(c)`` gives shift, scale
  and gate for each of self-attention, cross-attention and the MLP; ``x += gate * branch(LN(x) * (1 +
  scale) + shift)``. The modulation Linear is zero-initialised, so every gate is 0 and each block starts
  as the identity; the final layer (adaLN shift/scale and the Linear to ``p*p*C``) is zero-initialised
  too, so the untrained network predicts zero velocity.
* **Cross-attention context** (``(B, L, width)``, LayerNorm): the frame's ``K`` code vectors (``Linear(
  token_size, width)`` + learned per-token positions + a "this frame" type embedding); optionally the
  ``num_neighbours`` neighbouring frames' codes (same Linear and positions + one type embedding per
  neighbour slot); optionally the segmentation features of the end-diastolic and end-systolic frames
  ``(B, 2, seg_channels, H, W)`` patchified by ``seg_patch_size`` (Linear + fixed 2-D positions + ED / ES
  type embeddings). ``neighbour_mask (B, A)`` and ``seg_mask (B, 2)`` (True = present) become the
  attention's key mask, so absent context tokens have no influence (mid-level fusion, the SD3/PixArt
  pattern).
* **Rectified flow**: ``x_t = t x + (1 - t) eps``, the network predicts the velocity ``x - eps``
  (:func:`utils.flow.flow_pair`); :meth:`TokenDiT.sample` integrates ``dx/dt = v(x, t)`` from ``t = 0`` with Euler
  steps (``steps`` 1-8). The starting noise is one ``(C, H, W)`` image drawn from a generator seeded by
  ``noise_seed`` and shared by every frame, so decoding is deterministic, reproducible and independent of
  how frames are batched (up to float rounding).

Presets: ``paper`` (DiT-S-like: width 384, 12 layers, 6 heads, 256x256, patch 8), ``demo`` (64x64, patch
4, width 96, 4 layers), ``tiny`` (48x48, patch 8, width 32, 1 layer) for tests.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
from torch import nn

from models.config import ModelConfig
from models.titok_blocks import Attention, Mlp, init_linear_xavier, patchify, sincos_2d, trunc_normal_, unpatchify
from utils.flow import flow_pair  # noqa: F401 - the training pair, re-exported
from utils.seed import torch_generator

__all__ = ["DiTConfig", "TokenDiT", "DiTBlock", "FinalLayer", "TimestepEmbedder", "flow_pair", "MAX_SAMPLE_STEPS"]

MAX_SAMPLE_STEPS = 8


@dataclasses.dataclass
class DiTConfig(ModelConfig):
    """DiT decoder hyperparameters (module docstring). ``token_size`` and ``num_latent_tokens`` must match
    the tokenizer, ``seg_channels`` the segmentation network's feature channels (0: no segmentation
    guidance); ``sample_steps`` and ``noise_seed`` are the decoding defaults."""

    image_size: Tuple[int, ...] = (256, 256)
    in_channels: int = 1
    patch_size: int = 8
    width: int = 384
    depth: int = 12
    heads: int = 6
    mlp_ratio: float = 4.0
    token_size: int = 12
    num_latent_tokens: int = 64
    num_neighbours: int = 2
    seg_channels: int = 32
    seg_patch_size: int = 8
    stage1_input: bool = True
    sample_steps: int = 4
    noise_seed: int = 0

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {},
        "demo": {"image_size": (64, 64), "patch_size": 4, "width": 96, "depth": 4, "heads": 3,
                 "seg_channels": 8, "seg_patch_size": 8},
        "tiny": {"image_size": (48, 48), "patch_size": 8, "width": 32, "depth": 1, "heads": 2,
                 "num_latent_tokens": 8, "seg_channels": 4, "seg_patch_size": 8, "sample_steps": 2},
    }

    def validate(self) -> None:
        name = type(self).__name__
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ValueError(f"{name}: image_size must be two positive ints (H, W), got {self.image_size!r}")
        self.image_size = size
        for field, low in (("in_channels", 1), ("patch_size", 1), ("width", 1), ("depth", 1), ("heads", 1),
                           ("token_size", 1), ("num_latent_tokens", 1), ("num_neighbours", 0), ("seg_channels", 0),
                           ("seg_patch_size", 1), ("sample_steps", 1), ("noise_seed", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {field} must be an int >= {low}, got {value!r}")
        if self.in_channels not in (1, 2):
            raise ValueError(f"{name}: in_channels must be 1 or 2, got {self.in_channels}")
        if any(s % self.patch_size for s in size) or (self.seg_channels and any(s % self.seg_patch_size for s in size)):
            raise ValueError(f"{name}: image_size {size} must be multiples of patch_size {self.patch_size} "
                             f"and seg_patch_size {self.seg_patch_size}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"{name}: width {self.width} must be a multiple of heads {self.heads} and of 4")
        if self.sample_steps > MAX_SAMPLE_STEPS:
            raise ValueError(f"{name}: sample_steps must be 1..{MAX_SAMPLE_STEPS}, got {self.sample_steps}")
        if not isinstance(self.stage1_input, bool):
            raise ValueError(f"{name}: stage1_input must be a bool, got {self.stage1_input!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"{name}: mlp_ratio must be > 0, got {self.mlp_ratio!r}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with ``shift, scale (B, D)`` broadcast over the tokens of ``x (B, L, D)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """``t (B,)`` in [0, 1] -> ``(B, width)``: sinusoidal features of ``1000 t`` (dim 256, max period
    1e4, DiT's convention) through ``Linear -> SiLU -> Linear``."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=1))


class DiTBlock(nn.Module):
    """adaLN-Zero block with self-attention, cross-attention and an MLP, each gated by the conditioning.
    ``forward(x (B, N, D), c (B, D), context (B, L, D) | None, key_mask (B, L) | None) -> (B, N, D)``;
    the identity at initialisation (zero modulation)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.cross = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def zero_init(self) -> None:
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self.adaLN_modulation(c).chunk(9, dim=1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        if context is not None:
            x = x + g2[:, None] * self.cross(modulate(self.norm2(x), sh2, sc2), context, key_mask)
        return x + g3[:, None] * self.mlp(modulate(self.norm3(x), sh3, sc3))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then ``Linear(width, p*p*C)``; zero-initialised (predicts 0 at first)."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def zero_init(self) -> None:
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TokenDiT(nn.Module):
    """The DiT decoder (registry ``"titok_dit"``).

    ``forward(x_t (B, C, H, W), t (B,), frame_codes (B, K, token_size), *, stage1 (B, C, H, W) | None,
    neighbour_codes (B, A, K, token_size) | None, neighbour_mask (B, A) | None, seg_features
    (B, 2, seg_channels, H, W) | None, seg_mask (B, 2) | None) -> velocity (B, C, H, W)``.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        w, p = cfg.width, cfg.patch_size
        h, wd = cfg.image_size
        in_ch = cfg.in_channels * (2 if cfg.stage1_input else 1)
        self.x_embed = nn.Conv2d(in_ch, w, p, stride=p)
        self.register_buffer("x_positions", sincos_2d(w, h // p, wd // p)[None], persistent=False)
        self.t_embed = TimestepEmbedder(w)
        self.global_embed = nn.Linear(cfg.token_size, w)
        self.token_embed = nn.Linear(cfg.token_size, w)
        self.token_positions = nn.Parameter(torch.zeros(1, cfg.num_latent_tokens, w))
        self.frame_type = nn.Parameter(torch.zeros(1 + cfg.num_neighbours, w))
        if cfg.seg_channels:
            ps = cfg.seg_patch_size
            self.seg_embed = nn.Linear(cfg.seg_channels * ps * ps, w)
            self.register_buffer("seg_positions", sincos_2d(w, h // ps, wd // ps)[None], persistent=False)
            self.seg_type = nn.Parameter(torch.zeros(2, w))
        self.context_norm = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(w, p * p * cfg.in_channels)
        init_linear_xavier(self)
        nn.init.xavier_uniform_(self.x_embed.weight.view(w, -1))
        nn.init.zeros_(self.x_embed.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        for t in (self.token_positions, self.frame_type) + ((self.seg_type,) if cfg.seg_channels else ()):
            trunc_normal_(t)
        for block in self.blocks:
            block.zero_init()
        self.final.zero_init()

    # ------------------------------------------------------------------------------------------ context
    def build_context(self, frame_codes: torch.Tensor, neighbour_codes: Optional[torch.Tensor] = None,
                      neighbour_mask: Optional[torch.Tensor] = None, seg_features: Optional[torch.Tensor] = None,
                      seg_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention tokens ``(B, L, width)`` and their key mask ``(B, L)`` (True = present)."""
        cfg = self.config
        b, k = frame_codes.shape[0], cfg.num_latent_tokens
        if frame_codes.shape[1:] != (k, cfg.token_size):
            raise ValueError(f"TokenDiT: frame_codes must be (B, {k}, {cfg.token_size}), got {tuple(frame_codes.shape)}")
        device = frame_codes.device
        parts = [self.token_embed(frame_codes) + self.token_positions + self.frame_type[0]]
        masks = [torch.ones(b, k, dtype=torch.bool, device=device)]
        a = cfg.num_neighbours
        if a:
            if neighbour_codes is None:
                neighbour_codes = frame_codes.new_zeros(b, a, k, cfg.token_size)
                neighbour_mask = torch.zeros(b, a, dtype=torch.bool, device=device)
            if neighbour_codes.shape[1:] != (a, k, cfg.token_size):
                raise ValueError(f"TokenDiT: neighbour_codes must be (B, {a}, {k}, {cfg.token_size}), "
                                 f"got {tuple(neighbour_codes.shape)}")
            if neighbour_mask is None:
                neighbour_mask = torch.ones(b, a, dtype=torch.bool, device=device)
            emb = self.token_embed(neighbour_codes) + self.token_positions[:, None] + self.frame_type[1:, None]
            parts.append(emb.reshape(b, a * k, -1))
            masks.append(neighbour_mask.to(torch.bool).repeat_interleave(k, dim=1))
        elif neighbour_codes is not None:
            raise ValueError("TokenDiT: neighbour_codes given but num_neighbours is 0")
        if cfg.seg_channels:
            h, w = cfg.image_size
            ps = cfg.seg_patch_size
            n = (h // ps) * (w // ps)
            if seg_features is None:
                parts.append(self.seg_type.new_zeros(b, 2 * n, cfg.width))
                masks.append(torch.zeros(b, 2 * n, dtype=torch.bool, device=device))
            else:
                if seg_features.shape[1:] != (2, cfg.seg_channels, h, w):
                    raise ValueError(f"TokenDiT: seg_features must be (B, 2, {cfg.seg_channels}, {h}, {w}), "
                                     f"got {tuple(seg_features.shape)}")
                tokens = patchify(seg_features.reshape(b * 2, cfg.seg_channels, h, w), ps)
                emb = self.seg_embed(tokens).reshape(b, 2, n, -1) + self.seg_positions[:, None] + self.seg_type[None, :, None]
                parts.append(emb.reshape(b, 2 * n, -1))
                seg_mask = torch.ones(b, 2, dtype=torch.bool, device=device) if seg_mask is None else seg_mask.to(torch.bool)
                masks.append(seg_mask.repeat_interleave(n, dim=1))
        elif seg_features is not None:
            raise ValueError("TokenDiT: seg_features given but seg_channels is 0")
        return self.context_norm(torch.cat(parts, dim=1)), torch.cat(masks, dim=1)

    # ------------------------------------------------------------------------------------------ network
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, frame_codes: torch.Tensor, *,
                stage1: Optional[torch.Tensor] = None, neighbour_codes: Optional[torch.Tensor] = None,
                neighbour_mask: Optional[torch.Tensor] = None, seg_features: Optional[torch.Tensor] = None,
                seg_mask: Optional[torch.Tensor] = None, context: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> torch.Tensor:
        cfg = self.config
        c_in, (h, w) = cfg.in_channels, cfg.image_size
        if x_t.dim() != 4 or tuple(x_t.shape[1:]) != (c_in, h, w):
            raise ValueError(f"TokenDiT: x_t must be (B, {c_in}, {h}, {w}), got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        if t.shape != (b,):
            raise ValueError(f"TokenDiT: t must be (B,) = ({b},), got {tuple(t.shape)}")
        if cfg.stage1_input:
            if stage1 is None or stage1.shape != x_t.shape:
                raise ValueError(f"TokenDiT: stage1_input needs the stage-1 frames {tuple(x_t.shape)}, got "
                                 f"{None if stage1 is None else tuple(stage1.shape)}")
            x_t = torch.cat([x_t, stage1.to(x_t.dtype)], dim=1)
        if context is None:
            context = self.build_context(frame_codes, neighbour_codes, neighbour_mask, seg_features, seg_mask)
        tokens, key_mask = context
        x = self.x_embed(x_t).flatten(2).transpose(1, 2) + self.x_positions
        c = self.t_embed(t) + self.global_embed(frame_codes.mean(dim=1))
        for block in self.blocks:
            x = block(x, c, tokens, key_mask)
        return unpatchify(self.final(x, c), cfg.patch_size, h, w)

    # ------------------------------------------------------------------------------------------ sampling
    def noise(self, batch: int, device: torch.device | str = "cpu", seed: Optional[int] = None) -> torch.Tensor:
        """The decoding noise: one ``(C, H, W)`` standard normal image from ``seed`` (default
        ``config.noise_seed``), repeated ``batch`` times -> ``(batch, C, H, W)`` float32."""
        cfg = self.config
        gen = torch_generator(cfg.noise_seed if seed is None else seed, 0x7170)
        eps = torch.randn((1, cfg.in_channels, *cfg.image_size), generator=gen)
        return eps.to(device).expand(batch, -1, -1, -1).contiguous()

    @torch.no_grad()
    def sample(self, frame_codes: torch.Tensor, steps: Optional[int] = None, seed: Optional[int] = None,
               **condition: Any) -> torch.Tensor:
        """Decode frames ``(B, C, H, W)``: Euler integration of the flow from the seeded noise over
        ``steps`` (default ``config.sample_steps``, 1..8) uniform steps; ``condition`` as for ``forward``."""
        return self.sample_with_grad(frame_codes, steps, seed, **condition)

    def sample_with_grad(self, frame_codes: torch.Tensor, steps: Optional[int] = None, seed: Optional[int] = None,
                         **condition: Any) -> torch.Tensor:
        """:meth:`sample` without ``no_grad`` (training through the sampler)."""
        steps = self.config.sample_steps if steps is None else int(steps)
        if not 1 <= steps <= MAX_SAMPLE_STEPS:
            raise ValueError(f"TokenDiT: steps must be 1..{MAX_SAMPLE_STEPS}, got {steps}")
        b = frame_codes.shape[0]
        x = self.noise(b, frame_codes.device, seed)
        context = self.build_context(frame_codes, condition.pop("neighbour_codes", None), condition.pop("neighbour_mask", None),
                                     condition.pop("seg_features", None), condition.pop("seg_mask", None))
        for i in range(steps):
            t = torch.full((b,), i / steps, device=x.device)
            x = x + self(x, t, frame_codes, context=context, **condition) / steps
        return x

