"""Time GRAPPA per slice at challenge sizes and print a table.

Usage: ``python benchmarks/bench_grappa.py [--threads 2] [--repeats 3] [--slices 1]``.
Data are random complex k-space (timing does not depend on content); masks are equispaced with a
round(0.08 W) ACS, plus one random one-line-per-bin mask. Wall time is the median over repeats;
CPU time (all threads) shows how much of the wall time was spent computing on a shared machine.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from data.grappa import grappa_patterns, grappa_reconstruct

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slices", type=int, default=1, help="slices per call (kernels per slice)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
