"""Checkpoints in the challenge layout, written by DeepSpeed and read safely.

``<result>/<net_name>/checkpoints/step{k}/epoch-{n}/mp_rank_00_model_states.pt`` (model weights and the
run's ``client_state``: model name and config, arguments, epoch, schedule origin) and
``zero_pp_rank_0_mp_rank_00_optim_states.pt`` (the ZeRO optimizer state). A tag is first written under a
hidden temporary name and renamed into place when complete, so a crash never leaves a half-written
``epoch-{n}`` behind.

Reading never unpickles arbitrary objects. Every file of a tag (model states and each rank's optimizer
states) is read with ``torch.load(weights_only=True)``, allowing beyond tensors and plain containers only
the few DeepSpeed types its checkpoints hold (:data:`DEEPSPEED_SAFE_GLOBALS`). DeepSpeed's own loader
(``torch.load(weights_only=False)``) is replaced by :class:`SafeCheckpointEngine` before a resume, and
:func:`check_checkpoint_files` scans every file of a tag before any work starts, so a tampered or
truncated file is one clear error naming it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
OPTIM_STATES_GLOB = "*_optim_states.pt"
# ZeRO-3 writes one model-states file per rank under this name (the weights partitioned over the ranks).
ZERO3_MODEL_STATES_GLOB = "zero_pp_rank_*_mp_rank_*_model_states.pt"
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")

# The only non-tensor, non-container types DeepSpeed 0.19 pickles into a checkpoint (ZeRO stages 0-3,
# fp32 and bf16): the ZeRO stage enum, the static loss scaler, and the fp32 fragment addresses. Each is
# rebuilt from plain data by its own constructor; nothing else is importable while unpickling.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


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
        if any(path.glob(ZERO3_MODEL_STATES_GLOB)):
            raise CheckpointError(f"{path}: a ZeRO-3 checkpoint (weights partitioned over the ranks, no "
                                  f"{MODEL_STATES}): not supported; train with --zero_stage 0, 1 or 2")
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


def prune_epoch_tags(step_dir, keep: int) -> List[Path]:
    """Delete all but the ``keep`` (>= 1) finished ``epoch-N`` tags with the largest N in ``step_dir``;
    returns the deleted tags. Other folders (unfinished ``.partial`` tags, other steps) are left alone, so
    the tag the next step restarts from (this step's last) is always kept."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    step_dir = Path(step_dir)
    tags = sorted((p for p in step_dir.iterdir() if _EPOCH_RE.match(p.name) and is_checkpoint(p)), key=epoch_of_tag)
    doomed = tags[:-keep]
    for tag in doomed:
        shutil.rmtree(tag)
    return doomed


def _safe_globals() -> List[type]:
    """The classes of :data:`DEEPSPEED_SAFE_GLOBALS` that exist in the installed DeepSpeed."""
    found = []
    for dotted in DEEPSPEED_SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # deepspeed absent (inference-only installs) or renamed
            continue
    return found


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:400]


def safe_torch_load(path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` allowing only :data:`DEEPSPEED_SAFE_GLOBALS` besides
    tensors and containers. Any failure (a forbidden type, a truncated or corrupt file) is one
    :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint file: file not found") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO failure is one clear error
        raise CheckpointError(f"{path}: cannot be read safely ({_one_line(exc)})") from None


def load_weights_file(path, what: str = "weights") -> Dict[str, torch.Tensor]:
    """A local state dict of tensors for pretrained parts (a VGG, an extractor): ``.safetensors`` or a
    torch file read with :func:`safe_torch_load` (a BasicSR-style ``{"params": state_dict}`` is unwrapped).
    Any problem (missing, unreadable, unsafe, not tensors) is one ``ValueError`` naming the file and ``what``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = safe_torch_load(path)
    except Exception as exc:  # noqa: BLE001 - unreadable, truncated or unsafe: one line
        raise ValueError(f"{path}: cannot read {what} ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("params"), dict):
        state = state["params"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: {what}: not a state dict of tensors")
    return state


def load_model_states(path, map_location: str = "cpu") -> Dict[str, Any]:
    """The ``mp_rank_00_model_states.pt`` dict of a tag: ``module`` (state dict) plus client state."""
    path = check_checkpoint(path)
    states = safe_torch_load(path / MODEL_STATES, map_location)
    if not isinstance(states, dict):
        raise CheckpointError(f"{path / MODEL_STATES}: not a checkpoint: holds a {type(states).__name__}, not a dict")
    return states


def optimizer_state_files(path) -> List[Path]:
    """Every rank's ``zero_pp_rank_*_optim_states.pt`` in a tag (sorted)."""
    return sorted(Path(path).glob(OPTIM_STATES_GLOB))


def _scan_file(path: Path) -> None:
    """Raise :class:`CheckpointError` if ``path`` would not load weights-only: for torch's zip format the
    pickle's imports are listed without loading any tensor (cheap); other formats are loaded safely."""
    if not zipfile.is_zipfile(path):
        safe_torch_load(path)
        return
    allowed = {f"{cls.__module__}.{cls.__qualname__}" for cls in _safe_globals()}
    try:
        imported = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot be read safely ({_one_line(exc)})") from None
    forbidden = sorted(set(imported) - allowed)
    if forbidden:
        raise CheckpointError(f"{path}: refused: the file would import {', '.join(forbidden)} (not a tensor or a DeepSpeed state type)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot be read safely ({_one_line(exc)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt: record {bad} fails its CRC check")


def check_checkpoint_files(path) -> Dict[str, Any]:
    """Check, before any work, that every file of tag ``path`` loads weights-only and is intact; return
    the model-states dict. The optimizer state is in the model-states file without ZeRO (stage 0) and in
    one ``*_optim_states.pt`` per rank with ZeRO: a ZeRO tag without one is refused."""
    path = check_checkpoint(path)
    for file in sorted(path.glob("*.pt")):
        _scan_file(file)
    states = load_model_states(path)
    if not optimizer_state_files(path) and states.get("optimizer") is None:
        raise CheckpointError(f"{path}: not a checkpoint: no {OPTIM_STATES_GLOB} (optimizer state) file")
    return states


def safe_checkpoint_engine(config_params=None):
    """A DeepSpeed checkpoint engine that saves as DeepSpeed does but loads with :func:`safe_torch_load`."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch engine with weights-only loading (DeepSpeed's own loads with weights_only=False)."""

        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location)

    return SafeCheckpointEngine(config_params)


@contextlib.contextmanager
def weights_only_loading():
    """Inside the block every ``torch.load`` is weights-only with the DeepSpeed allow-list, whatever
    the caller asks: a guard for DeepSpeed code paths that call ``torch.load`` directly."""
    original = torch.load

    def guarded(f, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_safe_globals()):
            return original(f, *args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


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
