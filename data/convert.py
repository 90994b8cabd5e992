"""Convert public fastMRI multi-coil files into the challenge layout.

``python -m data.formats convert-fastmri --src DIR --out OUT --anatomy knee --acceleration 4`` writes
``OUT/kspace/{anatomy}_acc{acc}_{i}.h5`` (the fully sampled k-space and the challenge's fixed mask) and
``OUT/image/...`` (zero-filled, GRAPPA and fully sampled RSS, 384 x 384, attr ``max``), so training and
evaluation run on the public data set. Files that are already undersampled (fastMRI test/challenge
files carry a ``mask``) cannot provide a label and are reported and skipped. One bad file (or one
output that cannot be written) never stops the batch; the exit code is 1 if any file failed. An ``--out``
that cannot be used (a file, under a file, not writable) is one line before any work, exit code 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from data.formats import FormatError, read_fastmri_file
from data.masks import make_mask
from data.volumes import write_challenge_pair
from utils.io import prepare_output_dir


def convert_fastmri_file(src: Path, out: Path, anatomy: str, acc: int, index: int) -> Path:
    """Convert one fully sampled fastMRI file; returns the written k-space path."""
    data = read_fastmri_file(src)
    if not np.all(data["mask"] == 1):
        raise FormatError(src, "mask", "k-space is undersampled (test/challenge file): no fully sampled label")
    kspace = torch.from_numpy(data["kspace"])
    mask = make_mask("fixed", kspace.shape[-1], acc)
    name = f"{anatomy}_acc{acc}_{index}.h5"
    kpath, _ = write_challenge_pair(out / "kspace" / name, out / "image" / name, kspace, mask, undersample=False)
    return kpath


def convert_batch(files: Sequence[Path], out, convert_one: Callable[[Path, int], Optional[str]], desc: str,
                  start_index: int = 1, noun: str = "files") -> int:
    """Convert ``files`` (numbered from ``start_index``) into ``out/kspace`` and ``out/image`` with
    ``convert_one(path, index) -> message or None``; returns the exit code: 0 all converted, 1 any failed,
    2 ``out`` unusable (one line, before any work). A file whose conversion raises ``ValueError``/``OSError``
    (a :class:`FormatError` of the input, an ``OutputError`` of an output) is one line on stderr and skipped."""
    try:
        for sub in ("kspace", "image"):
            prepare_output_dir(Path(out) / sub)
    except OSError as exc:
        print(f"error: --out: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for index, path in enumerate(tqdm(files, desc=desc, unit="file", disable=len(files) < 2), start=start_index):
        try:
            message = convert_one(path, index)
        except (ValueError, OSError) as exc:
            failed += 1
            tqdm.write(str(exc), file=sys.stderr)
            continue
        if message:
            tqdm.write(message, file=sys.stderr)
    print(f"converted {len(files) - failed} of {len(files)} {noun} into {out}", file=sys.stderr)
    return 1 if failed else 0


def convert_fastmri_folder(src: Path, out: Path, anatomy: str, acc: int) -> int:
    """Convert every ``*.h5`` in ``src`` (sorted, numbered from 1); returns the exit code."""
    files = sorted(Path(src).glob("*.h5"))
    if not files:
        print(f"{src}: -: no .h5 files", file=sys.stderr)
        return 1

    def convert_one(path: Path, index: int) -> None:
        convert_fastmri_file(path, Path(out), anatomy, acc, index)

    return convert_batch(files, out, convert_one, "convert")
