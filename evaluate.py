"""Score reconstructions with the SNU FastMRI leaderboard metric or the CMRxRecon cine ranking metric.

    python evaluate.py --path_leaderboard_data DIR --path_your_data OUT [--output_key reconstruction] [--json FILE]
                       [--workers N] [--no_progress]
    python evaluate.py --task cine --protocol {2023,2024,2025} --path_gt SET --path_your_data SUB [--json FILE]
                       [--no_swap] [--workers N] [--no_progress]

SNU (the default, ``--task snu``):

``DIR`` holds ``acc4/image/*.h5`` and ``acc8/image/*.h5`` (keys ``image_label``, attr ``max``);
``OUT`` holds ``acc4/{name}.h5`` and ``acc8/{name}.h5`` with the reconstruction under ``--output_key``.
Every slice of every volume is scored with :func:`utils.leaderboard.leaderboard_ssim` on the anatomy's
foreground mask (anatomy from the file name); an acceleration's SSIM is the mean over all its slices
and ``Total = (acc4 + acc8) / 2`` (only when both folders exist). PSNR and NMSE are computed per volume
on the same masked images and averaged over volumes. A missing reconstruction file, a missing key, a
shape mismatch or non-finite values are reported one line each; then the exit status is 1 and no
score is printed.

Cine (``--task cine``): ``SET`` is a CMRxRecon set folder (``.../MultiCoil/Cine/ValidationSet``) with
``FullSample/P###/cine_<view>.mat`` (``kspace_full``) and ``AccFactorXX/P###/cine_<view>.mat``; every
AccFactor file expects ``SUB/.../AccFactorXX/P###/cine_<view>.mat`` with ``img4ranking`` (single, the
run4Ranking crop: h5py order ``(3, n, round(ky/2), round(kx/3))``, MATLAB ``(kx/3, ky/2, n, 3)``).
``SUB`` may be the reconstruction output (holding ``Submission/``), the ``Submission`` root, the set
level holding ``AccFactorXX/`` or one ``AccFactorXX`` folder (then only that acceleration). The ground
truth is ``kspace_full`` -> ifft2c -> RSS -> run4Ranking; per 2-D image PSNR/SSIM/NMSE after the
protocol's normalisation (:func:`utils.metrics.cine_ranking_metrics`; 2024 and 2025 use the
reconstruction as the reference, as the organisers' scripts do, unless ``--no_swap``), mean per file,
per ``<view>/<AccFactorXX>`` group and over groups, plain and adjusted (failures count). A missing,
unreadable or wrong-shape file is one line on stderr naming it and a failure; the rest is scored.
Exit status 0 when at least one file was scored, 1 when none could be, 2 for usage errors.
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

import cv2
import numpy as np
from tqdm import tqdm

from data.formats import FormatError, anatomy_from_name, read_image_file, read_reconstruction_file
from utils.io import OutputError, atomic_path, prepare_output_dir, prepare_output_file
# The SNU path needs numpy, OpenCV and h5py only: torch and the cine metric (utils.metrics,
# utils.physics) are imported by the cine functions that use them, so scoring a leaderboard does not
# spend seconds importing torch.
from utils.leaderboard import leaderboard_foreground_mask, leaderboard_ssim, leaderboard_volume_scores

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
    return {**leaderboard_volume_scores(recon, target, data_range, mask), "slices": int(target.shape[0])}


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
def _single_threaded(get_threads, set_threads):
    """One thread per op while volumes run in parallel threads: no OpenMP barriers (torch) or OpenCV pool
    (the leaderboard path uses no torch, so it starts no OpenMP thread), which stall badly when the cores
    are shared with other processes. ``get_threads``/``set_threads``: e.g. ``cv2.getNumThreads``/``cv2.setNumThreads``."""
    before = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


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
    workers = workers or default_workers()
    # one worker: no thread at all (as evaluate_cine)
    pool = ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext()
    with _single_threaded(cv2.getNumThreads, cv2.setNumThreads), pool:
        mapper = pool.map if workers > 1 else map
        outcomes = mapper(lambda job: _try_score(job[1], job[2], output_key), jobs)
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


# --------------------------------------------------------------------------- CMRxRecon cine (--task cine)

_SUBMISSION_MAX_BYTES = 2**28  # an img4ranking declaring more than this is refused unread


def _submission_top(top: str) -> str:
    """The organisers' 2024 submissions name ``UnderSample_TaskN`` folders ``TaskN``."""
    return top[len("UnderSample_"):] if top.startswith("UnderSample_Task") else top


