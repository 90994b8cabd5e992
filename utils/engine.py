"""The one training engine: DeepSpeed (ZeRO, CPU Adam offload), the recipe's LR schedule, per-epoch
checkpoints and loss logs in the challenge layout, offline wandb, deterministic data order.

The engine knows nothing about MRI: ``train.py`` hands it a model, a dataset, a collate function and an
objective ``objective(model, batch, device) -> scalar loss``. Runs as plain ``python train.py`` (one
process; the DeepSpeed CPU accelerator when there is no GPU) or under the ``deepspeed`` launcher, each
rank reading its own share of every epoch.

Outputs under ``<result_path>/<net_name>/``::

    checkpoints/step{k}/epoch-{n}/mp_rank_00_model_states.pt, zero_pp_rank_0_mp_rank_00_optim_states.pt
    loss_log/step{k}/loss_log.npy      rows (epoch, mean train loss)
    wandb/                             offline unless WANDB_MODE=online
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.checkpoint import (
    CheckpointError,
    check_checkpoint_files,
    epoch_of_tag,
    safe_checkpoint_engine,
    save_tag_atomically,
    weights_only_loading,
)
from utils.io import atomic_path
from utils.lr_schedule import LRSchedule
from utils.seed import seed_fix, torch_generator, worker_init_fn


@dataclasses.dataclass
class EngineConfig:
    """Everything the engine needs besides the model and data (units: epochs, learning rates)."""

    result_path: str
    net_name: str
    step: int = 1
    seed: int = 430
    deterministic: bool = False
    num_epochs: int = 20
    warmup_epochs: float = 1.0
    stop_epoch: Optional[int] = None
    max_lr: float = 3e-4
    min_lr: float = 0.0
    batch_size: int = 1
    gradient_accumulation_steps: int = 2
    gradient_clipping: float = 0.01
    weight_decay: float = 1e-4
    zero_stage: int = 1
    offload_optimizer: bool = True
    bf16: bool = False
    num_workers: int = 2
    restart_from_checkpoint: Optional[str] = None
    continue_lr_scheduler: bool = True
    log_every: int = 10
    deepspeed_config: Optional[str] = None

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
                          ("gradient_accumulation_steps", 1), ("num_workers", 0), ("log_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
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


# ------------------------------------------------------------------------------------------ sampling


class EpochShardSampler(Sampler[int]):
    """Seeded permutation of ``range(n)`` per epoch (a pure function of ``(seed, epoch)``); rank ``r`` of
    ``world_size`` takes every ``world_size``-th index from ``r``. Each rank's share is padded (by
    wrapping) to a multiple of ``multiple`` so gradient accumulation never spans two epochs."""

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

    def __init__(self, path: Path, keep_until_epoch: int):
        self.path = Path(path)
        rows = self.read(self.path) if self.path.is_file() else np.zeros((0, 2))
        self.rows = rows[rows[:, 0] <= keep_until_epoch] if rows.size else np.zeros((0, 2))

    @staticmethod
    def read(path: Path) -> np.ndarray:
        """The float64 ``(N, 2)`` rows of a loss log; never unpickles (``allow_pickle=False``).
        A file that is not such an array raises one ``ValueError`` naming it."""
        try:
            rows = np.load(path, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - pickled, truncated or not .npy at all
            problem = "holds pickled objects (refused)" if "allow_pickle" in str(exc) else " ".join(str(exc).split())
            raise ValueError(f"{path}: not a loss log: {problem}") from None
        if not isinstance(rows, np.ndarray) or rows.dtype.kind not in "fiu" or (rows.size and (rows.ndim != 2 or rows.shape[1] != 2)):
            raise ValueError(f"{path}: not a loss log: expected float rows (epoch, loss), got {getattr(rows, 'dtype', '?')} {getattr(rows, 'shape', '?')}")
        return rows.astype(np.float64).reshape(-1, 2)

    def append(self, epoch: int, loss: float) -> None:
        self.rows = np.vstack([self.rows, [[float(epoch), float(loss)]]])
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.rows)


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
    """Train ``model`` on ``dataset`` with ``objective`` for epochs ``start+1 .. cfg.stop_epoch``.

    ``resume``: the dict from :func:`resume_state` (its weights and optimizer state are loaded through
    DeepSpeed). ``validate(model, epoch) -> {name: value}`` runs on rank 0 after each epoch.
    """
    prefer_interpreter_ninja()  # before DeepSpeed JIT-builds anything: one ninja, one cached build
    import deepspeed
    from tqdm import tqdm

    resume = resume or {}
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
    device = engine.device
    if resume:
        _load_checkpoint_safely(engine, Path(cfg.restart_from_checkpoint))

    sampler = EpochShardSampler(len(dataset), cfg.seed, rank, world, multiple=cfg.gradient_accumulation_steps)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        generator=torch_generator(cfg.seed),
        worker_init_fn=worker_init_fn,
        pin_memory=not on_cpu,
        persistent_workers=False,
    )
    steps_per_epoch = math.ceil(len(loader) / cfg.gradient_accumulation_steps)
    loss_log = LossLog(cfg.loss_log_path, keep_until_epoch=start_epoch) if rank == 0 else None
    run_config = {"model": model_name, "model_config": model_config, **run_args}
    if rank == 0:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cfg.checkpoint_dir / "run_config.json") as tmp:
            tmp.write_text(json.dumps({"engine": dataclasses.asdict(cfg), "deepspeed": ds_config, **run_config}, indent=2, default=str))
    logger = WandbLogger(cfg, run_config, enabled=rank == 0)

    losses: List[float] = []
    last_tag: Optional[Path] = None
    samples = 0
    t0 = time.perf_counter()
    iteration = start_epoch * len(loader)
    try:
        for epoch in range(start_epoch + 1, cfg.stop_epoch + 1):
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            engine.train()
            total = torch.zeros((), dtype=torch.float64)
            count = 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.stop_epoch}", disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
            for i, batch in enumerate(bar):
                opt_step = i // cfg.gradient_accumulation_steps
                lr = schedule(epoch - 1 + (opt_step + 1) / steps_per_epoch)
                for group in engine.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                loss = objective(engine, _move(batch, device), device)
                _stop_if_not_finite(loss, batch, epoch, i, world, before_raising=bar.close)
                engine.backward(loss)
                engine.step()
                value = float(loss.detach())
                total += value
                count += 1
                iteration += 1
                samples += cfg.batch_size * world
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
                if cfg.log_every and iteration % cfg.log_every == 0:
                    logger.log({"train/loss": value, "train/lr": lr}, step=iteration)
            stats = torch.stack([total, torch.tensor(float(count), dtype=torch.float64)])
            if world > 1:
                torch.distributed.all_reduce(stats)
            mean_loss = float(stats[0] / stats[1])
            losses.append(mean_loss)
            client_state = {
                "model_name": model_name,
                "model_config": model_config,
                "args": run_args,
                "epoch": epoch,
                "step": cfg.step,
                "lr_schedule": dataclasses.asdict(schedule),
                "seed": cfg.seed,
            }
            last_tag = save_tag_atomically(engine, cfg.checkpoint_dir, f"epoch-{epoch}", client_state)
            metrics = {"epoch": epoch, "train/epoch_loss": mean_loss}
            if rank == 0:
                loss_log.append(epoch, mean_loss)
                if validate is not None:
                    engine.eval()
                    metrics.update({f"val/{k}": v for k, v in validate(engine.module, epoch).items()})
                logger.log(metrics, step=iteration)
                shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
                print(f"[train] {cfg.net_name} step{cfg.step} {shown}", flush=True)
    finally:
        logger.finish()
    seconds = time.perf_counter() - t0
    return TrainResult(rank, cfg.stop_epoch, losses, last_tag, seconds, samples / max(seconds, 1e-9))
