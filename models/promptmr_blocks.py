"""Building blocks of PromptMR+ (Xin et al., ECCV 2024): channel-attention residual blocks, prompt
generators, the three-level prompt U-Net and its normalising complex-image wrapper.

Written from the published architecture (reference: hellopipu/PromptMR-plus, ``models/utils.py`` and
``models/promptmr_v2.py``); layer widths, kernel sizes, bias flags and initialisations follow it so the
parameter counts match. Real tensors are ``(N, channels, H, W)`` float; complex images ``(N, K, H, W)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

#: channel-attention squeeze factor and convolution kernel of the reference design
CA_REDUCTION = 4
KERNEL = 3
#: the U-Net needs H and W divisible by 2**3 (three stride-2 levels)
SIZE_MULTIPLE = 8

History = Optional[List[torch.Tensor]]


def conv_same(c_in: int, c_out: int, kernel: int = KERNEL, bias: bool = False, stride: int = 1) -> nn.Conv2d:
    """2-D convolution with 'same' padding for odd kernels."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


class ChannelGate(nn.Module):
    """Squeeze-and-excitation gate: ``x * sigmoid(W2 relu(W1 avgpool(x)))`` with a ``CA_REDUCTION`` squeeze."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // CA_REDUCTION
        self.squeeze = nn.Conv2d(channels, hidden, 1, bias=False)
        self.excite = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=(-2, -1), keepdim=True)
        g = torch.sigmoid(self.excite(F.relu(self.squeeze(g))))
        return x * g


class AttnResBlock(nn.Module):
    """Residual block ``x + gate(conv(act(conv(x))))`` (the reference's CAB); the gate is optional.

    ``act`` is a module that may be shared between blocks (the reference shares one PReLU).
    """

    def __init__(self, channels: int, act: nn.Module, use_ca: bool):
        super().__init__()
        self.conv1 = conv_same(channels, channels)
        self.act = act
        self.conv2 = conv_same(channels, channels)
        self.gate = ChannelGate(channels) if use_ca else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate(self.conv2(self.act(self.conv1(x))))


def block_stack(channels: int, count: int, act: nn.Module, use_ca: bool) -> nn.Sequential:
    """``count`` residual attention blocks in sequence (identity when ``count == 0``)."""
    return nn.Sequential(*[AttnResBlock(channels, act, use_ca) for _ in range(count)])


class EncoderStage(nn.Module):
    """Residual blocks at full resolution, then a stride-2 3x3 convolution (with bias) to ``c_out``.

    ``own_first_act``: the first block gets its own PReLU instead of the shared ``act`` (as the reference's
    first encoder level does). Returns ``(downsampled, skip)``.
    """

    def __init__(self, c_in: int, c_out: int, n_blocks: int, act: nn.Module, use_ca: bool, own_first_act: bool):
        super().__init__()
        acts = [act] * n_blocks
        if own_first_act and n_blocks > 0:
            acts[0] = nn.PReLU()
        self.blocks = nn.Sequential(*[AttnResBlock(c_in, a, use_ca) for a in acts])
        self.down = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        skip = self.blocks(x)
        return self.down(skip), skip


class PromptGenerator(nn.Module):
    """Input-adaptive prompt: a softmax-weighted sum of ``n_prompts`` learned (or frozen random) prompt
    tensors ``(dim, size, size)``, resized bilinearly to the feature map and passed through a 3x3 conv.

    Weights come from a linear layer on the spatially averaged features ``(N, feat_dim)``.
    Output: ``(N, dim, H, W)``.
    """

    def __init__(self, dim: int, n_prompts: int, size: int, feat_dim: int, learnable: bool):
        super().__init__()
        self.prompts = nn.Parameter(torch.rand(n_prompts, dim, size, size), requires_grad=learnable)
        self.select = nn.Linear(feat_dim, n_prompts)
        self.refine = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(self.select(feat.mean(dim=(-2, -1))), dim=1)
        prompt = torch.einsum("nl,lchw->nchw", weights, self.prompts)
        prompt = F.interpolate(prompt, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(prompt)


class DecoderStage(nn.Module):
    """Decoder level: optional feature-momentum fusion with ``n_history`` earlier cascades' features,
    concatenation with a prompt, residual blocks, 1x1 reduction, bilinear x2 upsampling + 1x1 conv to
    ``c_out``, addition of the skip features and one more residual block.
    """

    def __init__(self, c_in: int, c_out: int, prompt_dim: int, n_blocks: int, act: nn.Module,
                 use_ca: bool, n_history: int):
        super().__init__()
        self.n_history = n_history
        if n_history > 0:
            self.momentum = nn.Sequential(
                nn.Conv2d(c_in * (n_history + 1), c_in, 1, bias=False), AttnResBlock(c_in, act, use_ca)
            )
        self.fuse = block_stack(c_in + prompt_dim, n_blocks, act, use_ca)
        self.reduce = nn.Conv2d(c_in + prompt_dim, c_in, 1, bias=False)
        self.up = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.out = AttnResBlock(c_out, act, use_ca)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, skip: torch.Tensor,
                history: Optional[torch.Tensor]) -> torch.Tensor:
        if self.n_history > 0:
            past = x.repeat(1, self.n_history, 1, 1) if history is None else history
            x = self.momentum(torch.cat([x, past], dim=1))
        x = self.reduce(self.fuse(torch.cat([x, prompt], dim=1)))
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.out(self.up(x) + skip)


class PromptUNet(nn.Module):
    """Three-level prompt U-Net on real channels ``(N, c_in, H, W) -> (N, c_out, H, W)``; H, W % 8 == 0.

    ``forward(x, history)`` also returns the updated feature history (a list of three tensors, coarse to
    fine, each holding the ``n_history`` most recent decoder inputs stacked on the channel axis, newest
    first), or ``None`` when ``n_history == 0``.
    """

    def __init__(self, c_in: int, c_out: int, n_feat0: int, feature_dim: Sequence[int], prompt_dim: Sequence[int],
                 len_prompt: Sequence[int], prompt_size: Sequence[int], n_enc_cab: Sequence[int],
                 n_dec_cab: Sequence[int], n_skip_cab: Sequence[int], n_bottleneck_cab: int, act: nn.Module,
                 use_ca: bool = True, learnable_prompt: bool = False, n_history: int = 0):
        super().__init__()
        widths = [n_feat0, *feature_dim]  # channel width at each resolution, fine to coarse
        self.n_history = n_history
        self.widths = widths
        self.head = conv_same(c_in, n_feat0)
        self.encoders = nn.ModuleList(
            EncoderStage(widths[i], widths[i + 1], n_enc_cab[i], act, use_ca, own_first_act=(i == 0))
            for i in range(3)
        )
        self.skips = nn.ModuleList(block_stack(widths[i], n_skip_cab[i], act, use_ca) for i in range(3))
        self.bottleneck = block_stack(widths[3], n_bottleneck_cab, act, use_ca)
        self.prompts = nn.ModuleList(
            PromptGenerator(prompt_dim[i], len_prompt[i], prompt_size[i], widths[i + 1], learnable_prompt)
            for i in range(3)
        )
        self.decoders = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], prompt_dim[i], n_dec_cab[i], act, use_ca, n_history)
            for i in range(3)
        )
        self.tail = conv_same(n_feat0, c_out, kernel=5)

    def forward(self, x: torch.Tensor, history: History = None) -> Tuple[torch.Tensor, History]:
        x = self.head(x)
        skips = []
        for enc in self.encoders:
            x, s = enc(x)
            skips.append(s)
        x = self.bottleneck(x)
        decoder_inputs = []
        for level in (2, 1, 0):
            decoder_inputs.append(x)
            past = None if history is None else history[2 - level]
            prompt = self.prompts[level](x)
            x = self.decoders[level](x, prompt, self.skips[level](skips[level]), past)
        return self.tail(x), self._update_history(decoder_inputs, history)

    def _update_history(self, current: List[torch.Tensor], history: History) -> History:
        """Push the current decoder inputs to the front of the history, dropping the oldest."""
        if self.n_history == 0:
            return None
        if history is None:
            return [f.repeat(1, self.n_history, 1, 1) for f in current]
        return [torch.cat([f, h[:, : h.shape[1] - f.shape[1]]], dim=1) for f, h in zip(current, history)]


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Zero-pad the last two axes up to a multiple (extra pixel on the bottom/right). Returns ``(x, pads)``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pads), pads


def unpad(x: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top: h - bottom, left: w - right]


class NormPromptUNet(nn.Module):
    """Complex-image wrapper of :class:`PromptUNet`.

    Input: complex ``(N, K_in, H, W)`` (any H, W). Real and imaginary parts become ``2*K_in`` channels
    (all real parts first), normalised by their joint mean and (unbiased) standard deviation per sample,
    zero-padded to a multiple of 8; the output is un-padded, de-normalised and returned as complex
    ``(N, K_out, H, W)`` together with the updated feature history.
    """

    def __init__(self, k_in: int, k_out: int, **unet_kwargs):
        super().__init__()
        self.unet = PromptUNet(2 * k_in, 2 * k_out, **unet_kwargs)

    def zero_last_layer(self) -> None:
        """Start the U-Net's output convolution at zero (the output is then the input's mean)."""
        nn.init.zeros_(self.unet.tail.weight)
        if self.unet.tail.bias is not None:
            nn.init.zeros_(self.unet.tail.bias)

    @staticmethod
    def _stats(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).clamp_min(torch.finfo(x.dtype).tiny).view(-1, 1, 1, 1)
        return mean, std

    def forward(self, image: torch.Tensor, history: History = None) -> Tuple[torch.Tensor, History]:
        x = torch.cat([image.real, image.imag], dim=1)
        mean, std = self._stats(x)
        x, pads = pad_to_multiple((x - mean) / std)
        x, history = self.unet(x, history)
        x = unpad(x, pads) * std + mean
        re, im = x.chunk(2, dim=1)
        return torch.complex(re, im), history
