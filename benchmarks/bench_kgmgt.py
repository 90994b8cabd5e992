"""KGMgT inference cost beside PromptMR+ cine: milliseconds per frame and peak memory.

One "frame" is one call of the cine contract with batch 1: 3 circular frames (τ-1, τ, τ+1) x ``coils``
x H x W complex64 k-space (model layout: H the readout, W the phase encoding), 4x uniform line masks
(a different offset per frame) with 8 % centred ACS lines, in evaluation mode without gradients. Every
variant runs in its own subprocess so its peak memory is clean: on CPU the peak resident set size
(``ru_maxrss``) beside the resident size before the first call (model + inputs), on CUDA
``torch.cuda.max_memory_allocated``. Time is the minimum over ``--iters`` calls after ``--warmup``.

    python benchmarks/bench_kgmgt.py                                  # CPU: 160x160, 256x256, 512x246, 10 coils
    python benchmarks/bench_kgmgt.py --sizes 160x160 --only kgmgt:paper,promptmr:cine_demo --threads 2
    python benchmarks/bench_kgmgt.py --device cuda --iters 5          # where a GPU is lent

Sizes are ``HxW`` in model layout; ``512x246`` is a full CMRxRecon short-axis frame (ky 246, kx 512 with
the readout oversampling). The paper reports 156 ms per slice for KGMgT on a GPU.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench_models import _rss_bytes  # one resident-size helper for the benchmarks (script folder)

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = ["kgmgt:paper", "kgmgt:demo", "kgmgt:released", "promptmr:cine_demo", "promptmr:cine_challenge"]
SIZES = ["160x160", "256x256", "512x246"]


def _inputs(torch, coils: int, height: int, width: int, device):
    """``(1, 3, coils, H, W)`` k-space (random, a smooth object's spectrum scale) and ``(1, 3, W)`` masks."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 3, width)
    for t in range(3):
        mask[0, t, t % 4:: 4] = 1
    acs = max(round(0.08 * width), 2)
    mask[..., width // 2 - acs // 2: width // 2 - acs // 2 + acs] = 1
    kspace = torch.randn(1, 3, coils, height, width, dtype=torch.complex64, generator=g) * 1e-3
    return (kspace * mask[:, :, None, None, :]).to(device), mask.to(device)


def worker(spec: Dict) -> Dict:
    """Build one model, time inference on one frame (runs in a subprocess)."""
    import torch

    from models import build_model

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    name, preset = spec["variant"].split(":")
    model = build_model(name, preset).to(device).eval()
    kspace, mask = _inputs(torch, spec["coils"], spec["height"], spec["width"], device)
    base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss_bytes()
    times = []
    with torch.no_grad():
        for i in range(spec["warmup"] + spec["iters"]):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(kspace, mask)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    if tuple(out.shape[-2:]) != (spec["height"], spec["width"]):
        raise RuntimeError(f"output {tuple(out.shape)} for input {spec['height']}x{spec['width']}")
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "ms": 1e3 * min(times),
            "peak_gib": peak / 1024 ** 3, "base_gib": base / 1024 ** 3}


def run(spec: Dict, timeout: Optional[float]) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--coils", type=int, default=10)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of HxW (model layout)")
    p.add_argument("--only", default=",".join(VARIANTS), help="comma list of registry model:preset")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per variant and size")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError
    except ValueError:
        p.error(f"--sizes must be a comma list of HxW, got {args.sizes!r}")
    print(f"device={args.device} threads={args.threads or 'default'} coils={args.coils} batch 1 (3 frames in, 1 out), "
          f"no grad; ms = min over {args.iters} call(s) after {args.warmup} warm-up")
    print(f"{'model:preset':<24} {'H x W':<10} {'params M':>8} {'ms/frame':>10} {'peak GiB':>9} {'before GiB':>10}")
    for height, width in sizes:
        for variant in args.only.split(","):
            spec = {"variant": variant.strip(), "device": args.device, "coils": args.coils, "height": height,
                    "width": width, "warmup": args.warmup, "iters": args.iters, "threads": args.threads}
            res = run(spec, args.timeout)
            size = f"{height}x{width}"
            if "error" in res:
                print(f"{spec['variant']:<24} {size:<10} {'-':>8} {'-':>10} {'-':>9} {'-':>10}  {res['error']}", flush=True)
            else:
                print(f"{spec['variant']:<24} {size:<10} {res['params_m']:>8.2f} {res['ms']:>10.0f} {res['peak_gib']:>9.2f} "
                      f"{res['base_gib']:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
