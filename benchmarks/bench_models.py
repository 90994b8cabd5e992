"""Training-step cost of the reconstruction models: forward + backward time and peak memory per slice.

Every variant (model, preset, gradient checkpointing on/off) runs in its own subprocess so peak memory
is clean: on CPU the peak resident set size (``ru_maxrss``) of that process, reported together with
its resident size just before the step (model + inputs) so the difference is the step's working memory;
on CUDA ``torch.cuda.max_memory_allocated``. One "slice" is one training sample: ``num_adj_slices``
adjacent slices x ``coils`` x H x W complex k-space, batch size 1.

    python benchmarks/bench_models.py                       # CPU default: 4 coils x 3 adj x 192 x 200
    python benchmarks/bench_models.py --coils 4 --height 384 --width 396 --only promptmr:challenge
    python benchmarks/bench_models.py --device cuda         # adds the 8 GB check (16 x 3 x 384 x 396)
    python benchmarks/bench_models.py --threads 1 --adj 1 --width 192 \
        --only hifimamba:tiny,hifimamba:demo,hifimamba:p2,promptmr:challenge   # HiFi-Mamba vs PromptMR+
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]

#: (registry name, preset, extra hyperparameters) benchmarked by default
VARIANTS = [
    ("promptmr", "challenge", {}),
    ("promptmr", "demo", {}),
    ("varnet", None, {}),  # fastMRI defaults (12 cascades, 18/4 U-Net, 8/4 sensitivity U-Net)
]
GPU_BUDGET_BYTES = 8 * 1024**3
GPU_CHECK_SHAPE = (16, 3, 384, 396)  # coils, adjacent slices, H, W


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc), bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _synthetic_batch(torch, coils: int, adj: int, height: int, width: int, device):
    """Random 4x-undersampled k-space (1, adj, coils, H, W) with 8% centred ACS lines, and its mask."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, width)
    mask[0, (width // 2) % 4:: 4] = 1
    acs = max(round(0.08 * width), 2)
    mask[0, width // 2 - acs // 2: width // 2 - acs // 2 + acs] = 1
    kspace = torch.randn(1, adj, coils, height, width, dtype=torch.complex64, generator=g)
    kspace = kspace * mask.view(1, 1, 1, 1, width)
    target = torch.rand(1, 384, 384, generator=g)
    return kspace.to(device), mask.to(device), target.to(device)


def worker(spec: Dict) -> Dict:
    """Build one variant, run warm-up + timed training steps, return figures (runs in a subprocess)."""
    import torch

    from models import build_model

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    hparams = dict(spec["hparams"], use_checkpoint=spec["checkpoint"])
    model = build_model(spec["model"], spec["preset"], **hparams).to(device).train()
    adj = getattr(model.config, "num_adj_slices", 1)
    kspace, mask, target = _synthetic_batch(torch, spec["coils"], max(adj, spec["adj"]), spec["height"],
                                            spec["width"], device)
    n_params = sum(p.numel() for p in model.parameters())

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss = (model(kspace, mask) - target).abs().mean()
        loss.backward()

    for _ in range(spec["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else _rss_bytes()
    times = []
    for _ in range(spec["iters"]):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"params_m": n_params / 1e6, "step_s": min(times), "peak_gib": peak / 1024**3,
            "base_gib": base / 1024**3, "adj": max(adj, spec["adj"])}


def run_variant(spec: Dict, timeout: Optional[float]) -> Dict:
    """Run :func:`worker` in a fresh interpreter; returns its figures or ``{"error": ...}``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _format_row(spec: Dict, res: Dict) -> str:
    name = f"{spec['model']}:{spec['preset'] or 'default'}"
    ckpt = "yes" if spec["checkpoint"] else "no"
    shape = f"{spec['coils']}x{res.get('adj', '?')}x{spec['height']}x{spec['width']}"
    if "error" in res:
        return f"{name:<20} {ckpt:<5} {shape:<16} {'-':>8} {'-':>9} {'-':>10} {'-':>10}  {res['error']}"
    return (f"{name:<20} {ckpt:<5} {shape:<16} {res['params_m']:>8.2f} {res['step_s']:>9.2f} "
            f"{res['peak_gib']:>10.2f} {res['base_gib']:>10.2f}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--coils", type=int, default=None, help="default: 4 on CPU, 16 on CUDA")
    p.add_argument("--adj", type=int, default=3, help="adjacent slices in the input (model uses its own)")
    p.add_argument("--height", type=int, default=None, help="default: 192 on CPU, 384 on CUDA")
    p.add_argument("--width", type=int, default=None, help="default: 200 on CPU, 396 on CUDA")
    p.add_argument("--warmup", type=int, default=None, help="default: 0 on CPU, 2 on CUDA")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    p.add_argument("--only", default=None, help="comma list of registry model:preset to run instead of the "
                   "defaults (e.g. promptmr:challenge,varnet,hifimamba:p2)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per variant")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    cuda = args.device.startswith("cuda")
    base = {"device": args.device, "adj": args.adj, "iters": args.iters, "threads": args.threads,
            "coils": args.coils or (16 if cuda else 4), "height": args.height or (384 if cuda else 192),
            "width": args.width or (396 if cuda else 200), "warmup": args.warmup if args.warmup is not None
            else (2 if cuda else 0)}
    variants = VARIANTS
    if args.only is not None:  # any registry model:preset, e.g. hifimamba:p2
        variants = [(*(item.strip().split(":", 1) + [None])[:2], {}) for item in args.only.split(",")]
    specs = []
    for model, preset, hp in variants:
        for ckpt in (False, True):
            specs.append(dict(base, model=model, preset=preset, hparams=hp, checkpoint=ckpt))
    if cuda:  # the 8 GB question: challenge preset at 16 coils x 3 adj x 384 x 396
        c, a, h, w = GPU_CHECK_SHAPE
        for ckpt in (False, True):
            specs.append(dict(base, model="promptmr", preset="challenge", hparams={}, checkpoint=ckpt,
                              coils=c, adj=a, height=h, width=w, gpu_check=True))

    print(f"device={args.device} torch threads={args.threads or 'default'} "
          f"batch=1, one training slice = coils x adj x H x W complex64; time = min over {args.iters} step(s)")
    mem = "peak GiB" if not cuda else "peak alloc"
    print(f"{'model:preset':<20} {'ckpt':<5} {'input':<16} {'params M':>8} {'step s':>9} {mem:>10} "
          f"{'before GiB':>10}")
    for spec in specs:
        res = run_variant(spec, args.timeout)
        line = _format_row(spec, res)
        if spec.get("gpu_check") and "error" not in res:
            fits = res["peak_gib"] * 1024**3 <= GPU_BUDGET_BYTES
            line += f"  8 GB check: {'fits' if fits else 'does NOT fit'}"
        print(line, flush=True)
    return 0


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing
        return False


if __name__ == "__main__":
    sys.exit(main())
