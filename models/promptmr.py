"""PromptMR+ (Xin et al., ECCV 2024): deep unrolled prompt network, image-space ("v2") formulation.

Each of ``cascade`` unrolled steps updates the complex images of the ``num_adj_slices`` adjacent slices,

    x <- x - w_t (A^H A x - x0) - D_t([x, buffer])          x0 = A^H y,  A = M F S,

with a learnable DC weight ``w_t`` (init 1) and a normalised prompt U-Net ``D_t``. With
``adaptive_input`` the network also sees the buffer ``[A^H A x, s, x0, (A^H A x - x0) x (n_buffer - 3)]``
where ``s`` is a latent image the previous cascade's network emitted (its third output block; ``s = x0``
before the first cascade). With ``n_history > 0`` each decoder level fuses the features of the
``n_history`` previous cascades (feature momentum). Coil maps ``S`` come from a prompt U-Net on the ACS
lines (adjacent slices as channels when ``use_sens_adj``), divided by their RSS over coils per slice.
The output is the RSS of the centre slice's coil images ``S_c x``, centre-cropped to ``output_size``
(384 x 384 for the SNU challenge; ``output_size=None`` keeps the full image, as cine needs).

``identity_init`` (off in the reference configuration, on in the small ``demo`` and ``tiny`` presets):
the coil-map U-Net predicts a correction of the ACS coil images (``maps = (a + D_s(a)) / RSS``, the
same function class as the reference's ``D_s(a) / RSS``) and the last convolution of every U-Net
starts at zero, so the untrained model is the classical reconstruction: ACS coil maps, SENSE
combination and ``cascade`` data-consistency gradient steps (a model trained for a few steps then
starts from there, not below zero-filled; with the reference start the demo's tiny models scored
0.78-0.81 SSIM against zero-filled's 0.83 after their 12 steps).

Cine (CMRxRecon): the "adjacent slices" are neighbouring time frames of one slice, circular in time, as
the reference does for CMRxRecon; masks may then differ per frame (kt masks) and be 2-D (ktRadial), so
``mask`` is ``(B, [S,] [H,] W)`` and broadcast (see :func:`model_mask`).

Architecture follows the reference implementation (hellopipu/PromptMR-plus, ``models/promptmr_v2.py``),
including one PReLU slope shared by every residual block except the first of each U-Net.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.config import ModelConfig
from models.promptmr_blocks import CA_REDUCTION, History, NormPromptUNet
from utils import physics
from utils.contract import IMAGE_SIZE
from utils.physics import acs_column_mask, model_mask  # noqa: F401 - shared with the other cine models; re-exported

__all__ = ["PromptMRConfig", "PromptMR", "PromptMRCascade", "PromptSensitivityNet", "acs_column_mask", "model_mask"]

_TRIPLES = ("feature_dim", "prompt_dim", "sens_feature_dim", "sens_prompt_dim", "len_prompt", "prompt_size",
            "n_enc_cab", "n_dec_cab", "n_skip_cab")
_BOOLS = ("no_use_ca", "learnable_prompt", "adaptive_input", "use_sens_adj", "compute_sens_per_coil",
          "use_checkpoint", "identity_init")


@dataclasses.dataclass
class PromptMRConfig(ModelConfig):
    """PromptMR+ hyperparameters; defaults are the reference's published PromptMR+ configuration."""

    cascade: int = 12
    num_adj_slices: int = 5
    n_feat0: int = 48
    feature_dim: Tuple[int, ...] = (72, 96, 120)
    prompt_dim: Tuple[int, ...] = (24, 48, 72)
    sens_n_feat0: int = 24
    sens_feature_dim: Tuple[int, ...] = (36, 48, 60)
    sens_prompt_dim: Tuple[int, ...] = (12, 24, 36)
    len_prompt: Tuple[int, ...] = (5, 5, 5)
    prompt_size: Tuple[int, ...] = (64, 32, 16)
    n_enc_cab: Tuple[int, ...] = (2, 3, 3)
    n_dec_cab: Tuple[int, ...] = (2, 2, 3)
    n_skip_cab: Tuple[int, ...] = (1, 1, 1)
    n_bottleneck_cab: int = 3
    n_buffer: int = 4
    n_history: int = 11
    no_use_ca: bool = False
    learnable_prompt: bool = False
    adaptive_input: bool = True
    use_sens_adj: bool = True
    compute_sens_per_coil: bool = False
    use_checkpoint: bool = False
    identity_init: bool = False
    output_size: Optional[Tuple[int, int]] = (IMAGE_SIZE, IMAGE_SIZE)

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {
        "pmr_plus": {},
        "challenge": {
            "cascade": 8, "num_adj_slices": 3, "n_feat0": 48, "feature_dim": (64, 80, 96),
            "prompt_dim": (16, 32, 48), "sens_n_feat0": 12, "sens_feature_dim": (16, 20, 24),
            "sens_prompt_dim": (4, 8, 12), "n_history": 0, "no_use_ca": True, "compute_sens_per_coil": True,
        },
        "demo": {
            "cascade": 3, "num_adj_slices": 3, "n_feat0": 8, "feature_dim": (12, 16, 20),
            "prompt_dim": (4, 8, 12), "sens_n_feat0": 4, "sens_feature_dim": (8, 8, 12),
            "sens_prompt_dim": (4, 4, 4), "len_prompt": (3, 3, 3), "prompt_size": (32, 16, 8),
            "n_enc_cab": (1, 1, 1), "n_dec_cab": (1, 1, 1), "n_skip_cab": (1, 1, 1), "n_bottleneck_cab": 1,
            "n_history": 2, "no_use_ca": False, "identity_init": True,
        },
        "tiny": {
            "cascade": 2, "num_adj_slices": 3, "n_feat0": 4, "feature_dim": (4, 8, 8),
            "prompt_dim": (2, 2, 4), "sens_n_feat0": 4, "sens_feature_dim": (4, 4, 4),
            "sens_prompt_dim": (2, 2, 2), "len_prompt": (2, 2, 2), "prompt_size": (8, 4, 4),
            "n_enc_cab": (1, 1, 1), "n_dec_cab": (1, 1, 1), "n_skip_cab": (1, 0, 1), "n_bottleneck_cab": 1,
            "n_history": 2, "no_use_ca": False, "identity_init": True,
        },
    }

    def __post_init__(self) -> None:
        for name in _TRIPLES:
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        if isinstance(self.output_size, list):
            self.output_size = tuple(self.output_size)

    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"PromptMRConfig: {msg}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("cascade", "num_adj_slices", "n_feat0", "sens_n_feat0"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("n_bottleneck_cab", "n_buffer", "n_history"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in _TRIPLES:
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3 or not all(is_int(v) for v in value):
                fail(f"{name} must be a list of 3 integers, got {value!r}")
            low = 0 if name in ("n_dec_cab", "n_skip_cab", "n_enc_cab") else 1
            if min(value) < low:
                fail(f"{name} entries must be >= {low}, got {value!r}")
        if self.n_enc_cab[0] < 1:
            fail(f"n_enc_cab[0] must be >= 1, got {self.n_enc_cab!r}")
        size = self.output_size
        if size is not None and not (isinstance(size, tuple) and len(size) == 2 and all(is_int(v) and v >= 1 for v in size)):
            fail(f"output_size must be null or 2 integers >= 1, got {size!r}")
        if self.num_adj_slices % 2 != 1:
            fail(f"num_adj_slices must be odd, got {self.num_adj_slices}")
        if self.adaptive_input and 0 < self.n_buffer < 3:
            fail(f"n_buffer must be 0 or >= 3 with adaptive_input (buffer holds A^H A x, latent, x0), "
                 f"got {self.n_buffer}")
        if not self.no_use_ca:
            widths = (self.n_feat0, *self.feature_dim, self.sens_n_feat0, *self.sens_feature_dim)
            if min(widths) < CA_REDUCTION:
                fail(f"channel attention needs every width >= {CA_REDUCTION}, got {widths}")

    @property
    def buffer_size(self) -> int:
        """Number of buffer images the cascade networks see (0 without ``adaptive_input``)."""
        return self.n_buffer if self.adaptive_input else 0


