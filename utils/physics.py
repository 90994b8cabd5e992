"""MRI physics: the one place with FFTs and coil operations.

Imports only torch. Conventions:

* k-space and coil images are complex tensors (``torch.complex64``/``complex128``) shaped
  ``(..., coils, H, W)``; H is the readout (row) axis, W the phase-encoding (column) axis.
* ``fft2c``/``ifft2c`` are centred (DC at ``(H//2, W//2)``) and orthonormal (``norm="ortho"``),
  so they preserve the L2 norm and are each other's adjoint.
* A sampling mask is a real or boolean tensor broadcastable to the k-space, usually ``(W,)`` or
  ``(B, 1, 1, W)``; non-zero means "line sampled".
* Coil sensitivities ``sens`` are complex ``(..., coils, H, W)``; images ``(..., 1, H, W)`` or
  ``(..., H, W)`` are expanded over coils by broadcasting.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "fft2c",
    "ifft2c",
    "rss",
    "sens_expand",
    "sens_reduce",
    "SenseOperator",
    "hard_data_consistency",
    "soft_data_consistency",
    "noise_weighted_data_consistency",
    "SoftDataConsistency",
    "acs_bounds",
    "acs_columns",
    "ACS_CONVENTIONS",
    "center_crop",
    "center_pad",
    "center_crop_or_pad",
    "as_mask",
    "acs_column_mask",
    "model_mask",
]

_IMAGE_DIMS = (-2, -1)


def _check_complex(x: torch.Tensor, name: str) -> None:
    if not torch.is_complex(x):
        raise TypeError(f"{name} must be a complex tensor, got dtype {x.dtype}")


#: ``(H, W, dtype, device) -> (c, s c)``: the real ``(H, W)`` checkerboards of :func:`_checkerboards`.
_CHECKERBOARDS: Dict[Tuple[int, int, torch.dtype, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}


def _checkerboards(h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real ``(h, w)`` tensors ``c = (-1)^(row + col)`` and ``s c`` with ``s = (-1)^(h/2 + w/2)`` (even
    ``h``, ``w``), cached.

    For even sizes the centred orthonormal FFT is ``fftshift(F(ifftshift(x))) = s c . F(c . x)`` (likewise
    for the inverse): a cyclic shift by half the length is a modulation by ``(-1)^k``. So ``c`` is the
    input board and ``s c`` the output board; ``c^2 = s^2 = 1``, so the k-space boards of an FFT pair
    cancel. Multiplying by +-1 is exact. Built outside inference mode so that autograd may save them.
    """
    key = (h, w, dtype, device)
    boards = _CHECKERBOARDS.get(key)
    if boards is None:
        with torch.inference_mode(False), torch.no_grad():
            parity = (torch.arange(h, device=device).view(-1, 1) + torch.arange(w, device=device).view(1, -1)) % 2
            board = (1 - 2 * parity).to(dtype)
            boards = (board, -board if (h // 2 + w // 2) % 2 else board)
        if len(_CHECKERBOARDS) >= 64:  # many distinct sizes (e.g. a sweep): keep the cache bounded
            _CHECKERBOARDS.clear()
        _CHECKERBOARDS[key] = boards
    return boards


def _fast_boards(x: torch.Tensor, dim: Tuple[int, int]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The boards ``(c, s c)`` of :func:`_checkerboards` for ``x`` when ``dim`` are its last two axes and
    both are even; ``None`` otherwise (then the exact shift path is used)."""
    nd = x.dim()
    if nd < 2 or tuple(d % nd for d in dim) != (nd - 2, nd - 1):
        return None
    h, w = x.shape[-2], x.shape[-1]
    if h % 2 or w % 2:
        return None
    return _checkerboards(h, w, x.real.dtype, x.device)


def fft2c(x: torch.Tensor, dim: Tuple[int, int] = _IMAGE_DIMS) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over ``dim`` (image -> k-space). Complex in, complex out.

    Equals ``fftshift(fft2(ifftshift(x), norm="ortho"))``; for even sizes over the last two axes it is
    computed without the shifts, as ``s c . fft2(c . x)`` with the checkerboards of
    :func:`_checkerboards` (equal to float rounding, about twice as fast on the CPU).
    """
    _check_complex(x, "x")
    boards = _fast_boards(x, dim)
    if boards is not None:
        return torch.fft.fft2(x * boards[0], dim=dim, norm="ortho") * boards[1]
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.fft2(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def ifft2c(k: torch.Tensor, dim: Tuple[int, int] = _IMAGE_DIMS) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over ``dim`` (k-space -> image); shift-free like :func:`fft2c`
    for even sizes over the last two axes."""
    _check_complex(k, "k")
    boards = _fast_boards(k, dim)
    if boards is not None:
        return torch.fft.ifft2(k * boards[0], dim=dim, norm="ortho") * boards[1]
    k = torch.fft.ifftshift(k, dim=dim)
    k = torch.fft.ifft2(k, dim=dim, norm="ortho")
    return torch.fft.fftshift(k, dim=dim)


def rss(x: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis ``dim``: ``sqrt(sum |x|^2)``; real output."""
    if torch.is_complex(x):
        power = x.real.square() + x.imag.square()
    else:
        power = x.square()
    return power.sum(dim=dim).sqrt()


def _modulated_product(image: torch.Tensor, sens: torch.Tensor, board: torch.Tensor) -> torch.Tensor:
    """``board . sens . image`` with the board multiplied onto the factor with fewer elements (exact:
    the board is +-1)."""
    if image.numel() <= sens.numel():
        return sens * (image * board)
    return (sens * board) * image


def sens_expand(image: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Image ``(..., 1, H, W)`` and maps ``(..., C, H, W)`` -> coil k-space ``fft2c(sens * image)``.

    For even ``H``, ``W`` the input checkerboard of the shift-free FFT goes on the smaller factor
    (usually the one-coil image) instead of the product.
    """
    if torch.is_complex(image) and torch.is_complex(sens) and image.shape[-2:] == sens.shape[-2:]:
        boards = _fast_boards(sens, _IMAGE_DIMS)
        if boards is not None:
            prod = _modulated_product(image, sens, boards[0])
            return torch.fft.fft2(prod, dim=_IMAGE_DIMS, norm="ortho") * boards[1]
    return fft2c(sens * image)


def _reduce_unshifted(kspace_b: torch.Tensor, sens: torch.Tensor, board: torch.Tensor) -> torch.Tensor:
    """``board . sum_c conj(S_c) F^H(kspace_b)_c`` with the plain (uncentred) inverse FFT: the output board
    is applied after the coil sum, on the one-coil image."""
    return (sens.conj() * torch.fft.ifft2(kspace_b, dim=_IMAGE_DIMS, norm="ortho")).sum(dim=-3, keepdim=True) * board


def sens_reduce(kspace: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Coil k-space ``(..., C, H, W)`` -> combined image ``(..., 1, H, W)``: ``sum_c conj(S_c) F^H k_c``.

    For even ``H``, ``W`` the output checkerboard of the shift-free inverse FFT is applied after the
    coil sum.
    """
    if torch.is_complex(kspace) and torch.is_complex(sens) and kspace.shape[-2:] == sens.shape[-2:]:
        boards = _fast_boards(kspace, _IMAGE_DIMS)
        if boards is not None:
            return _reduce_unshifted(kspace * boards[0], sens, boards[1])
    return (sens.conj() * ifft2c(kspace)).sum(dim=-3, keepdim=True)


def as_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A mask as a boolean tensor broadcastable to ``like`` (a ``(W,)`` mask becomes ``(1, W)``)."""
    mask = mask.to(device=like.device)
    if mask.dtype != torch.bool:
        mask = mask != 0
    if mask.dim() == 1:
        mask = mask.view(1, -1)
    return mask


class SenseOperator:
    """Multi-coil SENSE operator ``A = M F S`` with adjoint ``A^H = S^H F^H M``.

    ``sens``: complex ``(..., C, H, W)``; ``mask``: broadcastable to the k-space. ``forward`` takes an
    image ``(..., 1, H, W)`` and returns masked coil k-space ``(..., C, H, W)``; ``adjoint`` the reverse.
    The operator holds no learnable or mutable state.
    """

    def __init__(self, sens: torch.Tensor, mask: torch.Tensor):
        _check_complex(sens, "sens")
        self.sens = sens
        self.mask = as_mask(mask, sens)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sens_expand(image, self.sens) * self.mask

    __call__ = forward

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        return sens_reduce(kspace * self.mask, self.sens)

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        """``A^H A x``. For even ``H``, ``W`` the k-space checkerboards (and signs) of the shift-free FFTs
        cancel (``c^2 = s^2 = 1`` and the mask is elementwise), so only the image-side ones are applied."""
        sens = self.sens
        if torch.is_complex(image) and image.shape[-2:] == sens.shape[-2:]:
            boards = _fast_boards(sens, _IMAGE_DIMS)
            if boards is not None:
                board = boards[0]  # s c . F^H(c . M . s c . F(c . S x)) = c . F^H(M . F(c . S x))
                prod = _modulated_product(image, sens, board)
                k = torch.fft.fft2(prod, dim=_IMAGE_DIMS, norm="ortho") * self.mask
                return _reduce_unshifted(k, sens, board)
        return self.adjoint(self.forward(image))


def hard_data_consistency(k_pred: torch.Tensor, k_measured: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace predicted k-space by the measured values on sampled lines."""
    return torch.where(as_mask(mask, k_pred), k_measured, k_pred)


def soft_data_consistency(
    k_pred: torch.Tensor, k_measured: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | float
) -> torch.Tensor:
    """Gradient step on ``||M(k - y)||^2``: ``k - weight * M (k - y)`` (VarNet's soft DC)."""
    m = as_mask(mask, k_pred)
    return k_pred - weight * torch.where(m, k_pred - k_measured, torch.zeros_like(k_pred))


def noise_weighted_data_consistency(
    k_pred: torch.Tensor, k_measured: torch.Tensor, mask: torch.Tensor, eta: torch.Tensor | float
) -> torch.Tensor:
    """Noise-weighted DC: on sampled lines ``(k_pred + eta * k) / (1 + eta)``, elsewhere ``k_pred``.

    ``eta -> inf`` is hard replacement, ``eta = 0`` ignores the measurement.
    """
    m = as_mask(mask, k_pred)
    return torch.where(m, (k_pred + eta * k_measured) / (1 + eta), k_pred)


class SoftDataConsistency(nn.Module):
    """Soft data consistency with one learnable scalar weight (initialised to ``init``)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        # shape (1,), not a 0-dim scalar: DeepSpeed cannot broadcast 0-dim parameters
        self.weight = nn.Parameter(torch.full((1,), float(init)))

    def forward(self, k_pred: torch.Tensor, k_measured: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return soft_data_consistency(k_pred, k_measured, mask, self.weight)


def acs_bounds(mask: torch.Tensor) -> Tuple[int, int]:
    """Half-open column range ``[left, right)`` of the contiguous sampled block around the centre.

    ``mask``: ``(W,)`` (or any shape whose last axis is W and whose other entries agree). The centre
    column is ``W // 2``; raises ``ValueError`` if it is not sampled.
    """
    line = (mask.reshape(-1, mask.shape[-1])[0] != 0).to(torch.int8).cpu()
    width = line.numel()
    centre = width // 2
    if line[centre] == 0:
        raise ValueError("mask has no sampled centre line, so it has no ACS region")
    unsampled = (line == 0).nonzero().flatten()
    left_gaps = unsampled[unsampled < centre]
    right_gaps = unsampled[unsampled > centre]
    left = int(left_gaps.max()) + 1 if left_gaps.numel() else 0
    right = int(right_gaps.min()) if right_gaps.numel() else width
    return left, right


def _crop_slices(size: int, target: int, matlab: bool = False) -> slice:
    start = size // 2 - target // 2 if matlab else (size - target) // 2
    return slice(start, start + target)


def center_crop(x: torch.Tensor, shape: Sequence[int], matlab: bool = False) -> torch.Tensor:
    """Centre-crop the last two axes to ``shape = (h, w)`` (each at most the current size).

    The window starts at ``(H - h) // 2`` (fastMRI); ``matlab=True`` starts it at ``H // 2 - h // 2``
    as MATLAB's ``crop.m`` (Lustig) does, which keeps the FFT centre pixel ``H // 2`` at ``h // 2``.
    The two differ by one pixel only when ``H`` is even and ``h`` odd.
    """
    h, w = int(shape[0]), int(shape[1])
    H, W = x.shape[-2], x.shape[-1]
    if h > H or w > W:
        raise ValueError(f"cannot crop {(H, W)} to larger {(h, w)}")
    return x[..., _crop_slices(H, h, matlab), _crop_slices(W, w, matlab)]


def center_pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Zero-pad the last two axes symmetrically to ``shape = (h, w)`` (inverse of ``center_crop``)."""
    h, w = int(shape[0]), int(shape[1])
    H, W = x.shape[-2], x.shape[-1]
    if h < H or w < W:
        raise ValueError(f"cannot pad {(H, W)} to smaller {(h, w)}")
    top, left = (h - H) // 2, (w - W) // 2
    pad = (left, w - W - left, top, h - H - top)
    if torch.is_complex(x):
        return torch.view_as_complex(
            torch.nn.functional.pad(torch.view_as_real(x).movedim(-1, 0), pad).movedim(0, -1).contiguous()
        )
    return torch.nn.functional.pad(x, pad)


def center_crop_or_pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop or zero-pad each of the last two axes independently to ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    H, W = x.shape[-2], x.shape[-1]
    x = center_crop(x, (min(h, H), min(w, W)))
    return center_pad(x, (h, w))


# ------------------------------------------------------------------ reconstruction-model masks


#: The two ACS conventions of the reconstruction models' coil-sensitivity nets (:func:`acs_columns`).
ACS_CONVENTIONS = ("fastmri", "contiguous")


def acs_columns(mask: torch.Tensor, num_low_frequencies: Union[None, int, torch.Tensor] = None,
                convention: str = "fastmri") -> torch.Tensor:
    """Boolean ``(B, W)`` mask of the ACS columns a coil-sensitivity net sees, by ``convention``.

    ``mask``: ``(B, W)`` (or ``(W,)``) sampling mask. Around the centre column ``c = W // 2`` let ``left``
    be the number of consecutive sampled columns ``c - 1, c - 2, ...`` and ``right`` that of ``c, c + 1,
    ...`` (the contiguous block is ``[c - left, c + right)``, :func:`acs_bounds`):

    * ``"fastmri"`` -- fastMRI's E2E-VarNet (``SensitivityModel.get_pad_and_num_low_freqs``), which the
      PromptMR+ reference (``KspaceACSExtractor``, line masks) follows too: ``n = max(2 min(left, right), 1)``
      columns, the window ``[(W - n + 1) // 2, (W - n + 1) // 2 + n)``. It differs from the block where the
      block is lopsided, e.g. when a comb line adjoins the ACS (most SNU challenge masks).
    * ``"contiguous"`` -- the whole contiguous block ``[c - left, c + right)`` (the SNU masks' ACS as
      GRAPPA calibrates on it; HiFi-Mamba's coil maps).

    ``num_low_frequencies``: ``None``, an int or ``(B,)``; an entry ``n > 0`` gives the window
    ``[(W - n + 1) // 2, ... + n)`` in both conventions, entries ``<= 0`` are derived from the mask.
    Vectorised over the batch; raises ``ValueError`` naming the batch element whose centre column is not
    sampled (when deriving) or whose ``n`` exceeds ``W``. (Where fastMRI's ``argmin`` would count 0 for a
    side sampled up to the edge, the run length is counted.)
    """
    if convention not in ACS_CONVENTIONS:
        raise ValueError(f"acs_columns: convention must be one of {ACS_CONVENTIONS}, got {convention!r}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2:
        raise ValueError(f"acs_columns: mask must be (B, W) or (W,), got shape {tuple(mask.shape)}")
    batch, width = mask.shape
    device = mask.device
    if num_low_frequencies is None:
        n = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        n = torch.as_tensor(num_low_frequencies, dtype=torch.long, device=device).flatten()
        if n.numel() not in (1, batch):
            raise ValueError(f"acs_columns: num_low_frequencies has {n.numel()} entries for a batch of {batch}")
        n = n.expand(batch)
    too_wide = (n > width).nonzero().flatten()
    if too_wide.numel():
        b = int(too_wide[0])
        raise ValueError(f"acs_columns: batch element {b}: num_low_frequencies {int(n[b])} exceeds the width {width}")
    cols = torch.arange(width, device=device).view(1, -1)
    given = n > 0
    start = (width - n + 1) // 2
    window = (cols >= start[:, None]) & (cols < (start + n)[:, None])
    if bool(given.all()):
        return window
    line = mask != 0
    centre = width // 2
    missing = (~line[:, centre] & ~given).nonzero().flatten()
    if missing.numel():
        raise ValueError(f"acs_columns: batch element {int(missing[0])}: mask has no sampled centre line, "
                         f"so it has no ACS region")
    right = line[:, centre:].to(torch.int8).cumprod(dim=1).sum(dim=1)  # run c, c+1, ...
    left = line[:, :centre].flip(1).to(torch.int8).cumprod(dim=1).sum(dim=1)  # run c-1, c-2, ...
    if convention == "fastmri":
        derived_n = torch.clamp(2 * torch.minimum(left, right), min=1)
        derived_start = (width - derived_n + 1) // 2
        derived = (cols >= derived_start[:, None]) & (cols < (derived_start + derived_n)[:, None])
    else:
        derived = (cols >= (centre - left)[:, None]) & (cols < (centre + right)[:, None])
    return torch.where(given[:, None], window, derived)


def acs_column_mask(mask: torch.Tensor, num_low_frequencies: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
    """PromptMR+'s ACS columns (its reference follows fastMRI): ``acs_columns(mask, n, "fastmri")``."""
    return acs_columns(mask, num_low_frequencies, "fastmri")


def model_mask(mask: torch.Tensor, shape: Tuple[int, int, int, int, int]) -> torch.Tensor:
    """A sampling mask as a boolean ``(B, S|1, 1, H|1, W)`` tensor broadcastable to k-space ``shape``
    ``(B, S, C, H, W)``.

    Accepted: ``(W,)`` and ``(B, W)`` (one line mask for every slice/frame: the SNU challenge),
    ``(B, S, W)`` (a line mask per adjacent frame: kt masks), ``(B, H, W)`` (one 2-D mask) and
    ``(B, S, H, W)`` (a 2-D mask per frame: ktRadial). A 3-D mask is read as ``(B, S, W)`` when its
    second axis is S and as ``(B, H, W)`` when it is H; when S == H it is ambiguous and refused (pass
    the 4-D form). Any axis of size 1 broadcasts.
    """
    b, s, _, h, w = shape
    dims = tuple(mask.shape)
    if mask.dim() == 1:
        mask = mask.view(1, 1, 1, 1, -1)
    elif mask.dim() == 2:
        mask = mask.view(dims[0], 1, 1, 1, dims[1])
    elif mask.dim() == 3:
        if dims[1] == s and s != h:
            mask = mask.view(dims[0], s, 1, 1, dims[2])
        elif dims[1] == h and s != h:
            mask = mask.view(dims[0], 1, 1, h, dims[2])
        elif dims[1] == 1:
            mask = mask.view(dims[0], 1, 1, 1, dims[2])
        else:
            raise ValueError(f"mask: a 3-D mask {dims} is ambiguous or does not match (B, S={s}, W) or "
                             f"(B, H={h}, W); pass (B, S, H, W)")
    elif mask.dim() == 4:
        mask = mask.unsqueeze(2)
    else:
        raise ValueError(f"mask must be (B, [S,] [H,] W), got {dims}")
    mb, ms, _, mh, mw = mask.shape
    if mb not in (1, b) or ms not in (1, s) or mh not in (1, h) or mw != w:
        raise ValueError(f"mask {dims} does not broadcast to k-space (B, S, C, H, W) = {tuple(shape)}")
    return mask.expand(b, -1, -1, -1, -1) != 0
