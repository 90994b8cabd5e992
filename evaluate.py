"""Score reconstructions with the SNU FastMRI leaderboard metric.

    python evaluate.py --path_leaderboard_data DIR --path_your_data OUT [--output_key reconstruction] [--json FILE]
                       [--workers N] [--no_progress]

``DIR`` holds ``acc4/image/*.h5`` and ``acc8/image/*.h5`` (keys ``image_label``, attr ``max``);
``OUT`` holds ``acc4/{name}.h5`` and ``acc8/{name}.h5`` with the reconstruction under ``--output_key``.
Every slice of every volume is scored with :func:`utils.metrics.leaderboard_ssim` on the anatomy's
foreground mask (anatomy from the file name); an acceleration's SSIM is the mean over all its slices
and ``Total = (acc4 + acc8) / 2`` (only when both folders exist). PSNR and NMSE are computed per volume
on the same masked images and averaged over volumes. A missing reconstruction file, a missing key, a
shape mismatch or non-finite values are reported one line each; then the exit status is 1 and no
score is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from data.formats import FormatError, anatomy_from_name, read_image_file, read_reconstruction_file
from utils.io import OutputError, atomic_path, prepare_output_dir, prepare_output_file
from utils.metrics import leaderboard_foreground_mask, leaderboard_ssim, nmse, psnr

ACCELERATIONS = ("acc4", "acc8")
LABEL_KEY = "image_label"


def _natural_key(path: Path) -> Tuple:
    """Sort ``brain_test2`` before ``brain_test10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem))


def volume_pairs(leaderboard_dir: Path, recon_dir: Path) -> Dict[str, List[Tuple[Path, Path]]]:
    """``{acc: [(label_file, recon_file), ...]}`` for each ``acc{4,8}/image`` folder that exists."""
    pairs = {}
    for acc in ACCELERATIONS:
        image_dir = leaderboard_dir / acc / "image"
        if image_dir.is_dir():
            labels = sorted(image_dir.glob("*.h5"), key=_natural_key)
            pairs[acc] = [(p, recon_dir / acc / p.name) for p in labels]
    return pairs


def score_volume(label_file: Path, recon_file: Path, output_key: str) -> Dict[str, object]:
    """Leaderboard scores of one volume: ``{"ssim_slices": (S,) float64, "psnr", "nmse", "slices"}``.

    Raises :class:`FormatError` for unreadable files, missing keys, shape mismatches, NaNs.
    """
    image = read_image_file(label_file, keys=[LABEL_KEY])
    target, data_range = image[LABEL_KEY], image["max"]
    recon = read_reconstruction_file(recon_file, key=output_key)
    if recon.shape != target.shape:
        raise FormatError(recon_file, output_key, f"shape {recon.shape} differs from {LABEL_KEY} {target.shape} of {label_file}")
    mask = leaderboard_foreground_mask(target, anatomy_from_name(label_file))
    slices = leaderboard_ssim(recon, target, data_range, mask=mask)
    recon_m, target_m = recon * mask, target * mask
    return {
        "ssim_slices": slices,
        "psnr": psnr(recon_m, target_m, data_range),
        "nmse": nmse(recon_m, target_m),
        "slices": int(target.shape[0]),
    }


def _missing_files(pairs: Dict[str, List[Tuple[Path, Path]]]) -> List[str]:
    return [
        f"{recon}: -: reconstruction file not found (for {label})"
        for v in pairs.values()
        for label, recon in v
        if not recon.is_file()
    ]


def _extra_files(pairs: Dict[str, List[Tuple[Path, Path]]], recon_dir: Path) -> List[Path]:
    expected = {r for v in pairs.values() for _, r in v}
    return sorted(p for acc in pairs for p in (recon_dir / acc).glob("*.h5") if p not in expected)


