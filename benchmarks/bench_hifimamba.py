"""HiFi-Mamba training-step cost against PromptMR+ (challenge preset): forward + backward time, peak memory.

Each variant runs in its own subprocess so its peak memory is clean: on CPU the peak resident set size
(``ru_maxrss``) and the resident size before the step (model + inputs); on CUDA
``torch.cuda.max_memory_allocated``. Input: one training slice (batch 1) of ``coils x adj x H x W``
complex64 k-space, 4x equispaced + 8% ACS; loss = L1 of the (B, 384, 384) output against a random target.

    python benchmarks/bench_hifimamba.py                     # CPU, 1 thread: 4 coils x 1 adj x 192 x 192
    python benchmarks/bench_hifimamba.py --device cuda       # default 16 coils x 1 adj x 384 x 396
    python benchmarks/bench_hifimamba.py --only hifimamba:demo,promptmr:challenge --height 384 --width 396
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (registry name, preset, use_checkpoint)
VARIANTS = [
    ("hifimamba", "tiny", False),
    ("hifimamba", "demo", False),
    ("hifimamba", "p2", False),
    ("hifimamba", "p2", True),
    ("promptmr", "challenge", False),
    ("promptmr", "challenge", True),
]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(name: str, preset: str, use_checkpoint: bool):
    """Registry build; HiFi-Mamba directly from its module while it is not registered yet."""
    from models import MODEL_REGISTRY, build_model

    if name == "hifimamba" and name not in MODEL_REGISTRY:
        from models.hifimamba import HiFiMamba, HiFiMambaConfig

        return HiFiMamba(HiFiMambaConfig.from_dict({"use_checkpoint": use_checkpoint}, preset=preset))
    return build_model(name, preset, use_checkpoint=use_checkpoint)


def worker(spec: Dict) -> Dict:
    """Build one variant, run warm-up + timed training steps, return the figures (in a subprocess)."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = _build(spec["model"], spec["preset"], spec["checkpoint"]).to(device).train()
    adj = max(getattr(model.config, "num_adj_slices", 1), spec["adj"])
    coils, h, w = spec["coils"], spec["height"], spec["width"]
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, w)
    mask[0, (w // 2) % 4::4] = 1
    acs = max(round(0.08 * w), 2)
    mask[0, w // 2 - acs // 2: w // 2 - acs // 2 + acs] = 1
    kspace = (torch.randn(1, adj, coils, h, w, dtype=torch.complex64, generator=g) * mask.view(1, 1, 1, 1, w)).to(device)
    mask, target = mask.to(device), torch.rand(1, 384, 384, generator=g).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        (model(kspace, mask) - target).abs().mean().backward()

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
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "step_s": min(times),
            "peak_gib": peak / 1024**3, "base_gib": base / 1024**3, "adj": adj}


def run_variant(spec: Dict, timeout: float) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(spec: Dict, res: Dict) -> str:
    name = f"{spec['model']}:{spec['preset']}"
    ckpt = "yes" if spec["checkpoint"] else "no"
    shape = f"{spec['coils']}x{res.get('adj', spec['adj'])}x{spec['height']}x{spec['width']}"
    if "error" in res:
        return f"{name:<22} {ckpt:<5} {shape:<16} {'-':>8} {'-':>8} {'-':>10} {'-':>10}  {res['error']}"
    return (f"{name:<22} {ckpt:<5} {shape:<16} {res['params_m']:>8.3f} {res['step_s']:>8.2f} "
            f"{res['peak_gib']:>10.2f} {res['base_gib']:>10.2f}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--coils", type=int, default=None, help="default 4 (CPU) / 16 (CUDA)")
    p.add_argument("--adj", type=int, default=1)
    p.add_argument("--height", type=int, default=None, help="default 192 (CPU) / 384 (CUDA)")
    p.add_argument("--width", type=int, default=None, help="default 192 (CPU) / 396 (CUDA)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=None, help="default 0 (CPU) / 2 (CUDA)")
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--only", default=None, help="comma list of model:preset[:ckpt], e.g. hifimamba:demo")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    base = {"device": args.device, "adj": args.adj, "threads": args.threads, "iters": args.iters,
            "coils": args.coils or (16 if cuda else 4), "height": args.height or (384 if cuda else 192),
            "width": args.width or (396 if cuda else 192),
            "warmup": args.warmup if args.warmup is not None else (2 if cuda else 0)}
    wanted = None if args.only is None else {s.strip() for s in args.only.split(",")}
    specs = [dict(base, model=m, preset=pr, checkpoint=ck) for m, pr, ck in VARIANTS
             if wanted is None or f"{m}:{pr}" in wanted or f"{m}:{pr}:{'ckpt' if ck else 'nockpt'}" in wanted]
    print(f"device={args.device} threads={args.threads} batch=1; input = coils x adj x H x W complex64; "
          f"time = min over {args.iters} forward+backward step(s)")
    mem = "peak alloc" if cuda else "peak GiB"
    print(f"{'model:preset':<22} {'ckpt':<5} {'input':<16} {'params M':>8} {'step s':>8} {mem:>10} {'before GiB':>10}")
    for spec in specs:
        print(_row(spec, run_variant(spec, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
