"""Time evaluate.py's leaderboard scoring on a full-size synthetic leaderboard.

    python benchmarks/bench_evaluate.py [--volumes 58] [--slices 16] [--size 384] [--workers N]

Builds ``acc4`` and ``acc8`` with ``--volumes`` files each (half brain, half knee) of ``--slices``
smooth synthetic slices (label file: ``image_label`` + attr ``max``; reconstruction: label plus
noise) in a temporary folder, then times :func:`evaluate.evaluate_leaderboard` (file creation is not
timed; files are in the page cache) and, on one volume, its stages. Prints a table of seconds and
slices per second; process CPU time is the figure to trust on a shared machine. The comparison with
the plain scikit-image loop, both as whole processes, is ``bench_evaluate_peer.py``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

import evaluate
from data.formats import read_image_file, read_reconstruction_file, write_reconstruction_file
from utils.leaderboard import leaderboard_foreground_mask, leaderboard_ssim, leaderboard_volume_scores


def _smooth_slices(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``(count, size, size)`` float32 smooth positive images inside an ellipse, zero outside."""
    low = rng.random((count, size // 8, size // 8)).astype(np.float32)
    up = np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in low]).clip(0, None)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    ellipse = (yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1
    return (1e-4 * (0.2 + up) * ellipse).astype(np.float32)


def build_leaderboard(root: Path, volumes: int, slices: int, size: int, seed: int = 0) -> None:
    """Write ``root/leaderboard/acc{4,8}/image/*.h5`` and ``root/recon/acc{4,8}/*.h5``."""
    rng = np.random.default_rng(seed)
    bank = _smooth_slices(rng, 4 * slices, size)
    for acc, noise in (("acc4", 2e-6), ("acc8", 5e-6)):
        for i in range(volumes):
            name = f"{'brain' if i < volumes // 2 else 'knee'}_test{i % (volumes // 2) + 1}.h5"
            label = bank[rng.choice(len(bank), slices, replace=False)] * rng.uniform(0.5, 2.0)
            path = root / "leaderboard" / acc / "image" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                f["image_label"] = label
                f.attrs["max"] = float(label.max())
            recon = label + noise * rng.standard_normal(label.shape, dtype=np.float32)
            write_reconstruction_file(root / "recon" / acc / name, recon)


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=58, help="volumes per acceleration")
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--workers", type=int, default=None, help="volumes scored in parallel (default: evaluate's)")
    args = parser.parse_args()
    workers = args.workers or evaluate.default_workers()
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_leaderboard(root, args.volumes, args.slices, args.size)
        build_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        result, problems = evaluate.evaluate_leaderboard(root / "leaderboard", root / "recon", progress=False, workers=workers)
        total_s, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert not problems and result is not None, problems

        label_file = root / "leaderboard" / "acc4" / "image" / "brain_test1.h5"
        recon_file = root / "recon" / "acc4" / "brain_test1.h5"
        label = read_image_file(label_file, keys=["image_label"])["image_label"]
        recon = read_reconstruction_file(recon_file)
        mask = leaderboard_foreground_mask(label, "brain")
        dr = float(label.max())
        stages = {
            "read label + recon": lambda: (read_image_file(label_file, keys=["image_label"]), read_reconstruction_file(recon_file)),
            "foreground mask (cv2)": lambda: leaderboard_foreground_mask(label, "brain"),
            "SSIM (OpenCV float64 sums)": lambda: leaderboard_ssim(recon, label, dr, mask=mask),
            "SSIM + PSNR + NMSE": lambda: leaderboard_volume_scores(recon, label, dr, mask),
        }
        with evaluate._single_threaded_cv2():  # as inside evaluate_leaderboard
            stage_s = {k: _time(f) for k, f in stages.items()}

    n_slices = 2 * args.volumes * args.slices
    print(f"synthetic leaderboard: 2 x {args.volumes} volumes x {args.slices} slices of {args.size}x{args.size} "
          f"({n_slices} slices; built in {build_s:.1f} s, not timed); {workers} workers x 1 torch thread")
    print(f"Total SSIM {result['total']:.4f} (acc4 {result['acc4']:.4f}, acc8 {result['acc8']:.4f})")
    print(f"{'stage':<40}{'seconds':>9}{'slices/s':>10}")
    print(f"{'evaluate_leaderboard, wall':<40}{total_s:>9.2f}{n_slices / total_s:>10.1f}")
    print(f"{'evaluate_leaderboard, process CPU':<40}{total_cpu:>9.2f}{n_slices / total_cpu:>10.1f}")
    for name, sec in stage_s.items():
        print(f"{'  one volume, ' + name:<40}{sec:>9.3f}{args.slices / sec:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
