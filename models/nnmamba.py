"""nnMamba (Gong et al., arXiv 2402.03526): Res-Mamba U-Net segmentation and a Mamba classifier.

Building blocks (2-D or 3-D, chosen by ``spatial_dims``):

- ``MICCSS``: 1x1 conv -> BN -> ReLU (= ``act``); one shared :class:`models.mamba.Mamba` runs over
  the flattened voxels (tokens = voxels, channels = d_model) of ``act`` and of its sequence-flipped,
  channel-flipped and doubly flipped views; results are flipped back and averaged (``multi_scan``;
  otherwise one forward pass), ``+ act``, then 1x1 conv -> BN -> ReLU.
- ``ResMambaBlock``: ``relu(bn(conv3(relu(bn(conv3(x))))) + miccss(x) + shortcut(x))``; within a
  stage the first block downsamples (stride 2) without Mamba and the later blocks share one MICCSS.
- ``NNMambaSeg`` ("nnmamba_seg"): stride-2 stem, three Res-Mamba stages, decoder with
  SE-scaled skip connections and 2x upsampling: ``(B, C_in, *S) -> (B, num_classes, *S)``. Inputs of
  any size are zero-padded to a multiple of 16 and the output is cropped back.
- ``NNMambaCls`` ("nnmamba_cls"): stem + MICCSS, three residual stages, the pooled stage features
  (2c + 4c + 8c values) regrouped as 7 tokens of width 2c through a Mamba sequence layer (residual),
  then an MLP. Routing contract of ``AnatomyCNN``: ``forward(images (B, S, H, W)) -> logits (B, 2)``.
  With ``spatial_dims=2`` every slice is z-scored and classified and the logits are averaged over
  slices; with ``spatial_dims=3`` the volume is z-scored as a whole and the slices are the depth axis.

Deviation from the reference: the segmentation head's last conv has no BN/ReLU (raw logits).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.mamba import Mamba
from models.selective_scan import BACKENDS

__all__ = [
    "NNMambaSegConfig",
    "NNMambaSeg",
    "NNMambaClsConfig",
    "NNMambaCls",
    "MICCSS",
    "ResMambaBlock",
]

Tensor = torch.Tensor
_STD_MIN = 1e-12
_SEG_STRIDE = 16  # stem + three stages, each halving every spatial axis


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, cls: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{cls}: {name} must be an int >= {low}, got {value!r}")


@dataclasses.dataclass
class _NNMambaCommon(ModelConfig):
    spatial_dims: int = 3
    in_channels: int = 1
    channels: int = 32
    blocks: int = 3
    num_classes: int = 6
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    scan_backend: str = "auto"

    def validate(self) -> None:
        name = type(self).__name__
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"{name}: spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        for field, low in (("in_channels", 1), ("channels", 1), ("blocks", 1), ("num_classes", 1),
                           ("d_state", 1), ("d_conv", 1), ("expand", 1)):
            _check_int(field, name, getattr(self, field), low)
        if self.scan_backend not in BACKENDS:
            raise ValueError(f"{name}: scan_backend must be one of {BACKENDS}, got {self.scan_backend!r}")


@dataclasses.dataclass
class NNMambaSegConfig(_NNMambaCommon):
    """Segmentation U-Net: ``channels`` = stem width c (stages 2c, 4c, 8c), ``blocks`` per stage
    (blocks >= 2 for the stage's shared MICCSS to be used), Mamba ``d_state/d_conv/expand``,
    ``multi_scan`` = the four flipped scans of MICCSS (else one scan), ``se_reduction`` of the
    skip SE layers."""

    multi_scan: bool = True
    se_reduction: int = 16

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {},  # lhaof/nnMamba nnMambaSeg defaults: 3-D, c=32, 3 blocks, d_state 16
        "tiny": {"channels": 4, "blocks": 2, "d_state": 4, "num_classes": 3},
        # 2-D ACDC segmenters of the TiTok-MRI codec (4 classes: bg, RV, myocardium, LV; features = c channels)
        "acdc2d": {"spatial_dims": 2, "num_classes": 4},
        "acdc_demo": {"spatial_dims": 2, "num_classes": 4, "channels": 8, "blocks": 2, "d_state": 8},
        "acdc_tiny": {"spatial_dims": 2, "num_classes": 4, "channels": 4, "blocks": 2, "d_state": 4},
    }

    def validate(self) -> None:
        super().validate()
        _check_int("se_reduction", type(self).__name__, self.se_reduction, 1)
        if not isinstance(self.multi_scan, bool):
            raise ValueError(f"NNMambaSegConfig: multi_scan must be a bool, got {self.multi_scan!r}")


@dataclasses.dataclass
class NNMambaClsConfig(_NNMambaCommon):
    """Classifier: stem width c, ``blocks`` per residual stage, stem MICCSS with ``d_state/d_conv/expand``
    (``multi_scan`` off as in the reference classifier), a Mamba sequence layer over the 7 pooled
    tokens with ``seq_d_state/seq_d_conv``, MLP hidden width c with ``dropout``."""

    spatial_dims: int = 2
    num_classes: int = 2
    d_state: int = 8
    seq_d_state: int = 8
    seq_d_conv: int = 2
    multi_scan: bool = False
    dropout: float = 0.5

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "paper": {},  # lhaof/nnMamba nnMambaEncoder sizes (c=32, 3 blocks, d_state 8), per slice
        "paper3d": {"spatial_dims": 3},
        "tiny": {"channels": 4, "blocks": 1, "d_state": 4, "seq_d_state": 4, "dropout": 0.0},
    }

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        _check_int("seq_d_state", name, self.seq_d_state, 1)
        _check_int("seq_d_conv", name, self.seq_d_conv, 1)
        if not isinstance(self.multi_scan, bool):
            raise ValueError(f"{name}: multi_scan must be a bool, got {self.multi_scan!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}")


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------
def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _bn(dims: int, channels: int) -> nn.Module:
    return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)


def _conv_bn_relu(dims: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> list:
    return [_conv(dims)(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias), _bn(dims, c_out), nn.ReLU()]


class MICCSS(nn.Module):
    """Mixed-directional scan layer: ``(B, C, *S) -> (B, C, *S)`` (see module docstring)."""

    def __init__(self, dims: int, channels: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 multi_scan: bool = True, scan_backend: str = "auto"):
        super().__init__()
        self.pre = nn.Sequential(*_conv_bn_relu(dims, channels, channels, kernel=1, bias=False))
        self.mamba = Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        self.post = nn.Sequential(*_conv_bn_relu(dims, channels, channels, kernel=1, bias=False))
        self.multi_scan = multi_scan

    def mix(self, tokens: Tensor) -> Tensor:
        """Shared Mamba over tokens (B, N, C) and (if multi_scan) its three flipped views, averaged."""
        if not self.multi_scan:
            return self.mamba(tokens)
        flips = ((), (1,), (2,), (1, 2))  # none, sequence, channel, both
        views = [tokens.flip(f) if f else tokens for f in flips]
        mixed = self.mamba(torch.cat(views, dim=0)).chunk(len(flips), dim=0)  # one batched call
        return sum(m.flip(f) if f else m for m, f in zip(mixed, flips)) / len(flips)

    def forward(self, x: Tensor) -> Tensor:
        act = self.pre(x)
        b, c = act.shape[:2]
        tokens = act.flatten(2).transpose(1, 2)  # (B, N voxels, C)
        # contiguous NCHW: oneDNN conv/BN backward on this channels-last-strided tensor corrupts the heap
        # (torch 2.13 CPU)
        out = self.mix(tokens).transpose(1, 2).contiguous().reshape(act.shape) + act
        return self.post(out)


class ResMambaBlock(nn.Module):
    """Residual 3x3 block with an optional (possibly shared) MICCSS branch: ``(B, c_in, *S) -> (B, c_out, *S/stride)``."""

    def __init__(self, dims: int, c_in: int, c_out: int, stride: int = 1, mamba: Optional[MICCSS] = None):
        super().__init__()
        conv = _conv(dims)
        self.body = nn.Sequential(
            conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), _bn(dims, c_out), nn.ReLU(),
            conv(c_out, c_out, 3, padding=1, bias=False), _bn(dims, c_out),
        )
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), _bn(dims, c_out))
        self.mamba = mamba

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.mamba is not None:
            out = out + self.mamba(x)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


def _res_stage(dims: int, c_in: int, c_out: int, blocks: int, mamba: Optional[MICCSS]) -> nn.Sequential:
    """Stride-2 first block (no Mamba), then ``blocks - 1`` blocks sharing ``mamba``."""
    layers = [ResMambaBlock(dims, c_in, c_out, stride=2)]
    layers += [ResMambaBlock(dims, c_out, c_out, mamba=mamba) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _SqueezeExcite(nn.Module):
    """Channel scale from global average pooling: ``(B, C, *S) -> (B, C, 1, ..)`` in (0, 1)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc(x.flatten(2).mean(-1))
        return scale.reshape(scale.shape + (1,) * (x.dim() - 2))


def _double_conv(dims: int, c_in: int, c_out: int, stride: int = 1, head: bool = False) -> nn.Sequential:
    """conv3-BN-ReLU twice (the last conv plain when ``head``)."""
    layers = _conv_bn_relu(dims, c_in, c_out, stride=stride)
    layers += [_conv(dims)(c_out, c_out, 3, padding=1)] if head else _conv_bn_relu(dims, c_out, c_out)
    return nn.Sequential(*layers)


def _zscore(x: Tensor, dims: Tuple[int, ...]) -> Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / std.clamp_min(_STD_MIN)


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
class NNMambaSeg(nn.Module):
    """``forward(x (B, in_channels, *S)) -> logits (B, num_classes, *S)``, len(S) = spatial_dims."""

    def __init__(self, config: NNMambaSegConfig):
        super().__init__()
        config.validate()
        self.config = config
        d, c = config.spatial_dims, config.channels

        def miccss(width: int) -> MICCSS:
            return MICCSS(d, width, config.d_state, config.d_conv, config.expand, config.multi_scan, config.scan_backend)

        self.stem = _double_conv(d, config.in_channels, c, stride=2)
        self.stages = nn.ModuleList(
            _res_stage(d, c * 2 ** i, c * 2 ** (i + 1), config.blocks, miccss(c * 2 ** (i + 1))) for i in range(3)
        )
        self.skip_se = nn.ModuleList(_SqueezeExcite(c * 2 ** i, config.se_reduction) for i in range(3))
        self.decoder = nn.ModuleList([
            _double_conv(d, c * 12, c * 4),
            _double_conv(d, c * 6, c * 2),
            _double_conv(d, c * 3, c),
        ])
        self.head = _double_conv(d, c, config.num_classes, head=True)
        self._mode = "bilinear" if d == 2 else "trilinear"

    def _up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode=self._mode, align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        d = self.config.spatial_dims
        if x.dim() != d + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"NNMambaSeg: input must be (B, {self.config.in_channels}, {d} spatial dims), got {tuple(x.shape)}"
            )
        size = x.shape[2:]
        pad = []
        for s in reversed(size):
            pad += [0, -s % _SEG_STRIDE]
        x = F.pad(x, pad)
        skips = [self.stem(x)]
        for stage in self.stages:
            skips.append(stage(skips[-1]))
        out = skips.pop()
        for dec in self.decoder:
            skip = skips.pop()
            se = self.skip_se[len(skips)]
            out = dec(torch.cat([self._up(out), skip * se(skip)], dim=1))
        out = self.head(self._up(out))
        return out[(..., *(slice(0, s) for s in size))]