# Cine presets: the same networks with the full-size output (the ranking crop belongs to evaluation).
PromptMRConfig.PRESETS.update(
    {f"cine_{name}": {**PromptMRConfig.PRESETS[name], "output_size": None, "identity_init": False}
     for name in ("pmr_plus", "challenge", "demo", "tiny")}
)


def _unet_kwargs(cfg: PromptMRConfig, act: nn.Module, sens: bool) -> Dict[str, Any]:
    """Keyword arguments of :class:`NormPromptUNet` for the cascade (``sens=False``) or the coil-map net."""
    return dict(
        n_feat0=cfg.sens_n_feat0 if sens else cfg.n_feat0,
        feature_dim=cfg.sens_feature_dim if sens else cfg.feature_dim,
        prompt_dim=cfg.sens_prompt_dim if sens else cfg.prompt_dim,
        len_prompt=cfg.len_prompt, prompt_size=cfg.prompt_size, n_enc_cab=cfg.n_enc_cab,
        n_dec_cab=cfg.n_dec_cab, n_skip_cab=cfg.n_skip_cab, n_bottleneck_cab=cfg.n_bottleneck_cab, act=act,
        use_ca=not cfg.no_use_ca, learnable_prompt=cfg.learnable_prompt, n_history=0 if sens else cfg.n_history,
    )


