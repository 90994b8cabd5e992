"""Non-learned baselines for CMRxRecon multi-coil cine: zero-filled, GRAPPA per frame and CG-SENSE.

    python -m data.cine_baselines --path_data <CMRxRecon ...Set folder> --out R --method {zero_filled,grappa,sense,auto}

writes, for every undersampled case of the set (:func:`data.cine.list_cine_cases`), a CMRxRecon
submission file ``R/Submission/MultiCoil/Cine/<Set>/<relpath>`` (``AccFactor04/P001/cine_sax.mat``,
or the 2024 ``UnderSample_TaskN/...`` names), key ``img4ranking``, single precision: the organisers'
run4Ranking of the reconstructed RSS images (:func:`utils.metrics.run4ranking`: central slices,
frames 1-3, centre crop; h5py order ``(3, slices, round(ky/2), round(kx/3))``). Only the ranked slices
are read, and only the ranked frames reconstructed (GRAPPA and SENSE still calibrate on every frame).
A bad case (unreadable, truncated, mask not matching) is one line naming the file; the others are
still written and the exit status is 1. An unusable ``--out`` is reported before any work (status 2).

Array layout: k-space ``(t, slices, coils, ky, kx)`` as h5py reads CMRxRecon (ky the undersampled
phase-encoding axis, kx the 2x oversampled readout), complex; masks ``(ky, kx)`` (every frame) or
``(t, ky, kx)`` (kt masks), 0/1; images are RSS magnitudes ``(t, slices, ky, kx)`` float32, in the
k-space's units (orthonormal FFT, :mod:`utils.physics`).

Methods (every one vectorised over frames, slices and coils, in chunks that bound memory):

``zero_filled``
    RSS of ``ifft2c`` of the undersampled k-space.
``grappa``
    GRAPPA per frame (:func:`data.grappa.grappa_reconstruct` with ``calibration=``) for line masks
    (uniform, ktUniform, ktGaussian). The calibration k-space of a slice is its *time-averaged*
    k-space, the sum over frames of the undersampled k-space divided by the number of frames that
    sampled each location (:func:`time_averaged_kspace`): k-space is linear in the object and the coil
    maps do not move, so these are the data of the mean image under the same coils (exactly on lines
    sampled in every frame, the ACS; elsewhere a mean over fewer frames). Calibrated on the
    central block of lines that the average covers (every line of the ACS, and for kt masks also the
    lines the moving pattern fills in over the cycle; at most ``calibration_lines``), the kernels of
    every sampling pattern are fitted once per slice and applied to every frame's own pattern.
    Not for 2-D masks (ktRadial).
``sense``
    CG-SENSE per frame with ESPIRiT coil maps (:func:`espirit_maps`: two map sets, soft-SENSE) of the
    same time average, calibrated on the largest centred block it covers (:func:`calibration_region`);
    ``iterations`` conjugate-gradient steps on ``(A^H A + lamda I) x = A^H y + lamda x0`` per frame
    (:class:`utils.physics.SenseOperator`), Tikhonov towards ``x0``, the SENSE image of the time-averaged
    k-space (static anatomy with sqrt(t) less noise; for kt masks also what other frames sampled); then
    the coil k-space ``F S x`` with the measured samples put back, then RSS (so the image is on the
    scale of the RSS reference). Any mask, ktRadial included.
``auto``
    The method measured best for the mask family that :func:`data.cine_masks.estimate_cine_mask`
    reads from the mask (:data:`AUTO_METHODS`; never the folder name): ``sense`` for every family.

Measured (2025 ranking SSIM, mean over the SAX and LAX files of the simulator's demo ValidationSet,
``python -m data.simulate_cine --preset demo --seed 0``, 3 subjects; defaults tuned on its
TrainingSet; the kt masks drawn from :func:`data.cine_masks.make_cine_mask`; CPU, one thread)::

    family       R   zero_filled  grappa  sense
    uniform      4   0.962        0.965   0.978     (the simulator's AccFactor files: 24 ACS lines)
    uniform      8   0.960        0.964   0.973
    uniform     10   0.959        0.966   0.972
    kt_uniform   4   0.929        0.952   0.987
    kt_uniform   8   0.923        0.936   0.964
    kt_uniform  10   0.925        0.938   0.970
    kt_gaussian  4   0.938        0.954   0.986
    kt_gaussian  8   0.927        0.938   0.976
    kt_gaussian 10   0.923        0.931   0.973
    kt_radial    4   0.992        -       0.998
    kt_radial    8   0.945        -       0.994
    kt_radial   10   0.916        -       0.992

Time (CPU, one thread, the CLI's ``seconds_per_frame``: reading, calibration on all 12 frames and the
reconstruction of the 3 ranked frames x 2 slices of each file, per reconstructed frame): at the demo
size (SAX 64 x 96, LAX 48 x 96) zero-filled 0.004 s, GRAPPA 0.04 s, SENSE 0.08 s. At CMRxRecon's size (one simulated ``full``-preset subject, 2 SAX slices of 246 x 512,
10 coils, uniform R8): zero-filled 0.06 s/frame (SSIM 0.756), GRAPPA 0.26 s/frame (0.823), SENSE
2.2 s/frame (0.825; ESPIRiT's per-pixel eigendecompositions and 10 CG steps of 30 FFTs).

GRAPPA gains little on the demo data: the simulator's coil ring is far from the object (smooth maps, a high
g-factor), so its kernels need a strong Tikhonov weight (``lamda`` 1, relative) against noise, and a
random kt draw leaves gaps in the outer k-space that no kernel bridges. The simple coil maps
(low-resolution coil images over their RSS) were measured too and lost to ESPIRiT (uniform R4 0.967
against 0.978): the simulated anatomy is cut at the edge of the phase field of view, where one set of
smooth maps is wrong and its error spreads through the unfolding; ESPIRiT's second map set takes it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from data.cine import find_cine_sets, list_cine_cases, open_cine_kspace, write_submission_file
from data.cine_masks import estimate_cine_mask
from data.formats import FormatError
from data.grappa import grappa_reconstruct
from data.matlab import write_mat73
from utils.io import atomic_path, prepare_output_dir
from utils.metrics import RANKING_FRAMES, ranking_slices, run4ranking
from utils.physics import SenseOperator, center_pad, fft2c, ifft2c, rss, sens_expand

__all__ = [
    "METHODS",
    "AUTO_METHODS",
    "rss_images",
    "zero_filled_cine",
    "time_averaged_kspace",
    "calibration_block",
    "grappa_cine_kspace",
    "calibration_region",
    "espirit_maps",
    "sense_cine_kspace",
    "choose_method",
    "reconstruct_cine",
    "reconstruct_case",
    "write_cine_baseline",
]

METHODS: Tuple[str, ...] = ("zero_filled", "grappa", "sense", "auto")
# The method per mask family for --method auto (measured, module docstring).
AUTO_METHODS: Dict[str, str] = {"uniform": "sense", "kt_uniform": "sense", "kt_gaussian": "sense",
                                "kt_radial": "sense"}
_CHUNK_BYTES = 256 * 2**20  # working memory per vectorised chunk (zero-filled RSS, SENSE)
_SUBMISSION_ROOT = Path("Submission") / "MultiCoil" / "Cine"


# ----------------------------------------------------------------------------- inputs


def _as_kspace(kspace) -> torch.Tensor:
    """Complex64 torch k-space ``(t, slices, coils, ky, kx)`` (numpy or torch in)."""
    if isinstance(kspace, np.ndarray):
        kspace = torch.from_numpy(np.ascontiguousarray(kspace))
    if not isinstance(kspace, torch.Tensor) or not torch.is_complex(kspace):
        raise ValueError(f"cine k-space must be a complex array, got {getattr(kspace, 'dtype', type(kspace).__name__)}")
    if kspace.dim() != 5:
        raise ValueError(f"cine k-space must be (t, slices, coils, ky, kx), got shape {tuple(kspace.shape)}")
    return kspace.to(torch.complex64)


def _as_mask(mask, shape: Sequence[int]) -> torch.Tensor:
    """Boolean ``(t, ky, kx)`` mask for k-space ``shape`` ``(t, slices, coils, ky, kx)``; a ``(ky, kx)``
    mask is shared by every frame."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    t, _, _, ky, kx = shape
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or mask.shape[1:] != (ky, kx) or mask.shape[0] not in (1, t):
        raise ValueError(f"mask shape {mask.shape} does not match k-space {tuple(shape)} "
                         f"(expected ({ky}, {kx}) or ({t}, {ky}, {kx}))")
    return torch.from_numpy(np.broadcast_to(mask != 0, (t, ky, kx)).copy())


