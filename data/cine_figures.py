"""Figures of cine reconstructions: PNG strips of frames over the cycle (zero-filled | parallel-imaging
baseline | model | target | error) and an animated GIF of one slice.

    python -m data.cine_figures --path_gt <CMRxRecon ...Set folder> --result R --out DIR [--cases 2] [--slice -1]

For the first ``--cases`` undersampled cases of the set (one per acceleration first), the model's full
reconstruction ``R/Reconstruction/MultiCoil/Cine/<Set>/<relpath>`` (written by ``reconstruct.py --task
cine``), the zero-filled and the ``auto`` parallel-imaging baseline (:mod:`data.cine_baselines`, computed
here), and the fully sampled target (RSS of the FullSample k-space) of slice ``--slice`` (default: the
middle one). Display only: the readout oversampling (half the kx field of view) is cropped away.
Per-method SSIM in the row labels is the 2025-protocol ranking SSIM of that slice's first 3 frames.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from data.cine import find_cine_sets, list_cine_cases
from data.cine_baselines import reconstruct_cine as baseline_cine
from data.cine_baselines import rss_images
from data.matlab import read_mat
from utils.figures import save_cine_gif, save_cine_strip
from utils.metrics import cine_ranking_metrics, run4ranking

RECON_KEY = "reconstruction"


def _display(stack: np.ndarray) -> np.ndarray:
    """``(T, ky, kx)`` without the 2x readout oversampling (the central half of kx)."""
    kx = stack.shape[-1]
    return stack[..., kx // 4: kx // 4 + kx // 2]


def case_panels(case, result: Path, slice_index: Optional[int] = None) -> Dict[str, np.ndarray]:
    """``{"zero-filled", "<baseline>", "model", "target"}`` -> ``(T, ky, kx)`` of one slice of ``case``."""
    kspace, mask = case.read_kspace(), case.read_mask()
    s = kspace.shape[1] // 2 if slice_index is None else slice_index % kspace.shape[1]
    k = kspace[:, s:s + 1]
    recon_path = result / "Reconstruction" / "MultiCoil" / "Cine" / case.set_name / case.relpath
    model = read_mat(recon_path, [RECON_KEY])[RECON_KEY][:, s]
    return {
        "zero-filled": baseline_cine(k, mask, "zero_filled")[:, 0].numpy(),
        "baseline": baseline_cine(k, mask, "auto")[:, 0].numpy(),
        "model": model,
        "target": rss_images(case.read_full()[:, s:s + 1])[:, 0].numpy(),
    }


def ranking_ssim(image: np.ndarray, target: np.ndarray) -> float:
    """2025-protocol SSIM of the first 3 frames of one slice ``(T, ky, kx)`` after the ranking crop."""
    crop = lambda x: run4ranking(torch.from_numpy(np.ascontiguousarray(x[:, None])))  # noqa: E731
    return float(np.nanmean(cine_ranking_metrics(crop(image), crop(target), "2025")["ssim"]))


def write_case_figures(case, result: Path, out: Path, slice_index: Optional[int] = None) -> List[Path]:
    panels = case_panels(case, result, slice_index)
    target = panels.pop("target")
    scores = {name: ranking_ssim(image, target) for name, image in panels.items()}
    stem = f"{case.set_name}_{case.relpath.with_suffix('').as_posix().replace('/', '_')}"
    t = target.shape[0]
    frames = sorted(set(np.linspace(0, t - 1, min(t, 6)).round().astype(int).tolist()))
    shown = {name: _display(image) for name, image in panels.items()}
    title = f"{case.subject} cine_{case.view} {case.mask_name}"
    return [
        save_cine_strip(out / f"{stem}.png", shown, _display(target), frames, title=title, scores=scores),
        save_cine_gif(out / f"{stem}.gif", shown, _display(target)),
    ]


def _pick_cases(cases, count: int):
    """Up to ``count`` cases, one per acceleration folder first."""
    chosen, seen = [], set()
    for case in cases:
        if case.mask_name not in seen:
            chosen.append(case)
            seen.add(case.mask_name)
    chosen += [c for c in cases if c not in chosen]
    return chosen[:count]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--path_gt", type=Path, required=True, help="CMRxRecon set folder with FullSample/")
    parser.add_argument("--result", type=Path, required=True, help="reconstruct.py --task cine --result_path")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG and GIF files")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--slice", type=int, default=None, help="slice index (default: the middle slice)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")
    cases = [c for set_dir in find_cine_sets(args.path_gt) for c in list_cine_cases(set_dir) if c.full_path is not None]
    if not cases:
        parser.error(f"--path_gt {args.path_gt}: no undersampled cases with a FullSample file")
    failed = 0
    for case in _pick_cases(cases, args.cases):
        try:
            for path in write_case_figures(case, args.result, args.out, args.slice):
                print(f"[figures] {path}")
        except (ValueError, OSError) as exc:
            failed += 1
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
