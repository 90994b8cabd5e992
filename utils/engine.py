"""The one training engine: DeepSpeed (ZeRO stages 0-2, CPU Adam offload), the recipe's LR schedule,
per-epoch checkpoints and loss logs in the challenge layout, offline wandb, deterministic data order.

The engine knows nothing about MRI: ``train.py`` hands it a model, a dataset, a collate function and an
objective ``objective(model, batch, device) -> scalar loss``. Runs as plain ``python train.py`` (one
process; the DeepSpeed CPU accelerator when there is no GPU) or under the ``deepspeed`` launcher, each
rank reading its own share of every epoch.

Outputs under ``<result_path>/<net_name>/``::

    checkpoints/step{k}/epoch-{n}/mp_rank_00_model_states.pt, zero_pp_rank_0_mp_rank_00_optim_states.pt
    loss_log/step{k}/loss_log.npy      rows (epoch, mean train loss)
    loss_log/step{k}/iter_log.npy      rows (epoch, iteration, loss, learning rate) per micro-step (rank 0)
    wandb/                             offline unless WANDB_MODE=online

Exact resume: every optimizer step lies inside one epoch (each rank's share is padded to a multiple of
``batch_size x gradient_accumulation_steps`` samples), so the epoch-end checkpoint never lands in the
middle of a gradient accumulation, and a run restarted from it repeats the uninterrupted run bit for bit.
``python -m utils.audit`` compares two result trees (loss logs, iteration logs, wandb histories, weights).

Test hooks (environment variables, read once per run): ``MRI_ENGINE_KILL_AFTER_MICROSTEPS=N`` makes the
process SIGKILL itself after its N-th micro-step (a crash mid-epoch by construction);
``MRI_ENGINE_SAMPLE_TRACE=DIR`` writes ``DIR/rank{r}_epoch{e}.npy``, the dataset indices rank r read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.checkpoint import (
    CheckpointError,
    check_checkpoint_files,
    epoch_of_tag,
    prune_epoch_tags,
    safe_checkpoint_engine,
    save_tag_atomically,
    weights_only_loading,
)
from utils.io import atomic_path
from utils.lr_schedule import LRSchedule
from utils.seed import seed_fix, torch_generator, worker_init_fn


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    """A dataclass field whose ``metadata`` carries its CLI help (see :mod:`utils.cli`)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **extra})


#: Engine options that are flags of train.py's "run" group (the rest go to "optimisation").
RUN_FLAGS = ("step", "seed", "deterministic", "num_workers", "log_every", "keep_last_checkpoints")