def _frames(frames, t: int) -> torch.Tensor:
    """Frame indices ``(n,)`` from None (all), a slice or a sequence of ints."""
    if frames is None:
        return torch.arange(t)
    if isinstance(frames, slice):
        return torch.arange(t)[frames]
    index = torch.as_tensor(list(frames), dtype=torch.long)
    if index.numel() and (index.min() < -t or index.max() >= t):
        raise ValueError(f"frames {index.tolist()} out of range for {t} frames")
    return index % t


def _chunk(n: int, bytes_per_item: int, budget: int = _CHUNK_BYTES) -> int:
    return max(1, min(n, budget // max(1, bytes_per_item)))


# ----------------------------------------------------------------------------- zero-filled


def rss_images(kspace) -> torch.Tensor:
    """RSS of ``ifft2c`` per frame and slice: k-space ``(t, slices, coils, ky, kx)`` -> float32
    ``(t, slices, ky, kx)``, in chunks of frames x slices."""
    k = _as_kspace(kspace)
    t, s, c, ky, kx = k.shape
    flat = k.reshape(t * s, c, ky, kx)
    out = torch.empty((t * s, ky, kx), dtype=torch.float32)
    step = _chunk(t * s, c * ky * kx * 8 * 4)
    for a in range(0, t * s, step):
        out[a:a + step] = rss(ifft2c(flat[a:a + step]), dim=-3)
    return out.reshape(t, s, ky, kx)


def zero_filled_cine(kspace, mask, frames=None) -> torch.Tensor:
    """Zero-filled RSS images ``(n_frames, slices, ky, kx)`` float32 of the ``mask``-ed k-space."""
    k = _as_kspace(kspace)
    m = _as_mask(mask, k.shape)
    f = _frames(frames, k.shape[0])
    return rss_images(k[f] * m[f][:, None, None])


# ----------------------------------------------------------------------------- time average


def time_averaged_kspace(kspace, mask) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(average, count)``: the mean over frames of the undersampled k-space where sampled,
    complex64 ``(slices, coils, ky, kx)`` (zero where no frame sampled), and the number of frames that
    sampled each location, int ``(ky, kx)``."""
    k = _as_kspace(kspace)
    m = _as_mask(mask, k.shape)
    count = m.sum(dim=0)
    total = torch.zeros(k.shape[1:], dtype=torch.complex64)
    t = k.shape[0]
    step = _chunk(t, k[0].numel() * 8)  # frames per chunk: bounded temporaries
    for a in range(0, t, step):
        total += torch.where(m[a:a + step, None, None], k[a:a + step], torch.zeros((), dtype=k.dtype)).sum(dim=0)
    return total / count.clamp(min=1), count


def calibration_block(count: torch.Tensor, max_lines: int, every_frame: Optional[int] = None) -> Tuple[int, int]:
    """Half-open ky range ``[a, b)`` of the calibration lines: the contiguous block around ``ky // 2``
    of lines sampled (over the whole readout) by at least one frame, or by all ``every_frame`` frames
    when given, cut to at most ``max_lines`` centred lines. ValueError if fewer than 3 lines."""
    need = 1 if every_frame is None else every_frame
    lines = (count >= need).all(dim=-1).numpy()
    ky = lines.size
    centre = ky // 2
    if not lines[centre]:
        raise ValueError("the centre k-space line is not sampled: no calibration region")
    gaps = np.flatnonzero(~lines)
    left_gaps, right_gaps = gaps[gaps < centre], gaps[gaps > centre]
    a = int(left_gaps.max()) + 1 if left_gaps.size else 0
    b = int(right_gaps.min()) if right_gaps.size else ky
    if b - a > max_lines:
        a = max(a, centre - max_lines // 2)
        b = min(b, a + max_lines)
    if b - a < 3:
        raise ValueError(f"calibration region of {b - a} line(s) around the centre is too narrow")
    return a, b


# ----------------------------------------------------------------------------- GRAPPA


def _line_mask(m: torch.Tensor) -> torch.Tensor:
    """``(t, ky)`` lines of a ``(t, ky, kx)`` line mask; ValueError for a 2-D pattern."""
    if not bool((m == m[..., :1]).all()):
        raise ValueError("GRAPPA needs a line mask (constant along kx); this mask is a 2-D pattern "
                         "(ktRadial): use sense")
    return m[..., 0]


def grappa_cine_kspace(kspace, mask, frames=None, kernel_size: Sequence[int] = (5, 4), lamda: float = 1.0,
                       calibration_lines: int = 48, every_frame: bool = False, min_fit: float = 0.6) -> torch.Tensor:
    """GRAPPA-filled coil k-space ``(n_frames, slices, coils, ky, kx)`` complex64 of ``frames``.

    Per slice, the kernels are calibrated once on :func:`time_averaged_kspace` over *all* frames, in
    :func:`calibration_block` (at most ``calibration_lines`` lines; with ``every_frame`` only lines
    sampled in every frame), and applied to each frame's own line pattern (``ky`` undersampled, ``kx``
    the kernel's readout rows). Sampled values are returned unchanged. ``kernel_size``, ``lamda``:
    :func:`data.grappa.grappa_reconstruct`.
    """
    k = _as_kspace(kspace)
    t, s, c, ky, kx = k.shape
    m = _as_mask(mask, k.shape)
    lines = _line_mask(m)
    f = _frames(frames, t)
    average, count = time_averaged_kspace(k, m)
    a, b = calibration_block(count, calibration_lines, t if every_frame else None)
    # grappa works on (items, coils, readout, phase): transpose ky/kx; items slice-major (slice, frame)
    cal = average[:, :, a:b].transpose(-1, -2)  # (s, c, kx, Wc)
    n = f.numel()
    item_masks = lines[f].numpy()  # (n, ky)
    out = torch.empty((n, s, c, ky, kx), dtype=torch.complex64)
    per_slice = n * c * ky * kx * 8 * 6
    step = _chunk(s, per_slice, 4 * _CHUNK_BYTES)
    for z0 in range(0, s, step):
        z1 = min(s, z0 + step)
        part = k[f, z0:z1].permute(1, 0, 2, 4, 3).reshape((z1 - z0) * n, c, kx, ky)
        filled = grappa_reconstruct(part, np.tile(item_masks, (z1 - z0, 1)), kernel_size=kernel_size,
                                    lamda=lamda, min_fit=min_fit, calibration=cal[z0:z1])
        out[:, z0:z1] = filled.reshape(z1 - z0, n, c, kx, ky).permute(1, 0, 2, 4, 3)
    return out


# ----------------------------------------------------------------------------- SENSE


def calibration_region(count: torch.Tensor, max_rows: int, max_cols: int, every_frame: Optional[int] = None
                       ) -> Tuple[slice, slice]:
    """``(ky range, kx range)`` of the largest centred rectangle (at most ``max_rows`` x ``max_cols``,
    by area) whose every location some frame sampled (``count >= 1``; with ``every_frame``, all of
    them), for ESPIRiT calibration. ``count``: ``(ky, kx)``. ValueError if the centre is not covered."""
    covered = (count >= (every_frame or 1)).numpy()
    ky, kx = covered.shape
    cy, cx = ky // 2, kx // 2
    if not covered[cy, cx]:
        raise ValueError("the k-space centre is not sampled: no calibration region")
    right = np.cumprod(covered[:, cx:], axis=1).sum(axis=1)  # covered run from cx rightwards, per row
    left = np.cumprod(covered[:, cx::-1], axis=1).sum(axis=1)  # from cx leftwards (cx included)
    half = np.minimum(right, left - 1)  # columns [cx - w, cx + w) covered when w <= half
    h = np.arange(1, min(cy, ky - cy) + 1)  # rows [cy - h, cy + h)
    down = np.minimum.accumulate(half[cy:cy + h[-1]])
    up = np.minimum.accumulate(half[cy - 1::-1][:h[-1]])
    width = np.minimum(down, up)  # (h,) usable half-width per half-height
    area = np.minimum(2 * h, max_rows) * np.minimum(2 * width, max_cols)
    best = int(np.argmax(area))
    rows, cols = min(2 * int(h[best]), max_rows), min(2 * int(width[best]), max_cols)
    return slice(cy - rows // 2, cy - rows // 2 + rows), slice(cx - cols // 2, cx - cols // 2 + cols)


def espirit_maps(calibration: torch.Tensor, shape: Sequence[int], kernel: int = 6, threshold: float = 0.02,
                 crop: float = 0.8, sets: int = 2) -> torch.Tensor:
    """ESPIRiT coil maps ``(slices, sets, coils, ky, kx)`` complex64 (Uecker et al., MRM 2014).

    ``calibration``: fully sampled k-space block ``(slices, coils, ny, nx)`` (centred in k-space, at
    least ``kernel`` each way); ``shape = (ky, kx)`` the full grid. Per slice: the calibration matrix of
    every ``kernel x kernel`` patch (all coils), its right singular vectors with singular values above
    ``threshold`` times the largest, the image-space operator ``W(x) = sum_j g_j(x) g_j(x)^H / kernel^2``
    (``g_j`` the inverse DFT of kernel ``j``; a trigonometric polynomial of degree ``kernel - 1``,
    evaluated exactly on a ``2 kernel`` grid and Fourier-interpolated to ``shape``), and per pixel its
    ``sets`` leading eigenvectors, each kept where its eigenvalue exceeds ``crop`` (else 0: outside the
    object). A second set is non-zero only where two sensitivity values meet at one pixel (the object
    cut or folded at the edge of the phase field of view); soft-SENSE with both sets then reconstructs
    those rows, where a single set of maps is wrong and spreads the error through the unfolding.
    """
    cal = torch.as_tensor(calibration).to(torch.complex64)
    S, C, ny, nx = cal.shape
    if ny < kernel or nx < kernel:
        raise ValueError(f"ESPIRiT calibration block {ny} x {nx} is smaller than the {kernel} x {kernel} kernel")
    ky, kx = int(shape[0]), int(shape[1])
    patches = cal.unfold(2, kernel, 1).unfold(3, kernel, 1)  # (S, C, ny', nx', k, k)
    a = patches.permute(0, 2, 3, 1, 4, 5).reshape(S, -1, C * kernel * kernel).to(torch.complex128)
    gram = a.mH @ a  # (S, n, n), n = C k^2
    values, vectors = torch.linalg.eigh(gram)  # ascending; singular values^2
    keep = values >= (threshold ** 2) * values[:, -1:]
    # patches lie in the span of the conjugated right singular vectors: a_p = sum_j conj(U_pj) s_j conj(v_j)
    vectors = (vectors.conj() * keep[:, None, :]).mT.reshape(S, -1, C, kernel, kernel)  # (S, n, C, k, k)
    grid = 2 * kernel
    g = ifft2c(center_pad(vectors.to(torch.complex64), (grid, grid))) * grid  # (S, n, C, grid, grid)
    w = torch.einsum("sjcxy,sjdxy->scdxy", g, g.conj()) / kernel ** 2  # (S, C, C, grid, grid)
    w = fft2c(w)  # Fourier coefficients of W, |frequency| < kernel: exact interpolation by zero-padding
    maps = torch.empty((S, sets, C, ky, kx), dtype=torch.complex64)
    step = _chunk(S, C * C * ky * kx * 8 * 6)
    for a in range(0, S, step):  # (S, C, C, ky, kx) on the full grid: a few slices at a time
        full = ifft2c(center_pad(w[a:a + step], (ky, kx))) * math.sqrt(ky * kx / grid ** 2)
        full = full.permute(0, 3, 4, 1, 2)  # (s, ky, kx, C, C)
        values, vectors = torch.linalg.eigh(0.5 * (full + full.mH))  # ascending eigenvalues
        top = vectors[..., -sets:].flip(-1) * (values[..., None, -sets:].flip(-1) > crop)  # (s, ky, kx, C, sets)
        maps[a:a + step] = top.permute(0, 4, 3, 1, 2)
    return maps


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real part of ``<a, b>`` over the last four axes (map sets, 1, ky, kx), kept for broadcasting."""
    return (a.conj() * b).real.sum(dim=(-4, -3, -2, -1), keepdim=True)


def _cg(normal, rhs: torch.Tensor, iterations: int) -> torch.Tensor:
    """Conjugate gradients for Hermitian positive ``normal``, one system per leading index, from 0."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    for _ in range(iterations):
        q = normal(p)
        pq = _dot(p, q)
        alpha = torch.where(pq > 0, rr / pq.clamp(min=torch.finfo(pq.dtype).tiny), torch.zeros_like(pq))
        x = x + alpha * p
        r = r - alpha * q
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp(min=torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
    return x


class _SoftSense:
    """``A x = M F sum_e S_e x_e`` over map sets ``e`` (soft-SENSE), built on
    :class:`utils.physics.SenseOperator`: ``sens`` ``(b, E, C, ky, kx)``, ``mask`` ``(b, 1, 1, ky, kx)``;
    images ``(b, E, 1, ky, kx)``, k-space ``(b, C, ky, kx)``."""

    def __init__(self, sens: torch.Tensor, mask: torch.Tensor):
        self.op = SenseOperator(sens, mask)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.forward(x).sum(dim=1)

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(k[:, None])

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self(x))


def sense_cine_kspace(kspace, mask, frames=None, iterations: int = 10, lamda: float = 0.05,
                      temporal_prior: bool = True, calibration_lines: int = 32, calibration_cols: int = 64,
                      every_frame: bool = False, espirit_kernel: int = 6, espirit_threshold: float = 0.02,
                      espirit_crop: float = 0.8, espirit_sets: int = 2) -> torch.Tensor:
    """CG-SENSE coil k-space ``(n_frames, slices, coils, ky, kx)`` complex64 of ``frames``.

    Maps: ESPIRiT (:func:`espirit_maps`, ``espirit_sets`` map sets) of :func:`time_averaged_kspace`
    over all frames, calibrated on its :func:`calibration_region` (at most ``calibration_lines`` x
    ``calibration_cols``; with ``every_frame`` only locations sampled in every frame). Per frame and slice
    (vectorised, in chunks): ``iterations`` CG steps on ``(A^H A + lamda I) x = A^H y + lamda x0``,
    ``A = M F S`` (unit-norm maps, so ``lamda`` is relative to the sampled fraction), i.e. Tikhonov
    towards ``x0``: with ``temporal_prior`` the SENSE image of the time-averaged k-space (itself
    CG-SENSE towards 0 with the same settings; it holds the static anatomy at a noise level ``sqrt(t)``
    lower, and for kt masks the lines the frame lacks), else 0. Then ``F S x`` with the measured
    samples put back (sampled values unchanged).
    """
    k = _as_kspace(kspace)
    t, s, c, ky, kx = k.shape
    m = _as_mask(mask, k.shape)
    f = _frames(frames, t)
    average, count = time_averaged_kspace(k, m)
    rows, cols = calibration_region(count, calibration_lines, calibration_cols, t if every_frame else None)
    sens_all = espirit_maps(average[:, :, rows, cols], (ky, kx), espirit_kernel, espirit_threshold,
                            espirit_crop, espirit_sets)  # (s, E, c, ky, kx)
    used = sens_all.flatten(2).abs().amax(dim=-1).amax(dim=0) > 0  # (E,): sets non-zero in some slice
    sens_all = sens_all[:, used | (torch.arange(used.numel()) == 0)]  # an all-zero set only costs FFTs
    prior = None
    if temporal_prior:
        avg_op = _SoftSense(sens_all, (count > 0)[None, None, None].expand(s, 1, 1, ky, kx))
        prior = _cg(lambda v: avg_op.normal(v) + lamda * v, avg_op.adjoint(average), iterations)  # (s, E, 1, ky, kx)
    n = f.numel()
    out = torch.empty((n, s, c, ky, kx), dtype=torch.complex64)
    step = _chunk(n * s, sens_all.shape[1] * c * ky * kx * 8 * 8)
    for a in range(0, n * s, step):  # chunks of (frame, slice) pairs, slice-major
        pair = torch.arange(a, min(a + step, n * s))
        fi, zi = pair % n, pair // n
        sens = sens_all[zi]  # (b, E, c, ky, kx)
        mk = m[f[fi]][:, None]  # (b, 1, ky, kx)
        y = torch.where(mk, k[f[fi], zi], torch.zeros((), dtype=k.dtype))
        op = _SoftSense(sens, mk[:, None])
        if prior is None:
            x = _cg(lambda v: op.normal(v) + lamda * v, op.adjoint(y), iterations)
        else:  # x = x0 + d, (A^H A + lamda) d = A^H (y - A x0)
            x0 = prior[zi]
            x = x0 + _cg(lambda v: op.normal(v) + lamda * v, op.adjoint(y - op(x0)), iterations)
        out[fi, zi] = torch.where(mk, y, sens_expand(x, sens).sum(dim=1))
    return out


# ----------------------------------------------------------------------------- dispatch


def choose_method(mask) -> str:
    """The ``auto`` method for a mask ``(ky, kx)`` or ``(t, ky, kx)``: :data:`AUTO_METHODS` of the family
    :func:`data.cine_masks.estimate_cine_mask` reads from it."""
    return AUTO_METHODS[estimate_cine_mask(mask).family]


def reconstruct_cine(kspace, mask, method: str = "auto", frames=None, **options) -> torch.Tensor:
    """RSS images float32 ``(n_frames, slices, ky, kx)`` of ``frames`` (default all) by ``method``
    (:data:`METHODS`; ``auto`` resolves with :func:`choose_method`). ``options`` go to
    :func:`grappa_cine_kspace` or :func:`sense_cine_kspace`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = choose_method(mask)
    if method == "zero_filled":
        return zero_filled_cine(kspace, mask, frames)
    fill = grappa_cine_kspace if method == "grappa" else sense_cine_kspace
    return rss_images(fill(kspace, mask, frames, **options))


# ----------------------------------------------------------------------------- files and CLI


def reconstruct_case(case, method: str, full: bool = False) -> Tuple[np.ndarray, Dict[str, object]]:
    """Reconstruct one :class:`data.cine.CineCase`: ``(images, record)``.

    ``images``: float32 RSS ``(frames, slices, ky, kx)``, only the ranked slices and frames 1-3
    (:func:`utils.metrics.ranking_slices`) unless ``full`` (every frame and slice); GRAPPA and SENSE read
    every frame of those slices to calibrate. ``record``: ``method`` (as run), ``family`` and
    ``acc_estimate`` (:func:`data.cine_masks.estimate_cine_mask`), ``frames``, ``slices``. Raises
    :class:`data.formats.FormatError` (one line naming the file) for unreadable, truncated or
    inconsistent inputs, ValueError for a method that cannot run on the mask (GRAPPA on ktRadial).
    """
    if case.kspace_path is None:
        raise FormatError(case.mask_path, case.mask_key, "no undersampled k-space file for this mask")
    if case.mask_path is None:
        raise FormatError(case.kspace_path, "-", f"mask file of {case.kspace_path.name} is missing")
    mask = case.read_mask()
    try:
        estimate = estimate_cine_mask(mask)
    except ValueError as exc:
        raise FormatError(case.mask_path, case.mask_key, str(exc)) from None
    used = AUTO_METHODS[estimate.family] if method == "auto" else method
    with open_cine_kspace(case.kspace_path, case.kspace_key) as var:
        t, s, _, ky, kx = var.shape
        want = (ky, kx) if mask.ndim == 2 else (t, ky, kx)
        if mask.shape != want:
            raise FormatError(case.mask_path, case.mask_key, f"mask {mask.shape} does not match k-space {var.shape} "
                                                             f"of {case.kspace_path.name} (expected {want})")
        if t < RANKING_FRAMES and not full:
            raise FormatError(case.kspace_path, var.key, f"{t} frames; ranking needs {RANKING_FRAMES}")
        slices = slice(0, s) if full else ranking_slices(s)
        frames = None if full else range(RANKING_FRAMES)
        n_read = RANKING_FRAMES if used == "zero_filled" and not full else t  # calibration needs every frame
        kspace = var[:n_read, slices]
    bad = int(np.count_nonzero(~np.isfinite(kspace)))
    if bad:
        raise FormatError(case.kspace_path, case.kspace_key, f"{bad} non-finite values")
    images = reconstruct_cine(kspace, mask if mask.ndim == 2 else mask[:n_read], used, frames)
    record = {"method": used, "family": estimate.family, "acc_estimate": float(estimate.acceleration),
              "frames": int(images.shape[0]), "slices": int(images.shape[1])}
    return images.numpy(), record


def _remove_stale(path: Path) -> Optional[str]:
    with contextlib.suppress(OSError):
        if path.is_file():
            path.unlink()
            return f" (removed the stale {path})"
    return None


def write_cine_baseline(path_data, out, method: str = "auto", full: bool = False,
                        progress: bool = True) -> Tuple[Dict[str, object], List[str]]:
    """Write the ``method`` baseline of every undersampled case of the CMRxRecon set(s) at or below
    ``path_data`` as a submission under ``out`` (module docstring); with ``full`` also the whole
    reconstruction ``out/Reconstruction/MultiCoil/Cine/<Set>/<relpath>`` (``reconstruction``, float32
    ``(t, slices, ky, kx)``, as ``reconstruct.py --task cine``). Returns ``(report, problems)``:
    ``report`` per case (method, family, acc_estimate, frames, slices, seconds) and totals
    (``seconds_per_frame`` = reconstruction time per reconstructed frame x slice), also written to
    ``out/cine_baseline.json``; ``problems`` one line per failed case.

    Raises ValueError when there is no set or no case, :class:`utils.io.OutputError` when an output
    folder cannot be created or written (both before any reconstruction).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    path_data, out = Path(path_data), Path(out)
    sets = find_cine_sets(path_data)
    cases = [c for set_dir in sets for c in list_cine_cases(set_dir)]
    if not cases:
        raise ValueError(f"{path_data}: no undersampled CMRxRecon cine cases (<Set>/AccFactorXX/P###/cine_*.mat "
                         f"or UnderSample_TaskN/)")
    sub_root, full_root = out / _SUBMISSION_ROOT, out / "Reconstruction" / "MultiCoil" / "Cine"
    for set_dir in sorted({c.set_dir for c in cases}):
        prepare_output_dir(sub_root / set_dir.name)
        if full:
            prepare_output_dir(full_root / set_dir.name)
    records: Dict[str, Dict[str, object]] = {}
    problems: List[str] = []
    compute = 0.0
    for case in tqdm(cases, desc=f"cine {method}", unit="case", disable=not progress, file=sys.stderr):
        rel = Path(case.set_name) / case.relpath
        targets = [sub_root / rel] + ([full_root / rel] if full else [])
        start = time.perf_counter()
        try:
            images, record = reconstruct_case(case, method, full)
            seconds = time.perf_counter() - start
            write_submission_file(targets[0], run4ranking(images).numpy())
            if full:
                write_mat73(targets[1], {"reconstruction": images})
            compute += seconds
            records[rel.as_posix()] = {"status": "ok", **record, "seconds": round(seconds, 4)}
        except (ValueError, OSError, RuntimeError, MemoryError) as exc:  # FormatError is a ValueError
            where = str(case.kspace_path or case.mask_path)
            line = " ".join(str(exc).split()) or exc.__class__.__name__
            if where not in line and str(case.mask_path) not in line:
                line = f"{where}: -: {line}"
            for target in targets:
                line += _remove_stale(target) or ""
            problems.append(line)
            records[rel.as_posix()] = {"status": "error", "error": line}
    done = [r for r in records.values() if r["status"] == "ok"]
    frames = sum(r["frames"] * r["slices"] for r in done)
    report = {"method": method, "cases": records, "failed": len(problems), "frames": frames,
              "seconds": round(compute, 3), "seconds_per_frame": round(compute / frames, 5) if frames else None,
              "methods": {m: sum(r["method"] == m for r in done) for m in sorted({r["method"] for r in done})}}
    try:
        with atomic_path(out / "cine_baseline.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        problems.append(str(exc))
    return report, problems


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.cine_baselines", description=__doc__.split("\n")[0])
    parser.add_argument("--path_data", type=Path, required=True,
                        help="CMRxRecon set folder (.../MultiCoil/Cine/ValidationSet) or a folder holding sets")
    parser.add_argument("--out", type=Path, required=True, help="result folder R (gets R/Submission/MultiCoil/Cine/<Set>/...)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="zero_filled | grappa (line masks) | sense | auto (by the mask's family)")
    parser.add_argument("--full", action="store_true",
                        help="reconstruct every frame and slice and also write R/Reconstruction/MultiCoil/Cine/...")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        report, problems = write_cine_baseline(args.path_data, args.out, args.method, args.full, not args.no_progress)
    except OSError as exc:  # OutputError: --out unusable, before any work
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: --path_data: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line, file=sys.stderr)
    ok = len(report["cases"]) - report["failed"]
    spf = report["seconds_per_frame"]
    print(f"{args.method} baseline: {ok}/{len(report['cases'])} cases written to {args.out / _SUBMISSION_ROOT} "
          f"({report['frames']} frames, {report['seconds']:.1f} s, "
          f"{'n/a' if spf is None else f'{spf:.4f}'} s/frame; methods {report['methods']})")
    if problems:
        print(f"{len(problems)} problem(s); the other cases were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
