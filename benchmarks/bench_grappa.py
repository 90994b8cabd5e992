"""Time GRAPPA per slice at challenge sizes, against pygrappa, and score its image quality.

Usage: ``python benchmarks/bench_grappa.py [--threads 2] [--repeats 3] [--slices 1] [--compare] [--quality]``.

Default: our time per slice on random complex k-space (timing does not depend on content); masks are
equispaced with a round(0.08 W) ACS, plus one random one-line-per-bin mask. Wall time is the median
over repeats; CPU time (all threads) shows how much of the wall time was spent computing on a shared
machine.

``--compare``: ours against ``pygrappa.mdgrappa`` (kernel (5, 5), benchmark-only peer from
``benchmarks/peers.py``) at 8 and 16 coils x 768 x 396 with the challenge's ``fixed`` masks at acc 4
and 8, run interleaved (ours, peer, ours, peer, ...) in this process; prints per-slice medians and the
ratio ours / peer time.

``--quality``: leaderboard-masked SSIM (``utils.metrics.leaderboard_ssim`` with the foreground mask and
the volume max) and NMSE of the 384 x 384 RSS images of ours (per-acceleration defaults), pygrappa and
zero-filling against the fully sampled RSS, on (a) simulator volumes (``data.simulate``: brain and knee
with 16 coils, brain with 4 coils) and (b) real anatomy: brain slices of the EPI volume that nibabel
ships (``nibabel/tests/data/example4d.nii.gz``, 128 x 96, 2 mm), upsampled 3x (cubic spline) onto a
768 x 396 grid (2x readout oversampling), given a smooth synthetic phase, multiplied by the simulator's
coil maps (8 and 16 coils) and with the simulator's correlated coil noise at its level. Nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from data.grappa import grappa_defaults, grappa_image, grappa_patterns, grappa_reconstruct, mask_acceleration
from data.masks import make_mask as challenge_mask
from data.volumes import rss_image
from utils.contract import IMAGE_SIZE
from utils.metrics import leaderboard_foreground_mask, leaderboard_ssim, nmse
from utils.physics import center_crop_or_pad, ifft2c, rss

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = [  # (name, coils, H, W, acceleration, mask kind)
    ("brain", 16, 768, 396, 4, "equispaced"),
    ("brain", 16, 768, 396, 8, "equispaced"),
    ("knee", 16, 640, 372, 4, "equispaced"),
    ("knee", 16, 640, 372, 8, "equispaced"),
    ("brain", 16, 768, 396, 4, "random"),
]


def make_mask(W: int, acc: int, kind: str, seed: int = 0) -> np.ndarray:
    """``(W,)`` 0/1 mask: equispaced (offset (W//2) % acc) or one random line per bin, plus ACS."""
    mask = np.zeros(W, dtype=np.float32)
    if kind == "equispaced":
        mask[(W // 2) % acc::acc] = 1
    else:
        starts = np.arange(0, W, acc)
        rng = np.random.default_rng(seed)
        mask[np.minimum(starts + rng.integers(0, acc, starts.size), W - 1)] = 1
    acs = round(0.08 * W)
    mask[W // 2 - acs // 2: W // 2 - acs // 2 + acs] = 1
    return mask


def time_case(coils: int, H: int, W: int, acc: int, kind: str, slices: int, repeats: int):
    """(median wall s per slice, median CPU s per slice, number of kernels)."""
    g = torch.Generator().manual_seed(0)
    kspace = torch.randn((slices, coils, H, W), dtype=torch.complex64, generator=g)
    mask = make_mask(W, acc, kind)
    grappa_reconstruct(kspace[:1], mask)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        grappa_reconstruct(kspace, mask)
        walls.append((time.perf_counter() - w0) / slices)
        cpus.append((time.process_time() - c0) / slices)
    return statistics.median(walls), statistics.median(cpus), len(grappa_patterns(mask, 4))


# ----------------------------------------------------------------------------- data for --compare / --quality


def simulated_kspace(anatomy: str, coils: int, slices: int, seed: int) -> torch.Tensor:
    """Fully sampled ``(slices, coils, H, W)`` complex64 k-space of one simulator volume (brain 768 x 396,
    knee 640 x {372, 396}) with the simulator's noise."""
    from data import simulate as sim

    preset = sim.Preset("bench", 1, 1, slices, coils, (768, 396), 640, (372, 396), (4, 14))
    return sim.simulate_kspace(np.random.default_rng(seed), anatomy, preset)


def real_anatomy_kspace(coils: int, z_indices, seed: int, H: int = 768, W: int = 396) -> torch.Tensor:
    """Fully sampled ``(len(z_indices), coils, H, W)`` complex64 k-space of real brain slices.

    Magnitude: axial slices ``z_indices`` of the first frame of nibabel's bundled ``example4d.nii.gz``
    (128 x 96 EPI), upsampled 3x with a cubic spline and centred on the ``H x W`` grid; phase: the
    simulator's smooth phase; coils: the simulator's head coil array; scale and noise as the simulator
    (object median of the RSS label 1.8e-4, background RSS 4 % of it, correlated across coils).
    """
    import nibabel
    import scipy.ndimage as ndi

    from data import simulate as sim
    from data.phantoms import CoilArray, make_grid, smooth_phase
    from utils.physics import fft2c

    path = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: nibabel's bundled example image is missing")
    volume = np.asarray(nibabel.load(str(path)).dataobj)[..., 0].astype(np.float32)  # (128, 96, 24)
    rng = np.random.default_rng(seed)
    mag = np.zeros((len(z_indices), H, W), np.float32)
    for i, z in enumerate(z_indices):
        m = ndi.zoom(volume[:, :, z], 3, order=3).clip(0)  # (384, 288)
        top, left = H // 2 - m.shape[0] // 2, W // 2 - m.shape[1] // 2
        mag[i, top:top + m.shape[0], left:left + m.shape[1]] = m
    grid = make_grid(np.zeros(len(z_indices), np.float32), H, W)
    obj = torch.polar(torch.from_numpy(mag), torch.from_numpy(smooth_phase(rng, grid)))
    images = CoilArray.sample(rng, coils, (0.96, 1.12), (0.0, 0.0, 0.0), axis="z").maps(grid) * obj[:, None]
    kspace = fft2c(images)
    crop = center_crop_or_pad(rss(images), (IMAGE_SIZE, IMAGE_SIZE))
    support = center_crop_or_pad(obj.abs(), (IMAGE_SIZE, IMAGE_SIZE)) > 0.1 * float(obj.abs().max())
    median = 1.8e-4
    kspace *= median / float(crop[support].median())
    sigma = 0.04 * median / np.sqrt(coils)
    mixing = sim.noise_mixing(rng, coils)
    white = rng.standard_normal((2, len(z_indices), coils, H * W), dtype=np.float32)
    noise = torch.complex(torch.from_numpy(white[0]), torch.from_numpy(white[1])) * np.float32(sigma / np.sqrt(2))
    return kspace + (mixing @ noise).reshape(kspace.shape)


def _pygrappa():
    from peers import PYGRAPPA, require_peer

    return require_peer(PYGRAPPA[0], "pygrappa")


def pygrappa_kspace(under: torch.Tensor) -> torch.Tensor:
    """``pygrappa.mdgrappa`` (kernel (5, 5), its defaults otherwise) slice by slice: ``(S, C, H, W)``."""
    mdgrappa = _pygrappa().mdgrappa
    return torch.stack([torch.from_numpy(mdgrappa(k.numpy().astype(np.complex128), kernel_size=(5, 5),
                                                  coil_axis=0).astype(np.complex64)) for k in under])


# ----------------------------------------------------------------------------- --compare


def compare(repeats: int) -> None:
    """Interleaved per-slice times, ours vs pygrappa, 8 and 16 coils x 768 x 396, fixed masks acc 4 / 8."""
    print(f"GRAPPA vs pygrappa.mdgrappa (5, 5), one slice per call, interleaved, median of {repeats}, "
          f"{torch.get_num_threads()} thread(s)")
    print("real brain slice (see --quality); agreement: image NMSE ours vs peer (each vs fully sampled)")
    print(f"{'coils x H x W':>16s} {'acc':>4s} {'ours s/slice':>13s} {'pygrappa s':>11s} {'ratio':>7s} "
          f"{'NMSE ours-peer (ours/peer)':>28s}")
    for coils in (8, 16):
        full = real_anatomy_kspace(coils, (12,), seed=coils)  # content matters for the agreement column only
        label = rss_image(full)
        for acc in (4, 8):
            mask = challenge_mask("fixed", 396, acc, None)
            under = full * torch.from_numpy(mask)
            grappa_reconstruct(under, mask)  # warm-up
            ours, peer = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                a = grappa_reconstruct(under, mask)
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                b = pygrappa_kspace(under)
                peer.append(time.perf_counter() - t0)
            mo, mp = statistics.median(ours), statistics.median(peer)
            m = torch.from_numpy(mask != 0)
            if not (torch.equal(a[..., m], under[..., m]) and torch.allclose(b[..., m], under[..., m])):
                raise AssertionError(f"{coils} coils acc {acc}: sampled columns changed")
            img_a, img_b = (center_crop_or_pad(rss(ifft2c(k)), (IMAGE_SIZE, IMAGE_SIZE)).numpy() for k in (a, b))
            agree = f"{nmse(img_a, img_b.astype(np.float64)):.1e} ({nmse(img_a, label.numpy()):.1e}/{nmse(img_b, label.numpy()):.1e})"
            print(f"{f'{coils} x 768 x 396':>16s} {acc:>4d} {mo:>13.3f} {mp:>11.3f} {mo / mp:>7.3f} {agree:>28s}",
                  flush=True)


# ----------------------------------------------------------------------------- --quality


def quality_cases():
    """``[(name, anatomy for the foreground threshold, fully sampled k-space)]``."""
    return [
        ("sim brain 16c", "brain", lambda: simulated_kspace("brain", 16, 2, 1)),
        ("sim knee 16c", "knee", lambda: simulated_kspace("knee", 16, 2, 2)),
        ("sim brain 4c", "brain", lambda: simulated_kspace("brain", 4, 2, 3)),
        ("real brain 16c", "brain", lambda: real_anatomy_kspace(16, (10, 16), 4)),
        ("real brain 8c", "brain", lambda: real_anatomy_kspace(8, (8, 14), 5)),
    ]


def _scores(image: np.ndarray, label: np.ndarray, anatomy: str) -> Tuple[float, float]:
    """(mean leaderboard SSIM over slices, NMSE of the volume) of ``image`` against ``label``."""
    fg = leaderboard_foreground_mask(label, anatomy)
    return float(leaderboard_ssim(image, label, float(label.max()), fg).mean()), float(nmse(image, label))


def quality(with_peer: bool = True) -> None:
    print("leaderboard-masked SSIM / NMSE of the 384 x 384 RSS vs the fully sampled RSS; fixed masks")
    print(f"{'data':16s} {'acc':>4s} {'ours (lamda)':>22s} {'pygrappa (5,5)':>20s} {'zero-filled':>20s}")
    for name, anatomy, make in quality_cases():
        full = make()
        label = rss_image(full).numpy()
        for acc in (4, 8):
            mask = challenge_mask("fixed", full.shape[-1], acc, None)
            under = full * torch.from_numpy(mask)
            ours = _scores(grappa_image(under, mask).numpy(), label, anatomy)
            zf = _scores(rss_image(under).numpy(), label, anatomy)
            if with_peer:
                peer_img = center_crop_or_pad(rss(ifft2c(pygrappa_kspace(under))), (IMAGE_SIZE, IMAGE_SIZE))
                peer = _scores(peer_img.numpy(), label, anatomy)
            else:
                peer = (float("nan"), float("nan"))
            lam = grappa_defaults(mask_acceleration(mask)).lamda
            print(f"{name:16s} {acc:>4d} {f'{ours[0]:.4f} {ours[1]:.2e} ({lam:g})':>22s} "
                  f"{f'{peer[0]:.4f} {peer[1]:.2e}':>20s} {f'{zf[0]:.4f} {zf[1]:.2e}':>20s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=1, help="slices per call (kernels per slice)")
    parser.add_argument("--compare", action="store_true", help="ours vs pygrappa, interleaved (8 and 16 coils)")
    parser.add_argument("--quality", action="store_true", help="SSIM / NMSE of ours, pygrappa, zero-filled")
    parser.add_argument("--no-peer", action="store_true", help="--quality without pygrappa")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare or args.quality:
        if args.compare:
            compare(args.repeats)
        if args.quality:
            quality(with_peer=not args.no_peer)
        return
    print(f"GRAPPA 5x4, torch {torch.__version__}, {args.threads} threads, {args.slices} slice(s) per call, "
          f"median of {args.repeats}")
    print(f"{'anatomy':8s} {'coils x H x W':>16s} {'acc':>4s} {'mask':>11s} {'kernels':>8s} "
          f"{'wall s/slice':>13s} {'cpu s/slice':>12s}")
    for name, coils, H, W, acc, kind in CASES:
        wall, cpu, n = time_case(coils, H, W, acc, kind, args.slices, args.repeats)
        print(f"{name:8s} {f'{coils} x {H} x {W}':>16s} {acc:>4d} {kind:>11s} {n:>8d} {wall:>13.3f} {cpu:>12.3f}",
              flush=True)


if __name__ == "__main__":
    main()
