"""TiTok-MRI tokenizer: a 1-D token codec for cine frames (Yu et al., "An Image is Worth 32 Tokens", non-legacy).

Written from the paper and shared/research/cine_tokenizer.md §3.1, trained from scratch (an official
ImageNet TiTok is RGB-only and hub-hosted; see the issue). Shapes for one frame batch ``(B, C, H, W)``
(``C`` = 1 magnitude, or 2 for real/imaginary), patch ``p``, grid ``G = (H/p)(W/p)``, ``K`` latent tokens:

* **Encoder** (:class:`TiTokEncoder`): ``Conv(C, width, p, stride p)`` patch embedding; a class token and
  the ``G`` patch tokens with learned positional embeddings, then the ``K`` learnable latent tokens with
  *their own* learned positional embeddings appended; ``ln_pre``, ``depth`` pre-LN blocks; the last ``K``
  tokens are kept, ``ln_post``, a 1x1 projection (a per-token Linear) to ``token_size`` (12) -> ``(B, K, 12)``.
  Tokens and channels are never reshaped into each other (TiTok's legacy reshape quirk is not reproduced).
* **Vector quantiser** (:class:`VectorQuantizer`): codebook ``codebook_size x token_size`` (4096 x 12);
  inputs and codes are l2-normalised, the nearest code (largest cosine; ties to the lowest index) is the
  token id; the loss is ``commitment_weight`` (0.25) ``* mean ||z - sg(q)||^2``; the straight-through
  estimator passes the decoder's gradient to ``z`` unchanged. The codes follow an exponential moving
  average of the inputs assigned to them (``ema_decay``), not a gradient: the codebook is a buffer, so
  DeepSpeed's fp32 master copy of the parameters (ZeRO, CPU offload) cannot silently undo a re-seeding.
  Usage and perplexity are reported per batch. **Dead codes** (EMA assignment count below
  ``dead_code_threshold`` per step) are re-seeded every ``reseed_every`` training steps with input vectors
  of the batch (gathered over all ranks) chosen by a generator seeded from ``(reseed_seed, step)``:
  deterministic, identical on every rank, and reproduced by a resumed run (the counters are buffers).
* **Stage-1 decoder** (:class:`TiTokDecoder`): ``Linear(token_size, width)`` on the quantised tokens plus
  their positional embeddings, appended after a class token and ``G`` mask tokens (one learned vector)
  with positional embeddings; ``depth`` pre-LN blocks; the ``G`` grid tokens are kept, ``ln_post``; the
  pixel head is a 1x1 projection to ``p*p*C`` values per grid token, un-patchified (pixel shuffle) and
  refined by a 3x3 convolution -> ``(B, C, H, W)``. The tokenizer trains on its own with it (pixel + VQ loss).

:class:`TiTok` (registry ``"titok"``) holds all three: ``forward(x) -> TiTokOutput`` (reconstruction,
ids, quantiser loss and statistics), :meth:`TiTok.encode` ``(B, C, H, W) -> ids (B, K) int64``,
:meth:`TiTok.codes` ``ids -> (B, K, token_size)`` and :meth:`TiTok.decode_ids` ``ids -> (B, C, H, W)``.
Frames must have the config's ``image_size``; the codec places frames of other sizes (data.acdc_datasets).
Pixel values are whatever the caller normalises to (the pipeline: magnitude / the subject's 99.5th
percentile, so roughly [0, 1]).

Presets: ``paper`` (TiTok-B-64: width 768, 12 layers, 12 heads, 256x256, patch 16, K 64), ``paper_l32``
(TiTok-L-32: 1024/24/16, K 32), ``paper_s128`` (TiTok-S-128: 512/8/8, K 128); ``demo`` (64x64 frames,
patch 8, width 96, 3 layers, K 64, codebook 4096); ``tiny`` (48x48, patch 8, width 32, 1 layer, K 8,
codebook 128) for tests.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.titok_blocks import Block, init_linear_xavier, trunc_normal_, unpatchify
from utils.seed import torch_generator

__all__ = ["TiTokConfig", "TiTok", "TiTokEncoder", "TiTokDecoder", "VectorQuantizer", "TiTokOutput", "MAX_CODEBOOK"]

#: Token ids are stored as uint16.
MAX_CODEBOOK = 2**16


def _positive_int(cls: str, name: str, value: Any, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{cls}: {name} must be an int >= {low}, got {value!r}")


@dataclasses.dataclass
class TiTokConfig(ModelConfig):
    """Tokenizer hyperparameters (module docstring). ``image_size`` (H, W) must be multiples of
    ``patch_size``; ``width`` a multiple of ``heads`` (encoder) and ``decoder_width`` of ``decoder_heads``."""

    image_size: Tuple[int, ...] = (256, 256)
    in_channels: int = 1
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    decoder_width: int = 768
    decoder_depth: int = 12
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    num_latent_tokens: int = 64
    token_size: int = 12
    codebook_size: int = 4096
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.01
    reseed_every: int = 100
    reseed_seed: int = 0

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {},  # TiTok-B-64
        "paper_l32": {"width": 1024, "depth": 24, "heads": 16, "decoder_width": 1024, "decoder_depth": 24,
                      "decoder_heads": 16, "num_latent_tokens": 32},
        "paper_s128": {"width": 512, "depth": 8, "heads": 8, "decoder_width": 512, "decoder_depth": 8,
                       "decoder_heads": 8, "num_latent_tokens": 128},
        "demo": {"image_size": (64, 64), "patch_size": 8, "width": 96, "depth": 3, "heads": 3,
                 "decoder_width": 96, "decoder_depth": 3, "decoder_heads": 3, "num_latent_tokens": 64},
        "tiny": {"image_size": (48, 48), "patch_size": 8, "width": 32, "depth": 1, "heads": 2,
                 "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2, "num_latent_tokens": 8,
                 "codebook_size": 128, "reseed_every": 4},
    }

    def validate(self) -> None:
        name = type(self).__name__
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ValueError(f"{name}: image_size must be two positive ints (H, W), got {self.image_size!r}")
        self.image_size = size
        for field in ("in_channels", "patch_size", "width", "depth", "heads", "decoder_width", "decoder_depth",
                      "decoder_heads", "num_latent_tokens", "token_size", "codebook_size"):
            _positive_int(name, field, getattr(self, field))
        _positive_int(name, "reseed_every", self.reseed_every, 0)
        _positive_int(name, "reseed_seed", self.reseed_seed, 0)
        if self.in_channels not in (1, 2):
            raise ValueError(f"{name}: in_channels must be 1 (magnitude) or 2 (real, imaginary), got {self.in_channels}")
        if any(s % self.patch_size for s in size):
            raise ValueError(f"{name}: image_size {size} must be multiples of patch_size {self.patch_size}")
        if self.width % self.heads or self.decoder_width % self.decoder_heads:
            raise ValueError(f"{name}: width/decoder_width must be multiples of heads/decoder_heads")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK:
            raise ValueError(f"{name}: codebook_size must be in 2..{MAX_CODEBOOK} (ids are stored as uint16), "
                             f"got {self.codebook_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"{name}: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        for field in ("commitment_weight", "dead_code_threshold"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"{name}: {field} must be >= 0, got {getattr(self, field)!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"{name}: mlp_ratio must be > 0, got {self.mlp_ratio!r}")

    @property
    def grid(self) -> Tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


@dataclasses.dataclass
class TiTokOutput:
    """``reconstruction (B, C, H, W)``, ``ids (B, K)`` int64, ``quantizer_loss`` (scalar, the commitment
    term), ``perplexity`` and ``usage`` (fraction of the codebook used in the batch), both scalars."""

    reconstruction: torch.Tensor
    ids: torch.Tensor
    quantizer_loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


class VectorQuantizer(nn.Module):
    """l2-normalised nearest-code quantiser with an EMA codebook and deterministic dead-code re-seeding.

    ``forward(z (B, K, D)) -> dict``: ``quantized`` (straight-through, l2-normalised, ``(B, K, D)``),
    ``ids (B, K)`` int64, ``loss`` (``commitment_weight * mean ||z_n - sg(q)||^2``), ``commitment`` (the
    unweighted term), ``perplexity`` (``exp`` of the entropy of the batch's id histogram) and ``usage``.
    Training mode updates the codebook (EMA, statistics summed over ranks) and re-seeds dead codes; evaluation
    mode changes nothing. Runs in float32 whatever the autocast.
    """

    def __init__(self, codebook_size: int, dim: int, commitment_weight: float = 0.25, ema_decay: float = 0.99,
                 dead_code_threshold: float = 0.01, reseed_every: int = 100, reseed_seed: int = 0):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.commitment_weight, self.ema_decay = float(commitment_weight), float(ema_decay)
        self.dead_code_threshold, self.reseed_every, self.reseed_seed = float(dead_code_threshold), reseed_every, reseed_seed
        init = F.normalize(torch.empty(codebook_size, dim).uniform_(-1.0, 1.0), dim=1)  # U(-1, 1) then unit norm
        self.register_buffer("codebook", init.clone())
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("ema_count", torch.full((codebook_size,), 1.0 / codebook_size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors of ``ids`` (any shape, int) -> ``ids.shape + (D,)``; out-of-range ids are an error."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"token ids must be in 0..{self.codebook_size - 1}, got {int(ids.min())}..{int(ids.max())}")
        return self.codebook[ids.long()]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest codes of l2-normalised ``z (..., D)`` (largest dot product, ties to the lowest id),
        in float32 whatever the autocast (training and encoding pick the same codes)."""
        with torch.autocast(z.device.type, enabled=False):
            return torch.argmax(z.float() @ self.codebook.t(), dim=-1)

    def forward(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.autocast(z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            ids = self.nearest(z.detach())
            q = self.codebook[ids]
            commitment = (z - q.detach()).square().sum(-1).mean()
            counts = torch.bincount(ids.reshape(-1), minlength=self.codebook_size).to(z.dtype)
            probs = counts / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
            usage = (counts > 0).to(z.dtype).mean()
            if self.training:
                self._update(z.detach(), ids, counts)
            quantized = z + (q - z).detach()
        return {"quantized": quantized, "ids": ids, "loss": self.commitment_weight * commitment,
                "commitment": commitment, "perplexity": perplexity.detach(), "usage": usage.detach()}

    @torch.no_grad()
    def _update(self, z: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> None:
        flat = z.reshape(-1, self.dim)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, ids.reshape(-1), flat)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        d = self.ema_decay
        self.ema_count.mul_(d).add_(counts, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sums, alpha=1 - d)
        self.codebook.copy_(F.normalize(self.ema_sum, dim=1))
        self.steps += 1
        if self.reseed_every and int(self.steps) % self.reseed_every == 0:
            pool = flat
            if distributed:
                gathered = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
                torch.distributed.all_gather(gathered, flat.contiguous())
                pool = torch.cat(gathered)
            self.reseed(pool)

    @torch.no_grad()
    def reseed(self, pool: torch.Tensor) -> int:
        """Replace the dead codes (EMA count < ``dead_code_threshold``) by rows of ``pool (M, D)`` (unit
        vectors) drawn by a generator seeded from ``(reseed_seed, steps)``; returns how many were replaced."""
        dead = torch.nonzero(self.ema_count < self.dead_code_threshold).reshape(-1)
        if dead.numel() == 0 or pool.shape[0] == 0:
            return 0
        gen = torch_generator(self.reseed_seed, int(self.steps))
        if dead.numel() <= pool.shape[0]:
            pick = torch.randperm(pool.shape[0], generator=gen)[: dead.numel()]
        else:
            pick = torch.randint(pool.shape[0], (dead.numel(),), generator=gen)
        chosen = F.normalize(pool[pick.to(pool.device)].to(self.ema_sum.dtype), dim=1)
        self.ema_sum[dead] = chosen
        self.codebook[dead] = chosen
        self.ema_count[dead] = self.ema_count.mean().clamp_min(self.dead_code_threshold)  # a fair chance
        return int(dead.numel())


class TiTokEncoder(nn.Module):
    """``(B, C, H, W) -> (B, K, token_size)`` (pre-quantisation latent tokens)."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        p, w = cfg.patch_size, cfg.width
        gh, gw = cfg.grid
        self.patch_embed = nn.Conv2d(cfg.in_channels, w, p, stride=p)
        self.class_token = nn.Parameter(torch.zeros(1, 1, w))
        self.positions = nn.Parameter(torch.zeros(1, 1 + gh * gw, w))
        self.latent_tokens = nn.Parameter(torch.zeros(1, cfg.num_latent_tokens, w))
        self.latent_positions = nn.Parameter(torch.zeros(1, cfg.num_latent_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        self.project = nn.Linear(w, cfg.token_size)  # the 1x1 convolution of TiTok, per token
        self.num_latent_tokens = cfg.num_latent_tokens
        init_linear_xavier(self)
        for t in (self.class_token, self.positions, self.latent_tokens, self.latent_positions):
            trunc_normal_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, G, w)
        grid = torch.cat([self.class_token.expand(b, -1, -1), patches], dim=1) + self.positions
        latents = (self.latent_tokens + self.latent_positions).expand(b, -1, -1)
        h = self.ln_pre(torch.cat([grid, latents], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.project(self.ln_post(h[:, -self.num_latent_tokens:]))


class TiTokDecoder(nn.Module):
    """Stage-1 pixel decoder: quantised tokens ``(B, K, token_size) -> (B, C, H, W)``."""

    def __init__(self, cfg: TiTokConfig):
        super().__init__()
        w, p = cfg.decoder_width, cfg.patch_size
        gh, gw = cfg.grid
        self.cfg = cfg
        self.embed = nn.Linear(cfg.token_size, w)
        self.latent_positions = nn.Parameter(torch.zeros(1, cfg.num_latent_tokens, w))
        self.class_token = nn.Parameter(torch.zeros(1, 1, w))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        self.positions = nn.Parameter(torch.zeros(1, 1 + gh * gw, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.ln_post = nn.LayerNorm(w)
        self.pixel_head = nn.Linear(w, p * p * cfg.in_channels)
        self.refine = nn.Conv2d(cfg.in_channels, cfg.in_channels, 3, padding=1)
        init_linear_xavier(self)
        for t in (self.latent_positions, self.class_token, self.mask_token, self.positions):
            trunc_normal_(t)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        gh, gw = self.cfg.grid
        grid = torch.cat([self.class_token, self.mask_token.expand(-1, gh * gw, -1)], dim=1) + self.positions
        h = torch.cat([grid.expand(b, -1, -1), self.embed(tokens) + self.latent_positions], dim=1)
        h = self.ln_pre(h)
        for block in self.blocks:
            h = block(h)
        h = self.ln_post(h[:, 1:1 + gh * gw])
        image = unpatchify(self.pixel_head(h), self.cfg.patch_size, *self.cfg.image_size)
        return self.refine(image)


class TiTok(nn.Module):
    """The tokenizer (registry ``"titok"``): encoder, vector quantiser and stage-1 decoder."""

    def __init__(self, config: TiTokConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = TiTokEncoder(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.token_size, config.commitment_weight,
                                         config.ema_decay, config.dead_code_threshold, config.reseed_every,
                                         config.reseed_seed)
        self.decoder = TiTokDecoder(config)

    def check_input(self, x: torch.Tensor) -> None:
        c, (h, w) = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"TiTok: frames must be (B, {c}, {h}, {w}), got {tuple(x.shape)}")

    def quantize(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Encoder + quantiser: the quantiser's dict for frames ``x (B, C, H, W)``."""
        self.check_input(x)
        return self.quantizer(self.encoder(x))

    def forward(self, x: torch.Tensor) -> TiTokOutput:
        q = self.quantize(x)
        recon = self.decoder(q["quantized"])
        return TiTokOutput(recon, q["ids"], q["loss"], q["perplexity"], q["usage"])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, K)`` int64 of frames ``x (B, C, H, W)`` (no codebook update, whatever the mode)."""
        self.check_input(x)
        z = F.normalize(self.encoder(x).float(), dim=-1)
        return self.quantizer.nearest(z)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors ``ids.shape + (token_size,)`` (unit vectors)."""
        return self.quantizer.lookup(ids)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Stage-1 frames ``(B, C, H, W)`` from code vectors ``(B, K, token_size)``."""
        return self.decoder(codes)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Stage-1 frames ``(B, C, H, W)`` from token ids ``(B, K)``."""
        if ids.dim() != 2 or ids.shape[1] != self.config.num_latent_tokens:
            raise ValueError(f"TiTok: ids must be (B, {self.config.num_latent_tokens}), got {tuple(ids.shape)}")
        return self.decoder(self.codes(ids))

