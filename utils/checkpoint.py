"""Checkpoints in the challenge layout, written by DeepSpeed and read safely.

``<result>/<net_name>/checkpoints/step{k}/epoch-{n}/mp_rank_00_model_states.pt`` (model weights and the
run's ``client_state``: model name and config, arguments, epoch, schedule origin) and
``zero_pp_rank_0_mp_rank_00_optim_states.pt`` (the ZeRO optimizer state). A tag is first written under a
hidden temporary name and renamed into place when complete, so a crash never leaves a half-written
``epoch-{n}`` behind. Reading uses ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")


class CheckpointError(ValueError):
    """A path that should be a checkpoint is not one (message names the path and the problem)."""


def is_checkpoint(path) -> bool:
    return (Path(path) / MODEL_STATES).is_file()


def check_checkpoint(path) -> Path:
    """Return ``path`` as a Path if it is a finished checkpoint tag, else raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint: folder not found")
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: not a checkpoint: {MODEL_STATES} missing")
    return path


def epoch_of_tag(path) -> int:
    """``N`` of a ``.../epoch-N`` tag folder."""
    match = _EPOCH_RE.match(Path(path).name)
    if not match:
        raise CheckpointError(f"{path}: not a checkpoint: the folder name is not epoch-N")
    return int(match.group(1))


def latest_epoch_tag(step_dir) -> Optional[Path]:
    """The finished ``epoch-N`` tag with the largest N in ``step_dir`` (None if there is none)."""
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return None
    tags = [p for p in step_dir.iterdir() if _EPOCH_RE.match(p.name) and is_checkpoint(p)]
    return max(tags, key=epoch_of_tag) if tags else None


def load_model_states(path, map_location: str = "cpu") -> Dict[str, Any]:
    """The ``mp_rank_00_model_states.pt`` dict of a tag: ``module`` (state dict) plus client state."""
    path = check_checkpoint(path)
    try:
        return torch.load(path / MODEL_STATES, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO failure is one clear error
        raise CheckpointError(f"{path / MODEL_STATES}: cannot be read safely ({exc.__class__.__name__}: {exc})") from None


def save_tag_atomically(engine, ckpt_dir, tag: str, client_state: Dict[str, Any]) -> Path:
    """``engine.save_checkpoint`` into a hidden temporary tag, then rename it to ``tag`` (rank 0).

    Also writes DeepSpeed's ``latest`` file (atomically) naming the tag.
    """
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    tmp_tag = f".{tag}.partial"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    final = ckpt_dir / tag
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        latest_tmp = ckpt_dir / ".latest.tmp"
        latest_tmp.write_text(tag)
        os.replace(latest_tmp, ckpt_dir / "latest")
    if dist.is_initialized():
        dist.barrier()
    return final
