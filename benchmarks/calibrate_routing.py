"""Measure the routing cues (:mod:`data.routing`) and the decision on calibration volumes; print a table.

Usage: ``python benchmarks/calibrate_routing.py [--classifier artifacts/anatomy_cnn.safetensors] [--acc 4 8]``

Volumes (2 slices each, 4 coils, the challenge's ``fixed`` masks), never the held-out real-anatomy
leaderboard: the simulator's brain and knee at the demo geometry (768 x 396, 640 x {372, 396}) and the
tiny one (400 x 396); the *training* split of the real brains (:mod:`data.real_anatomy`: example4d
slices 0-7, tlrc) resampled to 0.6 mm on the brain grid; out-of-distribution inputs: short-axis
frames of the heart phantom (a torso) at the brain grid and at a cine-like 512 x 246 grid, the
shoulder, abdomen and phantom images, pure noise and an all-zero volume. Columns: k-space size, zero
edge columns, readout extent and end occupancy, image_grappa side/end occupancy, foreground,
structure, the cue votes and score, the classifier's knee probability, the routed anatomy,
confidence and warning.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data import real_anatomy as ra  # noqa: E402
from data.routing import decide, physical_cues  # noqa: E402


def _sim(anatomy: str, H: int, W: int, seed: int):
    from data import simulate as sim

    preset = sim.Preset("cal", 1, 1, 2, 4, (H, W), H, (W,), (4, 12))
    return sim.simulate_kspace(np.random.default_rng(seed), anatomy, preset)


def _from_kspace(kspace: torch.Tensor, acc: int):
    from data.masks import make_mask
    from data.volumes import volume_images

    mask = make_mask("fixed", kspace.shape[-1], acc, None)
    images = volume_images(kspace, mask)
    return (kspace * torch.from_numpy(mask)).numpy(), mask, images["image_grappa"]


def _real(name: str, slices, frame: int, shape, pixel_mm: float = 0.6):
    real = ra.load_slices(name, slices, frame)
    return ra.to_grid(real.images, real.pixel_mm, pixel_mm, shape)


def cases(accs):
    """``[(name, truth, builder(acc) -> (kspace, mask, grappa))]``."""
    brain_grid = (768, 396)
    out = []
    for seed in (1, 2):
        out.append((f"sim brain 768x396 s{seed}", "brain", lambda acc, s=seed: _from_kspace(_sim("brain", 768, 396, s), acc)))
        out.append((f"sim knee 640x{372 if seed == 1 else 396} s{seed}", "knee",
                    lambda acc, s=seed: _from_kspace(_sim("knee", 640, 372 if s == 1 else 396, s), acc)))
    out.append(("sim brain tiny 400x396", "brain", lambda acc: _from_kspace(_sim("brain", 400, 396, 3), acc)))
    out.append(("sim knee tiny 400x372", "knee", lambda acc: _from_kspace(_sim("knee", 400, 372, 4), acc)))
    for slices, frame in (((0, 1), 0), ((4, 5), 1), ((6, 7), 0)):
        out.append((f"real example4d z{slices} t{frame}", "brain",
                    lambda acc, s=slices, f=frame: ra.routing_case(_real("example4d", s, f, brain_grid), acc, 10 + s[0])[:3]))
    for slices in ((14, 15), (24, 25), (32, 33)):
        out.append((f"real tlrc z{slices}", "brain",
                    lambda acc, s=slices: ra.routing_case(_real("tlrc", s, 0, brain_grid), acc, 20 + s[0])[:3]))
    ood = [
        ("cardiac 768x396 0.9mm", lambda acc: ra.routing_case(ra.cardiac_magnitude(np.random.default_rng(5), 2, brain_grid, 0.9), acc, 5)[:3]),
        ("cardiac 512x246 1.4mm", lambda acc: ra.routing_case(ra.cardiac_magnitude(np.random.default_rng(6), 2, (512, 246), 1.4), acc, 6)[:3]),
        ("shoulder 768x396 0.6mm", lambda acc: ra.routing_case(_real("shoulder", None, 0, brain_grid), acc, 7)[:3]),
        ("shoulder 640x372 0.5mm", lambda acc: ra.routing_case(_real("shoulder", None, 0, (640, 372), 0.5), acc, 8, coil_array="knee")[:3]),
        ("abdomen 768x396 0.9mm", lambda acc: ra.routing_case(_real("abdomen", None, 0, brain_grid, 0.9), acc, 9)[:3]),
        ("phantom 768x396 0.6mm", lambda acc: ra.routing_case(_real("qt2_phantom", None, 0, brain_grid), acc, 11)[:3]),
        ("noise 768x396", lambda acc: ra.routing_case(None, acc, 12, shape=(2, 768, 396))[:3]),
        ("empty 768x396", lambda acc: ra.routing_case(None, acc, -1, shape=(2, 768, 396))[:3]),
    ]
    out += [(name, "neither", build) for name, build in ood]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", type=Path, default=REPO / "artifacts" / "anatomy_cnn.safetensors")
    parser.add_argument("--acc", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from models.artifacts import load_artifact

    classifier, _ = load_artifact(args.classifier, "cpu")
    print(f"{'case':28s} {'acc':>3s} {'HxW':>8s} {'zeroE':>5s} {'rdExt':>5s} {'rdEnds':>9s} {'sides':>9s} {'ends':>9s} "
          f"{'fg':>4s} {'struct':>6s} {'votes h/e/r/m':>13s} {'score':>5s} {'p_knee':>6s} {'route':>6s} {'conf':>5s} ok  warning")
    for name, truth, build in cases(args.acc):
        if args.only and args.only not in name:
            continue
        for acc in args.acc:
            t0 = time.perf_counter()
            kspace, mask, grappa = build(acc)
            cues = physical_cues(kspace, mask, grappa)
            with torch.no_grad():
                probs = classifier(torch.from_numpy(grappa)[None]).softmax(-1)[0]
            d = decide(cues, float(probs[1]))
            v = cues.votes
            ok = (d.anatomy == truth and d.warning is None) if truth != "neither" else d.warning is not None
            print(f"{name:28s} {acc:3d} {cues.height:4d}x{cues.width:<3d} {cues.zero_edge_columns[0]:2d}/{cues.zero_edge_columns[1]:<2d} "
                  f"{cues.readout_extent:5.2f} {cues.readout_ends[0]:4.2f}/{cues.readout_ends[1]:4.2f} "
                  f"{'  n/a    ' if cues.sides is None else f'{cues.sides[0]:4.2f}/{cues.sides[1]:4.2f}'} {cues.ends[0]:4.2f}/{cues.ends[1]:4.2f} {cues.foreground:4.2f} "
                  f"{cues.structure:6.3f} {v['height']:+d}/{v['edges']:+d}/{v['readout']:+d}/{v['margins']:+d}      "
                  f"{cues.score:+5.0f} {float(probs[1]):6.3f} {d.anatomy:>6s} {d.confidence:5.3f} {'yes' if ok else 'NO '} "
                  f"{d.warning or ''} [{time.perf_counter() - t0:.1f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