def resolve_submission(path: Path, set_name: str, tops: Sequence[str]) -> Tuple[Path, Optional[str]]:
    """``(folder mirroring the set, only)`` for a submission given at any of these levels, where
    ``tops`` are the set's case folders (``AccFactor04``, ``UnderSample_Task1``, ...) and ``set_name``
    the set folder's name: the reconstruction output ``R`` (``R/Submission/MultiCoil/Cine/<Set>``), the
    ``Submission`` root (``MultiCoil/Cine/<Set>`` or, as 2024 submissions, ``Cine/<Set>`` below it),
    the set level (holding ``AccFactorXX/``, ``UnderSample_TaskN/`` or ``TaskN/``) or one case folder
    such as ``AccFactor04`` (then ``only`` names the set's folder and only its cases are expected).
    Unrecognised: ``(path, None)``, and every file will be missing."""
    names = {n: t for t in tops for n in (t, _submission_top(t))}
    for candidate in (path / "Submission" / "MultiCoil" / "Cine" / set_name, path / "MultiCoil" / "Cine" / set_name,
                      path / "Cine" / set_name):
        if any((candidate / n).is_dir() for n in names):
            return candidate, None
    if path.name in names and not any((path / n).is_dir() for n in names):
        return path.parent, names[path.name]
    return path, None


def submission_file(root: Path, relpath: Path) -> Path:
    """Where a case's submission file is: ``root/relpath`` (the set's own layout, as reconstruct.py
    writes it), else the organisers' 2024 name ``TaskN/...`` for ``UnderSample_TaskN/...`` when only
    that exists."""
    mine = root / relpath
    theirs = root / _submission_top(relpath.parts[0]) / Path(*relpath.parts[1:])
    return theirs if not mine.is_file() and theirs.is_file() else mine


def cine_target(gt_file: Path) -> np.ndarray:
    """The ranking image of a FullSample file: ``kspace_full`` ``(t, slices, coils, ky, kx)`` (shape,
    dtype and declared size checked first) -> only frames 1-3 and the ranking slices read ->
    :func:`utils.physics.ifft2c` -> :func:`utils.metrics.run4ranking` (RSS, crop): float32
    ``(3, n, round(ky/2), round(kx/3))``. Raises :class:`FormatError`."""
    import torch

    from data.cine import FULL_KEY, open_cine_kspace  # lazy: the SNU path never needs the cine readers
    from utils.metrics import RANKING_FRAMES, ranking_slices, run4ranking
    from utils.physics import ifft2c

    with open_cine_kspace(gt_file, FULL_KEY) as var:
        if var.shape[0] < RANKING_FRAMES:
            raise FormatError(gt_file, FULL_KEY, f"{var.shape[0]} frames; ranking needs {RANKING_FRAMES}")
        kspace = var[:RANKING_FRAMES, ranking_slices(var.shape[1])]
    target = run4ranking(ifft2c(torch.from_numpy(np.ascontiguousarray(kspace)))).numpy()
    if not np.isfinite(target).all():  # a non-finite k-space sample spreads over its whole image
        raise FormatError(gt_file, FULL_KEY, "non-finite values in the frames and slices ranked")
    return target


