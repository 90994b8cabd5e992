"""train.py + utils/engine.py: layout, determinism, step resume, kill-and-resume, bad inputs.

Runs real DeepSpeed (CPU accelerator, ZeRO-1, CPU Adam) on a micro data set in the challenge layout
(narrow k-space so each step takes milliseconds).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.formats import read_image_file, read_kspace_file, write_image_file, write_kspace_file
from utils.checkpoint import MODEL_STATES, OPTIM_STATES, load_model_states

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def micro(tmp_path_factory, micro_data):
    """4 brain samples (2 volumes x 2 slices) and a leaderboard-style validation folder ``val/`` made of
    the first brain volume under its own fixed x4 mask."""
    root = micro_data(tmp_path_factory.mktemp("micro") / "Data")
    src = root / "train" / "brain"
    vol = read_kspace_file(src / "kspace" / "brain_acc4_1.h5")
    write_kspace_file(root / "val" / "kspace" / "brain_test1.h5", vol.kspace * vol.mask, vol.mask)
    images = read_image_file(src / "image" / "brain_acc4_1.h5")
    write_image_file(root / "val" / "image" / "brain_test1.h5", images["image_input"], images["image_grappa"],
                     images["image_label"])
    return root


@pytest.fixture(scope="module")
def micro6(tmp_path_factory, micro_data):
    """6 brain samples: with batch 2 and accumulation 2 an epoch of 3 micro-batches would straddle."""
    return micro_data(tmp_path_factory.mktemp("micro6") / "Data", volumes=3)


def _args(data: Path, result: Path, *extra, preset=True):
    return [
        "--net_name", "net", "--model", "varnet", *(["--preset", "tiny"] if preset else []), "--task", "brain",
        "--data_path_train", str(data / "train"), "--result_path", str(result),
        "--num_epochs", "4", "--stop_epoch", "2", "--warmup_epochs", "1", "--num_workers", "0",
        "--max_lr", "1e-3", "--log_every", "1", *extra,
    ]


def _run(args, timeout=600):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _weights(tag: Path):
    return load_model_states(tag)["module"]


def _val_ssim(stdout: str):
    return [float(line.split("val/ssim=")[1].split(",")[0]) for line in stdout.splitlines() if "val/ssim=" in line]


def test_end_to_end_layout_and_determinism(micro, tmp_path):
    val = ("--data_path_val", str(micro / "val"))
    first = _run(_args(micro, tmp_path / "a", *val))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "a" / "net"
    for epoch in (1, 2):
        tag = run / "checkpoints" / "step1" / f"epoch-{epoch}"
        assert (tag / MODEL_STATES).is_file() and (tag / OPTIM_STATES).is_file()
    states = load_model_states(run / "checkpoints" / "step1" / "epoch-2")
    assert states["model_name"] == "varnet" and states["epoch"] == 2
    assert states["model_config"]["num_cascades"] == 2  # the tiny preset, carried by the checkpoint
    assert states["args"]["task"] == "brain" and states["args"]["seed"] == 430  # defaults recorded, not None
    assert states["autocast_dtype"] is None  # fp32: no autocast ran
    log = np.load(run / "loss_log" / "step1" / "loss_log.npy")
    assert log.shape == (2, 2) and list(log[:, 0]) == [1.0, 2.0] and np.isfinite(log[:, 1]).all()
    assert any((run / "wandb").rglob("*.wandb")), "offline wandb run files missing"
    assert not list((run / "checkpoints" / "step1").glob(".*partial"))
    # --data_path_val: the leaderboard SSIM of each epoch's weights, as evaluating that checkpoint gives it
    from data.transforms import undersampled_model_input
    from models.artifacts import load_checkpoint_model
    from utils.inference import reconstruct_volume
    from utils.metrics import leaderboard_foreground_mask, leaderboard_ssim

    reported = _val_ssim(first.stdout)
    assert len(reported) == 2, first.stdout[-2000:]
    vol = read_kspace_file(micro / "val" / "kspace" / "brain_test1.h5")
    labels = read_image_file(micro / "val" / "image" / "brain_test1.h5", keys=("image_label",))
    mask = torch.from_numpy(vol.mask)
    kspace = undersampled_model_input(torch.from_numpy(vol.kspace), mask, "brain")
    fg = leaderboard_foreground_mask(labels["image_label"], "brain")
    for epoch, value in zip((1, 2), reported):
        model, _ = load_checkpoint_model(run / "checkpoints" / "step1" / f"epoch-{epoch}")
        recon = reconstruct_volume(model, kspace, mask, 1).numpy()
        ssim = float(leaderboard_ssim(recon, labels["image_label"], labels["max"], fg).mean())
        assert 0 < ssim <= 1 and value == pytest.approx(ssim, abs=1e-4)
    assert reported[0] != reported[1]
    # same arguments -> bit-identical loss log and weights
    second = _run(_args(micro, tmp_path / "b", *val))
    assert second.returncode == 0, second.stderr[-3000:]
    log_b = np.load(tmp_path / "b" / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert np.array_equal(log, log_b)
    wa, wb = _weights(run / "checkpoints" / "step1" / "epoch-2"), _weights(tmp_path / "b" / "net" / "checkpoints" / "step1" / "epoch-2")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a different seed gives a different curve
    third = _run(_args(micro, tmp_path / "c", "--seed", "7", "--stop_epoch", "1"))
    assert third.returncode == 0, third.stderr[-3000:]
    log_c = np.load(tmp_path / "c" / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert log_c[0, 1] != log[0, 1]
    # the audit command: a and b are identical everywhere (wandb histories included); c diverges at once
    audit = [sys.executable, "-m", "utils.audit", "compare"]
    same = subprocess.run([*audit, str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "ab")], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    rows = [line for line in same.stdout.splitlines() if line.startswith("net ")]
    for series in ("loss_log", "iter loss", "iter lr", "wandb train/loss", "wandb train/lr", "wandb val/ssim"):
        assert any(f" {series} " in row and " identical " in row for row in rows), (series, same.stdout)
    assert (tmp_path / "ab" / "report.md").is_file() and (tmp_path / "ab" / "net_step1.png").is_file()
    differ = subprocess.run([*audit, str(tmp_path / "a"), str(tmp_path / "c")], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert differ.returncode == 1 and "diverged" in differ.stdout
    first = next(line for line in differ.stdout.splitlines() if line.startswith("net ") and " iter loss " in line)
    assert "epoch 1, iteration 1" in first, differ.stdout


def test_step_resume_numbering_and_new_lr(micro, tmp_path):
    first = _run(_args(micro, tmp_path, "--keep_last_checkpoints", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "net" / "checkpoints" / "step1" / "epoch-2"
    # --keep_last_checkpoints 1: only the tag the next step restarts from is left
    assert sorted(p.name for p in ckpt.parent.glob("epoch-*")) == ["epoch-2"]
    restart = ("--step", "2", "--restart_from_checkpoint", str(ckpt), "--continue_lr_scheduler", "false",
               "--max_lr", "5e-4", "--warmup_epochs", "0", "--num_epochs", "5", "--stop_epoch", "3")
    refused = _run(_args(micro, tmp_path, *restart))
    # --preset with a restart is refused: the model config comes from the checkpoint
    assert refused.returncode != 0 and "comes from the checkpoint" in refused.stderr
    second = _run(_args(micro, tmp_path, *restart, preset=False))
    assert second.returncode == 0, second.stderr[-3000:]
    step2 = tmp_path / "net" / "checkpoints" / "step2"
    assert sorted(p.name for p in step2.glob("epoch-*")) == ["epoch-3"]
    states = load_model_states(step2 / "epoch-3")
    assert states["epoch"] == 3 and states["step"] == 2
    assert states["lr_schedule"] == {"max_lr": 5e-4, "min_lr": 0.0, "warmup_epochs": 0.0, "num_epochs": 5.0, "origin_epoch": 2.0}
    log = np.load(tmp_path / "net" / "loss_log" / "step2" / "loss_log.npy")
    assert list(log[:, 0]) == [3.0]
    # weights moved on from the step-1 checkpoint
    w1, w2 = _weights(ckpt), _weights(step2 / "epoch-3")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)


def _expected_lr(t: float, max_lr=1e-3, warmup=1.0, total=4.0) -> float:
    """The recipe's LR at fractional epoch t, written out independently of utils/lr_schedule.py."""
    if t < warmup:
        return max_lr * t / warmup
    return 0.5 * max_lr * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def test_kill_and_resume_at_batch_size_2_matches_uninterrupted(micro6, tmp_path):
    """6 samples, batch 2, accumulation 2: each epoch is padded to 2 whole optimizer steps (4 micro-batches),
    so a run SIGKILLed by the engine's hook right after its 5th micro-step (mid-epoch 2, mid-accumulation)
    and restarted from epoch-1 is bit-identical to an uninterrupted run: weights, loss log, iteration log
    and the merged wandb histories (checked with the audit command)."""
    batch = ("--batch_size", "2", "--gradient_accumulation_steps", "2", "--stop_epoch", "3")
    reference = _run(_args(micro6, tmp_path / "ref", *batch))
    assert reference.returncode == 0, reference.stderr[-3000:]
    ref_iters = np.load(tmp_path / "ref" / "net" / "loss_log" / "step1" / "iter_log.npy")
    assert ref_iters.shape == (12, 4) and list(ref_iters[:, 1]) == list(range(1, 13))
    # the LR the optimizer held at each step (read back from its parameter groups) is the schedule's:
    # optimizer step j (0-based) of epoch e runs at lr(e - 1 + (j + 1) / 2), its two micro-steps alike
    for epoch, iteration, _, lr in ref_iters:
        step_in_epoch = (int(iteration) - 1) % 4 // 2
        assert lr == pytest.approx(_expected_lr(epoch - 1 + (step_in_epoch + 1) / 2), rel=1e-12, abs=1e-15)
    assert len(set(ref_iters[:, 3])) == 5  # 0.5e-3 at mid-warm-up and again on the cosine

    out = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "train.py", *_args(micro6, out, *batch)], cwd=REPO, capture_output=True,
                            env={**ENV, "MRI_ENGINE_KILL_AFTER_MICROSTEPS": "5"}, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    steps = out / "net" / "checkpoints" / "step1"
    assert sorted(p.name for p in steps.glob("epoch-*")) == ["epoch-1"]
    resumed = _run(_args(micro6, out, *batch, "--restart_from_checkpoint", str(steps / "epoch-1"), preset=False))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for epoch in (2, 3):
        wa = _weights(tmp_path / "ref" / "net" / "checkpoints" / "step1" / f"epoch-{epoch}")
        wb = _weights(steps / f"epoch-{epoch}")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"weights differ at epoch {epoch}"
    for name in ("loss_log.npy", "iter_log.npy"):
        ref_log = np.load(tmp_path / "ref" / "net" / "loss_log" / "step1" / name)
        assert np.array_equal(ref_log, np.load(out / "net" / "loss_log" / "step1" / name)), name
    # the audit agrees; the killed run's wandb history before the kill was never flushed (SIGKILL), so its
    # wandb series may only be incomplete, never diverged; the iteration log covers the whole run
    from utils.audit import IDENTICAL, INCOMPLETE, compare_results

    report = compare_results(tmp_path / "ref", out)
    assert not report.missing and {r.name for r in report.results} >= {"loss_log", "iter loss", "iter lr", "wandb train/loss"}
    for r in report.results:
        assert r.verdict == IDENTICAL or (r.name.startswith("wandb") and r.verdict == INCOMPLETE and not r.only_b), r