@dataclasses.dataclass
class EngineConfig:
    """Everything the engine needs besides the model and data (units: epochs, learning rates).

    Declared once: train.py's engine flags are generated from these fields (:mod:`utils.cli`), the
    field ``metadata`` holding each flag's help text.
    """

    result_path: str
    net_name: str
    step: int = _opt(1, "recipe step k: checkpoints/step{k}, loss_log/step{k}")
    seed: int = _opt(430, "seed of every random stream (data order, masks, augmentation, initialisation)")
    deterministic: bool = _opt(False, "torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:16:8")
    num_epochs: int = _opt(20, "epoch at which the cosine reaches min_lr")
    warmup_epochs: float = _opt(1.0, "linear warm-up length in epochs")
    stop_epoch: Optional[int] = _opt(None, "last epoch to train (default num_epochs)")
    max_lr: float = _opt(3e-4, "peak learning rate")
    min_lr: float = _opt(0.0, "learning rate at num_epochs")
    batch_size: int = _opt(1, "micro-batch size per rank")
    gradient_accumulation_steps: int = _opt(2, "micro-batches per optimizer step")
    gradient_clipping: float = _opt(0.01, "global gradient-norm clipping")
    weight_decay: float = _opt(1e-4, "AdamW weight decay (not on biases, norms, scalars)")
    zero_stage: int = _opt(1, "DeepSpeed ZeRO stage (3 is refused: it partitions the weights)", choices=(0, 1, 2, 3))
    offload_optimizer: bool = _opt(True, "ZeRO: optimizer state and step on the CPU (DeepSpeedCPUAdam)")
    bf16: bool = _opt(False, "bfloat16 autocast with fp32 master weights")
    num_workers: int = _opt(2, "DataLoader workers per rank")
    restart_from_checkpoint: Optional[str] = _opt(None, "<result>/<net>/checkpoints/stepK/epoch-N")
    continue_lr_scheduler: bool = _opt(True, "false: restart the LR at --max_lr with a new cosine from the checkpoint's epoch")
    log_every: int = _opt(10, "wandb iteration logging interval (0: epoch values only)")
    deepspeed_config: Optional[str] = _opt(None, "DeepSpeed JSON whose values the flags override")
    keep_last_checkpoints: int = _opt(0, "keep only the last N epoch tags of this step (0: keep all)")

    def __post_init__(self):
        """Check every value before anything runs. A problem is one ``ValueError`` whose message starts
        with the field's name (train.py prefixes ``--``); a ``deepspeed_config`` file is read and checked
        here too."""
        if self.stop_epoch is None:
            self.stop_epoch = self.num_epochs
        for name in ("warmup_epochs", "max_lr", "min_lr", "gradient_clipping", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name, low in (("step", 1), ("seed", 0), ("num_epochs", 1), ("stop_epoch", 1), ("batch_size", 1),
                          ("gradient_accumulation_steps", 1), ("num_workers", 0), ("log_every", 0),
                          ("keep_last_checkpoints", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.zero_stage == 3:
            raise ValueError("zero_stage 3 is not supported: ZeRO-3 partitions the weights over the ranks, so the "
                             "rank-0 validation would wait forever for the others and its checkpoints hold no "
                             "whole weights to resume, export or audit; use --zero_stage 2 (gradients and "
                             "optimizer state sharded, the optimizer offloaded to the CPU)")
        if self.stop_epoch > self.num_epochs:
            raise ValueError(f"stop_epoch ({self.stop_epoch}) is beyond num_epochs ({self.num_epochs})")
        if self.max_lr <= 0:
            raise ValueError(f"max_lr must be > 0, got {self.max_lr}")
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"min_lr must be in [0, max_lr={self.max_lr}], got {self.min_lr}")
        for name in ("warmup_epochs", "gradient_clipping", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.deepspeed_config:
            read_deepspeed_json(self.deepspeed_config)

    @property
    def run_dir(self) -> Path:
        return Path(self.result_path) / self.net_name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints" / f"step{self.step}"

    @property
    def loss_log_path(self) -> Path:
        return self.run_dir / "loss_log" / f"step{self.step}" / "loss_log.npy"

    @property
    def iter_log_path(self) -> Path:
        return self.loss_log_path.with_name("iter_log.npy")

    @property
    def samples_per_optimizer_step(self) -> int:
        """Samples one rank reads per optimizer step: ``batch_size x gradient_accumulation_steps``."""
        return self.batch_size * self.gradient_accumulation_steps


# ------------------------------------------------------------------------------------------ sampling


class EpochShardSampler(Sampler[int]):
    """Seeded permutation of ``range(n)`` per epoch (a pure function of ``(seed, epoch)``); rank ``r`` of
    ``world_size`` takes every ``world_size``-th index from ``r``, so the ranks' shares are disjoint and
    cover the epoch (up to the padding). Each rank's share is padded (by wrapping the permutation) to a
    multiple of ``multiple`` *samples*: the engine passes ``batch_size x gradient_accumulation_steps``, so
    an epoch is a whole number of optimizer steps and no gradient accumulation spans two epochs."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, multiple: int = 1, shuffle: bool = True):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.multiple, self.shuffle, self.epoch = multiple, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        per_rank = -(-self.n // self.world_size)
        return -(-per_rank // self.multiple) * self.multiple

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 0x5EED]))
            order = rng.permutation(self.n)
        else:
            order = np.arange(self.n)
        order = np.resize(order, len(self) * self.world_size)
        return iter(order[self.rank :: self.world_size].tolist())


# ------------------------------------------------------------------------------------------ deepspeed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown_distributed() -> None:
    """Tear the process group down (before interpreter exit, so no backend thread holds it up)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def prefer_interpreter_ninja() -> Optional[str]:
    """Make ``ninja`` on ``PATH`` the one installed beside the running interpreter (a venv's), if any;
    returns the ``ninja`` that ``PATH`` now resolves to (``None`` if there is none).

    DeepSpeed JIT-compiles CPU Adam (and its CPU comm op) with ``torch.utils.cpp_extension``, which runs
    whatever ``ninja`` ``PATH`` finds in the build folder ``$TORCH_EXTENSIONS_DIR/py311_cpu/cpu_adam``.
    Ninja versions keep incompatible build logs (1.11 writes v5, 1.13 v7) and each discards the other's,
    so alternating between the system ninja (``.venv/bin/python train.py``) and the venv's (an activated
    venv, as the scripts have) recompiled the extension (a minute or more) on every switch. Resolving
    ``ninja`` from the interpreter's own folder whichever way Python was started makes it compile once.
    """
    own = Path(sys.executable).parent / "ninja"
    found = shutil.which("ninja")
    if own.is_file() and os.access(own, os.X_OK) and (found is None or Path(found) != own):
        os.environ["PATH"] = os.pathsep.join([str(own.parent), os.environ.get("PATH", "")]).rstrip(os.pathsep)
        found = shutil.which("ninja")
    return found


def init_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed; a plain ``python train.py`` is rank 0 of 1."""
    import deepspeed

    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm))


def parameter_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW groups: weight decay on weights; none on biases, norm parameters and scalars.

    A model with a ``parameter_lr_scale(name) -> float`` method (KGMgT: its offset layers and critic) gets
    one group per (decay, scale); a group's ``"lr_scale"`` multiplies the scheduled learning rate. Groups
    at scale 1 come first (the first group's learning rate is the scheduled one)."""
    scale_of = getattr(model, "parameter_lr_scale", None)
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            no_decay = bool(name.endswith("bias") or _is_norm(module) or param.ndim <= 1)
            scale = float(scale_of(f"{module_name}.{name}" if module_name else name)) if scale_of else 1.0
            groups.setdefault((scale != 1.0, no_decay, scale), []).append(param)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale}
            for (_, no_decay, scale), params in sorted(groups.items(), key=lambda kv: kv[0])]


def read_deepspeed_json(path) -> Dict[str, Any]:
    """A user's DeepSpeed JSON file: an object whose ``zero_optimization`` (if any) is an object.
    Any problem is one ``ValueError`` naming the file (``deepspeed_config <path>: <problem>``)."""
    where = f"deepspeed_config {path}"
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if not isinstance(config.get("zero_optimization", {}), dict):
        raise ValueError(f"{where}: 'zero_optimization' must be an object")
    return config


def deepspeed_config(cfg: EngineConfig) -> Dict[str, Any]:
    """The DeepSpeed JSON config: from ``cfg.deepspeed_config`` (a file) if given, then the flags."""
    base: Dict[str, Any] = read_deepspeed_json(cfg.deepspeed_config) if cfg.deepspeed_config else {}
    zero = dict(base.get("zero_optimization", {}))
    zero["stage"] = cfg.zero_stage
    if cfg.zero_stage > 0 and cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    else:
        zero.pop("offload_optimizer", None)
    base.update(
        {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": cfg.gradient_clipping,
            "zero_optimization": zero,
            "steps_per_print": 2**31 - 1,
            # our optimizer is DeepSpeedCPUAdam with reproducible bias corrections (a subclass)
            "zero_allow_untested_optimizer": True,
            "wall_clock_breakdown": False,
        }
    )
    base.pop("train_batch_size", None)
    if cfg.bf16:
        # Autocast keeps fp32 master weights and leaves the complex FFT/data-consistency ops in fp32.
        base["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return base


def _reproducible_cpu_adam_class():
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    class ReproducibleCPUAdam(DeepSpeedCPUAdam):
        """DeepSpeedCPUAdam (AdamW mode) whose bias corrections do not depend on the step history.

        The C++ kernel keeps ``beta**t`` as a running product while steps arrive one by one and uses
        ``pow(beta, t)`` after a jump (a resumed run), which differ in the last bits. Re-creating the
        kernel's tiny state before each step makes every step use ``pow(beta, t)``, so a run resumed from
        a checkpoint reproduces an uninterrupted run bit for bit.
        """

        def _reset_bias_correction(self) -> None:
            g = self.param_groups[0]
            self.ds_opt_adam.create_adam(
                self.opt_id, g["lr"], g["betas"][0], g["betas"][1], g["eps"], g["weight_decay"], self.adam_w_mode, False
            )

        def step(self, closure=None):
            self._reset_bias_correction()
            return super().step(closure)

        def step_subgroup(self, subgroup_id: int, closure=None):
            self._reset_bias_correction()
            return super().step_subgroup(subgroup_id, closure)

    return ReproducibleCPUAdam


def _optimizer(model: nn.Module, cfg: EngineConfig, on_cpu: bool):
    groups = parameter_groups(model, cfg.weight_decay)
    if on_cpu or (cfg.zero_stage > 0 and cfg.offload_optimizer):
        cpu_adam = _reproducible_cpu_adam_class()
        return cpu_adam(groups, lr=cfg.max_lr, weight_decay=cfg.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.max_lr, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------------------------------ logging


class LossLog:
    """``loss_log.npy``: float64 rows ``(epoch, mean train loss)``, rewritten atomically each epoch.
    Rows after ``keep_until_epoch`` (left by an interrupted run) are dropped on open."""

    COLUMNS: Tuple[str, ...] = ("epoch", "loss")
    KIND = "loss log"

    def __init__(self, path: Path, keep_until_epoch: int):
        self.path = Path(path)
        width = len(self.COLUMNS)
        rows = self.read(self.path) if self.path.is_file() else np.zeros((0, width))
        self.rows = rows[rows[:, 0] <= keep_until_epoch] if rows.size else np.zeros((0, width))
        self.pending: List[List[float]] = []

    @classmethod
    def read(cls, path: Path) -> np.ndarray:
        """The float64 ``(N, len(COLUMNS))`` rows of such a log; never unpickles (``allow_pickle=False``).
        A file that is not such an array raises one ``ValueError`` naming it."""
        width = len(cls.COLUMNS)
        try:
            rows = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - pickled, truncated or not .npy at all
            problem = "holds pickled objects (refused)" if "allow_pickle" in str(exc) else " ".join(str(exc).split())
            raise ValueError(f"{path}: not a {cls.KIND}: {problem}") from None
        if not isinstance(rows, np.ndarray) or rows.dtype.kind not in "fiu" or (rows.size and (rows.ndim != 2 or rows.shape[1] != width)):
            raise ValueError(f"{path}: not a {cls.KIND}: expected float rows ({', '.join(cls.COLUMNS)}), "
                             f"got {getattr(rows, 'dtype', '?')} {getattr(rows, 'shape', '?')}")
        return rows.astype(np.float64).reshape(-1, width)

    def add(self, *values: float) -> None:
        """Queue one row (written by the next :meth:`flush`)."""
        self.pending.append([float(v) for v in values])

    def flush(self) -> None:
        """Append the queued rows and rewrite the file atomically."""
        if self.pending:
            self.rows = np.vstack([self.rows, np.asarray(self.pending, dtype=np.float64)])
            self.pending = []
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.rows)

    def append(self, epoch: int, loss: float) -> None:
        self.add(epoch, loss)
        self.flush()


class IterationLog(LossLog):
    """``iter_log.npy``: float64 rows ``(epoch, iteration, loss, lr)``, one per micro-step of rank 0:
    ``iteration`` counts micro-steps from the start of training (wandb's step), ``loss`` is rank 0's
    micro-batch loss, ``lr`` the learning rate read back from the optimizer's parameter groups after the
    step (what the optimizer applied at an accumulation boundary). Written with the epoch's checkpoint;
    rows after the restart epoch are dropped on open, as in :class:`LossLog`."""

    COLUMNS = ("epoch", "iteration", "loss", "lr")
    KIND = "iteration log"


class WandbLogger:
    """wandb, offline unless the user set ``WANDB_MODE=online``; files under ``<run_dir>/wandb``.
    ``WANDB_MODE=disabled`` turns it off; a missing wandb package is reported once and skipped."""

    def __init__(self, cfg: EngineConfig, config: Dict[str, Any], enabled: bool):
        self.run = None
        if not enabled or os.environ.get("WANDB_MODE", "offline") == "disabled":
            return
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            print("[train] wandb is not installed: wandb logging skipped", file=sys.stderr)
            return
        wandb_dir = cfg.run_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "mri-challenge"),
            name=f"{cfg.net_name}-step{cfg.step}",
            dir=str(cfg.run_dir),
            config=config,
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True),
        )

    def log(self, values: Dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self) -> None:
        if self.run is not None:
            import wandb

            self.run.finish()
            wandb.teardown()  # stops the wandb service now; left to atexit it can stall the exit for a minute
            self.run = None


