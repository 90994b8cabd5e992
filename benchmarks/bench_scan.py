"""Selective scan on CPU: PyTorch parallel scan vs the sequential reference.

    python benchmarks/bench_scan.py [--lengths 4096 16384] [--dims 64 128] [--d-state 16]
                                    [--repeats 5] [--threads 1] [--backends parallel sequential]

Every (backend, L, dim, mode) runs in its own subprocess (batch 1, fp32, delta_softplus, D, z and
delta_bias as in a Mamba block; B/C of shape (1, d_state, L)). ``mode`` is ``fwd`` (no autograd)
or ``fwd+bwd`` (forward with autograd, then backward of ``out.sum()``). Reports the median wall
time (and the fastest) and median process CPU time over ``--repeats`` runs after one warm-up, and the peak resident
memory of the subprocess (``ru_maxrss``) minus its resident memory once the inputs were built.
On a shared machine use one thread (the default): multi-threaded runs swing with other load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(backend: str, length: int, dim: int, d_state: int, mode: str, repeats: int, threads: int) -> dict:
    """Run one variant in this process and return its figures."""
    import torch

    from models.selective_scan import selective_scan

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, dim, length, generator=g)
    delta = torch.randn(1, dim, length, generator=g) - 2.0
    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1)
    b = torch.randn(1, d_state, length, generator=g)
    c = torch.randn(1, d_state, length, generator=g)
    d = torch.ones(dim)
    z = torch.randn(1, dim, length, generator=g)
    bias = torch.full((dim,), -3.0)
    leaves = (u, delta, b, c, z)

    def once():
        if mode == "fwd":
            with torch.no_grad():
                selective_scan(u, delta, a, b, c, d, z, bias, delta_softplus=True, backend=backend)
        else:
            for t in leaves:
                t.requires_grad_(True)
                t.grad = None
            out = selective_scan(u, delta, a, b, c, d, z, bias, delta_softplus=True, backend=backend)
            out.sum().backward()

    base = _rss_mib()
    once()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        once()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"wall_s": statistics.median(walls), "min_s": min(walls), "cpu_s": statistics.median(cpus), "peak_mib": peak - base}


def _run_variant(args: argparse.Namespace, backend: str, length: int, dim: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([backend, length, dim, args.d_state, mode, args.repeats, args.threads])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_scan: variant {backend} L={length} dim={dim} {mode} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["parallel", "sequential"], choices=["parallel", "sequential"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    header = f"{'backend':<11} {'L':>6} {'dim':>4} {'mode':<8} {'wall s':>8} {'min s':>8} {'cpu s':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        for dim in args.dims:
            for mode in ("fwd", "fwd+bwd"):
                for backend in args.backends:
                    r = _run_variant(args, backend, length, dim, mode)
                    print(f"{backend:<11} {length:>6} {dim:>4} {mode:<8} {r['wall_s']:>8.3f} {r['min_s']:>8.3f} {r['cpu_s']:>8.3f} {r['peak_mib']:>9.1f}",
                          flush=True)


if __name__ == "__main__":
    main()