def _summarise(volumes: Dict[str, Dict[str, object]], pairs) -> Dict[str, object]:
    """Per-acceleration SSIM (mean over slices), PSNR/NMSE (mean over volumes) and the total."""
    result: Dict[str, object] = {"total": None, "acc4": None, "acc8": None, "details": {}, "volumes": {}}
    for acc, acc_pairs in pairs.items():
        names = [f"{acc}/{label.stem}" for label, _ in acc_pairs]
        scores = [volumes[n] for n in names]
        all_slices = np.concatenate([s["ssim_slices"] for s in scores]) if scores else np.zeros(0)
        result["details"][acc] = {
            "ssim": float(all_slices.mean()) if all_slices.size else None,
            "psnr": float(np.mean([s["psnr"] for s in scores])) if scores else None,
            "nmse": float(np.mean([s["nmse"] for s in scores])) if scores else None,
            "volumes": len(scores),
            "slices": int(all_slices.size),
        }
        for n, s in zip(names, scores):
            result["volumes"][n] = {
                "ssim": float(s["ssim_slices"].mean()), "psnr": s["psnr"], "nmse": s["nmse"], "slices": s["slices"]
            }
    for acc in ACCELERATIONS:
        result[acc] = result["details"].get(acc, {}).get("ssim")
    if all(result[acc] is not None for acc in ACCELERATIONS):
        result["total"] = (result["acc4"] + result["acc8"]) / 2
    return result


def _try_score(label: Path, recon: Path, output_key: str):
    """``(scores, None)`` or ``(None, one-line problem)``."""
    try:
        return score_volume(label, recon, output_key), None
    except FormatError as exc:
        return None, str(exc)
    except ValueError as exc:  # e.g. slices smaller than the SSIM window
        return None, f"{recon}: {output_key}: {exc}"


@contextlib.contextmanager
def _single_threaded_torch():
    """Volumes run in parallel threads, each op on one thread: no OpenMP barriers, which stall
    badly when the cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers() -> int:
    """Usable CPU cores, at most 8 (each worker holds about 150 MB)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def evaluate_leaderboard(
    leaderboard_dir,
    recon_dir,
    output_key: str = "reconstruction",
    progress: bool = True,
    workers: Optional[int] = None,
) -> Tuple[Optional[Dict[str, object]], List[str]]:
    """Score every volume. Returns ``(result, problems)``; ``result`` is ``None`` when any volume failed.

    ``result``: ``{"total", "acc4", "acc8", "details": {acc: {...}}, "volumes": {"acc4/brain_test1":
    {"ssim", "psnr", "nmse", "slices"}}}``; ``total`` is ``None`` unless both accelerations exist.
    ``workers`` volumes are scored concurrently (default :func:`default_workers`); the result does
    not depend on it.
    """
    leaderboard_dir, recon_dir = Path(leaderboard_dir), Path(recon_dir)
    pairs = volume_pairs(leaderboard_dir, recon_dir)
    if not pairs:
        return None, [f"{leaderboard_dir}: -: no acc4/image or acc8/image folder"]
    empty = [f"{leaderboard_dir / acc / 'image'}: -: no .h5 files" for acc, v in pairs.items() if not v]
    problems = empty + _missing_files(pairs)
    if problems:
        return None, problems
    jobs = [(f"{acc}/{label.stem}", label, recon) for acc, v in pairs.items() for label, recon in v]
    volumes: Dict[str, Dict[str, object]] = {}
    with _single_threaded_torch(), ThreadPoolExecutor(workers or default_workers()) as pool:
        outcomes = pool.map(lambda job: _try_score(job[1], job[2], output_key), jobs)
        for (name, _, _), (scores, problem) in tqdm(
            zip(jobs, outcomes), total=len(jobs), desc="evaluate", unit="vol", disable=not progress, file=sys.stderr
        ):
            if problem is None:
                volumes[name] = scores
            else:
                problems.append(problem)
    if problems:
        return None, problems
    return _summarise(volumes, pairs), []


def format_report(result: Dict[str, object]) -> str:
    """Human-readable summary: Total, then each acceleration's SSIM (4 decimals), PSNR, NMSE."""
    total = result["total"]
    lines = [f"Leaderboard SSIM : {total:.4f}" if total is not None else "Leaderboard SSIM : n/a (needs both acc4 and acc8)"]
    lines.append("=" * 10 + " Details " + "=" * 10)
    for acc, d in result["details"].items():
        lines.append(
            f"Leaderboard SSIM ({acc}): {d['ssim']:.4f}   PSNR {d['psnr']:.2f} dB   NMSE {d['nmse']:.4f}"
            f"   ({d['volumes']} volumes, {d['slices']} slices)"
        )
    missing = [acc for acc in ACCELERATIONS if acc not in result["details"]]
    if missing:
        lines.append(f"(no {', '.join(missing)} folder: total not computed)")
    return "\n".join(lines)