class PromptSensitivityNet(nn.Module):
    """Coil-sensitivity estimation: ACS-only k-space -> coil images -> prompt U-Net -> divide by RSS.

    ``forward(masked_kspace, acs_cols)``: k-space complex ``(B, S, C, H, W)``, ``acs_cols`` boolean
    ``(B, W)``. Returns maps ``(B, S, C, H, W)`` with unit RSS over coils for every slice and pixel.
    """

    def __init__(self, cfg: PromptMRConfig, act: nn.Module):
        super().__init__()
        self.use_adj = cfg.use_sens_adj
        self.per_coil = cfg.compute_sens_per_coil
        k = cfg.num_adj_slices if cfg.use_sens_adj else 1
        self.net = NormPromptUNet(k, k, **_unet_kwargs(cfg, act, sens=True))
        self.residual = cfg.identity_init
        if cfg.identity_init:
            self.net.zero_last_layer()

    def _run_net(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the U-Net to ``(N, K, H, W)``; one sample at a time when ``compute_sens_per_coil``."""
        if not self.per_coil:
            return self.net(images)[0]
        return torch.cat([self.net(one)[0] for one in images.split(1, dim=0)], dim=0)

    def forward(self, masked_kspace: torch.Tensor, acs_cols: torch.Tensor) -> torch.Tensor:
        b, s, c, h, w = masked_kspace.shape
        acs = masked_kspace * acs_cols.view(b, 1, 1, 1, w)
        images = physics.ifft2c(acs)
        if self.use_adj:  # each coil is a sample, its S adjacent slices are channels
            maps = self._run_net(images.transpose(1, 2).reshape(b * c, s, h, w))
            maps = maps.view(b, c, s, h, w).transpose(1, 2)
        else:
            maps = self._run_net(images.reshape(b * s * c, 1, h, w)).view(b, s, c, h, w)
        if self.residual:  # identity_init: the net corrects the ACS coil images
            maps = images + maps
        return maps / physics.rss(maps, dim=2).unsqueeze(2)


class PromptMRCascade(nn.Module):
    """One unrolled step ``x - w (A^H A x - x0) - D([x, buffer])`` on images ``(B, S, H, W)``.

    ``forward(x, x0, latent, sens, mask, history)`` with ``sens`` ``(B, S, C, H, W)``, ``mask`` boolean
    broadcastable to it; returns ``(x_next, latent_next, history_next)`` (``latent_next`` is ``None``
    without a buffer).
    """

    def __init__(self, cfg: PromptMRConfig, act: nn.Module):
        super().__init__()
        self.num_adj = cfg.num_adj_slices
        self.n_buffer = cfg.buffer_size
        self.dc_weight = nn.Parameter(torch.ones(1))
        k = cfg.num_adj_slices * (1 + self.n_buffer)
        self.net = NormPromptUNet(k, k, **_unet_kwargs(cfg, act, sens=False))
        if cfg.identity_init:
            self.net.zero_last_layer()

    def buffer(self, normal_x: torch.Tensor, x0: torch.Tensor, latent: torch.Tensor) -> List[torch.Tensor]:
        """Adaptive-input buffer ``[A^H A x, latent, x0] + [A^H A x - x0] * (n_buffer - 3)``."""
        if self.n_buffer == 0:
            return []
        return [normal_x, latent, x0] + [normal_x - x0] * (self.n_buffer - 3)

    def forward(self, x: torch.Tensor, x0: torch.Tensor, latent: Optional[torch.Tensor], sens: torch.Tensor,
                mask: torch.Tensor, history: History = None) -> Tuple[torch.Tensor, Optional[torch.Tensor], History]:
        normal_x = physics.SenseOperator(sens, mask).normal(x.unsqueeze(2)).squeeze(2)
        net_in = torch.cat([x] + self.buffer(normal_x, x0, latent), dim=1)
        out, history = self.net(net_in, history)
        s = self.num_adj
        net_term = out[:, :s]
        latent_next = out[:, 2 * s: 3 * s] if self.n_buffer > 0 else None
        return x - self.dc_weight * (normal_x - x0) - net_term, latent_next, history


class PromptMR(nn.Module):
    """PromptMR+ reconstruction model (see module docstring).

    ``forward(masked_kspace, mask, num_low_frequencies=None) -> (B, *output_size)`` float magnitude
    (``(B, H, W)`` when ``output_size`` is None), with ``masked_kspace`` complex ``(B, S, C, H, W)``
    (S = ``num_adj_slices``), ``mask`` ``(B, [S,] [H,] W)`` as :func:`model_mask` reads it (the SNU
    ``(B, W)`` or ``(W,)`` included), ``num_low_frequencies`` ``None``, int or ``(B,)`` ACS widths. The
    coil maps' ACS columns come from the centre slice's mask: columns sampled in any row (line masks:
    the sampled lines). For 2-D masks (ktRadial) pass ``num_low_frequencies`` (the reference uses 16).
    """

    def __init__(self, config: PromptMRConfig):
        super().__init__()
        config.validate()
        self.config = config
        act = nn.PReLU()  # one slope shared by (almost) every residual block, as in the reference
        self.sens_net = PromptSensitivityNet(config, act)
        self.cascades = nn.ModuleList(PromptMRCascade(config, act) for _ in range(config.cascade))

    def _maybe_checkpoint(self, fn, *args):
        if self.config.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _check_inputs(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_complex(kspace) or kspace.dim() != 5:
            raise ValueError(f"PromptMR: masked_kspace must be complex (B, S, C, H, W), got {tuple(kspace.shape)} "
                             f"{kspace.dtype}")
        b, s, _, _, w = kspace.shape
        if s != self.config.num_adj_slices:
            raise ValueError(f"PromptMR: masked_kspace has {s} adjacent slices, config num_adj_slices is "
                             f"{self.config.num_adj_slices}")
        return model_mask(mask.to(kspace.device), tuple(kspace.shape))

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
        mask5 = self._check_inputs(masked_kspace, mask)  # (B, S|1, 1, H|1, W)
        b, s, c, h, w = masked_kspace.shape
        centre_mask = mask5[:, mask5.shape[1] // 2, 0]  # (B, H|1, W)
        acs_cols = acs_column_mask(centre_mask.any(dim=1), num_low_frequencies)
        sens = self._maybe_checkpoint(self.sens_net, masked_kspace, acs_cols)
        x0 = physics.SenseOperator(sens, mask5).adjoint(masked_kspace).squeeze(2)  # (B, S, H, W)
        x, latent, history = x0, x0, None
        for cascade in self.cascades:
            x, latent, history = self._maybe_checkpoint(cascade, x, x0, latent, sens, mask5, history)
        centre = s // 2
        coil_images = sens[:, centre] * x[:, centre].unsqueeze(1)  # (B, C, H, W)
        image = physics.rss(coil_images, dim=1)
        size = self.config.output_size
        return image if size is None else physics.center_crop_or_pad(image, size)