class NNMambaCls(nn.Module):
    """Classifier with the routing contract: ``forward(images (B, S, H, W)) -> logits (B, num_classes)``.

    ``spatial_dims=2``: per-slice z-score, per-slice logits averaged over S. ``spatial_dims=3``:
    per-volume z-score, S is the depth axis. ``encode(x (N, in_channels, *spatial)) -> (N, K)``
    is the raw network.
    """

    def __init__(self, config: NNMambaClsConfig):
        super().__init__()
        config.validate()
        self.config = config
        d, c = config.spatial_dims, config.channels
        self.stem = _double_conv(d, config.in_channels, c, stride=2)
        self.stem_mamba = MICCSS(d, c, config.d_state, config.d_conv, config.expand, config.multi_scan,
                                 config.scan_backend)
        self.stages = nn.ModuleList(_res_stage(d, c * 2 ** i, c * 2 ** (i + 1), config.blocks, None) for i in range(3))
        self.seq_mamba = Mamba(2 * c, d_state=config.seq_d_state, d_conv=config.seq_d_conv, expand=config.expand,
                               scan_backend=config.scan_backend)
        self.mlp = nn.Sequential(nn.Linear(14 * c, c), nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(c, config.num_classes))

    def encode(self, x: Tensor) -> Tensor:
        """Raw network: ``(N, in_channels, *spatial) -> logits (N, num_classes)``."""
        n, c = x.shape[0], self.config.channels
        feat = self.stem(x)
        feat = self.stem_mamba(feat) + feat
        pooled = []
        for stage in self.stages:
            feat = stage(feat)
            pooled.append(feat.flatten(2).mean(-1).reshape(n, 2 * c, -1))  # 2c x {1, 2, 4} tokens
        tokens = torch.cat(pooled, dim=2).transpose(1, 2)  # (N, 7, 2c)
        tokens = self.seq_mamba(F.relu(tokens)) + tokens
        return self.mlp(tokens.transpose(1, 2).reshape(n, -1))

    def _check(self, images: Tensor) -> None:
        if images.dim() != 4 or not images.is_floating_point() or images.shape[1] < 1 or self.config.in_channels != 1:
            raise ValueError(
                f"NNMambaCls: images must be float (B, S, H, W) with in_channels=1, got {tuple(images.shape)} "
                f"{images.dtype} (in_channels={self.config.in_channels})"
            )

    def forward(self, images: Tensor) -> Tensor:
        self._check(images)
        b, s, h, w = images.shape
        x = images.float()
        if self.config.spatial_dims == 2:
            x = _zscore(x, (-2, -1)).reshape(b * s, 1, h, w)
            return self.encode(x).reshape(b, s, -1).mean(dim=1)
        return self.encode(_zscore(x, (1, 2, 3)).unsqueeze(1))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(labels (B,) long, confidence (B,) float)``: argmax and softmax probability of the logits."""
        probs = self.forward(images).softmax(dim=-1)
        confidence, labels = probs.max(dim=-1)
        return labels, confidence