# ------------------------------------------------------------------------------------------ engine


@dataclasses.dataclass
class TrainResult:
    rank: int
    last_epoch: int
    losses: List[float]
    checkpoint: Optional[Path]
    seconds: float
    samples_per_second: float


Objective = Callable[[nn.Module, Any, torch.device], torch.Tensor]


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if dataclasses.is_dataclass(batch):
        return dataclasses.replace(batch, **{f.name: _move(getattr(batch, f.name), device) for f in dataclasses.fields(batch)})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(b, device) for b in batch)
    return batch


class NonFiniteLossError(ValueError):
    """Training stopped at a NaN/inf loss (the message names the batch's files and slices)."""


def _batch_tensors(batch: Any) -> Dict[str, torch.Tensor]:
    """The floating/complex tensors of a batch by name (dataclass fields, or ``item{k}`` of a tuple)."""
    if dataclasses.is_dataclass(batch):
        items = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    elif isinstance(batch, (list, tuple)):
        items = {f"item{k}": b for k, b in enumerate(batch)}
    else:
        items = {"input": batch}
    return {k: v for k, v in items.items() if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())}


def describe_batch(batch: Any) -> str:
    """Where a batch came from and what in it is not finite, e.g. ``brain_acc4_1.h5 slice 3 (non-finite
    masked_kspace)``. Samples are named by the batch's ``fname`` and ``slice_index`` attributes when it has
    them (:class:`~data.transforms.TrainingSample`); otherwise the batch is described by its fields only."""
    tensors = _batch_tensors(batch)
    names = getattr(batch, "fname", None)
    slices = getattr(batch, "slice_index", None)
    slices = slices.tolist() if isinstance(slices, torch.Tensor) else slices
    if names is None:
        bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
        return "this batch" + (f" (non-finite {', '.join(bad)})" if bad else "")
    samples = []
    for b, name in enumerate(names):
        where = f"{name} slice {slices[b]}" if slices is not None else str(name)
        bad = [k for k, t in tensors.items() if t.ndim and t.shape[0] == len(names) and not bool(torch.isfinite(t[b]).all())]
        samples.append((where, bad))
    flagged = [(w, bad) for w, bad in samples if bad] or samples
    return "; ".join(w + (f" (non-finite {', '.join(bad)})" if bad else "") for w, bad in flagged)