@pytest.mark.parametrize("model", ["anatomy_cnn", "nnmamba_cls"])
def test_classifier_trains_through_the_same_entry_point(micro, tmp_path, model):
    args = ["--net_name", "cnn", "--model", model, "--preset", "tiny", "--data_path_train", str(micro / "train"),
            "--result_path", str(tmp_path), "--num_epochs", "2", "--warmup_epochs", "0", "--num_workers", "0",
            "--max_lr", "1e-3", "--gradient_accumulation_steps", "1"]
    res = _run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    log = np.load(tmp_path / "cnn" / "loss_log" / "step1" / "loss_log.npy")
    assert log.shape == (2, 2) and np.isfinite(log).all()


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing_data", "data folder not found"),
        ("corrupt_h5", "unreadable or truncated"),
        ("unknown_flag", "unrecognized arguments: --max_lrr"),
        ("not_a_checkpoint", "not a checkpoint"),
        ("unknown_hparam", "unrecognized arguments: --cascade"),
        ("zero_stage_3", "--zero_stage 3 is not supported"),
        ("zero3_checkpoint", "a ZeRO-3 checkpoint"),
    ],
)
def test_bad_inputs_fail_before_training(micro, tmp_path, case, words):
    data = micro
    extra = []
    if case == "missing_data":
        data = tmp_path / "nowhere"
    elif case == "corrupt_h5":
        import shutil

        data = tmp_path / "Data"
        shutil.copytree(micro, data)
        victim = data / "train" / "brain" / "kspace" / "brain_acc4_2.h5"
        victim.write_bytes(victim.read_bytes()[:2000])
    elif case == "unknown_flag":
        extra = ["--max_lrr", "1"]
    elif case == "not_a_checkpoint":
        (tmp_path / "fake" / "epoch-3").mkdir(parents=True)
        extra = ["--restart_from_checkpoint", str(tmp_path / "fake" / "epoch-3")]
    elif case == "unknown_hparam":
        extra = ["--cascade", "3"]  # a PromptMR hyperparameter, not VarNet's
    elif case == "zero_stage_3":
        extra = ["--zero_stage", "3"]
    elif case == "zero3_checkpoint":
        tag = tmp_path / "z3" / "epoch-3"
        tag.mkdir(parents=True)
        torch.save({"module": None}, tag / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        extra = ["--restart_from_checkpoint", str(tag)]
    res = _run(_args(data, tmp_path / "out", *extra), timeout=120)
    assert res.returncode != 0
    assert words in res.stderr, res.stderr[-2000:]
    if case == "corrupt_h5":
        assert "brain_acc4_2.h5" in res.stderr
    assert not (tmp_path / "out" / "net" / "checkpoints").exists()


def test_bf16_and_zero_stage_options(micro, tmp_path):
    """--bf16 --zero_stage 2 (and the --flag / --flag false forms of the boolean flags)."""
    res = _run(_args(micro, tmp_path, "--bf16", "--zero_stage", "2", "--stop_epoch", "1", "--deterministic", "false",
                     "--no-continue_lr_scheduler"))
    assert res.returncode == 0, res.stderr[-3000:]
    config = json.loads((tmp_path / "net" / "checkpoints" / "step1" / "run_config.json").read_text())
    assert config["engine"]["bf16"] is True and config["engine"]["deterministic"] is False
    assert config["engine"]["continue_lr_scheduler"] is False
    ds = config["deepspeed"]
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    # autocast actually ran: the engine's probe saw bfloat16 autocast active inside the model's forward
    assert load_model_states(tmp_path / "net" / "checkpoints" / "step1" / "epoch-1")["autocast_dtype"] == "bfloat16"
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.01
    log = np.load(tmp_path / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert np.isfinite(log).all()


def test_two_ranks_each_read_their_share(micro, tmp_path):
    """torchrun with 2 CPU processes (gloo): ZeRO-1 shards the optimizer state over both ranks, and in every
    epoch the dataset indices the two ranks read (the engine's trace hook) are disjoint and cover it."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "train.py",
           *_args(micro, tmp_path)]
    trace = tmp_path / "trace"
    res = subprocess.run(cmd, cwd=REPO, env={**ENV, "MRI_ENGINE_SAMPLE_TRACE": str(trace)}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    orders = []
    for epoch in (1, 2):
        shares = [np.load(trace / f"rank{r}_epoch{epoch}.npy").tolist() for r in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == 2 and not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3]
        orders.append(shares)
    assert orders[0] != orders[1]  # a new permutation each epoch
    tag = tmp_path / "net" / "checkpoints" / "step1" / "epoch-2"
    assert (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file()
    assert (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert res.stdout.count("[train] done") == 1
    log = np.load(tmp_path / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert log.shape == (2, 2) and np.isfinite(log).all()


class _Payload:
    """Pickles as ``exec(code)``: what an attacker appends to an optimizer-state file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return exec, (self.code,)


def test_resume_never_unpickles_a_tampered_or_truncated_optimizer_file(micro, tmp_path):
    first = _run(_args(micro, tmp_path / "run", "--stop_epoch", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    tag = tmp_path / "run" / "net" / "checkpoints" / "step1" / "epoch-1"
    optim = tag / OPTIM_STATES
    genuine = optim.read_bytes()
    marker = tmp_path / "pwned"
    state = torch.load(optim, weights_only=False)  # our own file, written just now
    state["optimizer_state_dict"]["extra"] = _Payload(marker)
    torch.save(state, optim)
    resume = ("--stop_epoch", "2", "--restart_from_checkpoint", str(tag))
    tampered = _run(_args(micro, tmp_path / "run", *resume, preset=False), timeout=300)
    assert tampered.returncode != 0 and not marker.exists(), "the payload ran"
    assert f"{optim}: refused" in tampered.stderr, tampered.stderr[-2000:]
    optim.write_bytes(genuine[: len(genuine) // 3])
    truncated = _run(_args(micro, tmp_path / "run", *resume, preset=False), timeout=300)
    assert truncated.returncode != 0 and f"{optim}: cannot be read safely" in truncated.stderr, truncated.stderr[-2000:]
    assert "Traceback" not in tampered.stderr + truncated.stderr
    assert not (tag.parent / "epoch-2").exists()


def test_fastmri_mask_kinds_are_training_choices():
    """--mask_type takes fastMRI's kinds (for converted fastMRI data): random and equispaced_fraction keep
    acceleration = W / sampled columns, equispaced is fastMRI's plain comb (every 4th column) plus the ACS."""
    import train
    from data.masks import FASTMRI_KINDS, MaskSampler

    for kind in FASTMRI_KINDS:
        args = train.parse_args(["--net_name", "n", "--task", "knee", "--mask_type", kind, "--acceleration", "4"])
        assert args.mask_type == kind and args.acceleration == 4
        masks = [MaskSampler(kind, args.acceleration, 430).sample(368, 1, i) for i in range(20)]
        ratio = np.mean([368 / m.sum() for m in masks])
        assert (3.6 < ratio < 4.4) if kind != "equispaced" else (3.0 < ratio < 3.5), (kind, ratio)
