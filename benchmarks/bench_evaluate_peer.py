"""evaluate.py against the plain scikit-image loop a user would write instead, both as whole processes.

    python benchmarks/bench_evaluate_peer.py [--volumes 58] [--slices 16] [--size 384] [--repeats 3]

Builds a synthetic leaderboard (``bench_evaluate.build_leaderboard``: ``acc4`` and ``acc8`` with
``--volumes`` files each, half brain and half knee, ``--slices`` slices of ``--size``\\ :sup:`2`) in a
temporary folder, then runs, interleaved, ``--repeats`` times each:

* ours: ``python evaluate.py -lp LB -yp RECON --json FILE`` (its defaults otherwise: workers, progress
  bar on stderr), a whole process from start-up to exit;
* peer: a whole-process plain loop (the script below, written to the temporary folder) that reads each
  volume with h5py and, per slice, builds the SNU leaderboard mask exactly as the challenge code does
  (float64 ``np.zeros`` mask, ``> 5e-5`` brain / ``> 2e-5`` knee, cv2 3x3 erode x1, dilate x15, erode
  x14) and scores ``skimage.metrics.structural_similarity(target * mask, recon * mask, win_size=7,
  K1=0.01, K2=0.03, use_sample_covariance=True, data_range=max)`` with ``max`` the file's attr.

``--before OLD/evaluate.py`` times a third process the same way (an older commit's evaluate.py), so
a before/after pair shares one load. All processes get ``OMP_NUM_THREADS`` unset as a user would have it, unless ``--omp`` is given.
Prints the median wall time of each, the ratio ours/peer, the processes' CPU time (user + system of
the child) and checks agreement: per-volume SSIM and the totals from evaluate.py's JSON against the
peer's, and per slice ``evaluate.score_volume`` (the code path evaluate.py runs) against the peer's
per-slice scores, all within ``--tol`` (default 1e-6). Exit status 1 when they disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

PEER_SCRIPT = r'''
"""Plain SNU leaderboard loop with scikit-image: per-slice SSIM of the cv2-masked images."""
import json, sys
from pathlib import Path
import cv2, h5py, numpy as np
from skimage.metrics import structural_similarity

leaderboard, recon_root, out = map(Path, sys.argv[1:4])
kernel = np.ones((3, 3), np.uint8)
scores = {}
for acc in ("acc4", "acc8"):
    for label_file in sorted((leaderboard / acc / "image").glob("*.h5")):
        threshold = 5e-5 if label_file.name.startswith("brain") else 2e-5
        with h5py.File(label_file, "r") as f:
            targets, maximum = f["image_label"][()], f.attrs["max"]
        with h5py.File(recon_root / acc / label_file.name, "r") as f:
            recons = f["reconstruction"][()]
        values = []
        for target, recon in zip(targets, recons):
            mask = np.zeros(target.shape)
            mask[target > threshold] = 1
            mask = cv2.erode(mask, kernel, iterations=1)
            mask = cv2.dilate(mask, kernel, iterations=15)
            mask = cv2.erode(mask, kernel, iterations=14)
            values.append(float(structural_similarity(target * mask, recon * mask, win_size=7, K1=0.01, K2=0.03,
                                                      use_sample_covariance=True, data_range=maximum)))
        scores[f"{acc}/{label_file.stem}"] = values
total = np.mean([np.mean(sum((v for k, v in scores.items() if k.startswith(a)), [])) for a in ("acc4", "acc8")])
print(f"Leaderboard SSIM : {total:.4f}")
with open(out, "w") as f:
    json.dump(scores, f)
'''


def _run_process(cmd, env) -> tuple:
    """Wall seconds and CPU seconds (user + system of the child and its threads) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def check_agreement(root: Path, ours_json: Path, peer_json: Path) -> dict:
    """Largest differences: per volume (evaluate.py's JSON), total, and per slice (evaluate.score_volume)."""
    import evaluate

    ours = json.loads(ours_json.read_text())
    peer = {k: np.asarray(v, np.float64) for k, v in json.loads(peer_json.read_text()).items()}
    if set(ours["volumes"]) != set(peer):
        raise RuntimeError(f"volume sets differ: {sorted(set(ours['volumes']) ^ set(peer))}")
    vol = max(abs(ours["volumes"][k]["ssim"] - v.mean()) for k, v in peer.items())
    accs = [np.concatenate([v for k, v in peer.items() if k.startswith(a)]).mean() for a in ("acc4", "acc8")]
    total = abs(ours["total"] - (accs[0] + accs[1]) / 2)
    per_slice = 0.0
    for name, values in peer.items():
        acc, stem = name.split("/")
        scores = evaluate.score_volume(root / "leaderboard" / acc / "image" / f"{stem}.h5", root / "recon" / acc / f"{stem}.h5",
                                       "reconstruction")
        per_slice = max(per_slice, float(np.abs(scores["ssim_slices"] - values).max()))
    return {"slice": per_slice, "volume": vol, "total": total, "n_slices": sum(v.size for v in peer.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=58, help="volumes per acceleration (half brain, half knee)")
    parser.add_argument("--slices", type=int, default=16, help="slices per volume")
    parser.add_argument("--size", type=int, default=384, help="image side")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each")
    parser.add_argument("--tol", type=float, default=1e-6, help="largest allowed per-slice SSIM difference")
    parser.add_argument("--omp", type=int, default=None, help="set OMP_NUM_THREADS for both processes")
    parser.add_argument("--evaluate", type=Path, default=REPO / "evaluate.py", help="the evaluate.py to time")
    parser.add_argument("--before", type=Path, default=None,
                        help="also time this evaluate.py, interleaved (e.g. in a git worktree of an older commit: "
                             "git worktree add /tmp/old <commit>; --before /tmp/old/evaluate.py)")
    args = parser.parse_args()
    from bench_evaluate import build_leaderboard

    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if args.omp is not None:
        env["OMP_NUM_THREADS"] = str(args.omp)
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_peer_") as tmp:
        root = Path(tmp)
        build_leaderboard(root, args.volumes, args.slices, args.size)
        peer_script = root / "peer_loop.py"
        peer_script.write_text(PEER_SCRIPT)
        ours_json, peer_json = root / "ours.json", root / "peer.json"
        commands = {
            "ours": [sys.executable, str(args.evaluate), "-lp", str(root / "leaderboard"), "-yp", str(root / "recon"),
                     "--json", str(ours_json)],
            "peer": [sys.executable, str(peer_script), str(root / "leaderboard"), str(root / "recon"), str(peer_json)],
        }
        if args.before is not None:
            commands["before"] = [sys.executable, str(args.before), *commands["ours"][2:-1], str(root / "before.json")]
        times = {k: [] for k in commands}
        for r in range(args.repeats):
            for name in (list(commands) if r % 2 == 0 else list(commands)[::-1]):
                times[name].append(_run_process(commands[name], env))
                print(f"  run {r + 1} {name}: {times[name][-1][0]:.2f} s wall, {times[name][-1][1]:.2f} s CPU", flush=True)
        agree = check_agreement(root, ours_json, peer_json)

    n = 2 * args.volumes * args.slices
    med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
    print(f"synthetic leaderboard: 2 x {args.volumes} volumes x {args.slices} slices of {args.size}^2 ({n} slices), "
          f"{args.repeats} interleaved runs each, {len(os.sched_getaffinity(0))} usable cores")
    print(f"{'':<44}{'wall s':>9}{'CPU s':>9}")
    print(f"{'ours: evaluate.py (defaults)':<44}{med['ours'][0]:>9.2f}{med['ours'][1]:>9.2f}")
    print(f"{'peer: skimage structural_similarity loop':<44}{med['peer'][0]:>9.2f}{med['peer'][1]:>9.2f}")
    if "before" in med:
        print(f"{'before: ' + str(args.before):<44}{med['before'][0]:>9.2f}{med['before'][1]:>9.2f}")
        print(f"ratio before/peer: wall {med['before'][0] / med['peer'][0]:.3f}, CPU {med['before'][1] / med['peer'][1]:.3f}")
    print(f"ratio ours/peer: wall {med['ours'][0] / med['peer'][0]:.3f}, CPU {med['ours'][1] / med['peer'][1]:.3f}")
    print(f"agreement: max |ours - peer| per slice {agree['slice']:.2e} ({agree['n_slices']} slices), "
          f"per volume {agree['volume']:.2e}, total {agree['total']:.2e} (tolerance {args.tol:g})")
    if max(agree["slice"], agree["volume"], agree["total"]) > args.tol:
        print("DISAGREE: scores differ beyond the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