def _stop_if_not_finite(loss: torch.Tensor, batch: Any, epoch: int, index: int, world: int,
                        before_raising: Callable[[], None] = lambda: None) -> None:
    """Raise :class:`NonFiniteLossError` naming the batch when ``loss`` is NaN/inf on any rank (every
    rank raises, so none is left waiting in a collective). Without this, DeepSpeed skips every such
    step as an "overflow" and the run ends with unchanged weights and exit status 0.
    ``before_raising`` (e.g. closing the progress bar) runs first, so the error is a line of its own."""
    finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if world > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    if bool(finite.item()):
        return
    value = float(loss.detach().float().reshape(-1)[0])
    here = describe_batch(batch) if not math.isfinite(value) else "(the non-finite loss was on another rank)"
    before_raising()
    raise NonFiniteLossError(f"non-finite training loss ({value}) at epoch {epoch}, batch {index + 1}: {here}; "
                             f"training stopped before the weights were updated")


def resume_state(cfg: EngineConfig) -> Dict[str, Any]:
    """Read (and check) ``--restart_from_checkpoint`` before anything else happens; {} for a fresh run."""
    if not cfg.restart_from_checkpoint:
        return {}
    path = Path(cfg.restart_from_checkpoint)
    epoch_of_tag(path)
    states = check_checkpoint_files(path)  # every file of the tag loads weights-only, optimizer states included
    for key in ("model_name", "model_config", "epoch"):
        if key not in states:
            raise ValueError(f"{path}: not a checkpoint of this pipeline: client state has no {key!r}")
    return states


