"""MRAugment: physics-aware data augmentation for MRI reconstruction.

After Fabian, Heckel & Soltanolkotabi, "Data augmentation for deep learning based accelerated MRI
reconstruction with limited data", ICML 2021. The idea: augment the *fully sampled* complex coil
images, go back to k-space, and only then undersample; the target is recomputed from the augmented
coil images, so input and target stay consistent with the measurement physics.

Pipeline (one parameter set per call, shared by every leading index -- slices, coils):

1. ``fliph``  flip the width axis (W, last), ``flipv`` flip the height axis (H);
2. ``rot90``  rotate by ``k * 90`` degrees, ``k`` in {1, 2, 3}; for a non-square image an odd ``k``
   swaps the axes, and the result is centre-cropped / zero-padded back to ``(H, W)`` (MRAugment
   lets the shape change to ``(W, H)`` and crops later; a fixed shape keeps batches stackable and,
   for the 2x readout-oversampled challenge brain data, the object survives the crop);
3. ``translation``  integer shift in MRAugment's axis convention: its "x" moves along the *height*
   (rows) by ``int(u * H)`` and its "y" along the *width* (columns) by ``int(u' * W)``, with
   ``u ~ U(-max_translation_x, max_translation_x)``, ``u' ~ U(-max_translation_y, ...)``; a positive
   "x" moves the content towards row 0 and a positive "y" towards higher columns, as MRAugment's
   pad-and-crop does (its ``_get_translate_padding_and_crop``); the vacated border is filled by
   reflection (numpy ``'reflect'``: the edge pixel is not repeated);
4. one bilinear affine map combining ``rotation`` (degrees), ``shearing`` (x and y, degrees) and
   ``scaling`` (factor in ``[1 - s, 1 + s]``) about the image centre, sampled with
   ``torch.nn.functional.grid_sample`` on the real and imaginary parts (identically), with
   reflection padding outside the field of view (MRAugment reflect-pads before the affine and crops
   after; sampling with ``padding_mode="reflection"`` does the same without the padded copy; it
   mirrors about the outer pixel edge, so the border pixel is repeated, and it keeps reflecting
   where MRAugment's finite padding would leave zeros). Positive ``rotation`` turns the image
   clockwise as displayed (row 0 on top): ``rotation=90`` equals ``torch.rot90(x, -1)``. With
   ``aug_upsample`` the image is first upsampled by ``aug_upsample_factor`` (bilinear), transformed,
   and downsampled (bilinear, antialiased), which reduces interpolation blur at a cost.

Each transform fires independently when ``u < weight * p(t)`` with ``u ~ U[0, 1)``, ``t`` the 0-based
index of the epoch as in MRAugment (PyTorch Lightning's ``current_epoch``: epochs completed before this
one; the engine's epoch ``e`` is ``t = e - 1``, see :class:`data.transforms.TrainingTransform`), so the
same ``--aug_delay``/``--num_epochs`` give the same strength per epoch as MRAugment
(see :meth:`MRAugment.probability`); MRAugment's ``aug_interpolation_order`` (only bilinear is
supported there too) and ``max_train_resolution`` (the dataset crops) are not reproduced.

Cost (one thread, complex64, 3 slices x 16 coils, on a shared 2-core machine, so upper bounds):
384 x 396: flips/rot90/translation together ~0.07 s (one gather), the affine ~0.13 s, all ~0.23 s;
768 x 396 about twice that. ``aug_upsample`` (factor 2) makes the affine ~8x dearer.

Randomness: only from the numpy ``Generator`` handed to each call. :meth:`MRAugment.sample_params`
always draws the same number of variates in the same order (7 firing draws, then every transform's
parameters, whether or not it fires), so the rng state after a call, and the parameters of one
transform, do not depend on the weights of the others. Same rng state -> same output, bit for bit.
When ``p(epoch) == 0`` (or ``aug_on`` is False) nothing is drawn and the input is returned as is.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.physics import center_crop_or_pad, fft2c, ifft2c

__all__ = [
    "SCHEDULES",
    "AugmentConfig",
    "AugmentParams",
    "MRAugment",
    "augment_kspace",
    "schedule_probability",
    "hflip",
    "vflip",
    "rot90",
    "translate",
    "affine_matrix",
    "affine",
]

SCHEDULES: Tuple[str, ...] = ("exp", "constant", "ramp")
_FIRE_ORDER: Tuple[str, ...] = ("fliph", "flipv", "rot90", "translation", "rotation", "shearing", "scaling")


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class AugmentConfig:
    """MRAugment settings, named like the training CLI flags.

    Defaults follow MRAugment's, except that every weight is 0 and ``aug_on`` is False, so a recipe
    turns on what it needs. Translations are fractions of the image size, angles are degrees,
    ``aug_max_scaling = s`` draws a factor in ``[1 - s, 1 + s]``. ``num_epochs`` is ``T`` of the
    schedule (MRAugment's ``max_epochs``: ``p`` would reach ``aug_strength`` at ``t = T``).
    """

    aug_on: bool = False
    aug_delay: int = 0
    aug_strength: float = 0.0
    aug_exp_decay: float = 5.0
    aug_schedule: str = field(default="exp", metadata={"choices": SCHEDULES})
    aug_weight_fliph: float = 0.0
    aug_weight_flipv: float = 0.0
    aug_weight_rot90: float = 0.0
    aug_weight_translation: float = 0.0
    aug_weight_rotation: float = 0.0
    aug_weight_shearing: float = 0.0
    aug_weight_scaling: float = 0.0
    aug_max_translation_x: float = 0.125
    aug_max_translation_y: float = 0.125
    aug_max_rotation: float = 180.0
    aug_max_shearing_x: float = 15.0
    aug_max_shearing_y: float = 15.0
    aug_max_scaling: float = 0.25
    aug_upsample: bool = False
    aug_upsample_factor: int = 2
    num_epochs: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.aug_schedule not in SCHEDULES:
            raise ValueError(f"aug_schedule must be one of {SCHEDULES}, got {self.aug_schedule!r}")
        if not 0.0 <= self.aug_strength <= 1.0:
            raise ValueError(f"aug_strength must be in [0, 1], got {self.aug_strength}")
        if self.aug_delay < 0:
            raise ValueError(f"aug_delay must be >= 0, got {self.aug_delay}")
        if self.aug_exp_decay <= 0:
            raise ValueError(f"aug_exp_decay must be > 0, got {self.aug_exp_decay}")
        for name in _FIRE_ORDER:
            if getattr(self, f"aug_weight_{name}") < 0:
                raise ValueError(f"aug_weight_{name} must be >= 0, got {getattr(self, f'aug_weight_{name}')}")
        for name in ("aug_max_translation_x", "aug_max_translation_y"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("aug_max_shearing_x", "aug_max_shearing_y"):
            if not 0.0 <= getattr(self, name) < 90.0:
                raise ValueError(f"{name} must be in [0, 90) degrees, got {getattr(self, name)}")
        if self.aug_max_rotation < 0:
            raise ValueError(f"aug_max_rotation must be >= 0, got {self.aug_max_rotation}")
        if not 0.0 <= self.aug_max_scaling < 1.0:
            raise ValueError(f"aug_max_scaling must be in [0, 1), got {self.aug_max_scaling}")
        if self.aug_upsample_factor < 1:
            raise ValueError(f"aug_upsample_factor must be >= 1, got {self.aug_upsample_factor}")
        if self.aug_on and self.aug_schedule != "constant" and self.num_epochs <= self.aug_delay:
            raise ValueError(
                f"num_epochs ({self.num_epochs}) must exceed aug_delay ({self.aug_delay}) "
                f"for the {self.aug_schedule!r} schedule"
            )

    def weight(self, name: str) -> float:
        """Probability weight of transform ``name`` (one of ``fliph ... scaling``)."""
        return float(getattr(self, f"aug_weight_{name}"))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "AugmentConfig":
        """Build from a mapping (e.g. ``vars(args)``), taking the keys that are fields; ``None`` values
        (flags not given) leave the field's default."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def add_argparse_args(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the ``--aug_*`` flags (not ``num_epochs``), generated from the fields by
        :func:`utils.cli.add_dataclass_flags` (booleans: ``--aug_on``, ``--aug_on true|false``,
        ``--no-aug_on``); unset flags are ``None`` and :meth:`from_mapping` keeps the defaults."""
        from utils.cli import add_dataclass_flags

        add_dataclass_flags(parser, cls, exclude=("num_epochs",))
        return parser


def schedule_probability(t: float, cfg: AugmentConfig) -> float:
    """Augmentation strength ``p(t)`` in ``[0, aug_strength]`` at the 0-based epoch index ``t`` (MRAugment's
    ``current_epoch``: the first epoch is ``t = 0``).

    As MRAugment's ``schedule_p``: ``p = 0`` for ``t < D``; for ``t >= D`` (``t`` clipped to ``T``):
    ``constant``: ``p_max``; ``ramp``: ``p_max (t - D) / (T - D)``; ``exp``:
    ``p_max (1 - e^{-c (t - D)}) / (1 - e^{-c (T - D)})`` with ``c = aug_exp_decay / (T - D)``.
    ``D = aug_delay``, ``T = num_epochs``, ``p_max = aug_strength``. (Training never reaches ``t = T``:
    the last epoch is ``t = T - 1``, as in MRAugment; the clip only guards calls beyond it.)
    """
    if not cfg.aug_on:
        return 0.0
    d, p_max = float(cfg.aug_delay), float(cfg.aug_strength)
    t = float(t)
    if t < d or p_max == 0.0:
        return 0.0
    if cfg.aug_schedule == "constant":
        return p_max
    total = float(cfg.num_epochs) - d
    t = min(t, float(cfg.num_epochs)) - d
    if cfg.aug_schedule == "ramp":
        return p_max * t / total
    c = cfg.aug_exp_decay / total
    return p_max * (-math.expm1(-c * t)) / (-math.expm1(-c * total))


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentParams:
    """One draw of transform parameters (neutral values for transforms that did not fire).

    ``rot90_k`` in {0, 1, 2, 3}; ``translation_x`` a fraction of H (MRAugment's "x": rows),
    ``translation_y`` a fraction of W (columns); angles in degrees.
    """

    fliph: bool = False
    flipv: bool = False
    rot90_k: int = 0
    translation_x: float = 0.0
    translation_y: float = 0.0
    rotation: float = 0.0
    shearing_x: float = 0.0
    shearing_y: float = 0.0
    scaling: float = 1.0
    affine: bool = False

    def shift_pixels(self, height: int, width: int) -> Tuple[int, int]:
        """Integer content shift ``(dy, dx)`` in pixels (``out[i, j] = in[i - dy, j - dx]``) in MRAugment's
        convention: ``dy = -int(translation_x * H)`` (a positive "x" moves the content up, towards row 0),
        ``dx = int(translation_y * W)``; ``int`` truncates toward zero, as MRAugment's."""
        return -int(self.translation_x * height), int(self.translation_y * width)

    def is_identity(self, height: int, width: int) -> bool:
        """True when nothing fires (or only a translation that rounds to zero pixels)."""
        moved = self.fliph or self.flipv or self.rot90_k or self.affine
        return not moved and self.shift_pixels(height, width) == (0, 0)


# ----------------------------------------------------------------------------------------------
# transforms on images (..., H, W) (any dtype except affine: complex); same shape out
# ----------------------------------------------------------------------------------------------
def hflip(x: torch.Tensor) -> torch.Tensor:
    """Flip the width (last) axis."""
    return torch.flip(x, dims=(-1,))


def vflip(x: torch.Tensor) -> torch.Tensor:
    """Flip the height (second-last) axis."""
    return torch.flip(x, dims=(-2,))


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate by ``k * 90`` degrees (``torch.rot90`` sense); non-square: centre crop / zero-pad to (H, W)."""
    k = int(k) % 4
    if k == 0:
        return x
    h, w = x.shape[-2:]
    y = torch.rot90(x, k, dims=(-2, -1))
    if y.shape[-2:] != (h, w):
        y = center_crop_or_pad(y, (h, w))
    return y


def _reflect_index(n: int, shift: int, device: torch.device) -> torch.Tensor:
    """Source indices ``reflect(i - shift)`` for ``i in [0, n)``; requires ``|shift| <= n - 1``."""
    idx = torch.arange(n, device=device) - shift
    idx = idx.abs()
    return torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift content by ``dy`` rows and ``dx`` columns (``out[i, j] = x[i - dy, j - dx]``), reflect-padded.

    Shifts are clipped to ``size - 1`` (the most a reflection can fill).
    """
    h, w = x.shape[-2:]
    dy = max(-(h - 1), min(h - 1, int(dy)))
    dx = max(-(w - 1), min(w - 1, int(dx)))
    if dy:
        x = x.index_select(-2, _reflect_index(h, dy, x.device))
    if dx:
        x = x.index_select(-1, _reflect_index(w, dx, x.device))
    return x


def affine_matrix(rotation: float, shearing_x: float, shearing_y: float, scaling: float) -> np.ndarray:
    """Forward 2x2 map on centred pixel coordinates ``(u, v) = (column, row)``, float64.

    ``A = s R(rotation) Sx Sy`` with ``R = [[cos, -sin], [sin, cos]]``,
    ``Sx = [[1, tan(shearing_x)], [0, 1]]``, ``Sy = [[1, 0], [tan(shearing_y), 1]]`` (angles in degrees).
    A content point at ``p`` moves to ``A p``.
    """
    th, ax, ay = (math.radians(a) for a in (rotation, shearing_x, shearing_y))
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shx = np.array([[1.0, math.tan(ax)], [0.0, 1.0]])
    shy = np.array([[1.0, 0.0], [math.tan(ay), 1.0]])
    return float(scaling) * rot @ shx @ shy


def _affine_grid(a_inv: np.ndarray, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``grid_sample`` grid ``(1, h, w, 2)`` sampling the source at ``A^{-1} p`` (align_corners=False)."""
    u = torch.arange(w, dtype=torch.float64) - (w - 1) / 2.0
    v = torch.arange(h, dtype=torch.float64) - (h - 1) / 2.0
    m = torch.from_numpy(a_inv)
    src_u = m[0, 0] * u[None, :] + m[0, 1] * v[:, None]
    src_v = m[1, 0] * u[None, :] + m[1, 1] * v[:, None]
    grid = torch.stack((src_u * (2.0 / w), src_v * (2.0 / h)), dim=-1)
    return grid.unsqueeze(0).to(dtype=dtype, device=device)


def affine(x: torch.Tensor, rotation: float = 0.0, shearing_x: float = 0.0, shearing_y: float = 0.0,
           scaling: float = 1.0, upsample_factor: int = 1) -> torch.Tensor:
    """Bilinear affine warp of complex ``x (..., H, W)`` about the image centre, reflection padding.

    Output pixel ``p`` (centred ``(column, row)`` coordinates) takes the input's bilinear value at
    ``A^{-1} p`` (:func:`affine_matrix`); outside the field of view the input is reflected.
    Real and imaginary parts are warped identically: the interleaved complex memory is read as a
    channels-last ``(L, 2, H, W)`` batch (no copy) and one grid is shared by all leading indices.
    ``upsample_factor > 1``: bilinear upsample, warp, then antialiased bilinear downsample to (H, W).
    """
    if not torch.is_complex(x):
        raise TypeError(f"affine expects a complex tensor, got {x.dtype}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    real = torch.view_as_real(x.reshape(-1, h, w)).permute(0, 3, 1, 2)  # (L, 2, H, W), channels-last
    if upsample_factor > 1:
        real = F.interpolate(real, scale_factor=upsample_factor, mode="bilinear", align_corners=False)
    a_inv = np.linalg.inv(affine_matrix(rotation, shearing_x, shearing_y, scaling))
    grid = _affine_grid(a_inv, real.shape[-2], real.shape[-1], real.dtype, real.device)
    grid = grid.expand(real.shape[0], -1, -1, -1)
    out = F.grid_sample(real, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if upsample_factor > 1:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = out.permute(0, 2, 3, 1).contiguous()  # (L, H, W, 2), interleaved complex
    return torch.view_as_complex(out).reshape(*lead, h, w)


# ----------------------------------------------------------------------------------------------
# the augmenter
# ----------------------------------------------------------------------------------------------
class MRAugment:
    """Random image-domain augmentation of fully sampled complex coil images ``(..., C, H, W)``."""

    def __init__(self, config: AugmentConfig):
        if not isinstance(config, AugmentConfig):
            raise TypeError(f"MRAugment needs an AugmentConfig, got {type(config).__name__}")
        config.validate()
        self.config = config

    def probability(self, epoch: float) -> float:
        """Augmentation strength ``p`` at the 0-based epoch index ``epoch`` (:func:`schedule_probability`);
        transform ``n`` fires with ``min(1, weight_n * p)``."""
        return schedule_probability(epoch, self.config)

    def sample_params(self, rng: np.random.Generator, p: float) -> AugmentParams:
        """Draw one parameter set at strength ``p`` (fixed number and order of draws; see module doc)."""
        cfg = self.config
        u = rng.random(len(_FIRE_ORDER))
        fire = {name: bool(u[i] < cfg.weight(name) * p) for i, name in enumerate(_FIRE_ORDER)}
        k = int(rng.integers(1, 4))
        tx, ty = rng.uniform(-1.0, 1.0, size=2) * (cfg.aug_max_translation_x, cfg.aug_max_translation_y)
        rot = rng.uniform(-cfg.aug_max_rotation, cfg.aug_max_rotation)
        sx, sy = rng.uniform(-1.0, 1.0, size=2) * (cfg.aug_max_shearing_x, cfg.aug_max_shearing_y)
        scale = rng.uniform(1.0 - cfg.aug_max_scaling, 1.0 + cfg.aug_max_scaling)
        return AugmentParams(
            fliph=fire["fliph"],
            flipv=fire["flipv"],
            rot90_k=k if fire["rot90"] else 0,
            translation_x=float(tx) if fire["translation"] else 0.0,
            translation_y=float(ty) if fire["translation"] else 0.0,
            rotation=float(rot) if fire["rotation"] else 0.0,
            shearing_x=float(sx) if fire["shearing"] else 0.0,
            shearing_y=float(sy) if fire["shearing"] else 0.0,
            scaling=float(scale) if fire["scaling"] else 1.0,
            affine=fire["rotation"] or fire["shearing"] or fire["scaling"],
        )

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply ``params`` to complex ``images (..., H, W)``; same shape and dtype.

        The pixel-preserving transforms (flips, rot90, translation) are composed into one source-index
        map (the same functions applied to an index image) and applied with a single gather; the
        affine follows as one ``grid_sample``. Returns ``images`` itself when ``params`` is the identity.
        """
        _check_images(images)
        h, w = images.shape[-2:]
        if params.is_identity(h, w):
            return images
        x = images
        dy, dx = params.shift_pixels(h, w)
        if params.fliph or params.flipv or params.rot90_k or dy or dx:
            x = _gather_pixels(x, _pixel_index_map(params, h, w, x.device))
        if params.affine:
            factor = self.config.aug_upsample_factor if self.config.aug_upsample else 1
            x = affine(x, params.rotation, params.shearing_x, params.shearing_y, params.scaling, factor)
        return x

    def __call__(self, images: torch.Tensor, epoch: float, rng: np.random.Generator) -> torch.Tensor:
        """Augment complex coil images ``(..., C, H, W)`` with one random transform for all leading indices;
        ``epoch`` is the 0-based epoch index of the schedule."""
        _check_images(images)
        p = self.probability(epoch)
        if p <= 0.0:
            return images
        return self.apply(images, self.sample_params(rng, p))

    def augment_kspace(self, kspace: torch.Tensor, epoch: float, rng: np.random.Generator) -> torch.Tensor:
        """Fully sampled k-space ``(..., C, H, W)`` -> augmented k-space (``ifft2c``, augment, ``fft2c``).

        Returns the input itself (no FFT round trip) when nothing fires.
        """
        _check_images(kspace, "kspace")
        p = self.probability(epoch)
        if p <= 0.0:
            return kspace
        params = self.sample_params(rng, p)
        if params.is_identity(*kspace.shape[-2:]):
            return kspace
        return fft2c(self.apply(ifft2c(kspace), params))


def augment_kspace(kspace_full: torch.Tensor, rng: np.random.Generator, augmenter: MRAugment,
                   epoch: float) -> torch.Tensor:
    """Functional form of :meth:`MRAugment.augment_kspace`."""
    return augmenter.augment_kspace(kspace_full, epoch, rng)


def _pixel_index_map(params: AugmentParams, h: int, w: int, device: torch.device) -> torch.Tensor:
    """Flat source index ``(h*w,)`` of each output pixel after flips, rot90 and translation; -1 = zero fill."""
    idx = torch.arange(1, h * w + 1, device=device).reshape(h, w)  # 0 marks rot90 zero padding
    if params.fliph:
        idx = hflip(idx)
    if params.flipv:
        idx = vflip(idx)
    if params.rot90_k:
        idx = rot90(idx, params.rot90_k)
    dy, dx = params.shift_pixels(h, w)
    if dy or dx:
        idx = translate(idx, dy, dx)
    return idx.reshape(-1) - 1


def _gather_pixels(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out[..., p] = x[..., src[p]]`` over the flattened image axes (``src < 0``: zero); one gather."""
    h, w = x.shape[-2:]
    out = x.reshape(*x.shape[:-2], h * w).index_select(-1, src.clamp_min(0))
    outside = (src < 0).nonzero().squeeze(1)
    if outside.numel():
        out.index_fill_(-1, outside, 0)
    return out.reshape(x.shape)


def _check_images(x: torch.Tensor, name: str = "images") -> None:
    if not isinstance(x, torch.Tensor) or not torch.is_complex(x):
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"MRAugment: {name} must be a complex torch tensor (..., H, W), got {got}")
    if x.dim() < 2:
        raise ValueError(f"MRAugment: {name} needs at least 2 dims (H, W), got shape {tuple(x.shape)}")