def read_cine_submission(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
    """``img4ranking`` of a submission file as float32 of ``shape`` (h5py order ``(3, n, cy, cx)``,
    MATLAB ``(cx, cy, n, 3)`` as run4Ranking writes it). An array in the reverse order (a numpy array
    shaped like MATLAB's written with plain h5py, as the organisers' Python port does) is transposed.
    Raises :class:`FormatError` for a missing/unreadable file or key, a wrong shape, complex or
    non-finite data."""
    from data.cine import SUBMISSION_KEY
    from data.matlab import read_mat

    if not path.is_file():
        raise FormatError(path, "-", "submission file not found")
    image = read_mat(path, keys=[SUBMISSION_KEY], max_bytes=_SUBMISSION_MAX_BYTES)[SUBMISSION_KEY]
    if image.shape != tuple(shape):
        if image.shape[::-1] != tuple(shape):
            raise FormatError(path, SUBMISSION_KEY, f"shape {image.shape} differs from the ranking crop "
                                                    f"{tuple(shape)} (h5py order; MATLAB {tuple(shape)[::-1]})")
        image = image.T
    if np.iscomplexobj(image) or image.dtype.kind not in "fiu":
        raise FormatError(path, SUBMISSION_KEY, f"expected a real magnitude image, got {image.dtype}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise FormatError(path, SUBMISSION_KEY, "non-finite values")
    return image


def _score_cine_subject(gt_file: Path, submissions: Sequence[Tuple[str, Path]], protocol: str, swap: Optional[bool]):
    """Score the submissions of one (subject, view), every sampling scenario, against one ground truth
    (read and transformed once). Returns ``[(name, scores or None, problem or None)]``."""
    from utils.metrics import cine_ranking_metrics, file_scores

    try:
        target = cine_target(gt_file)
    except FormatError as exc:
        return [(name, None, f"{exc} (ground truth of {sub})") for name, sub in submissions]
    except ValueError as exc:
        return [(name, None, f"{gt_file}: -: {exc} (ground truth of {sub})") for name, sub in submissions]
    out = []
    for name, sub in submissions:
        try:
            recon = read_cine_submission(sub, target.shape)
            out.append((name, file_scores(cine_ranking_metrics(recon, target, protocol, swap)), None))
        except FormatError as exc:
            out.append((name, None, str(exc)))
        except ValueError as exc:  # e.g. images smaller than the SSIM window
            out.append((name, None, f"{sub}: -: {exc}"))
    return out


def evaluate_cine(
    gt_set,
    submission,
    protocol: str,
    swap: Optional[bool] = None,
    progress: bool = True,
    workers: Optional[int] = None,
) -> Tuple[Dict[str, object], List[str]]:
    """Score a CMRxRecon cine submission against the set folder ``gt_set``. Returns ``(result,
    problems)``; a missing or failed file is one problem line naming it and counts as a failure, the
    others are still scored.

    Expected files: every case of :func:`data.cine.list_cine_cases` (2023 ``AccFactorXX/P###/
    cine_<view>.mat``, 2024 ``UnderSample_TaskN/P###/cine_<view>_kus_<mask>.mat``) with a FullSample
    ground truth, at the same relative path below the submission folder (:func:`resolve_submission`,
    :func:`submission_file`: 2024's ``TaskN/`` accepted for ``UnderSample_TaskN/``). Groups are view x
    acceleration or mask name (the organisers' 2024 script pools the cine views of one mask name).
    A case without FullSample file is reported and not expected (the organisers exclude such cases).

    ``result``: :func:`utils.metrics.aggregate_ranking_scores` (``psnr``, ``ssim``, ``nmse``, their
    ``*_adj``, ``n_files``, ``n_success``, ``groups`` per ``cine_<view>/<AccFactorXX or mask>``) plus
    ``protocol``, ``swap`` (whether the reconstruction was the reference,
    :data:`utils.metrics.SWAPPED_PROTOCOLS`), ``submission`` (the resolved folder) and ``files``:
    ``{"AccFactor04/P001/cine_sax": {"group", "psnr", "ssim", "nmse", "images"} or {"group", "error"}}``.
    """
    from data.cine import list_cine_cases
    from utils.metrics import SWAPPED_PROTOCOLS, aggregate_ranking_scores

    gt_set, submission = Path(gt_set), Path(submission)
    cases = list_cine_cases(gt_set)
    problems = [f"{gt_set / 'FullSample' / c.subject / f'cine_{c.view}.mat'}: -: no FullSample ground truth for "
                f"{c.kspace_path}; not scored" for c in cases if c.full_path is None]
    cases = [c for c in cases if c.full_path is not None]
    sub_root, only = resolve_submission(submission, gt_set.name, sorted({c.relpath.parts[0] for c in cases}))
    if only is not None:
        cases = [c for c in cases if c.relpath.parts[0] == only]
    jobs: Dict[Path, List[Tuple[str, Path]]] = {}
    groups: Dict[str, str] = {}
    for c in cases:
        name = c.relpath.with_suffix("").as_posix()
        jobs.setdefault(c.full_path, []).append((name, submission_file(sub_root, c.relpath)))
        groups[name] = c.group
    files: Dict[str, Dict[str, object]] = {}
    workers = workers or default_workers()
    # one worker: no thread at all (a worker thread's malloc arena returns memory to the system and
    # page-faults every large buffer in again, about 30% more CPU here)
    pool = ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext()
    import torch  # the cine path only: the SNU leaderboard path imports no torch

    with _single_threaded(torch.get_num_threads, torch.set_num_threads), pool:
        mapper = pool.map if workers > 1 else map
        outcomes = mapper(lambda job: _score_cine_subject(job[0], job[1], protocol, swap), jobs.items())
        for outcome in tqdm(outcomes, total=len(jobs), desc="evaluate cine", unit="case", disable=not progress, file=sys.stderr):
            for name, scores, problem in outcome:
                files[name] = {"group": groups[name], **(scores or {"error": problem})}
                if problem is not None:
                    problems.append(problem)
    names = list(groups)  # list_cine_cases order: folder, subject, file
    result = aggregate_ranking_scores(((files[n]["group"], None if "error" in files[n] else files[n]) for n in names), protocol)
    result.update(
        protocol=protocol,
        swap=protocol in SWAPPED_PROTOCOLS if swap is None else bool(swap),
        submission=str(sub_root),
        files={n: files[n] for n in names},
    )
    return result, problems


def format_cine_report(result: Dict[str, object]) -> str:
    """Per group and overall: files scored / expected, SSIM, PSNR (dB), NMSE, and the adjusted three."""
    ref = "reconstruction, as the organisers' script" if result["swap"] else "target"
    lines = [
        f"CMRxRecon cine ranking metric, protocol {result['protocol']} (reference for data range and NMSE: {ref})",
        f"{'group':<28}{'files':>9}{'SSIM':>9}{'PSNR':>9}{'NMSE':>9}   {'adj.SSIM':>9}{'adj.PSNR':>9}{'adj.NMSE':>9}",
    ]
    for name, g in list(result["groups"].items()) + [("Overall", result)]:
        lines.append(
            f"{name:<28}{g['n_success']:>4}/{g['n_files']:<4}{g['ssim']:>9.4f}{g['psnr']:>9.2f}{g['nmse']:>9.4f}   "
            f"{g['ssim_adj']:>9.4f}{g['psnr_adj']:>9.2f}{g['nmse_adj']:>9.4f}"
        )
    return "\n".join(lines)


def parse_cine_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Flags of ``--task cine``, checked before any file is read (``parser.error``: exit status 2)."""
    from data.cine import find_cine_sets, is_cine_set, list_cine_cases
    from utils.io import OutputError, prepare_output_file
    from utils.metrics import CINE_PROTOCOLS

    parser = argparse.ArgumentParser(
        prog="evaluate.py --task cine",
        description="Score a CMRxRecon cine submission with the organisers' ranking metric.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--task", choices=("snu", "cine"), default="cine", help=argparse.SUPPRESS)
    parser.add_argument("--protocol", choices=CINE_PROTOCOLS, required=True,
                        help="per-image normalisation: 2023 x/max, 2024 z-score, 2025 |x|/p99.5")
    parser.add_argument("--path_gt", type=Path, required=True,
                        help="CMRxRecon set folder, e.g. .../MultiCoil/Cine/ValidationSet (FullSample/ and AccFactorXX/)")
    parser.add_argument("--path_your_data", "-yp", type=Path, required=True,
                        help="submission: the Submission root (or the folder holding it), the set level holding "
                             "AccFactorXX/, or one AccFactorXX folder")
    parser.add_argument("--no_swap", action="store_true",
                        help="use the target as the reference (data range, NMSE denominator) also for 2024/2025, "
                             "whose organisers' scripts use the reconstruction")
    parser.add_argument("--json", type=Path, default=None, help="also write the scores (overall, groups, files) here")
    parser.add_argument("--workers", type=int, default=None, help="cases scored in parallel (None: usable cores, at most 8)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if not is_cine_set(args.path_gt):
        below = [str(p) for p in find_cine_sets(args.path_gt)] if args.path_gt.is_dir() else []
        hint = f"; set folders below it: {', '.join(below)}" if below else ""
        parser.error(f"--path_gt {args.path_gt}: not a CMRxRecon set folder (no FullSample/ or AccFactorXX/){hint}")
    if not list_cine_cases(args.path_gt):
        parser.error(f"--path_gt {args.path_gt}: no AccFactorXX/ or UnderSample_TaskN/ case, so no submission file is expected")
    if not args.path_your_data.is_dir():
        parser.error(f"--path_your_data {args.path_your_data}: folder not found")
    if args.json is not None:
        try:
            prepare_output_file(args.json)
        except OutputError as exc:
            parser.error(f"--json {exc}")
    return args


def main_cine(argv: Optional[Sequence[str]] = None) -> int:
    """``evaluate.py --task cine``: exit 0 when at least one file was scored (failures are listed on
    stderr and count in the adjusted scores), 1 when none could be, 2 for usage errors."""
    args = parse_cine_args(argv)
    result, problems = evaluate_cine(args.path_gt, args.path_your_data, args.protocol,
                                     False if args.no_swap else None, not args.no_progress, args.workers)
    for line in problems:
        print(line, file=sys.stderr)
    if result["n_success"] == 0:
        print(f"evaluation failed: none of the {result['n_files']} expected file(s) could be scored "
              f"(submission folder {result['submission']})", file=sys.stderr)
        return 1
    if problems:
        print(f"{len(problems)} problem(s); failed files count in the adjusted scores", file=sys.stderr)
    print(format_cine_report(result))
    if args.json is not None:
        try:
            write_json(result, args.json)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def requested_task(argv: Optional[Sequence[str]] = None) -> str:
    """The ``--task`` of a command line (``"snu"`` when absent), without parsing the rest."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", choices=("snu", "cine"), default="snu")
    known, _ = pre.parse_known_args(argv)
    return known.task


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
    parser.add_argument("--task", choices=("snu", "cine"), default="snu",
                        help="snu: this leaderboard metric; cine: the CMRxRecon ranking metric (see --task cine -h)")
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
    if requested_task(argv) == "cine":
        return main_cine(argv)
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
