"""HiFi-Mamba: dual-stream W-Laplacian enhanced Mamba for MRI reconstruction.

Chen, Fang et al., "HiFi-Mamba: Dual-Stream W-Laplacian Enhanced Mamba for High-Fidelity MRI
Reconstruction", AAAI 2026 (arXiv 2508.09179). An unrolled network at ONE resolution:

    x0 = sens_reduce(y)                                 zero-filled SENSE-combined image, 2 real channels
    f  = PatchEmbed(x0)                                 p x p patches -> embed_dim channels (conv + LayerNorm)
    repeat num_groups times:
        f = DualStreamBlock^blocks_per_group(f)          models.hifimamba_blocks
        x = Unpatchify(f)                                linear embed_dim -> 2 p^2, pixel rearrangement
        x = sens_reduce(DC(sens_expand(x)))              hard replacement of the sampled lines
        f = f + PatchEmbed'(SiLU(x))                     feature-level data consistency, residual
    k  = DC(sens_expand(Unpatchify(LayerNorm(f))))       final data consistency (coil k-space)
    output = center_crop_or_pad(rss(ifft2c(k)), 384)

Coil maps: 1 for single-coil input (C == 1), else :class:`models.unet.SensitivityNet` on the ACS lines.
The k-space is divided by a per-sample scale (max of the zero-filled RSS image, no gradient) on the
way in and multiplied back at the end, so the network is equivariant to the data's units. H, W are
zero-padded (centred, image space) to multiples of ``patch_size``; DC runs on the original grid.

``num_adj_slices = n > 1``: the n centre slices' zero-filled images (combined with the centre slice's
coil maps) are 2n input channels of the first patch embedding; everything after it (the DC steps and
the output) concerns the centre slice only. With n = 1 the network is the paper's.

Deviations from the authors' public code (read for reference, not copied): the guidance projection
omits the dt rows that the code computes but never uses (-512 parameters per block, no effect on the
output); the unused ``out_norm`` of the SSM and the unused patch embedding of the last DC are omitted;
odd token grids are supported (bilinear expansion to the exact size). Their DC replaces lines by
``fft2c(maps * zero-filled image)``; here by the measured coil k-space itself (identical for single coil).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import ModelConfig
from models.hifimamba_blocks import DualStreamBlock
from models.selective_scan import BACKENDS
from models.unet import SensitivityNet
from utils import physics
from utils.contract import IMAGE_SIZE

__all__ = ["HiFiMambaConfig", "HiFiMamba", "HiFiMambaGroup", "PatchEmbed", "Unpatchify"]

Tensor = torch.Tensor


@dataclasses.dataclass
class HiFiMambaConfig(ModelConfig):
    """HiFi-Mamba hyperparameters; the defaults are the paper's P2 model (patch 2, 8 groups x 2 blocks)."""

    patch_size: int = 2
    embed_dim: int = 128
    num_groups: int = 8
    blocks_per_group: int = 2
    d_state: int = 16
    d_conv: int = 3  # 3x3 depthwise conv before the scan
    expand: int = 2  # SSM inner width = expand * embed_dim / 2
    bc_kernel: int = 7  # dilated depthwise conv refining dt, B, C along the sequence
    bc_dilation: int = 2
    gate_expansion: int = 6  # hidden width factor of the guidance gate
    bottleneck_expansion: int = 5  # inverted bottlenecks of both streams
    drop_path_rate: float = 0.3  # stochastic depth, linear from 0 to this over all blocks
    attn_drop_rate: float = 0.1  # dropout after the SSM's output projection
    sens_chans: int = 8  # SensitivityNet (multi-coil only)
    sens_pools: int = 4
    num_adj_slices: int = 1
    use_checkpoint: bool = False
    scan_backend: str = "auto"

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "p2": {},
        "p1": {"patch_size": 1},
        "demo": {"embed_dim": 32, "num_groups": 2, "d_state": 8, "drop_path_rate": 0.0, "attn_drop_rate": 0.0,
                 "sens_chans": 4, "sens_pools": 3},
        "tiny": {"embed_dim": 16, "num_groups": 2, "d_state": 4, "bottleneck_expansion": 2, "gate_expansion": 2,
                 "drop_path_rate": 0.0, "attn_drop_rate": 0.0, "sens_chans": 2, "sens_pools": 2},
    }

    _POSITIVE_INTS: ClassVar[Tuple[str, ...]] = (
        "patch_size", "embed_dim", "num_groups", "blocks_per_group", "d_state", "d_conv", "expand", "bc_kernel",
        "bc_dilation", "gate_expansion", "bottleneck_expansion", "sens_chans", "sens_pools", "num_adj_slices",
    )

    def validate(self) -> None:
        for name in self._POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HiFiMambaConfig: {name} must be an integer >= 1, got {value!r}")
        if self.embed_dim % 2:
            raise ValueError(f"HiFiMambaConfig: embed_dim must be even (two streams), got {self.embed_dim}")
        for name in ("d_conv", "bc_kernel", "num_adj_slices"):
            if getattr(self, name) % 2 != 1:
                raise ValueError(f"HiFiMambaConfig: {name} must be odd, got {getattr(self, name)}")
        for name in ("drop_path_rate", "attn_drop_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"HiFiMambaConfig: {name} must be in [0, 1), got {value!r}")
        if not isinstance(self.use_checkpoint, bool):
            raise ValueError(f"HiFiMambaConfig: use_checkpoint must be a bool, got {self.use_checkpoint!r}")
        if self.scan_backend not in BACKENDS:
            raise ValueError(f"HiFiMambaConfig: scan_backend must be one of {BACKENDS}, got {self.scan_backend!r}")


# ------------------------------------------------------------------------------ patch (un)embedding
class PatchEmbed(nn.Module):
    """``(B, in_chans, H, W) -> (B, dim, H/p, W/p)``: p x p stride-p conv, LayerNorm over channels."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Unpatchify(nn.Module):
    """``(B, dim, h, w) -> (B, 2, h*p, w*p)``: per-token linear map to a p x p patch of 2 channels."""

    def __init__(self, dim: int, patch_size: int, out_chans: int = 2):
        super().__init__()
        self.p, self.out_chans = patch_size, out_chans
        self.proj = nn.Linear(dim, out_chans * patch_size**2, bias=False)

    def forward(self, f: Tensor) -> Tensor:
        b, _, h, w = f.shape
        p = self.p
        x = self.proj(f.permute(0, 2, 3, 1)).reshape(b, h, w, p, p, self.out_chans)  # (p1 p2 c) order
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, self.out_chans, h * p, w * p)


# ---------------------------------------------------------------------------------- image helpers
def complex_to_channels(z: Tensor) -> Tensor:
    """Complex ``(B, n, H, W)`` -> real ``(B, 2n, H, W)`` ordered [re_0, im_0, re_1, im_1, ...]."""
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).flatten(1, 2)


def channels_to_complex(x: Tensor) -> Tensor:
    """Real ``(B, 2, H, W)`` -> complex ``(B, 1, H, W)``."""
    return torch.complex(x[:, 0].float(), x[:, 1].float()).unsqueeze(1)


def _padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def image_data_consistency(image: Tensor, measured: Tensor, sampled: Tensor, sens: Tensor) -> Tensor:
    """Hard DC of a 2-channel image ``(B, 2, Hp, Wp)`` (centre-padded) -> coil k-space ``(B, C, H, W)``.

    The image is cropped to the k-space grid, expanded to coils with ``sens``, and its sampled lines
    (``sampled`` bool broadcastable, e.g. (B, 1, 1, W)) are replaced by ``measured``.
    """
    image = physics.center_crop(image, measured.shape[-2:])
    kspace = physics.sens_expand(channels_to_complex(image), sens)
    return physics.hard_data_consistency(kspace, measured, sampled)


class HiFiMambaGroup(nn.Module):
    """``blocks_per_group`` dual-stream blocks + feature-level data consistency (one checkpoint unit).

    ``forward(f (B, D, h, w), measured (B, C, H, W), sampled (B, 1, 1, W) bool, sens (B, C, H, W))``.
    """

    def __init__(self, config: HiFiMambaConfig, drop_paths):
        super().__init__()
        c = config
        self.blocks = nn.ModuleList(
            DualStreamBlock(c.embed_dim, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, bc_kernel=c.bc_kernel,
                            bc_dilation=c.bc_dilation, gate_expansion=c.gate_expansion,
                            bottleneck_expansion=c.bottleneck_expansion, drop_path=dp, attn_drop=c.attn_drop_rate,
                            scan_backend=c.scan_backend)
            for dp in drop_paths
        )
        self.unpatchify = Unpatchify(c.embed_dim, c.patch_size)
        self.embed = PatchEmbed(2, c.embed_dim, c.patch_size)

    def data_consistency(self, f: Tensor, measured: Tensor, sampled: Tensor, sens: Tensor) -> Tensor:
        """Unpatchify, hard DC through the coil maps, back to a 2-channel padded image (B, 2, Hp, Wp)."""
        image = self.unpatchify(f)
        kspace = image_data_consistency(image, measured, sampled, sens)
        combined = complex_to_channels(physics.sens_reduce(kspace, sens)[:, 0:1]).to(f.dtype)
        return physics.center_pad(combined, image.shape[-2:])

    def forward(self, f: Tensor, measured: Tensor, sampled: Tensor, sens: Tensor) -> Tensor:
        for block in self.blocks:
            f = block(f)
        return f + self.embed(F.silu(self.data_consistency(f, measured, sampled, sens)))


class HiFiMamba(nn.Module):
    """HiFi-Mamba. ``forward(masked_kspace, mask, num_low_frequencies=None) -> (B, 384, 384)`` float32.

    ``masked_kspace``: complex ``(B, S, C, H, W)``, S >= ``num_adj_slices`` (the centre ones are used);
    ``mask``: ``(B, W)`` or ``(W,)`` sampled columns; ``num_low_frequencies``: ACS width (int or (B,)),
    derived from the mask when None (only needed for C > 1). Output: RSS over coils of the centre slice's
    coil images after the final data consistency, centre-cropped/padded to 384 x 384.
    """

    def __init__(self, config: HiFiMambaConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.sens_net = SensitivityNet(c.sens_chans, c.sens_pools)
        self.patch_embed = PatchEmbed(2 * c.num_adj_slices, c.embed_dim, c.patch_size)
        n_blocks = c.num_groups * c.blocks_per_group
        rates = [c.drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]  # linear 0 -> rate
        self.groups = nn.ModuleList(
            HiFiMambaGroup(c, rates[g * c.blocks_per_group:(g + 1) * c.blocks_per_group]) for g in range(c.num_groups)
        )
        self.norm = nn.LayerNorm(c.embed_dim)
        self.head = Unpatchify(c.embed_dim, c.patch_size)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """As the authors: Linear ~ trunc-normal(0.02), zero bias (not the SSM's x_proj/dt_proj); LayerNorm 1/0."""
        for name, m in self.named_modules():
            if name.startswith("sens_net"):
                continue
            if isinstance(m, nn.Linear) and not name.rsplit(".", 1)[-1] in ("x_proj", "dt_proj", "x_proj_low"):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------ input handling
    def _run(self, module: nn.Module, *args: Tensor) -> Tensor:
        """Call ``module``, through activation checkpointing when enabled and gradients are on."""
        if self.config.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _select_slices(self, kspace: Tensor) -> Tensor:
        """The centre ``num_adj_slices`` slices of ``(B, S, C, H, W)``, checked."""
        if not torch.is_complex(kspace) or kspace.dim() != 5:
            raise ValueError(
                f"HiFiMamba: masked_kspace must be complex (B, S, C, H, W), got {tuple(kspace.shape)} {kspace.dtype}"
            )
        n, s = self.config.num_adj_slices, kspace.shape[1]
        if s < n:
            raise ValueError(f"HiFiMamba: masked_kspace has {s} slices, model needs num_adj_slices={n}")
        p = self.config.patch_size
        tokens = [_padded_size(d, p) // p for d in kspace.shape[-2:]]
        if min(tokens) < 3:
            raise ValueError(f"HiFiMamba: H, W = {tuple(kspace.shape[-2:])} give a token grid {tokens} < 3 "
                             f"with patch_size {p}")
        start = s // 2 - n // 2
        return kspace[:, start:start + n]

    @staticmethod
    def _sampled_mask(mask: Tensor, kspace: Tensor) -> Tensor:
        """Sampling mask as bool ``(B, W)`` on the k-space's device."""
        batch, width = kspace.shape[0], kspace.shape[-1]
        mask = mask.to(kspace.device)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.dim() != 2 or mask.shape[-1] != width or mask.shape[0] not in (1, batch):
            raise ValueError(f"HiFiMamba: mask must be (B, W) = ({batch}, {width}), got {tuple(mask.shape)}")
        return (mask != 0).expand(batch, width)

    def coil_maps(self, centre: Tensor, sampled: Tensor, num_low_frequencies=None) -> Tensor:
        """Coil maps ``(B, C, H, W)``: ones for C == 1, else SensitivityNet on the ACS of ``centre``."""
        if centre.shape[1] == 1:
            return torch.ones_like(centre)
        acs = physics.acs_columns(sampled, num_low_frequencies, "contiguous")[:, None, None, :]
        return self._run(self.sens_net, centre, acs)

    # ------------------------------------------------------------------------------------ network
    def final_kspace(self, masked_kspace: Tensor, mask: Tensor, num_low_frequencies=None) -> Tensor:
        """Coil k-space ``(B, C, H, W)`` complex of the centre slice after the final data consistency."""
        kspace = self._select_slices(masked_kspace)
        sampled = self._sampled_mask(mask, kspace)
        n = self.config.num_adj_slices
        centre = kspace[:, n // 2]
        scale = physics.rss(physics.ifft2c(centre), dim=-3).flatten(1).amax(dim=1).detach()
        scale = scale.clamp_min(torch.finfo(scale.dtype).tiny).view(-1, 1, 1, 1)
        measured = centre / scale
        sens = self.coil_maps(measured, sampled, num_low_frequencies)
        sampled = sampled[:, None, None, :]
        images = physics.sens_reduce(kspace / scale.unsqueeze(1), sens.unsqueeze(1)).squeeze(2)  # (B, n, H, W)
        p = self.config.patch_size
        padded = tuple(_padded_size(d, p) for d in kspace.shape[-2:])
        x = physics.center_pad(complex_to_channels(images), padded)
        f = self.patch_embed(x)
        for group in self.groups:
            f = self._run(group, f, measured, sampled, sens)
        image = self.head(self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return image_data_consistency(image, measured, sampled, sens) * scale

    def forward(self, masked_kspace: Tensor, mask: Tensor, num_low_frequencies=None) -> Tensor:
        kspace = self.final_kspace(masked_kspace, mask, num_low_frequencies)
        image = physics.rss(physics.ifft2c(kspace), dim=-3)
        return physics.center_crop_or_pad(image, (IMAGE_SIZE, IMAGE_SIZE)).float()