def _json_safe(value):
    """Non-finite floats (PSNR of a perfect reconstruction is inf) become ``None`` for strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_json(result: Dict[str, object], path) -> None:
    """Write the result as strict JSON (inf/NaN -> null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--path_leaderboard_data", "-lp", type=Path, required=True, help="folder with acc4/image and acc8/image")
    parser.add_argument("--path_your_data", "-yp", type=Path, required=True, help="folder with acc4/ and acc8/ reconstructions")
    parser.add_argument("--output_key", "-key", default="reconstruction", help="dataset name in the reconstruction files")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores (total, per acceleration, per volume) here")
    parser.add_argument("--workers", type=int, default=None, help="volumes scored in parallel (None: usable cores, at most 8)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--figures", type=Path, default=None,
                        help="also write PNGs (zero-filled | GRAPPA | reconstruction | target | error) here")
    parser.add_argument("--figure_volumes", type=int, default=1,
                        help="volumes per anatomy and acceleration drawn with --figures")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every flag and output location checked before any volume is read (``parser.error``: one line,
    exit status 2). Creates the folders of ``--json`` and ``--figures`` (proving they are writable)."""
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.figure_volumes < 1:
        parser.error(f"--figure_volumes must be >= 1, got {args.figure_volumes}")
    for flag, path, prepare in (("--json", args.json, prepare_output_file), ("--figures", args.figures, prepare_output_dir)):
        if path is not None:
            try:
                prepare(path)
            except OutputError as exc:
                parser.error(f"{flag} {exc}")


def write_figures(leaderboard_dir: Path, recon_dir: Path, out_dir: Path, output_key: str, per_group: int) -> List[Path]:
    """The middle slice of the first ``per_group`` volumes of each anatomy and acceleration, as PNGs."""
    from utils.figures import save_comparison

    written = []
    for acc, pairs in volume_pairs(leaderboard_dir, recon_dir).items():
        chosen = [p for anatomy in ("brain", "knee") for p in [q for q in pairs if q[0].name.startswith(anatomy)][:per_group]]
        for label_file, recon_file in chosen:
            images = read_image_file(label_file)
            recon = read_reconstruction_file(recon_file, output_key)
            s = recon.shape[0] // 2
            target = images[LABEL_KEY][s]
            fg = leaderboard_foreground_mask(images[LABEL_KEY][s : s + 1], anatomy_from_name(label_file))
            panels = {"zero-filled": images["image_input"][s], "GRAPPA": images["image_grappa"][s], "reconstruction": recon[s]}
            scores = {n: float(leaderboard_ssim(p[None], target[None], images["max"], fg)[0]) for n, p in panels.items()}
            name = f"{acc}_{label_file.stem}_slice{s}.png"
            written.append(save_comparison(out_dir / name, panels, target, f"{acc}/{label_file.stem} slice {s}", scores))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    result, problems = evaluate_leaderboard(
        args.path_leaderboard_data, args.path_your_data, args.output_key, not args.no_progress, args.workers
    )
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"evaluation failed: {len(problems)} problem(s); no score reported", file=sys.stderr)
        return 1
    for extra in _extra_files(volume_pairs(args.path_leaderboard_data, args.path_your_data), args.path_your_data):
        print(f"warning: {extra} has no leaderboard volume and was ignored", file=sys.stderr)
    print(format_report(result))
    try:
        if args.json is not None:
            write_json(result, args.json)
        if args.figures is not None:
            figures = write_figures(args.path_leaderboard_data, args.path_your_data, args.figures, args.output_key,
                                    args.figure_volumes)
            print(f"{len(figures)} figure(s) written to {args.figures}")
    except (FormatError, OSError) as exc:  # OutputError is an OSError: a full disk, a folder gone read-only
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
