"""Leaderboard reconstruction speed: per slice, per volume, for a whole folder, against the 3600 s budget.

CPU part: random-weight models of ``--preset`` (timing depends on the architecture, not on the weights)
are exported as artifacts and ``reconstruct.py``'s own driver reconstructs a whole leaderboard folder
(default ``demo/Data/leaderboard`` if present, else a freshly simulated ``tiny`` one): total wall time,
seconds per volume and per slice, and the model's time per slice on its own.

GPU part (when CUDA is available, or forced with ``--full cpu``): full-size volumes as in the challenge,
16 coils x 16 slices, brain k-space 768 x 396 and knee 640 x 396, with the ``--full_preset`` model
(default ``challenge``), at several batch sizes: seconds per volume (height cut + model + copy back),
an h5 write/read round trip of one volume, peak memory, and the projected time of the full leaderboard
(58 volumes per acceleration: 29 brain + 29 knee, x 2 accelerations) against 3600 s.

    python benchmarks/bench_reconstruct.py                         # CPU folder run (+ GPU if available)
    python benchmarks/bench_reconstruct.py --full off --batch_size 2
    python benchmarks/bench_reconstruct.py --full cpu --full_preset tiny --full_slices 2   # smoke test

Before/after (``--before OLD_CHECKOUT``): ``reconstruct.reconstruct_kspace`` of one leaderboard volume with the
same weights file (default ``artifacts/<anatomy>_acc4.safetensors``), run as whole processes alternating
between the old checkout and this one (``--repeats`` each, one thread unless ``--threads``); prints the median
CPU and wall seconds per slice of each side, the ratio after/before, and the largest difference of the two
reconstructions relative to their maximum. Only this part runs when ``--before`` is given.

    python benchmarks/bench_reconstruct.py --before /tmp/old_checkout --leaderboard demo/Data/leaderboard
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import reconstruct
from models import artifacts

ROOT = Path(__file__).resolve().parents[1]

FULL_SHAPES = {"brain": (768, 396), "knee": (640, 396)}  # k-space (H, W) of the full synthetic preset
LEADERBOARD_VOLUMES = {"brain": 58, "knee": 58}  # over both accelerations (29 + 29 per acceleration)


def make_random_artifacts(out_dir: Path, model: str, preset: str, seed: int = 0) -> None:
    """Four randomly initialised reconstruction models and a classifier, written as artifacts."""
    from models import build_model

    for i, (anatomy, acc) in enumerate(artifacts.RECON_ROLES):
        torch.manual_seed(seed + i)
        net = build_model(model, preset)
        info = artifacts.ArtifactInfo(model, net.config.to_dict(), "random initialisation (benchmark)",
                                      anatomy=anatomy, acceleration=acc)
        artifacts.save_artifact(net, out_dir / f"{artifacts.recon_artifact_name(anatomy, acc)}.safetensors", info)
    cnn = build_model("anatomy_cnn")
    artifacts.save_artifact(cnn, out_dir / "anatomy_cnn.safetensors",
                            artifacts.ArtifactInfo("anatomy_cnn", cnn.config.to_dict(), "random initialisation (benchmark)"))


def default_leaderboard(work: Path) -> Path:
    demo = ROOT / "demo" / "Data" / "leaderboard"
    if any(demo.glob("acc*/kspace/*.h5")):
        return demo
    from data.simulate import generate_dataset

    print("demo data not found: simulating the tiny preset", file=sys.stderr)
    generate_dataset(work / "Data", "tiny", seed=0, progress=False)
    return work / "Data" / "leaderboard"


def bench_folder(leaderboard: Path, art_dir: Path, work: Path, batch_size: int, device: str) -> Dict:
    """Run reconstruct.run on a folder; returns its routing report plus the model-only time per slice."""
    args = Namespace(path_data=leaderboard, result_path=work / "result", weights="artifacts", artifacts_dir=art_dir,
                     net_prefix="promptmr", classifier_net="anatomy_cnn", batch_size=batch_size, device=device,
                     no_progress=True)
    report, failed = reconstruct.run(args)
    if failed:
        raise SystemExit(f"benchmark run failed on {failed} volume(s): see {work / 'result'}")
    # model alone on the first volume (data already in memory, models already loaded)
    job = reconstruct.find_jobs(leaderboard, work / "scratch")[0]
    data = reconstruct.read_volume(job)
    model, _ = artifacts.load_artifact(art_dir / "brain_acc4.safetensors", device)
    reconstruct.reconstruct_kspace(model, data.kspace, data.mask, "brain", batch_size, device)  # warm-up
    start = time.perf_counter()
    reconstruct.reconstruct_kspace(model, data.kspace, data.mask, "brain", batch_size, device)
    report["model_seconds_per_slice"] = (time.perf_counter() - start) / data.kspace.shape[0]
    report["volume_shape"] = list(data.kspace.shape)
    return report


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _full_volume(anatomy: str, slices: int, coils: int, device: torch.device):
    """Random full-size undersampled k-space ``(S, C, H, W)`` (fixed acc-4 mask) as numpy, and the mask."""
    from data.masks import make_mask

    h, w = FULL_SHAPES[anatomy]
    mask = make_mask("fixed", w, 4).astype(np.float32)
    g = torch.Generator().manual_seed(1)
    k = torch.randn(slices, coils, h, w, dtype=torch.complex64, generator=g) * torch.from_numpy(mask)
    return k.numpy(), mask


def h5_round_trip(kspace: np.ndarray, mask: np.ndarray, folder: Path) -> Dict[str, float]:
    """Write one volume as a challenge k-space file and read it back (the reader's cost, page cache warm)."""
    from data.formats import read_kspace_file, write_kspace_file

    path = folder / "full_volume.h5"
    start = time.perf_counter()
    write_kspace_file(path, kspace, mask)
    written = time.perf_counter() - start
    start = time.perf_counter()
    read_kspace_file(path)
    read = time.perf_counter() - start
    size = path.stat().st_size
    path.unlink()
    return {"write_s": written, "read_s": read, "bytes": size}


def bench_full(device: torch.device, model_name: str, preset: str, slices: int, coils: int,
               batch_sizes: Sequence[int], work: Path) -> Dict:
    """Full-size per-volume timings per anatomy and batch size; projection for the whole leaderboard."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, preset).to(device).eval()
    classifier = build_model("anatomy_cnn").to(device).eval()
    rows: List[Dict] = []
    volumes = {a: _full_volume(a, slices, coils, device) for a in FULL_SHAPES}
    io = h5_round_trip(*volumes["brain"], work)
    grappa = np.random.default_rng(0).random((slices, 384, 384), dtype=np.float32)
    reconstruct.route_volume(classifier, grappa, volumes["brain"][1], device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    reconstruct.route_volume(classifier, grappa, volumes["brain"][1], device)
    _sync(device)
    route_s = time.perf_counter() - start
    for batch in batch_sizes:
        for anatomy, (k, mask) in volumes.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                reconstruct.reconstruct_kspace(model, k[: min(batch, slices)], mask, anatomy, batch, device)  # warm-up
                _sync(device)
                start = time.perf_counter()
                out = reconstruct.reconstruct_kspace(model, k, mask, anatomy, batch, device)
                _sync(device)
                seconds = time.perf_counter() - start
            except torch.OutOfMemoryError:
                rows.append({"anatomy": anatomy, "batch": batch, "error": "out of memory"})
                continue
            assert out.shape == (slices, 384, 384) and np.isfinite(out).all()
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append({"anatomy": anatomy, "batch": batch, "volume_s": seconds, "slice_s": seconds / slices,
                         "peak_gib": peak})
    best = {}
    for anatomy in FULL_SHAPES:
        ok = [r for r in rows if r["anatomy"] == anatomy and "volume_s" in r]
        if ok:
            best[anatomy] = min(ok, key=lambda r: r["volume_s"])
    per_volume_overhead = io["read_s"] + route_s
    projected = None
    if len(best) == len(FULL_SHAPES):
        projected = sum(LEADERBOARD_VOLUMES[a] * (best[a]["volume_s"] + per_volume_overhead) for a in FULL_SHAPES)
    return {"device": str(device), "model": f"{model_name}:{preset}", "slices": slices, "coils": coils, "rows": rows,
            "io": io, "route_s": route_s, "best": best, "projected_s": projected}


def print_folder(report: Dict, leaderboard: Path, preset: str) -> None:
    vols = [v for v in report["volumes"].values() if v["status"] == "ok"]
    print(f"\n## Whole folder ({leaderboard}), promptmr:{preset}, device {report['device']}, batch {report['batch_size']}")
    print("| volumes | slices | total s | s/volume | s/slice | model-only s/slice | k-space shape |")
    print("|---|---|---|---|---|---|---|")
    n, s, total = len(vols), report["slices"], report["total_seconds"]
    print(f"| {n} | {s} | {total:.2f} | {total / n:.3f} | {total / s:.3f} | {report['model_seconds_per_slice']:.3f} "
          f"| {tuple(report['volume_shape'])} |")
    print(f"{100 * total / reconstruct.BUDGET_SECONDS:.2f}% of the {reconstruct.BUDGET_SECONDS:.0f} s budget")


def print_full(full: Dict) -> None:
    print(f"\n## Full-size volumes ({full['coils']} coils x {full['slices']} slices; brain 768x396, knee 640x396), "
          f"{full['model']} on {full['device']}")
    print("| anatomy | batch | s/volume | s/slice | peak GiB |")
    print("|---|---|---|---|---|")
    for r in full["rows"]:
        if "error" in r:
            print(f"| {r['anatomy']} | {r['batch']} | {r['error']} | | |")
        else:
            print(f"| {r['anatomy']} | {r['batch']} | {r['volume_s']:.3f} | {r['slice_s']:.4f} | {r['peak_gib']:.2f} |")
    io = full["io"]
    print(f"h5 volume ({io['bytes'] / 2**20:.0f} MiB): write {io['write_s']:.2f} s, read {io['read_s']:.2f} s "
          f"(page cache warm); routing (classifier + mask) {full['route_s']:.3f} s per volume")
    if full["projected_s"] is not None:
        p = full["projected_s"]
        print(f"projected full leaderboard (58 brain + 58 knee volumes, best batch, + read + routing): {p:.0f} s = "
              f"{100 * p / reconstruct.BUDGET_SECONDS:.1f}% of {reconstruct.BUDGET_SECONDS:.0f} s "
              f"({'within' if p <= reconstruct.BUDGET_SECONDS else 'OVER'} budget)")


# Timed in a fresh interpreter inside a checkout (this one or --before's): imports, data read, model load and
# one warm-up batch are outside the timing; prints one JSON line and saves the reconstruction.
_WORKER = """
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads({threads})
import reconstruct
from models import artifacts
job = [j for j in reconstruct.find_jobs(Path({leaderboard!r}), Path({scratch!r}))
       if j.kspace_path.name.startswith({anatomy!r})][0]
data = reconstruct.read_volume(job)
model, _ = artifacts.load_artifact(Path({weights!r}), "cpu")
reconstruct.reconstruct_kspace(model, data.kspace[:1], data.mask, {anatomy!r}, {batch}, "cpu")
cpu, wall, out = [], [], None
for _ in range({runs}):
    c, w = time.process_time(), time.perf_counter()
    out = reconstruct.reconstruct_kspace(model, data.kspace, data.mask, {anatomy!r}, {batch}, "cpu")
    cpu.append(time.process_time() - c)
    wall.append(time.perf_counter() - w)
np.save({out!r}, out)
print(json.dumps({{"cpu_s": cpu, "wall_s": wall, "slices": int(data.kspace.shape[0]), "file": str(job.kspace_path)}}))
"""


def bench_before_after(before: Path, leaderboard: Path, weights: Path, anatomy: str, batch_size: int,
                       threads: int, repeats: int, runs: int, work: Path) -> Dict:
    """Whole-process timings of ``reconstruct_kspace`` alternating between the ``before`` checkout and this
    one; returns per-side medians of CPU/wall seconds per slice and the outputs' agreement."""
    import os
    import subprocess

    sides = {"before": before.resolve(), "after": ROOT}
    times: Dict[str, Dict[str, List[float]]] = {k: {"cpu": [], "wall": []} for k in sides}
    info: Dict[str, Dict] = {}
    for rep in range(repeats):
        for name, root in (sides.items() if rep % 2 == 0 else reversed(list(sides.items()))):
            out = work / f"{name}.npy"
            code = _WORKER.format(threads=threads, leaderboard=str(leaderboard.resolve()), scratch=str(work / "scratch"),
                                  anatomy=anatomy, weights=str(weights.resolve()), batch=batch_size, runs=runs,
                                  out=str(out))
            env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{root}: benchmark worker failed:\n{proc.stderr.strip()}")
            info[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            slices = info[name]["slices"]
            times[name]["cpu"] += [t / slices for t in info[name]["cpu_s"]]
            times[name]["wall"] += [t / slices for t in info[name]["wall_s"]]
            print(f"  {name:6s} rep {rep}: cpu s/slice {min(info[name]['cpu_s']) / slices:.3f}", file=sys.stderr)
    a, b = np.load(work / "after.npy"), np.load(work / "before.npy")
    scale = np.abs(b).max(axis=(-2, -1))
    rel = np.abs(a - b).max(axis=(-2, -1)) / np.where(scale > 0, scale, 1)
    med = {k: {m: float(np.median(v)) for m, v in t.items()} for k, t in times.items()}
    return {"file": info["after"]["file"], "weights": str(weights), "batch_size": batch_size, "threads": threads,
            "repeats": repeats, "runs_per_process": runs, "median": med,
            "ratio_cpu": med["after"]["cpu"] / med["before"]["cpu"],
            "ratio_wall": med["after"]["wall"] / med["before"]["wall"], "max_rel_diff": float(rel.max()),
            "samples": times}


def print_before_after(r: Dict, before: Path) -> None:
    print(f"\n## reconstruct_kspace before ({before}) / after (this checkout): {r['file']}, weights {r['weights']}, "
          f"batch {r['batch_size']}, {r['threads']} thread(s), {r['repeats']} processes x {r['runs_per_process']} "
          f"runs per side, interleaved")
    print("| | before s/slice | after s/slice | ratio after/before |")
    print("|---|---|---|---|")
    for m in ("cpu", "wall"):
        print(f"| {m} (median) | {r['median']['before'][m]:.3f} | {r['median']['after'][m]:.3f} | {r[f'ratio_{m}']:.3f} |")
    print(f"reconstructions agree: max |after - before| / max |before| per slice = {r['max_rel_diff']:.2e}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaderboard", type=Path, default=None, help="default: demo/Data/leaderboard, else simulated tiny")
    parser.add_argument("--preset", default="demo", help="promptmr preset of the CPU folder run")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--full", choices=("auto", "cpu", "off"), default="auto",
                        help="full-size part: on CUDA when available (auto), forced on the CPU, or skipped")
    parser.add_argument("--full_model", default="promptmr")
    parser.add_argument("--full_preset", default="challenge")
    parser.add_argument("--full_slices", type=int, default=16)
    parser.add_argument("--full_coils", type=int, default=16)
    parser.add_argument("--full_batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--before", type=Path, default=None,
                        help="an older checkout: time reconstruct_kspace there and here, whole processes interleaved")
    parser.add_argument("--weights_file", type=Path, default=None,
                        help="--before: weights (default artifacts/<anatomy>_acc4.safetensors of this checkout)")
    parser.add_argument("--anatomy", choices=("brain", "knee"), default="brain", help="--before: which volume")
    parser.add_argument("--repeats", type=int, default=5, help="--before: processes per side")
    parser.add_argument("--runs", type=int, default=2, help="--before: timed runs per process")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: Dict = {}
    if args.before is not None:
        if not (args.before / "reconstruct.py").is_file():
            raise SystemExit(f"--before {args.before}: not a checkout (no reconstruct.py)")
        weights = args.weights_file or ROOT / "artifacts" / f"{args.anatomy}_acc4.safetensors"
        if not weights.is_file():
            raise SystemExit(f"--weights_file {weights}: no such file")
        with tempfile.TemporaryDirectory(prefix="bench_reconstruct_") as tmp:
            leaderboard = args.leaderboard or default_leaderboard(Path(tmp))
            r = bench_before_after(args.before, leaderboard, weights, args.anatomy, args.batch_size,
                                   args.threads or 1, args.repeats, args.runs, Path(tmp))
        print_before_after(r, args.before)
        if args.json:
            args.json.write_text(json.dumps({"before_after": r}, indent=2, default=str) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_reconstruct_") as tmp:
        work = Path(tmp)
        leaderboard = args.leaderboard or default_leaderboard(work)
        art = work / "artifacts"
        make_random_artifacts(art, "promptmr", args.preset)
        folder = bench_folder(leaderboard, art, work, args.batch_size, "cpu")
        results["cpu_folder"] = folder
        print_folder(folder, leaderboard, args.preset)
        device = None
        if args.full == "cpu":
            device = torch.device("cpu")
        elif args.full == "auto" and torch.cuda.is_available():
            device = torch.device("cuda")
        if device is None:
            print("\n(full-size part skipped: no CUDA device; --full cpu forces it on the CPU)")
        else:
            full = bench_full(device, args.full_model, args.full_preset, args.full_slices, args.full_coils,
                              args.full_batch_sizes, work)
            results["full"] = full
            print_full(full)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
