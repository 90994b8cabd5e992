"""KGMgT (Lyu et al., Medical Image Analysis 2026): knowledge-guided multi-geometric window transformer
for cine reconstruction, in our own code from the article and ``shared/research/cine_tokenizer.md`` §1.

Contract (the cine contract of models/promptmr.py): ``forward(masked_kspace (B, 3, C, H, W) complex,
mask (B, [3,] [H,] W), num_low_frequencies=None) -> (B, H, W)`` float magnitude, the 3 "adjacent slices"
being frames τ-1, τ, τ+1 (circular in time) in model layout (phase encoding last); any H, W.

Data flow for one target frame τ:

1. **Coils.** Sensitivity maps from the time-averaged centre of k-space: the 3 frames' masked k-space
   summed and divided by the per-location sampling count, low-passed to the ACS columns
   (:func:`utils.physics.acs_column_mask` of the frames' union mask; ``num_low_frequencies`` for 2-D
   masks), coil images / their RSS. Each frame is coil-combined (``sum conj(S) F^H k``) into a complex
   image, 2 channels (real, imaginary), divided by the maximum magnitude of the zero-filled frame τ (the
   network works at unit scale; the output is scaled back). Images are zero-padded right/bottom to a
   multiple of ``4 * lcm(window, stripe)`` and cropped back after each pass.
2. **Two passes of one network** (mentor, then learner; the same modules, so the same weights):
   pass 1 restores frame τ with reference τ-1, its "knowledge" input being the reference's own
   features; pass 2 restores pass 1's output with reference τ+1 and pass 1's five aggregated feature maps
   as knowledge. The loss is on the final output only.
3. **ASA** per pass: a VGG-style trunk per input (target, reference) to 1/4 resolution; normalised 3x3
   patch matching there gives a flow, the 9 per-tap (neighbour) offsets and a similarity, upscaled to
   1/2 and full resolution; the search is a local window of ``search_radius`` (1/4-scale pixels, cost
   linear in the image) or, with ``global_search``, the whole map (the released code; quadratic).
4. **Restoration network** (U-shape over 3 scales, width ``ngf``): at each scale the reference's
   features (a second VGG trunk: relu1_1/relu2_1/relu3_1) are flow-warped, offsets predicted from
   [current, warped, reference], and a modulated deformable convolution (``groups`` groups, offsets
   ``10 tanh + matching offsets``, masks ``sigmoid(learned x similarity)``) aggregates the reference;
   fused with the knowledge features, then an MGwinT stage: residual groups of blocks summing a square
   shifted-window attention (window 8, shift 4 in alternate blocks, relative-position bias) and an
   anchor-stripe attention. Output ``+`` input, then the refinement CNN ``refine_iters`` times (shared
   weights).
5. **Data consistency** after each pass: ``(1 - m) k + m (k + η k0) / (1 + η)`` on the frame's sampled
   k-space (:func:`utils.physics.noise_weighted_data_consistency`), η = exp(learnable), one η shared by
   both passes. ``dc=False`` reproduces the released code (its DC call is commented out).

Paper vs released code (the paper is followed; the code's behaviour is an option):

* anchor-stripe windows: rectangular ``stripe_size`` (default 8 x 16, horizontal in even blocks and
  transposed in odd blocks, as the paper describes); the code's square 8 x 8 is ``stripe_size=(8, 8)``.
* data consistency on (``dc=True``); the code's ``dc=False``.
* matching search: local window (``search_radius``); the code's global search is ``global_search=True``.
* preset ``released`` = the three code behaviours at the paper sizes.

Not copied from the code (reproducibility): every layer is a saved, trained parameter — the code's
matching/perceptual VGG19 first layers are fresh random frozen convs that no checkpoint holds. The
matching extractor trains through the similarity (the code freezes a contrastively pretrained one; a
local file can initialise it, ``pretrained_extractor``, and ``freeze_extractor`` freezes it); its two
trunks start from the same weights (the code's both start from one VGG16), so matching finds equal
content before any training. Nothing is downloaded.

Size: ``paper`` has 5.40 M parameters in the restoration network (U-shape 5.28 M + refinement CNN
0.11 M, :meth:`KGMgT.parameter_counts`), as the notes count for the released ``net_g``; the two
extractor trunks add 1.11 M and the reference-feature trunk 0.55 M (7.06 M in all).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import ModelConfig
from models.kgmgt_blocks import (
    DeformableAggregation,
    Discriminator,
    MGStage,
    RefinementCNN,
    VGGTrunk,
    flow_warp,
    global_patch_match,
    local_patch_match,
    neighbour_offsets,
    upscale_flow,
)
from utils import physics
from utils.checkpoint import load_weights_file

__all__ = ["KGMgTConfig", "KGMgT", "RestorationNetwork", "coil_sensitivities", "load_extractor_weights"]

_TUPLES = ("feat_channels", "depths", "num_heads", "stripe_size")
_BOOLS = ("stripe_alternate", "global_search", "dc", "freeze_extractor", "use_checkpoint")


@dataclasses.dataclass
class KGMgTConfig(ModelConfig):
    """KGMgT hyperparameters; defaults are the ``paper`` preset (the released sizes, paper behaviour).

    ``pretrained_extractor`` (a local .safetensors or weights-only .pth/.pt file) initialises the
    matching extractor at construction; :meth:`to_dict` (what checkpoints store) drops it, since the
    weights are then part of the model's state. The ``lr_scale_*`` fields scale the learning rate of
    parameter groups (:meth:`KGMgT.parameter_lr_scale`), as the released training does for the offset
    layers (1e-3 / 1e-3 / 1e-5 / 1e-6 for the network / full- and medium- / small-scale offsets);
    ``discriminator_width`` > 0 adds the WGAN critic used by the adversarial loss term.
    """

    num_adj_slices: int = 3
    ngf: int = 16
    feat_channels: Tuple[int, ...] = (64, 128, 256)
    groups: int = 4
    depths: Tuple[int, ...] = (4, 4)
    num_heads: Tuple[int, ...] = (4, 4)
    window_size: int = 8
    stripe_size: Tuple[int, ...] = (8, 16)
    stripe_alternate: bool = True
    mlp_ratio: float = 2.0
    drop_path_rate: float = 0.1
    cpb_hidden: int = 512
    refine_layers: int = 5
    refine_width: int = 64
    refine_iters: int = 5
    search_radius: int = 4
    global_search: bool = False
    max_residue_magnitude: float = 10.0
    dc: bool = True
    dc_eta_init: float = 10.0
    freeze_extractor: bool = False
    pretrained_extractor: Optional[str] = None
    use_checkpoint: bool = False
    lr_scale_offset: float = 1.0
    lr_scale_offset_medium: float = 1e-2
    lr_scale_offset_small: float = 1e-3
    discriminator_width: int = 0
    lr_scale_discriminator: float = 0.1

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {},
        "released": {"stripe_size": (8, 8), "dc": False, "global_search": True},
        "demo": {
            "ngf": 16, "feat_channels": (16, 32, 64), "groups": 4, "depths": (2,), "num_heads": (2,), "window_size": 4,
            "stripe_size": (4, 8), "drop_path_rate": 0.0, "cpb_hidden": 64, "refine_width": 32, "search_radius": 3,
        },
        "tiny": {
            "ngf": 8, "feat_channels": (8, 8, 16), "groups": 2, "depths": (2,), "num_heads": (2,), "window_size": 2,
            "stripe_size": (2, 4), "drop_path_rate": 0.0, "cpb_hidden": 16, "refine_layers": 3, "refine_width": 8,
            "refine_iters": 2, "search_radius": 2,
        },
    }

    def __post_init__(self) -> None:
        for name in _TUPLES:
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> Dict[str, Any]:
        out = super().to_dict()
        out["pretrained_extractor"] = None  # the weights it loaded are in the model's state from now on
        return out

    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"KGMgTConfig: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.num_adj_slices != 3:
            fail(f"num_adj_slices must be 3 (frames τ-1, τ, τ+1), got {self.num_adj_slices!r}")
        for name in ("ngf", "groups", "window_size", "cpb_hidden", "refine_layers", "refine_width", "search_radius"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("refine_iters", "discriminator_width"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.refine_layers < 2:
            fail(f"refine_layers must be >= 2, got {self.refine_layers}")
        for name, n in (("feat_channels", 3), ("stripe_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n or not all(is_int(v) and v >= 1 for v in value):
                fail(f"{name} must be {n} integers >= 1, got {value!r}")
        for name in ("depths", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value or not all(is_int(v) and v >= 1 for v in value):
                fail(f"{name} must be one or more integers >= 1, got {value!r}")
        if len(self.depths) != len(self.num_heads):
            fail(f"depths {self.depths} and num_heads {self.num_heads} must have the same length")
        for heads in self.num_heads:
            if self.ngf % heads or (self.ngf // 2) % heads or self.ngf % 2:
                fail(f"ngf ({self.ngf}) must be even and ngf and ngf/2 divisible by every num_heads entry {self.num_heads}")
        if self.ngf < 2:
            fail(f"ngf must be >= 2, got {self.ngf}")
        if any(c % self.groups for c in self.feat_channels):
            fail(f"feat_channels {self.feat_channels} must be divisible by groups {self.groups}")
        if any(s % 2 for s in self.stripe_size):
            fail(f"stripe_size entries must be even (anchors are at half resolution), got {self.stripe_size}")
        if self.window_size < 2:
            fail(f"window_size must be >= 2 (the shifted blocks shift by window_size // 2), got {self.window_size}")
        for name in ("mlp_ratio", "max_residue_magnitude", "dc_eta_init", "lr_scale_offset", "lr_scale_offset_medium",
                     "lr_scale_offset_small", "lr_scale_discriminator", "drop_path_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                fail(f"{name} must be a finite number >= 0, got {value!r}")
        if self.mlp_ratio <= 0 or self.dc_eta_init <= 0:
            fail("mlp_ratio and dc_eta_init must be > 0")
        if not 0 <= self.drop_path_rate < 1:
            fail(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.pretrained_extractor is not None and not isinstance(self.pretrained_extractor, str):
            fail(f"pretrained_extractor must be a file path or null, got {self.pretrained_extractor!r}")

    @property
    def pad_multiple(self) -> int:
        """H and W are padded to a multiple of this: 4 (two halvings) times every window/stripe size."""
        return 4 * math.lcm(self.window_size, *self.stripe_size)


# --------------------------------------------------------------------------------------- coils


def coil_sensitivities(kspace: torch.Tensor, mask5: torch.Tensor,
                       num_low_frequencies: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
    """Coil maps ``(B, C, H, W)`` from the time-averaged centre of k-space.

    ``kspace`` complex ``(B, S, C, H, W)`` (zeros off the mask), ``mask5`` boolean ``(B, S|1, 1, H|1, W)``
    (:func:`utils.physics.model_mask`). The frames are averaged per k-space location over the frames that
    sampled it, kept on the ACS columns of the frames' union mask (``num_low_frequencies`` as in
    :func:`utils.physics.acs_column_mask`), transformed to coil images and divided by their RSS, so the
    maps have unit RSS wherever there is signal.
    """
    b, s, c, h, w = kspace.shape
    m = mask5.expand(b, s, 1, mask5.shape[3], w)
    count = m.sum(dim=1).to(kspace.real.dtype)  # (B, 1, H|1, W)
    average = (kspace * m).sum(dim=1) / count.clamp_min(1.0)  # (B, C, H, W)
    columns = physics.acs_column_mask(m.any(dim=1)[:, 0].any(dim=1), num_low_frequencies)  # (B, W)
    coil = physics.ifft2c(average * columns.view(b, 1, 1, w))
    norm = physics.rss(coil, dim=1)  # (B, H, W)
    floor = 1e-6 * norm.amax(dim=(-2, -1), keepdim=True) + torch.finfo(norm.dtype).tiny
    return coil / (norm + floor).unsqueeze(1)


# --------------------------------------------------------------------------------------- the network


class _ScaleAggregation(nn.Module):
    """Offsets from ``[x, warped reference, reference]`` (two 3x3 convs, LeakyReLU 0.2), then the
    deformable aggregation of the reference features; ``(B, C, h, w)`` out."""

    def __init__(self, ngf: int, channels: int, groups: int, max_magnitude: float):
        super().__init__()
        self.offset_conv1 = nn.Conv2d(ngf + 2 * channels, channels, 3, 1, 1)
        self.offset_conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.dcn = DeformableAggregation(channels, groups, max_magnitude)

    def forward(self, x, warped, ref, offsets, similarity):
        cond = F.leaky_relu(self.offset_conv1(torch.cat([x, warped, ref], 1)), 0.2)
        cond = F.leaky_relu(self.offset_conv2(cond), 0.2)
        return F.leaky_relu(self.dcn(ref, cond, offsets, similarity), 0.2)


def _conv_act(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.1))


def _up(ngf: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ngf, 4 * ngf, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1))


class RestorationNetwork(nn.Module):
    """The network both passes share: the U-shape (aggregation + MGwinT at 3 scales) and the refinement CNN.

    ``forward(base (B, 2, H, W), ref_feats [r1 (B, c1, H, W), r2 (B, c2, H/2, W/2), r3 (B, c3, H/4, W/4)],
    knowledge [5 maps: c1 full, c2 half, c3 quarter, c2 half, c1 full], align {"flow", "offsets", "sim"}:
    lists over the 3 scales (full, half, quarter) of (B, 2, h, w), (B, 9, 2, h, w), (B, 1, h, w))``
    -> ``(output (B, 2, H, W), new knowledge [5 aggregated maps, same shapes])``.
    """

    def __init__(self, cfg: KGMgTConfig):
        super().__init__()
        ngf, (c1, c2, c3) = cfg.ngf, cfg.feat_channels
        self.use_checkpoint = cfg.use_checkpoint
        stage = dict(depths=cfg.depths, heads=cfg.num_heads, window=cfg.window_size, stripe=tuple(cfg.stripe_size),
                     stripe_alternate=cfg.stripe_alternate, mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path_rate,
                     cpb_hidden=cfg.cpb_hidden, use_checkpoint=cfg.use_checkpoint)
        agg = dict(groups=cfg.groups, max_magnitude=cfg.max_residue_magnitude)
        self.head = nn.Conv2d(2, ngf, 3, 1, 1)
        # names: "offset" + "small"/"medium" select the learning-rate groups (parameter_lr_scale)
        self.agg_down_large = _ScaleAggregation(ngf, c1, **agg)
        self.fuse_down_large = _conv_act(ngf + c1, ngf)
        self.body_down_large = MGStage(ngf, **stage)
        self.tail_down_large = nn.Conv2d(ngf, ngf, 3, 2, 1)
        self.agg_down_medium = _ScaleAggregation(ngf, c2, **agg)
        self.fuse_down_medium = _conv_act(ngf + c2, ngf)
        self.body_down_medium = MGStage(ngf, **stage)
        self.tail_down_medium = nn.Conv2d(ngf, ngf, 3, 2, 1)
        self.agg_up_small = _ScaleAggregation(ngf, c3, **agg)
        self.fuse_up_small = _conv_act(ngf + c3, ngf)
        self.body_up_small = MGStage(ngf, **stage)
        self.tail_up_small = _up(ngf)
        self.agg_up_medium = _ScaleAggregation(ngf, c2, **agg)
        self.fuse_up_medium = _conv_act(ngf + c2, ngf)
        self.body_up_medium = MGStage(ngf, **stage)
        self.tail_up_medium = _up(ngf)
        self.agg_up_large = _ScaleAggregation(ngf, c1, **agg)
        self.fuse_up_large = _conv_act(ngf + c1, ngf)
        self.body_up_large = MGStage(ngf, **stage)
        self.tail_up_large = nn.Sequential(nn.Conv2d(ngf, ngf // 2, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(ngf // 2, 2, 3, 1, 1))
        nn.init.zeros_(self.tail_up_large[-1].weight)  # the U-shape starts as the identity (output = base)
        nn.init.zeros_(self.tail_up_large[-1].bias)
        self.knowledge = nn.ModuleList(_conv_act(ngf + c, ngf) for c in (c1, c2, c3, c2, c1))
        self.refine = RefinementCNN(cfg.refine_layers, cfg.refine_width)
        self.refine_iters = cfg.refine_iters

    def _run(self, module: nn.Module, *args):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, base: torch.Tensor, ref_feats: Sequence[torch.Tensor], knowledge: Sequence[torch.Tensor],
                align: Dict[str, List[torch.Tensor]]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        warped = [flow_warp(r, f) for r, f in zip(ref_feats, align["flow"])]
        off, sim = align["offsets"], align["sim"]
        x0 = self.head(base)
        # down, full scale
        a1 = self._run(self.agg_down_large, x0, warped[0], ref_feats[0], off[0], sim[0])
        h = self.fuse_down_large(torch.cat([self.knowledge[0](torch.cat([x0, knowledge[0]], 1)), a1], 1))
        x1 = self.tail_down_large(self.body_down_large(h) + x0)
        # down, half scale
        a2 = self._run(self.agg_down_medium, x1, warped[1], ref_feats[1], off[1], sim[1])
        h = self.fuse_down_medium(torch.cat([self.knowledge[1](torch.cat([x1, knowledge[1]], 1)), a2], 1))
        x2 = self.tail_down_medium(self.body_down_medium(h) + x1)
        # quarter scale
        a3 = self._run(self.agg_up_small, x2, warped[2], ref_feats[2], off[2], sim[2])
        h = self.fuse_up_small(torch.cat([self.knowledge[2](torch.cat([x2, knowledge[2]], 1)), a3], 1))
        x = self.tail_up_small(self.body_up_small(h) + x2)
        # up, half scale
        a4 = self._run(self.agg_up_medium, x, warped[1], ref_feats[1], off[1], sim[1])
        h = self.fuse_up_medium(torch.cat([self.knowledge[3](torch.cat([x, knowledge[3]], 1)) + x1, a4], 1))
        x = self.tail_up_medium(self.body_up_medium(h) + x)
        # up, full scale
        a5 = self._run(self.agg_up_large, x, warped[0], ref_feats[0], off[0], sim[0])
        h = self.fuse_up_large(torch.cat([self.knowledge[4](torch.cat([x, knowledge[4]], 1)) + x0, a5], 1))
        out = self.tail_up_large(self.body_up_large(h) + x) + base
        for _ in range(self.refine_iters):
            out = self.refine(out)
        return out, [a1, a2, a3, a4, a5]


# --------------------------------------------------------------------------------------- pretrained extractor


_RELEASED_PREFIXES = {"feature_extraction_image1.model.": "target.", "feature_extraction_image2_1.model.": "reference."}


def load_extractor_weights(extractor: nn.Module, path) -> None:
    """Load the matching extractor (``target``/``reference`` VGG trunks) from a local file: safetensors,
    or a weights-only torch file (never unpickled beyond tensors). Keys may be ours (``target.conv1_1.weight``,
    optionally under ``extractor.`` or ``module.``) or the released code's ``feature_extraction_image1.model.``
    / ``feature_extraction_image2_1.model.`` names. Any problem is one ``ValueError`` naming the file."""
    path = Path(path)
    state = load_weights_file(path, "pretrained extractor weights")
    mapped = {}
    for key, value in state.items():
        for prefix in ("module.", "extractor."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        for old, new in _RELEASED_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
        mapped[key] = value
    own = extractor.state_dict()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise ValueError(f"{path}: pretrained extractor lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    bad = [k for k in own if tuple(mapped[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: pretrained extractor shape mismatch for {bad[0]}: file {tuple(mapped[bad[0]].shape)}, "
                         f"model {tuple(own[bad[0]].shape)} (check feat_channels)")
    extractor.load_state_dict({k: mapped[k].to(own[k].dtype) for k in own})


# --------------------------------------------------------------------------------------- the model


class KGMgT(nn.Module):
    """KGMgT cine reconstruction (module docstring). ``forward(masked_kspace, mask, num_low_frequencies=None)``:
    ``masked_kspace`` complex ``(B, 3, C, H, W)`` (frames τ-1, τ, τ+1), ``mask`` ``(B, [3,] [H,] W)`` as
    :func:`utils.physics.model_mask` reads it; returns the magnitude of frame τ, ``(B, H, W)`` float."""

    def __init__(self, config: KGMgTConfig):
        super().__init__()
        config.validate()
        self.config = config
        feats = tuple(config.feat_channels)
        self.extractor = nn.ModuleDict({"target": VGGTrunk(feats, "leaky"), "reference": VGGTrunk(feats, "leaky")})
        # Both trunks start from the same weights (as the code's two trunks both start from one VGG16), so
        # matching is meaningful before training: equal content gives equal features.
        self.extractor["reference"].load_state_dict(self.extractor["target"].state_dict())
        self.ref_features = VGGTrunk(feats, "relu")
        self.net = RestorationNetwork(config)
        if config.dc:
            # shape (1,): DeepSpeed cannot broadcast 0-dim parameters
            self.log_eta = nn.Parameter(torch.full((1,), math.log(config.dc_eta_init)))
        if config.discriminator_width > 0:
            self.discriminator = Discriminator(config.discriminator_width)
        if config.pretrained_extractor:
            load_extractor_weights(self.extractor, config.pretrained_extractor)
        if config.freeze_extractor:
            self.extractor.requires_grad_(False)

    # ---------------------------------------------------------------- helpers used by training and tests

    def parameter_lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of parameter ``name`` (engine parameter groups): the offset layers of
        the aggregation at the quarter ("small") and half ("medium") scales, the other offset layers, the
        discriminator; 1 for everything else."""
        cfg = self.config
        if name.startswith("discriminator."):
            return cfg.lr_scale_discriminator
        if "offset" in name:
            if "small" in name:
                return cfg.lr_scale_offset_small
            if "medium" in name:
                return cfg.lr_scale_offset_medium
            return cfg.lr_scale_offset
        return 1.0

    def parameter_counts(self) -> Dict[str, int]:
        """Parameters per part: restoration network (U-shape, refinement CNN), extractor, reference trunk,
        data consistency, discriminator, total."""
        def count(module: Optional[nn.Module]) -> int:
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        counts = {
            "restoration": count(self.net), "refinement": count(self.net.refine),
            "extractor": count(self.extractor), "reference_features": count(self.ref_features),
            "dc": self.log_eta.numel() if self.config.dc else 0, "discriminator": count(getattr(self, "discriminator", None)),
        }
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @property
    def eta(self) -> torch.Tensor:
        """The data-consistency weight η (> 0)."""
        return self.log_eta.exp()

    def align(self, target: torch.Tensor, reference: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        """ASA correspondence of 2-channel images ``(B, 2, H, W)`` (H, W multiples of 4): per scale
        (full, half, quarter) the flow ``(B, 2, h, w)`` (dy, dx; ``reference(p + flow)`` matches
        ``target(p)``), the per-tap offsets ``(B, 9, 2, h, w)`` and the similarity ``(B, 1, h, w)``."""
        f_in = self.extractor["target"](target)["conv3_1"]
        f_ref = self.extractor["reference"](reference)["conv3_1"]
        if self.config.global_search:
            flow, sim = global_patch_match(f_in, f_ref)
        else:
            flow, sim = local_patch_match(f_in, f_ref, self.config.search_radius)
        taps = neighbour_offsets(flow)
        scales = (4, 2, 1)
        return {
            "flow": [upscale_flow(flow, f) for f in scales],
            "offsets": [upscale_flow(taps, f) for f in scales],
            "sim": [sim.repeat_interleave(f, -2).repeat_interleave(f, -1) for f in scales],
        }

    def restore_pass(self, base: torch.Tensor, reference: torch.Tensor,
                     knowledge: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """One pass of the shared network on padded 2-channel images ``(B, 2, H, W)``: match ``base``
        against ``reference``, restore ``base``; ``knowledge`` None (pass 1: the reference's own features)
        or pass 1's five maps. Returns (output, the five aggregated maps)."""
        align = self.align(base, reference)
        feats = self.ref_features(reference)
        ref_feats = [feats["relu1_1"], feats["relu2_1"], feats["relu3_1"]]
        if knowledge is None:
            knowledge = [ref_feats[0], ref_feats[1], ref_feats[2], ref_feats[1], ref_feats[0]]
        return self.net(base, ref_feats, knowledge, align)

    def data_consistency(self, image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor,
                         sens: torch.Tensor) -> torch.Tensor:
        """Noise-weighted DC of a 2-channel image ``(B, 2, H, W)`` with the measured coil k-space
        ``(B, C, H, W)`` on ``mask`` (broadcastable boolean) through maps ``sens`` ``(B, C, H, W)``;
        returns the 2-channel image of the corrected k-space."""
        x = torch.complex(image[:, 0], image[:, 1]).unsqueeze(1)
        k = physics.noise_weighted_data_consistency(physics.sens_expand(x, sens), kspace, mask, self.eta)
        x = physics.sens_reduce(k, sens)[:, 0]
        return torch.stack((x.real, x.imag), dim=1)

    # ---------------------------------------------------------------- forward

    def _check_inputs(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_complex(kspace) or kspace.dim() != 5:
            raise ValueError(f"KGMgT: masked_kspace must be complex (B, 3, C, H, W), got {tuple(kspace.shape)} {kspace.dtype}")
        if kspace.shape[1] != 3:
            raise ValueError(f"KGMgT: masked_kspace must hold 3 frames (τ-1, τ, τ+1), got {kspace.shape[1]}")
        return physics.model_mask(mask.to(kspace.device), tuple(kspace.shape))

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
        mask5 = self._check_inputs(masked_kspace, mask)  # (B, 3|1, 1, H|1, W)
        b, s, c, h, w = masked_kspace.shape
        sens = coil_sensitivities(masked_kspace, mask5, num_low_frequencies)  # (B, C, H, W)
        frames = physics.sens_reduce(masked_kspace, sens.unsqueeze(1))[:, :, 0]  # (B, 3, H, W) complex
        scale = frames[:, 1].abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(frames.real.dtype).tiny).detach()
        frames = frames / scale.view(b, 1, 1, 1)
        k_centre = masked_kspace[:, 1] / scale.view(b, 1, 1, 1)
        m_centre = mask5[:, 1 if mask5.shape[1] == 3 else 0]  # (B, 1, H|1, W)
        images = torch.stack((frames.real, frames.imag), dim=2)  # (B, 3, 2, H, W)
        mult = self.config.pad_multiple
        pad = (0, (-w) % mult, 0, (-h) % mult)
        prev, cur, nxt = (F.pad(images[:, i], pad) for i in range(3))

        out, knowledge = self.restore_pass(cur, prev)  # mentor: τ with reference τ-1
        out = out[..., :h, :w]
        if self.config.dc:
            out = self.data_consistency(out, k_centre, m_centre, sens)
        out, _ = self.restore_pass(F.pad(out, pad), nxt, knowledge)  # learner: pass-1 output with τ+1
        out = out[..., :h, :w]
        if self.config.dc:
            out = self.data_consistency(out, k_centre, m_centre, sens)
        return torch.complex(out[:, 0], out[:, 1]).abs() * scale.view(b, 1, 1)  # abs: zero gradient at 0


# Recipe aliases: scripts/train_recipe.sh asks for preset cine_$PRESET (PRESET challenge | demo | tiny).
KGMgTConfig.PRESETS.update({"cine_challenge": KGMgTConfig.PRESETS["paper"], "cine_demo": KGMgTConfig.PRESETS["demo"],
                            "cine_tiny": KGMgTConfig.PRESETS["tiny"]})