def _load_checkpoint_safely(engine, path: Path) -> None:
    """Weights, and optimizer state, of tag ``path`` into the DeepSpeed ``engine``, never unpickling
    anything but tensors, containers and DeepSpeed's state types (see utils/checkpoint.py)."""
    original = engine.checkpoint_engine
    engine.checkpoint_engine = safe_checkpoint_engine(engine._config)
    try:
        with weights_only_loading():
            load_path, _ = engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False, load_module_strict=True
            )
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - DeepSpeed's raw errors (mismatched shapes, missing keys)
        raise CheckpointError(f"{path}: DeepSpeed could not load this checkpoint ({' '.join(str(exc).split())[:300]})") from None
    finally:
        engine.checkpoint_engine = original
    if load_path is None:
        raise CheckpointError(f"{path}: DeepSpeed could not load this checkpoint")


def _inner_optimizer(optimizer):
    """The torch optimizer that applies the update (DeepSpeed's ZeRO wrappers hold it as ``.optimizer``)."""
    while hasattr(optimizer, "optimizer") and hasattr(optimizer.optimizer, "param_groups"):
        optimizer = optimizer.optimizer
    return optimizer


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


class _RecordingSampler(Sampler[int]):
    """Yields ``inner``'s indices and remembers them (the ``MRI_ENGINE_SAMPLE_TRACE`` hook)."""

    def __init__(self, inner: Sampler[int]):
        self.inner, self.seen = inner, []

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        self.seen = []
        for index in self.inner:
            self.seen.append(index)
            yield index


