"""Building blocks of KGMgT (models/kgmgt.py), written from the article and the notes in
``shared/research/cine_tokenizer.md`` §1 (no code of the released repository is used).

* :func:`modulated_deform_conv2d` / :class:`DeformableAggregation` — DCNv2 (modulated deformable
  convolution) with ``grid_sample``: per deformable group and kernel tap a ``(y, x)`` offset and a
  modulation scalar; offsets bounded by ``max_magnitude * tanh`` and added to the matching's offsets.
* :func:`local_patch_match` / :func:`global_patch_match` — normalised 3x3 patch matching of two feature
  maps (flow, similarity); :func:`neighbour_offsets`, :func:`upscale_flow`, :func:`flow_warp`.
* :class:`VGGTrunk` — VGG-style trunk to 1/4 resolution (conv1_1 .. conv3_1) on 2-channel images.
* :class:`WindowAttention` (square window, cyclic shift, relative-position bias), :class:`MixedAttention`
  (anchor-stripe attention on half of a 3C projection), :class:`MGTransformerBlock`, :class:`MGStage`
  (residual groups of blocks), :class:`RefinementCNN`, :class:`Discriminator`.

Layouts: images/feature maps ``(B, C, H, W)``; transformer tokens ``(B, H, W, C)`` (channels last).
Offsets and flows are in pixels of the map they apply to, ``(dy, dx)`` (row, column) order.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "modulated_deform_conv2d", "DeformableAggregation", "VGGTrunk", "local_patch_match", "global_patch_match",
    "neighbour_offsets", "upscale_flow", "flow_warp", "window_partition", "window_reverse", "shifted_window_mask",
    "WindowAttention", "AnchorStripeAttention", "MixedAttention", "MGTransformerBlock", "MGStage", "RefinementCNN",
    "Discriminator",
]


# --------------------------------------------------------------------------- deformable convolution


def _pixel_to_grid(coord: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinate (pixel centres at integers) -> ``grid_sample`` coordinate (align_corners=False)."""
    return (2.0 * coord + 1.0) / size - 1.0


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: Optional[torch.Tensor], deform_groups: int) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2 semantics), stride 1, 'same' padding, dilation 1.

    ``x`` ``(B, Cin, H, W)``; ``weight`` ``(Cout, Cin, kh, kw)`` (odd kh, kw); ``offset``
    ``(B, 2 * G * K, H, W)`` with K = kh * kw, channel ``2 * (g * K + k)`` the row (y) and ``+1`` the column
    (x) offset of tap ``k = i * kw + j`` of group ``g`` (the layout of DCNv2, mmcv and torchvision);
    ``mask`` ``(B, G * K, H, W)``. Output pixel ``p`` sums, over taps, ``w_k * m_k(p) * x(p + t_k + o_k(p))``
    with ``t_k = (i - kh // 2, j - kw // 2)``, ``x`` read by bilinear interpolation and zero outside the
    image (as DCNv2). Returns ``(B, Cout, H, W)``. Vectorised: one ``grid_sample`` for every tap.
    """
    b, cin, h, w = x.shape
    cout, cin_w, kh, kw = weight.shape
    k, g = kh * kw, deform_groups
    if cin_w != cin or cin % g:
        raise ValueError(f"deformable conv: weight {tuple(weight.shape)} does not fit input channels {cin} in {g} groups")
    if offset.shape != (b, 2 * g * k, h, w) or mask.shape != (b, g * k, h, w):
        raise ValueError(f"deformable conv: offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not match "
                         f"(B, 2GK, H, W) / (B, GK, H, W) with G={g}, K={k}, input {tuple(x.shape)}")
    off = offset.view(b, g, k, 2, h, w)
    dev, dt = x.device, x.dtype
    tap_y = (torch.arange(kh, device=dev, dtype=dt) - kh // 2).repeat_interleave(kw).view(1, 1, k, 1, 1)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) - kw // 2).repeat(kh).view(1, 1, k, 1, 1)
    ys = torch.arange(h, device=dev, dtype=dt).view(1, 1, 1, h, 1) + tap_y + off[:, :, :, 0]  # (B, G, K, H, W)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, 1, 1, w) + tap_x + off[:, :, :, 1]
    grid = torch.stack((_pixel_to_grid(xs, w), _pixel_to_grid(ys, h)), dim=-1).view(b * g, k * h, w, 2)
    sampled = F.grid_sample(x.reshape(b * g, cin // g, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*G, Cin/G, K*H, W)
    sampled = sampled.view(b, g, cin // g, k, h, w) * mask.view(b, g, 1, k, h, w)
    cols = sampled.reshape(b, cin * k, h * w)  # channel index cin * K + k, as weight.view(Cout, Cin * K)
    out = torch.matmul(weight.reshape(cout, cin * k), cols).view(b, cout, h, w)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


class DeformableAggregation(nn.Module):
    """Deformable aggregation of reference features (the "dynamic aggregation" of KGMgT / C2-Matching).

    ``forward(ref, cond, pre_offset, similarity)``: ``ref`` ``(B, C, H, W)`` the (unwarped) reference
    features that are sampled; ``cond`` ``(B, C, H, W)`` the features the offsets and masks are predicted
    from (a zero-initialised 3x3 conv, so training starts at the matching's offsets); ``pre_offset``
    ``(B, 9, 2, H, W)`` the matching's per-tap offsets (shared by the groups); ``similarity`` ``(B, 1, H, W)``.
    Offsets are ``max_magnitude * tanh(learned) + pre_offset``, masks ``sigmoid(learned * similarity)``.
    """

    def __init__(self, channels: int, groups: int, max_magnitude: float = 10.0, kernel_size: int = 3):
        super().__init__()
        self.groups, self.max_magnitude, self.kernel_size = groups, float(max_magnitude), kernel_size
        k = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        bound = 1.0 / math.sqrt(channels * k)
        nn.init.uniform_(self.weight, -bound, bound)
        self.conv_offset_mask = nn.Conv2d(channels, 3 * groups * k, kernel_size, 1, kernel_size // 2)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, ref: torch.Tensor, cond: torch.Tensor, pre_offset: torch.Tensor,
                similarity: torch.Tensor) -> torch.Tensor:
        b, _, h, w = ref.shape
        g, k = self.groups, self.kernel_size ** 2
        o1, o2, m = torch.chunk(self.conv_offset_mask(cond), 3, dim=1)
        offset = self.max_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        offset = offset + pre_offset.unsqueeze(1).expand(b, g, k, 2, h, w).reshape(b, 2 * g * k, h, w)
        mask = torch.sigmoid(m * similarity)
        return modulated_deform_conv2d(ref, offset, mask, self.weight, self.bias, g)


# --------------------------------------------------------------------------- features and matching


class VGGTrunk(nn.Module):
    """VGG-style trunk on 2-channel (real, imaginary) images: conv1_1, conv1_2, pool, conv2_1, conv2_2,
    pool, conv3_1 (3x3 convs, widths ``widths``), activation ``act`` after every conv but the last.

    ``forward(x (B, 2, H, W)) -> {"relu1_1": (B, w1, H, W), "relu2_1": (B, w2, H/2, W/2),
    "relu3_1": (B, w3, H/4, W/4), "conv3_1": (B, w3, H/4, W/4)}`` (H, W multiples of 4). Layer names
    follow VGG, so a pretrained trunk's state dict loads by name.
    """

    def __init__(self, widths: Sequence[int], act: str = "leaky", in_channels: int = 2):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1_1 = nn.Conv2d(in_channels, w1, 3, 1, 1)
        self.conv1_2 = nn.Conv2d(w1, w1, 3, 1, 1)
        self.conv2_1 = nn.Conv2d(w1, w2, 3, 1, 1)
        self.conv2_2 = nn.Conv2d(w2, w2, 3, 1, 1)
        self.conv3_1 = nn.Conv2d(w2, w3, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2) if act == "leaky" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        r11 = self.act(self.conv1_1(x))
        r21 = self.act(self.conv2_1(F.max_pool2d(self.act(self.conv1_2(r11)), 2)))
        c31 = self.conv3_1(F.max_pool2d(self.act(self.conv2_2(r21)), 2))
        return {"relu1_1": r11, "relu2_1": r21, "relu3_1": self.act(c31), "conv3_1": c31}


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 sum over the last two axes with zero padding (``(B, C, H, W)``)."""
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=True) * 9.0


def _window_rows(x: torch.Tensor, radius: int, height: int, width: int):
    """Yield, for each row offset of a ``(2r+1)^2`` search window, ``(B, C, H, 2r+1, W)`` views of the
    zero-padded map ``x`` shifted by ``(dy, dx)`` for every ``dx`` (no copy)."""
    padded = F.pad(x, (radius, radius, radius, radius))
    for dy in range(2 * radius + 1):
        yield padded[:, :, dy:dy + height, :].unfold(3, width, 1)


def local_patch_match(f_in: torch.Tensor, f_ref: torch.Tensor, radius: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised 3x3 patch matching of ``f_in`` against ``f_ref`` within ``|dy|, |dx| <= radius``.

    ``f_in``, ``f_ref``: ``(B, C, h, w)``. Features are L2-normalised per pixel over channels; the
    similarity of displacement ``d`` at ``p`` is the cosine between the 3x3 patch of ``f_in`` at ``p`` and
    that of ``f_ref`` at ``p + d`` (zero outside the map). Only displacements that keep ``p + d`` inside the
    map are considered; ties go to the smallest ``|d|``. Returns ``flow (B, 2, h, w)`` (dy, dx) with
    ``f_ref(p + flow(p))`` matching ``f_in(p)``, and ``similarity (B, 1, h, w)`` (differentiable in the
    features; the argmax is not). Cost ``O((2r+1)^2 C h w)``: linear in the pixel count.
    """
    b, c, h, w = f_in.shape
    f_in, f_ref = F.normalize(f_in, dim=1), F.normalize(f_ref, dim=1)
    n = 2 * radius + 1
    dots = torch.cat([torch.einsum("bchw,bchdw->bdhw", f_in, rows) for rows in _window_rows(f_ref, radius, h, w)], 1)
    norm_in = _box3(f_in.square().sum(1, keepdim=True))
    norm_ref = torch.cat(list(r[:, 0].permute(0, 2, 1, 3) for r in _window_rows(_box3(f_ref.square().sum(1, keepdim=True)),
                                                                                 radius, h, w)), 1)  # (B, D, h, w)
    sim = _box3(dots) / torch.sqrt(norm_in * norm_ref + 1e-10)  # (+eps inside: finite gradient on empty patches)
    d = torch.arange(-radius, radius + 1, device=f_in.device)
    dy, dx = d.repeat_interleave(n), d.repeat(n)  # displacement index = (dy + r) * n + (dx + r)
    ys = torch.arange(h, device=f_in.device).view(1, h, 1) + dy.view(-1, 1, 1)
    xs = torch.arange(w, device=f_in.device).view(1, 1, w) + dx.view(-1, 1, 1)
    valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # (D, h, w)
    order = torch.argsort(dy.square() + dx.square(), stable=True)  # nearest displacement first: ties -> small |d|
    masked = sim.detach().masked_fill(~valid, float("-inf"))
    best = order[masked[:, order].argmax(dim=1)]  # (B, h, w) displacement index
    similarity = sim.gather(1, best.unsqueeze(1))
    flow = torch.stack((dy[best], dx[best]), dim=1).to(f_in.dtype)
    return flow, similarity


def global_patch_match(f_in: torch.Tensor, f_ref: torch.Tensor, chunk: int = 2048) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised 3x3 patch matching over the whole reference map (the released code's search).

    Same inputs, normalisation and outputs as :func:`local_patch_match`; every reference position is a
    candidate (cost ``O(C (h w)^2)``, memory bounded by scoring ``chunk`` target positions at a time).
    """
    b, c, h, w = f_in.shape
    f_in, f_ref = F.normalize(f_in, dim=1), F.normalize(f_ref, dim=1)
    p_in = F.unfold(f_in, 3, padding=1)  # (B, 9C, N)
    p_ref = F.unfold(f_ref, 3, padding=1)
    n_in, n_ref = ((p.square().sum(1) + 1e-10).sqrt() for p in (p_in, p_ref))  # (B, N); finite gradient at 0
    with torch.no_grad():
        ref_unit = p_ref / n_ref.unsqueeze(1)
        best = torch.cat([torch.bmm(p_in[:, :, s:s + chunk].transpose(1, 2), ref_unit).argmax(dim=2)
                          for s in range(0, h * w, chunk)], dim=1)  # (B, N)
    chosen = p_ref.gather(2, best.unsqueeze(1).expand(-1, p_ref.shape[1], -1))
    sim = (p_in * chosen).sum(1) / (n_in * n_ref.gather(1, best))
    pos = torch.arange(h * w, device=f_in.device)
    flow = torch.stack((best // w - pos // w, best % w - pos % w), dim=1).to(f_in.dtype).view(b, 2, h, w)
    return flow, sim.view(b, 1, h, w)


def neighbour_offsets(flow: torch.Tensor) -> torch.Tensor:
    """Per-tap offsets of a 3x3 deformable kernel from a flow ``(B, 2, h, w)``: tap ``k = (i, j)`` at
    ``p`` takes the flow of the neighbour ``p + (i - 1, j - 1)`` (border replicated), so the kernel reads the
    matched positions of the 3x3 neighbourhood. Returns ``(B, 9, 2, h, w)``.

    (The released code shifts the flow map the other way, giving tap ``k`` the flow of ``p - (i-1, j-1)``;
    the two agree wherever the flow is locally constant.)"""
    h, w = flow.shape[-2:]
    padded = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    return torch.stack([padded[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)], dim=1)


def upscale_flow(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of the last two axes by ``factor``, values multiplied by ``factor``
    (a flow or per-tap offsets at a finer scale)."""
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1) * factor


def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = x(p + flow(p))`` by bilinear interpolation, zero outside; ``x`` ``(B, C, H, W)``,
    ``flow`` ``(B, 2, H, W)`` (dy, dx) in pixels."""
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + flow[:, 0]
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + flow[:, 1]
    grid = torch.stack((_pixel_to_grid(xs, w), _pixel_to_grid(ys, h)), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------- attention


def window_partition(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B, nW, wh * ww, C)``, windows in row-major order (H, W multiples of size)."""
    b, h, w, c = x.shape
    wh, ww = size
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: torch.Tensor, size: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, wh * ww, C)`` -> ``(B, H, W, C)``."""
    b, _, _, c = windows.shape
    wh, ww = size
    x = windows.view(b, height // wh, width // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Additive attention mask ``(nW, N, N)`` (0 or -inf) for windows of ``window`` over a map cyclically
    rolled by ``-shift``: tokens attend only to tokens of the same region of the unrolled image, so no
    window attends across the wrap (the Swin construction: region boundaries at ``-window`` and ``-shift``)."""
    def bands(n: int) -> torch.Tensor:
        lab = torch.zeros(n, dtype=torch.long, device=device)
        lab[n - window:] = 1
        lab[n - shift:] = 2
        return lab

    labels = (bands(height).view(-1, 1) * 3 + bands(width).view(1, -1)).view(1, height, width, 1)
    lab = window_partition(labels, (window, window))[0, :, :, 0]  # (nW, N)
    allowed = lab.unsqueeze(2) == lab.unsqueeze(1)
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention in square windows with a learned relative-position bias (Swin).

    ``forward(x (B, H, W, C), shift)``: with ``shift > 0`` the map is rolled by ``-shift`` first and
    :func:`shifted_window_mask` keeps windows from attending across the wrap; returns ``(B, H, W, C)``.
    """

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N) in [0, 2w-2]
        self.register_buffer("relative_position_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def bias(self) -> torch.Tensor:
        n = self.window ** 2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
        b, h, w, c = x.shape
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        win = window_partition(x, (self.window, self.window))  # (B, nW, N, C)
        nw, n = win.shape[1], win.shape[2]
        q, k, v = self.qkv(win).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        # explicit softmax attention (the fused kernel's CPU path spends more time checking the -inf mask)
        attn = torch.matmul(q * (c // self.heads) ** -0.5, k.transpose(-2, -1)).add_(self.bias())  # (B, nW, heads, N, N)
        if shift:  # only the last row and column of windows hold wrapped tokens: mask those
            mask = shifted_window_mask(h, w, self.window, shift, x.device).to(x.dtype).unsqueeze(1)
            grid = (b, h // self.window, w // self.window, self.heads, n, n)
            attn5, mask5 = attn.view(grid), mask.view(grid[1:3] + (1, n, n))
            attn5[:, -1] += mask5[-1]
            attn5[:, :-1, -1] += mask5[:-1, -1]
        out = self.proj(torch.matmul(attn.softmax(dim=-1), v).transpose(2, 3).reshape(b, nw, n, c))  # (B, nW, N, C)
        out = window_reverse(out, (self.window, self.window), h, w)
        return torch.roll(out, shifts=(shift, shift), dims=(1, 2)) if shift else out


def _log_coords(rel: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """Relative coordinates normalised to [-8, 8] by ``extent`` and log-spaced (Swin-v2 style)."""
    rel = rel / extent.clamp_min(1.0) * 8.0
    return torch.sign(rel) * torch.log2(rel.abs() + 1.0) / math.log2(8.0)


class _CosineAffine(nn.Module):
    """Cosine-attention logits: ``cos(q, k) * exp(min(logit_scale, log 100)) + 16 sigmoid(MLP(coords))``,
    the continuous position bias MLP ``2 -> hidden -> heads`` evaluated on fixed relative coordinates."""

    def __init__(self, heads: int, hidden: int):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads, bias=False))

    def forward(self, q: torch.Tensor, k: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., heads, N1, N2)`` of queries ``q`` ``(..., heads, N1, d)`` and keys ``k``
        ``(..., heads, N2, d)``; ``coords`` ``(N1, N2, 2)``."""
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # applied to q: fewer multiplies
        attn = torch.matmul(F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1).transpose(-2, -1))
        return attn.add_(16 * torch.sigmoid(self.cpb_mlp(coords)).permute(2, 0, 1))


class AnchorStripeAttention(nn.Module):
    """Anchor-stripe attention (GRL): tokens of a stripe window exchange information through the stripe's
    anchors (a ``1/down``-resolution projection of the same window) in two cosine-attention steps:
    anchors attend to the stripe (keys k, values v), then the stripe's queries attend to the anchors
    (values from the first step). No mask, no shift: stripes tile the map.

    ``forward(qkv (B, H, W, 3C'), anchor (B, H/down, W/down, C'), vertical)``: stripes of ``stripe``
    ``(sh, sw)``, or its transpose when ``vertical``. Returns ``(B, H, W, C')``.
    """

    def __init__(self, heads: int, stripe: Tuple[int, int], down: int, cpb_hidden: int):
        super().__init__()
        self.heads, self.stripe, self.down = heads, tuple(stripe), down
        self.a2w = _CosineAffine(heads, cpb_hidden)
        self.w2a = _CosineAffine(heads, cpb_hidden)
        for name, size in (("h", self.stripe), ("v", self.stripe[::-1])):
            rel = self._relative(size, down)  # (N2, N1, 2): window token minus anchor centre
            extent = torch.tensor([size[0] - 1.0, size[1] - 1.0])
            self.register_buffer(f"coords_a2w_{name}", _log_coords(rel, extent), persistent=False)
            self.register_buffer(f"coords_w2a_{name}", _log_coords(-rel.transpose(0, 1), extent), persistent=False)

    @staticmethod
    def _relative(size: Tuple[int, int], down: int) -> torch.Tensor:
        window = torch.stack(torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij"), -1).view(-1, 2)
        anchor = torch.stack(torch.meshgrid(torch.arange(size[0] // down), torch.arange(size[1] // down), indexing="ij"),
                             -1).view(-1, 2) * down + (down - 1) / 2.0
        return window.unsqueeze(0).float() - anchor.unsqueeze(1)

    def forward(self, qkv: torch.Tensor, anchor: torch.Tensor, vertical: bool = False) -> torch.Tensor:
        b, h, w, c3 = qkv.shape
        c = c3 // 3
        size = self.stripe[::-1] if vertical else self.stripe
        tag = "v" if vertical else "h"
        win = window_partition(qkv, size)  # (B, nS, N1, 3C')
        ns, n1 = win.shape[1], win.shape[2]
        anc = window_partition(anchor, (size[0] // self.down, size[1] // self.down))  # (B, nS, N2, C')
        n2 = anc.shape[2]
        q, k, v = win.view(b, ns, n1, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        a = anc.view(b, ns, n2, self.heads, c // self.heads).transpose(2, 3)  # (B, nS, heads, N2, hd)
        attn = self.a2w(a, k, getattr(self, f"coords_a2w_{tag}")).softmax(dim=-1)
        anchor_values = attn @ v  # (B, nS, heads, N2, hd)
        attn = self.w2a(q, a, getattr(self, f"coords_w2a_{tag}")).softmax(dim=-1)
        out = (attn @ anchor_values).transpose(2, 3).reshape(b, ns, n1, c)
        return window_reverse(out, size, h, w)


class MixedAttention(nn.Module):
    """The anchor-stripe branch of a KGMgT block: ``qkv = Linear(C, 3C)``; anchor-stripe attention on the
    second half of qkv (q, k, v of C/2 channels each; anchors from a depthwise ``down+1`` conv with stride
    ``down`` and a 1x1 conv to C/2); the first half of qkv is concatenated with the result and projected by
    ``Linear(2C, C)``. ``forward(x (B, H, W, C), vertical) -> (B, H, W, C)``."""

    def __init__(self, dim: int, heads: int, stripe: Tuple[int, int], down: int = 2, cpb_hidden: int = 512):
        super().__init__()
        self.anchor = nn.Sequential(nn.Conv2d(dim, dim, down + 1, down, (down + 1) // 2, groups=dim),
                                    nn.Conv2d(dim, dim // 2, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.stripe_attn = AnchorStripeAttention(heads, stripe, down, cpb_hidden)
        self.final = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, vertical: bool = False) -> torch.Tensor:
        c = x.shape[-1]
        anchor = self.anchor(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        qkv_direct, qkv_stripe = torch.split(self.qkv(x), [3 * c // 2, 3 * c // 2], dim=-1)
        return self.final(torch.cat([qkv_direct, self.stripe_attn(qkv_stripe, anchor, vertical)], dim=-1))


class _DropPath(nn.Module):
    """Stochastic depth: drops the residual branch of a whole sample with probability ``p`` in training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MGTransformerBlock(nn.Module):
    """Multi-geometric window block: ``x + WindowAttn(LN x, shift) + MixedAttn(LN x, vertical)``, then
    ``+ MLP(LN x)`` (GELU, hidden ``mlp_ratio * C``). ``forward(x (B, H, W, C)) -> (B, H, W, C)``."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, stripe: Tuple[int, int], vertical: bool,
                 mlp_ratio: float, drop_path: float, cpb_hidden: int):
        super().__init__()
        self.shift, self.vertical = shift, vertical
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.mixed_attn = MixedAttention(dim, heads, stripe, 2, cpb_hidden)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = _DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.drop_path(self.attn(y, self.shift) + self.mixed_attn(y, self.vertical))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _ResidualGroup(nn.Module):
    """``depth`` blocks (shift and stripe orientation alternate), a 3x3 conv, plus the group's input."""

    def __init__(self, dim, depth, heads, window, stripe, stripe_alternate, mlp_ratio, drop_paths, cpb_hidden, use_checkpoint):
        super().__init__()
        self.blocks = nn.ModuleList(
            MGTransformerBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, stripe,
                               bool(stripe_alternate and i % 2 == 1), mlp_ratio, drop_paths[i], cpb_hidden)
            for i in range(depth))
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                y = checkpoint(block, y, use_reentrant=False)
            else:
                y = block(y)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


class MGStage(nn.Module):
    """MGwinT stage at one scale: LayerNorm, residual groups of :class:`MGTransformerBlock`, LayerNorm.
    ``forward(x (B, C, H, W)) -> (B, C, H, W)``; H, W multiples of the window and stripe sizes.
    ``use_checkpoint``: gradient checkpointing per block."""

    def __init__(self, dim: int, depths: Sequence[int], heads: Sequence[int], window: int, stripe: Tuple[int, int],
                 stripe_alternate: bool, mlp_ratio: float, drop_path_rate: float, cpb_hidden: int,
                 use_checkpoint: bool = False):
        super().__init__()
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear 0 -> rate (no tensor: meta-safe)
        self.norm_in = nn.LayerNorm(dim)
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.groups = nn.ModuleList(
            _ResidualGroup(dim, d, h, window, stripe, stripe_alternate, mlp_ratio, rates[s:s + d], cpb_hidden, use_checkpoint)
            for d, h, s in zip(depths, heads, starts))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_in(x.permute(0, 2, 3, 1))
        for group in self.groups:
            y = group(y)
        return self.norm_out(y).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- CNNs


class RefinementCNN(nn.Module):
    """The refinement CNN (released code's ``cnn_denoiser``): ``layers`` 3x3 conv-BN-LeakyReLU(0.2)
    layers (widths 2 -> width ... -> 2; the last one too) plus the input. ``(B, 2, H, W) -> (B, 2, H, W)``.
    The last batch norm's scale starts at 0, so each application starts as the identity (applied 5 times,
    a unit-variance residual at initialisation would bury the restored image in noise)."""

    def __init__(self, layers: int, width: int, channels: int = 2):
        super().__init__()
        sizes = [channels] + [width] * (layers - 1) + [channels]
        body = []
        for cin, cout in zip(sizes[:-1], sizes[1:]):
            body += [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*body)
        nn.init.zeros_(body[-2].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class Discriminator(nn.Module):
    """WGAN critic on magnitude images ``(B, 1, H, W) -> (B,)``, any H, W: five blocks of (3x3 conv,
    LeakyReLU, 3x3 stride-2 conv, LeakyReLU) doubling the width from ``width`` (at most 8x), global average
    pool, linear. No sigmoid and no batch norm (a WGAN-GP critic must be linear in its output and its gradient
    penalty is per sample; the released code's sigmoid is not kept)."""

    def __init__(self, width: int, in_channels: int = 1, blocks: int = 5):
        super().__init__()
        layers, cin = [], in_channels
        for i in range(blocks):
            cout = width * min(2 ** i, 8)
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(cout, cout, 3, 2, 1), nn.LeakyReLU(0.2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1))).squeeze(-1)
