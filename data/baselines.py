"""Non-learned baselines written in the reconstruction format, to score with ``evaluate.py``.

    python -m data.baselines baseline --kind {zero_filled,grappa} --path_leaderboard_data DIR --out OUT

For every ``DIR/acc{4,8}/image/{name}.h5`` it writes ``OUT/acc{4,8}/{name}.h5`` whose ``reconstruction``
is the file's ``image_input`` (zero-filled RSS) or ``image_grappa`` (GRAPPA RSS). A bad input file
(not the ``(S, 384, 384)`` contract, a bad attr ``max``, a hostile header, ...) or an output that cannot be
written is reported (one line naming the file) and skipped; the exit status is then 1. An ``--out`` that
cannot be used (a file, under a file, not writable) is reported before any work, exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from data.formats import read_image_file, write_reconstruction_file
from utils.io import prepare_output_dir

BASELINE_KEYS = {"zero_filled": "image_input", "grappa": "image_grappa"}
ACCELERATIONS = ("acc4", "acc8")


def write_baseline(leaderboard_dir, out_dir, kind: str, progress: bool = True) -> List[str]:
    """Write the ``kind`` baseline for every leaderboard image file. Returns the problems (one line each).

    Raises :class:`utils.io.OutputError` before any work when ``out_dir`` cannot be created or written."""
    if kind not in BASELINE_KEYS:
        raise ValueError(f"kind must be one of {sorted(BASELINE_KEYS)}, got {kind!r}")
    leaderboard_dir, out_dir = Path(leaderboard_dir), Path(out_dir)
    key = BASELINE_KEYS[kind]
    jobs = [
        (acc, p)
        for acc in ACCELERATIONS
        if (leaderboard_dir / acc / "image").is_dir()
        for p in sorted((leaderboard_dir / acc / "image").glob("*.h5"))
    ]
    if not jobs:
        return [f"{leaderboard_dir}: -: no .h5 files under acc4/image or acc8/image"]
    for acc in sorted({acc for acc, _ in jobs}):
        prepare_output_dir(out_dir / acc)
    problems = []
    for acc, path in tqdm(jobs, desc=f"baseline {kind}", unit="vol", disable=not progress, file=sys.stderr):
        target = out_dir / acc / path.name
        try:
            image = read_image_file(path, keys=[key])[key]
            write_reconstruction_file(target, image)
        except (ValueError, OSError) as exc:  # FormatError of the input, OutputError of the output
            line = str(exc)
            with contextlib.suppress(OSError):
                target.unlink()  # a stale output of an earlier run would be scored
                line += f" (removed the stale {target})"
            problems.append(line)
    return problems


def _main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.baselines", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("baseline", help="copy image_input (zero_filled) or image_grappa (grappa) as the reconstruction")
    base.add_argument("--kind", required=True, choices=sorted(BASELINE_KEYS))
    base.add_argument("--path_leaderboard_data", type=Path, required=True, help="folder with acc4/image and acc8/image")
    base.add_argument("--out", type=Path, required=True, help="output folder (gets acc4/ and acc8/)")
    base.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        problems = write_baseline(args.path_leaderboard_data, args.out, args.kind, progress=not args.no_progress)
    except OSError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s); the other volumes were written", file=sys.stderr)
        return 1
    print(f"{args.kind} baseline written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