class _AutocastProbe:
    """Forward pre-hook on the model: records the autocast dtype active in the first forward (``None``
    when autocast is off), i.e. what actually ran, whatever the configuration says."""

    def __init__(self, device_type: str):
        self.device_type, self.dtype, self.seen = device_type, None, False

    def __call__(self, module, inputs) -> None:
        if not self.seen:
            self.seen = True
            if torch.is_autocast_enabled(self.device_type):
                self.dtype = str(torch.get_autocast_dtype(self.device_type)).replace("torch.", "")


@dataclasses.dataclass
class TrainingRun:
    """Everything :func:`train` sets up once: the DeepSpeed engine, the data, the schedule and the logs."""

    cfg: EngineConfig
    engine: Any
    device: torch.device
    rank: int
    world: int
    sampler: EpochShardSampler
    loader: DataLoader
    schedule: LRSchedule
    start_epoch: int
    steps_per_epoch: int  # optimizer steps per epoch
    loss_log: Optional[LossLog]
    iter_log: Optional[IterationLog]
    logger: "WandbLogger"
    autocast: _AutocastProbe
    client_base: Dict[str, Any]
    iteration: int = 0
    micro_steps: int = 0  # in this process (the kill hook counts these)
    samples: int = 0
    kill_after: Optional[int] = None
    trace_dir: Optional[Path] = None


