"""Plain U-Net, normalised complex U-Net and a coil-sensitivity estimator.

Building blocks shared by unrolled reconstruction models (E2E-VarNet, HiFi-Mamba, ...):

* :class:`Unet` -- real-valued U-Net (Ronneberger et al. 2015) in the fastMRI layout:
  ``num_pools`` levels of two 3x3 conv + InstanceNorm + LeakyReLU(0.2), average-pool down,
  2x2 transposed-conv up, skip concatenation, final 1x1 conv.
* :class:`NormUnet` -- complex wrapper: complex channels -> real/imag channels, group
  normalisation (one mean/std for the real parts, one for the imaginary parts), zero padding to a
  multiple of ``2**num_pools``, U-Net, undo all of it.
* :class:`SensitivityNet` -- coil sensitivity maps from the ACS lines of the k-space: a NormUnet
  applied to every coil image separately, maps normalised by their RSS over coils.

The ACS columns the sensitivity net sees come from :func:`utils.physics.acs_columns` (the model picks
the convention). Padding follows fastMRI: each axis is zero-padded to the next multiple of 16
(``((n - 1) | 15) + 1``, the extra pixel after), and a U-Net level whose upsampled map is one pixel short
of its skip is reflect-padded at the bottom/right.

InstanceNorm + LeakyReLU run as one fused step (:class:`InstanceNormLeakyReLU`): on CPU a hand-written
autograd function that keeps only its output (which the next convolution keeps anyway) and the per-channel
1/std, and recovers the normalised input from it in the backward pass; elsewhere the native batch-norm
kernel on the ``(1, N*C, H, W)`` view (exactly what ``F.instance_norm`` computes) followed by an in-place
LeakyReLU. On CPU in float32 the U-Net runs in channels-last layout (oneDNN's direct convolutions, about
2x faster than NCHW at the top levels); its output is returned contiguous.

All FFT and coil operations come from :mod:`utils.physics`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from utils import physics

__all__ = ["InstanceNormLeakyReLU", "ConvBlock", "UpBlock", "Unet", "NormUnet", "SensitivityNet"]

# Added to the variance before the square root: keeps all-zero inputs finite (value and gradient)
# while being negligible against MRI data (k-space/image std >= 1e-8 in every dataset we know).
_VAR_EPS = 1e-20


class _InstanceNormLeakyReLUFn(torch.autograd.Function):
    """``leaky_relu(instance_norm(x), slope)`` for ``x`` ``(N, C, H, W)`` (any memory layout), biased variance.

    Saves only the output ``y`` and ``rstd = 1/sqrt(var + eps)`` ``(N, C, 1, 1)``. Forward: two-pass statistics
    (mean, then the mean square of ``x - mean``) with torch's pairwise reductions (the native CPU batch-norm
    kernel accumulates channels-last input naively: 4e-5 error in float32 at 384 x 400). Backward, with
    ``grad`` the incoming gradient, ``g`` the gradient through the LeakyReLU and ``xhat = y`` where ``y > 0``,
    ``y / slope`` elsewhere (``slope > 0``; note ``g * xhat == grad * y``):
    ``dx = rstd * (g - mean(g) - xhat * mean(grad * y))``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float, eps: float) -> torch.Tensor:
        y = x - x.mean(dim=(2, 3), keepdim=True)
        rstd = y.square().mean(dim=(2, 3), keepdim=True).add_(eps).rsqrt_()
        y = F.leaky_relu_(y.mul_(rstd), slope)
        ctx.slope = slope
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, rstd = ctx.saved_tensors
        slope = ctx.slope
        mean_gx = (grad * y).mean(dim=(2, 3), keepdim=True)
        g = torch.ops.aten.leaky_relu_backward(grad, y, slope, True)
        mean_g = g.mean(dim=(2, 3), keepdim=True)
        xhat = F.leaky_relu(y, 1.0 / slope)
        dx = torch.addcmul(mean_g.mul_(rstd).neg_(), g, rstd)
        return dx.addcmul_(xhat, mean_gx.mul_(rstd).neg_()), None, None


