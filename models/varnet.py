"""E2E-VarNet: end-to-end variational network (Sriram et al., MICCAI 2020).

k-space is refined by ``num_cascades`` unrolled steps

    k <- k - w_t * M (k - y) - E(G_t(R(k)))

with ``M`` the sampling mask, ``y`` the measured k-space, ``w_t`` a learnable DC weight,
``R = sens_reduce`` (coil k-space -> combined image), ``E = sens_expand`` and ``G_t`` a
:class:`~models.unet.NormUnet`. The coil sensitivities come from a :class:`~models.unet.SensitivityNet`
on the ACS lines. With ``num_adj_slices = n > 1`` the n adjacent slices are refined together (the
cascade U-Net sees all n combined images as 2n channels); the centre slice is returned.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import ModelConfig
from models.unet import NormUnet, SensitivityNet
from utils import physics
from utils.contract import IMAGE_SIZE

__all__ = ["VarNetConfig", "VarNetCascade", "VarNet"]



@dataclasses.dataclass
class VarNetConfig(ModelConfig):
    """E2E-VarNet hyperparameters (fastMRI defaults: 12 cascades, 8/4 sensitivity U-Net, 18/4 cascade U-Net)."""

    num_cascades: int = 12
    sens_chans: int = 8
    sens_pools: int = 4
    chans: int = 18
    pools: int = 4
    num_adj_slices: int = 1
    use_checkpoint: bool = False

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "fastmri": {},
        "demo": {"num_cascades": 4, "sens_chans": 4, "sens_pools": 3, "chans": 8, "pools": 3},
        "tiny": {"num_cascades": 2, "sens_chans": 2, "sens_pools": 2, "chans": 4, "pools": 2},
    }

    def validate(self) -> None:
        for name in ("num_cascades", "sens_chans", "sens_pools", "chans", "pools", "num_adj_slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VarNetConfig: {name} must be an integer >= 1, got {value!r}")
        if self.num_adj_slices % 2 != 1:
            raise ValueError(f"VarNetConfig: num_adj_slices must be odd, got {self.num_adj_slices}")
        if not isinstance(self.use_checkpoint, bool):
            raise ValueError(f"VarNetConfig: use_checkpoint must be a bool, got {self.use_checkpoint!r}")


class VarNetCascade(nn.Module):
    """One unrolled step: soft DC with a learnable weight plus a NormUnet image-space refinement.

    ``forward(current, measured, mask, sens)``: k-spaces and maps complex ``(B, n, C, H, W)``,
    ``mask`` boolean broadcastable to them. Returns the updated k-space ``(B, n, C, H, W)``.
    """

    def __init__(self, chans: int, pools: int, num_adj_slices: int = 1):
        super().__init__()
        self.dc = physics.SoftDataConsistency(init=1.0)
        self.regulariser = NormUnet(chans, pools, in_complex=num_adj_slices, out_complex=num_adj_slices)

    def refinement(self, current: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        """``sens_expand(G(sens_reduce(current)))``: the network term, ``(B, n, C, H, W)``."""
        image = physics.sens_reduce(current, sens).squeeze(-3)  # (B, n, H, W)
        return physics.sens_expand(self.regulariser(image).unsqueeze(-3), sens)

    def forward(self, current, measured, mask, sens):
        return self.dc(current, measured, mask) - self.refinement(current, sens)


class VarNet(nn.Module):
    """E2E-VarNet. ``forward(masked_kspace, mask, num_low_frequencies=None) -> (B, 384, 384)`` float.

    ``masked_kspace``: complex ``(B, S, C, H, W)`` with S >= ``num_adj_slices`` adjacent slices (the
    centre ``num_adj_slices`` around ``S // 2`` are used); ``mask``: ``(B, W)`` (or ``(W,)``) float/bool
    sampled columns; ``num_low_frequencies``: ACS width (int or ``(B,)``), derived from the mask when
    ``None`` or ``<= 0`` with fastMRI's rule (:func:`utils.physics.acs_columns` ``"fastmri"``: the
    symmetric window of ``2 min(left, right)`` columns around ``W // 2``). Output: RSS over coils of the centre slice's coil images, centre-cropped (or, for inputs
    smaller than 384, zero-padded) to 384 x 384.
    """

    def __init__(self, config: VarNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.sens_net = SensitivityNet(config.sens_chans, config.sens_pools)
        self.cascades = nn.ModuleList(
            VarNetCascade(config.chans, config.pools, config.num_adj_slices) for _ in range(config.num_cascades)
        )

    def _run(self, module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        """Call ``module``, through activation checkpointing when enabled and gradients are on."""
        if self.config.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _select_slices(self, kspace: torch.Tensor) -> torch.Tensor:
        """The centre ``num_adj_slices`` slices of ``(B, S, C, H, W)``."""
        if not torch.is_complex(kspace) or kspace.dim() != 5:
            raise ValueError(
                f"VarNet: masked_kspace must be complex (B, S, C, H, W), got {tuple(kspace.shape)} {kspace.dtype}"
            )
        n, s = self.config.num_adj_slices, kspace.shape[1]
        if s < n:
            raise ValueError(f"VarNet: masked_kspace has {s} slices, model needs num_adj_slices={n}")
        start = s // 2 - n // 2
        return kspace[:, start : start + n]

    @staticmethod
    def _column_masks(mask: torch.Tensor, kspace: torch.Tensor, num_low_frequencies) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampling and ACS masks as booleans ``(B, 1, 1, 1, W)`` on the k-space's device."""
        batch, width = kspace.shape[0], kspace.shape[-1]
        mask = mask.to(kspace.device)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.dim() != 2 or mask.shape[-1] != width or mask.shape[0] not in (1, batch):
            raise ValueError(f"VarNet: mask must be (B, W) = ({batch}, {width}), got {tuple(mask.shape)}")
        mask = (mask != 0).expand(batch, width)
        acs = physics.acs_columns(mask, num_low_frequencies, "fastmri")  # fastMRI's symmetric window
        return mask[:, None, None, None, :], acs[:, None, None, None, :]

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor, num_low_frequencies=None) -> torch.Tensor:
        measured = self._select_slices(masked_kspace)
        sampled, acs = self._column_masks(mask, measured, num_low_frequencies)
        sens = self._run(self.sens_net, measured, acs)
        kspace = measured
        for cascade in self.cascades:
            kspace = self._run(cascade, kspace, measured, sampled, sens)
        centre = kspace[:, self.config.num_adj_slices // 2]  # (B, C, H, W)
        image = physics.rss(physics.ifft2c(centre), dim=-3)
        return physics.center_crop_or_pad(image, (IMAGE_SIZE, IMAGE_SIZE))