def setup_training(
    model: nn.Module,
    dataset: Dataset,
    cfg: EngineConfig,
    *,
    model_name: str,
    model_config: Dict[str, Any],
    run_args: Dict[str, Any],
    collate_fn: Optional[Callable] = None,
    resume: Optional[Dict[str, Any]] = None,
) -> TrainingRun:
    """Distributed init, seeding, the LR schedule, DeepSpeed (and the resumed state), the sharded
    loader, the logs and ``run_config.json``."""
    prefer_interpreter_ninja()  # before DeepSpeed JIT-builds anything: one ninja, one cached build
    import deepspeed

    resume = resume or {}
    kill_after = _env_int("MRI_ENGINE_KILL_AFTER_MICROSTEPS")
    trace = os.environ.get("MRI_ENGINE_SAMPLE_TRACE", "").strip()
    init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    seed_fix(cfg.seed, cfg.deterministic)

    start_epoch = int(resume.get("epoch", 0))
    if start_epoch >= cfg.stop_epoch:
        raise ValueError(f"checkpoint is at epoch {start_epoch}, nothing to do up to stop_epoch {cfg.stop_epoch}")
    if resume and cfg.continue_lr_scheduler and "lr_schedule" in resume:
        schedule = LRSchedule(**resume["lr_schedule"])
    else:
        schedule = LRSchedule(cfg.max_lr, cfg.min_lr, cfg.warmup_epochs, cfg.num_epochs, origin_epoch=start_epoch)

    on_cpu = not torch.cuda.is_available()
    ds_config = deepspeed_config(cfg)
    optimizer = _optimizer(model, cfg, on_cpu)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    if resume:
        _load_checkpoint_safely(engine, Path(cfg.restart_from_checkpoint))
    autocast = _AutocastProbe(engine.device.type)
    engine.module.register_forward_pre_hook(autocast)

    sampler = EpochShardSampler(len(dataset), cfg.seed, rank, world, multiple=cfg.samples_per_optimizer_step)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=_RecordingSampler(sampler) if trace else sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        generator=torch_generator(cfg.seed),
        worker_init_fn=worker_init_fn,
        pin_memory=not on_cpu,
        persistent_workers=False,
    )
    if len(loader) % cfg.gradient_accumulation_steps:  # the sampler's padding guarantees this
        raise RuntimeError(f"{len(loader)} micro-batches per epoch is not a multiple of the accumulation steps")
    run_config = {"model": model_name, "model_config": model_config, **run_args}
    if rank == 0:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cfg.checkpoint_dir / "run_config.json") as tmp:
            tmp.write_text(json.dumps({"engine": dataclasses.asdict(cfg), "deepspeed": ds_config, **run_config}, indent=2, default=str))
    client_base = {"model_name": model_name, "model_config": model_config, "args": run_args, "step": cfg.step,
                   "lr_schedule": dataclasses.asdict(schedule), "seed": cfg.seed}
    return TrainingRun(
        cfg=cfg, engine=engine, device=engine.device, rank=rank, world=world, sampler=sampler, loader=loader,
        schedule=schedule, start_epoch=start_epoch, steps_per_epoch=len(loader) // cfg.gradient_accumulation_steps,
        loss_log=LossLog(cfg.loss_log_path, keep_until_epoch=start_epoch) if rank == 0 else None,
        iter_log=IterationLog(cfg.iter_log_path, keep_until_epoch=start_epoch) if rank == 0 else None,
        logger=WandbLogger(cfg, run_config, enabled=rank == 0), autocast=autocast, client_base=client_base,
        iteration=start_epoch * len(loader), kill_after=kill_after, trace_dir=Path(trace) if trace else None,
    )