class InstanceNormLeakyReLU(nn.Module):
    """``LeakyReLU(negative_slope)(InstanceNorm2d(affine=False, eps)(x))`` in one step, ``(N, C, H, W)``.

    ``fused``: ``None`` (default) picks the hand-written autograd function on CPU (saves one tensor per layer
    and the native CPU kernels' channels-last slowness) and the native batch-norm kernel + in-place LeakyReLU
    elsewhere; ``True``/``False`` force one of them. Both agree with the unfused modules to rounding; the
    native path is bit-identical to ``nn.InstanceNorm2d`` + ``nn.LeakyReLU`` (values and gradients).
    """

    def __init__(self, negative_slope: float = 0.2, eps: float = 1e-5, fused: Optional[bool] = None):
        super().__init__()
        if negative_slope <= 0:
            raise ValueError(f"InstanceNormLeakyReLU: negative_slope must be > 0, got {negative_slope}")
        self.negative_slope = negative_slope
        self.eps = eps
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused if self.fused is not None else x.device.type == "cpu"
        if fused:
            return _InstanceNormLeakyReLUFn.apply(x, self.negative_slope, self.eps)
        n, c, h, w = x.shape
        y = F.batch_norm(x.reshape(1, n * c, h, w), None, None, training=True, momentum=0.0, eps=self.eps)
        return F.leaky_relu_(y, self.negative_slope).view(n, c, h, w)  # y is no view: in place is free

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, eps={self.eps}, fused={self.fused}"


class ConvBlock(nn.Sequential):
    """Two ``[3x3 conv (no bias) -> InstanceNorm -> LeakyReLU(0.2) -> Dropout2d]`` layers.

    ``(N, in_chans, H, W) -> (N, out_chans, H, W)``. Modules ``0``/``4`` are the convolutions, ``1``/``5``
    the fused :class:`InstanceNormLeakyReLU`, ``3``/``7`` the dropouts (parameter names as before the fusion).
    """

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float = 0.0):
        layers = []
        for i, c_in in enumerate((in_chans, out_chans)):
            layers += [
                (str(4 * i), nn.Conv2d(c_in, out_chans, kernel_size=3, padding=1, bias=False)),
                (str(4 * i + 1), InstanceNormLeakyReLU(0.2)),
                (str(4 * i + 3), nn.Dropout2d(drop_prob)),
            ]
        super().__init__(OrderedDict(layers))


