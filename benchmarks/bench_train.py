"""Training throughput and peak memory, and data loading alone.

    python benchmarks/bench_train.py [--data demo/Data] [--anatomy brain] [--presets demo challenge]
                                     [--steps 3] [--workers 2] [--threads 1]

* data loading: the training DataLoader (SliceDataset + masks [+ MRAugment], default workers) iterated over
  one epoch without a model: samples/s.
* training step: one subprocess per preset runs the real engine (train.py: DeepSpeed ZeRO-1, CPU Adam,
  gradient accumulation 2) for ``--steps`` micro-steps on the same data and reports slices/s (after the
  first, warm-up step) and the process's peak resident memory (ru_maxrss). On a GPU machine it reports
  torch.cuda.max_memory_allocated as well.
Data loading must run at least 5x faster than the model's step rate with the default workers.
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

REPO = Path(__file__).resolve().parents[1]

_STEP_PROBE = r"""
import json, resource, sys, time, torch
from data.datasets import SliceDataset, collate_training
from data.masks import MaskSampler
from data.transforms import TrainingTransform
from models import build_model
from utils.engine import EngineConfig, deepspeed_config, init_distributed, _optimizer
from utils.objectives import ReconstructionObjective
import deepspeed
torch.set_num_threads({threads})
init_distributed()
model = build_model("promptmr", preset={preset!r})
ds = SliceDataset({data!r}, {anatomy!r}, model.config.num_adj_slices,
                  TrainingTransform(MaskSampler("fixed", 4, 0).sample))
cfg = EngineConfig(result_path="/tmp", net_name="bench")
engine, *_ = deepspeed.initialize(model=model, optimizer=_optimizer(model, cfg, not torch.cuda.is_available()),
                                  config=deepspeed_config(cfg))
objective = ReconstructionObjective()
times = []
for i in range({steps}):
    batch = collate_training([ds[i % len(ds)]])
    batch = type(batch)(**{{k: (v.to(engine.device) if torch.is_tensor(v) else v) for k, v in vars(batch).items()}})
    t = time.perf_counter()
    loss = objective(engine, batch, engine.device)
    engine.backward(loss)
    engine.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
shape = tuple(ds[0].masked_kspace.shape)
print(json.dumps({{"times": times, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "gpu_gib": gpu, "shape": shape}}))
"""


def loading_rate(data: Path, anatomy: str, workers: int, augment: bool) -> float:
    import torch
    from torch.utils.data import DataLoader

    from data.augment import AugmentConfig, MRAugment
    from data.datasets import SliceDataset, collate_training
    from data.masks import MaskSampler
    from data.transforms import TrainingTransform

    aug = None
    if augment:
        aug = MRAugment(AugmentConfig(aug_on=True, aug_strength=1.0, aug_schedule="constant", aug_weight_fliph=0.5,
                                      aug_weight_translation=0.5, aug_weight_shearing=0.5, aug_weight_scaling=0.5,
                                      num_epochs=2))
    ds = SliceDataset(data, anatomy, 3, TrainingTransform(MaskSampler("fixed", 4, 0).sample, augment=aug, seed=0))
    ds.set_epoch(1)
    loader = DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=collate_training, shuffle=False)
    torch.set_num_threads(1)
    t = time.perf_counter()
    n = sum(1 for _ in loader)
    return n / (time.perf_counter() - t)


def step_rate(data: Path, anatomy: str, preset: str, steps: int, threads: int) -> dict:
    code = _STEP_PROBE.format(repo=str(REPO), preset=preset, data=str(data), anatomy=anatomy, steps=steps, threads=threads)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    measured = result["times"][1:] or result["times"]
    result["median_s"] = sorted(measured)[len(measured) // 2]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO / "demo" / "Data" / "train"))
    parser.add_argument("--anatomy", default="brain")
    parser.add_argument("--presets", nargs="+", default=["demo", "challenge"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (train.py's default is 2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"{data}: not found; run `python -m data.simulate --out demo/Data --preset demo` first")

    rows = []
    for augment in (False, True):
        rate = loading_rate(data, args.anatomy, args.workers, augment)
        rows.append((f"data loading ({args.workers} workers{', MRAugment' if augment else ''})", rate, None, None))
    load_rate = min(r[1] for r in rows)
    for preset in args.presets:
        r = step_rate(data, args.anatomy, preset, args.steps, args.threads)
        rows.append((f"train step promptmr/{preset} {tuple(r['shape'])}", 1.0 / r["median_s"], r["rss_gib"], r["gpu_gib"]))
    print(f"\n{'what':<58} {'slices/s':>9} {'peak RSS GiB':>13} {'GPU GiB':>8}")
    for name, rate, rss, gpu in rows:
        print(f"{name:<58} {rate:>9.3f} {'' if rss is None else f'{rss:.2f}':>13} {'' if gpu is None else f'{gpu:.2f}':>8}")
    fastest_model = max(r[1] for r in rows[2:])
    print(f"\ndata loading / fastest model step = {load_rate / fastest_model:.1f}x (must be >= 5x)")
    print(f"(children peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