def train_epoch(run: TrainingRun, epoch: int, objective: Objective, dataset: Dataset, progress: bool = True) -> float:
    """One epoch of micro-steps on this rank's share; returns the mean loss over all ranks.

    The LR of optimizer step ``j`` (0-based) of epoch ``e`` is ``schedule(e - 1 + (j + 1) / steps_per_epoch)``,
    set before each of its micro-steps; the value the optimizer holds after the step is logged.
    """
    from tqdm import tqdm

    cfg, engine = run.cfg, run.engine
    run.sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    engine.train()
    optimizer = _inner_optimizer(engine.optimizer)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    bar = tqdm(run.loader, desc=f"epoch {epoch}/{cfg.stop_epoch}", disable=not progress or run.rank != 0,
               dynamic_ncols=True, leave=False)
    for i, batch in enumerate(bar):
        opt_step = i // cfg.gradient_accumulation_steps
        lr = run.schedule(epoch - 1 + (opt_step + 1) / run.steps_per_epoch)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = objective(engine, _move(batch, run.device), run.device)
        _stop_if_not_finite(loss, batch, epoch, i, run.world, before_raising=bar.close)
        engine.backward(loss)
        engine.step()
        value = float(loss.detach())
        applied = float(optimizer.param_groups[0]["lr"])
        total += value
        count += 1
        run.iteration += 1
        run.micro_steps += 1
        run.samples += cfg.batch_size * run.world
        if run.iter_log is not None:
            run.iter_log.add(epoch, run.iteration, value, applied)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{applied:.2e}")
        if cfg.log_every and run.iteration % cfg.log_every == 0:
            extra = getattr(objective, "log_values", None) or {}  # an objective's own statistics (e.g. VQ perplexity)
            run.logger.log({"train/loss": value, "train/lr": applied, **extra}, step=run.iteration)
        if run.kill_after is not None and run.micro_steps >= run.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a crash mid-epoch, by construction
    if run.trace_dir is not None:
        run.trace_dir.mkdir(parents=True, exist_ok=True)
        np.save(run.trace_dir / f"rank{run.rank}_epoch{epoch}.npy", np.asarray(run.loader.sampler.seen, dtype=np.int64))
    stats = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
    if run.world > 1:
        torch.distributed.all_reduce(stats)
    return float(stats[0] / stats[1])


def end_epoch(run: TrainingRun, epoch: int, mean_loss: float,
              validate: Optional[Callable[[nn.Module, int], Dict[str, float]]] = None) -> Path:
    """Checkpoint tag ``epoch-{epoch}`` (then pruning to ``keep_last_checkpoints``), the loss and iteration
    logs, rank-0 validation, the epoch's wandb values and the one-line summary; returns the tag."""
    cfg = run.cfg
    client_state = {**run.client_base, "epoch": epoch, "autocast_dtype": run.autocast.dtype}
    tag = save_tag_atomically(run.engine, cfg.checkpoint_dir, f"epoch-{epoch}", client_state)
    metrics: Dict[str, Any] = {"epoch": epoch, "train/epoch_loss": mean_loss}
    if run.rank == 0:
        if cfg.keep_last_checkpoints:
            prune_epoch_tags(cfg.checkpoint_dir, cfg.keep_last_checkpoints)
        run.loss_log.append(epoch, mean_loss)
        run.iter_log.flush()
        if validate is not None:
            run.engine.eval()
            metrics.update({f"val/{k}": v for k, v in validate(run.engine.module, epoch).items()})
        run.logger.log(metrics, step=run.iteration)
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        print(f"[train] {cfg.net_name} step{cfg.step} {shown}", flush=True)
    return tag


def train(
    model: nn.Module,
    dataset: Dataset,
    objective: Objective,
    cfg: EngineConfig,
    *,
    model_name: str,
    model_config: Dict[str, Any],
    run_args: Dict[str, Any],
    collate_fn: Optional[Callable] = None,
    resume: Optional[Dict[str, Any]] = None,
    validate: Optional[Callable[[nn.Module, int], Dict[str, float]]] = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with ``objective`` for epochs ``start+1 .. cfg.stop_epoch``:
    :func:`setup_training`, then :func:`train_epoch` and :func:`end_epoch` per epoch.

    ``resume``: the dict from :func:`resume_state` (its weights and optimizer state are loaded through
    DeepSpeed). ``validate(model, epoch) -> {name: value}`` runs on rank 0 after each epoch.
    """
    run = setup_training(model, dataset, cfg, model_name=model_name, model_config=model_config, run_args=run_args,
                         collate_fn=collate_fn, resume=resume)
    losses: List[float] = []
    last_tag: Optional[Path] = None
    t0 = time.perf_counter()
    try:
        for epoch in range(run.start_epoch + 1, cfg.stop_epoch + 1):
            mean_loss = train_epoch(run, epoch, objective, dataset, progress)
            losses.append(mean_loss)
            last_tag = end_epoch(run, epoch, mean_loss, validate)
    finally:
        run.logger.finish()
    seconds = time.perf_counter() - t0
    return TrainResult(run.rank, cfg.stop_epoch, losses, last_tag, seconds, run.samples / max(seconds, 1e-9))