class UpBlock(nn.Sequential):
    """``2x2 stride-2 transposed conv (no bias) -> InstanceNorm -> LeakyReLU(0.2)``: doubles H, W."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__(
            nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
            InstanceNormLeakyReLU(0.2),
        )


def _use_channels_last(x: torch.Tensor) -> bool:
    """Channels-last pays on CPU float32 (oneDNN direct kernels); float64 and CUDA keep NCHW."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def _match_size(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reflect-pad ``x`` on the bottom/right so its last two axes match ``like`` (odd sizes), as fastMRI's
    U-Net does after each transposed convolution."""
    dh = like.shape[-2] - x.shape[-2]
    dw = like.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh), mode="reflect")


class Unet(nn.Module):
    """Real U-Net ``(N, in_chans, H, W) -> (N, out_chans, H, W)``; needs H, W >= 2**num_pools.

    ``chans`` channels at the top level, doubled at each of the ``num_pools`` levels below it.
    """

    def __init__(self, in_chans: int, out_chans: int, chans: int = 32, num_pools: int = 4, drop_prob: float = 0.0):
        super().__init__()
        if min(in_chans, out_chans, chans, num_pools) < 1:
            raise ValueError(
                f"Unet: in_chans, out_chans, chans, num_pools must be >= 1, got "
                f"{(in_chans, out_chans, chans, num_pools)}"
            )
        widths = [chans * 2**level for level in range(num_pools)]  # encoder widths, top first
        self.encoder = nn.ModuleList(
            ConvBlock(c_in, c_out, drop_prob) for c_in, c_out in zip([in_chans] + widths[:-1], widths)
        )
        self.bottleneck = ConvBlock(widths[-1], 2 * widths[-1], drop_prob)
        self.up = nn.ModuleList(UpBlock(2 * w, w) for w in reversed(widths))
        self.decoder = nn.ModuleList(ConvBlock(2 * w, w, drop_prob) for w in reversed(widths))
        self.head = nn.Conv2d(widths[0], out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = _use_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.avg_pool2d(x, kernel_size=2, stride=2)
        x = self.bottleneck(x)
        for up, block in zip(self.up, self.decoder):
            skip = skips.pop()
            x = _match_size(up(x), skip)
            x = block(torch.cat([x, skip], dim=1))
        x = self.head(x)
        return x.contiguous() if channels_last else x


FASTMRI_PAD_MULTIPLE = 16  # fastMRI's NormUnet.pad: ((n - 1) | 15) + 1


def _pad_amounts(size: int, num_pools: int) -> Tuple[int, int]:
    """(before, after) zero padding of one axis: fastMRI's, to the next multiple of 16 (floor before, ceil
    after). Only where that would leave the bottleneck under 2 pixels (sizes below ``2 ** (num_pools + 1)``,
    on which fastMRI's InstanceNorm fails in training) is it padded further, to ``2 ** (num_pools + 1)``."""
    total = max(-size % FASTMRI_PAD_MULTIPLE, 2 ** (num_pools + 1) - size)
    return total // 2, total - total // 2


class NormUnet(nn.Module):
    """Normalised U-Net on complex images: ``(N, in_complex, H, W) -> (N, out_complex, H, W)``.

    The real parts (all channels together) and the imaginary parts are each normalised to zero
    mean and unit standard deviation per sample; the U-Net output is mapped back with the same
    statistics, so the module is equivariant to positive scaling of its input. The image is
    zero-padded as fastMRI's NormUnet pads it (:func:`_pad_amounts`: the next multiple of 16, at least
    ``2**(num_pools+1)``), so any H, W >= 1 work.
    """

    def __init__(self, chans: int, num_pools: int, in_complex: int = 1, out_complex: int = 1, drop_prob: float = 0.0):
        super().__init__()
        self.in_complex = in_complex
        self.out_complex = out_complex
        self.num_pools = num_pools
        self.unet = Unet(2 * in_complex, 2 * out_complex, chans, num_pools, drop_prob)

    @staticmethod
    def _stats(parts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and std over (channels, H, W) of ``parts`` ``(N, 2, C, H, W)`` -> each ``(N, 2, 1, 1, 1)``."""
        flat = parts.flatten(2)
        mean = flat.mean(dim=2)
        var = flat.var(dim=2) if flat.shape[2] > 1 else torch.zeros_like(mean)
        std = (var + _VAR_EPS).sqrt()
        return mean[..., None, None, None], std[..., None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_complex(x) or x.dim() != 4 or x.shape[1] != self.in_complex:
            raise ValueError(
                f"NormUnet: expected complex (N, {self.in_complex}, H, W), got {tuple(x.shape)} {x.dtype}"
            )
        n, _, h, w = x.shape
        parts = torch.stack([x.real, x.imag], dim=1)  # (N, 2, C, H, W)
        mean, std = self._stats(parts)
        parts = (parts - mean) / std
        (top, bottom), (left, right) = _pad_amounts(h, self.num_pools), _pad_amounts(w, self.num_pools)
        y = F.pad(parts.reshape(n, 2 * self.in_complex, h, w), (left, right, top, bottom))
        y = self.unet(y)[..., top : top + h, left : left + w]
        y = y.reshape(n, 2, self.out_complex, h, w) * std + mean
        return torch.complex(y[:, 0], y[:, 1])


class SensitivityNet(nn.Module):
    """Coil sensitivity maps from the ACS region of the k-space (E2E-VarNet style).

    ``forward(kspace, acs)``: ``kspace`` complex ``(..., C, H, W)``; ``acs`` boolean column mask
    broadcastable to it (e.g. ``(B, 1, 1, 1, W)``). The ACS-only k-space of every coil is taken to
    image space, refined by one shared :class:`NormUnet` per coil image, and divided by the RSS
    over coils, so ``rss(maps) == 1`` everywhere. Returns complex maps shaped like ``kspace``.
    """

    def __init__(self, chans: int, num_pools: int, drop_prob: float = 0.0):
        super().__init__()
        self.norm_unet = NormUnet(chans, num_pools, in_complex=1, out_complex=1, drop_prob=drop_prob)

    def forward(self, kspace: torch.Tensor, acs: torch.Tensor) -> torch.Tensor:
        low = torch.where(acs, kspace, torch.zeros((), dtype=kspace.dtype, device=kspace.device))
        images = physics.ifft2c(low)
        maps = self.norm_unet(images.reshape(-1, 1, *images.shape[-2:])).reshape(images.shape)
        norm = physics.rss(maps, dim=-3).unsqueeze(-3)
        return maps / norm.clamp_min(torch.finfo(norm.dtype).tiny)
