"""train.py + utils/engine.py: layout, determinism, step resume, kill-and-resume, bad inputs.

Runs real DeepSpeed (CPU accelerator, ZeRO-1, CPU Adam) on a micro data set in the challenge layout
(narrow k-space so each step takes milliseconds).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data.formats import write_image_file, write_kspace_file
from data.masks import make_mask
from data.transforms import rss_target
from utils.checkpoint import MODEL_STATES, OPTIM_STATES, load_model_states
from utils.physics import fft2c, ifft2c

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _smooth_volume(rng, slices, coils, height, width):
    """Complex coil images with smooth structure -> fully sampled k-space (S, C, H, W)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    obj = ((yy / 0.5) ** 2 + (xx / 0.8) ** 2 < 1).astype(np.float32) * (1 + 0.3 * np.cos(6 * yy))
    images = []
    for s in range(slices):
        coils_img = [obj * (1 + 0.2 * s) * np.exp(1j * (c + 0.5 * xx)) * (1 + 0.3 * (c % 2) * yy) for c in range(coils)]
        images.append(coils_img)
    images = np.asarray(images, dtype=np.complex64) * 1e-4
    images += (rng.standard_normal(images.shape) + 1j * rng.standard_normal(images.shape)).astype(np.complex64) * 1e-7
    return fft2c(torch.from_numpy(images)).numpy()


def make_micro_data(root: Path, volumes=2, slices=2, coils=2, height=384, width=48):
    rng = np.random.default_rng(0)
    for anatomy in ("brain", "knee"):
        for i in range(1, volumes + 1):
            name = f"{anatomy}_acc4_{i}.h5"
            k = _smooth_volume(rng, slices, coils, height, width)
            mask = make_mask("fixed", width, 4)
            images = ifft2c(torch.from_numpy(k))
            label = torch.stack([rss_target(images[s]) for s in range(slices)]).numpy()
            write_kspace_file(root / "train" / anatomy / "kspace" / name, k, mask)
            write_image_file(root / "train" / anatomy / "image" / name, label, label, label)
    return root


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return make_micro_data(tmp_path_factory.mktemp("micro") / "Data")


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


def test_end_to_end_layout_and_determinism(micro, tmp_path):
    first = _run(_args(micro, tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "a" / "net"
    for epoch in (1, 2):
        tag = run / "checkpoints" / "step1" / f"epoch-{epoch}"
        assert (tag / MODEL_STATES).is_file() and (tag / OPTIM_STATES).is_file()
    states = load_model_states(run / "checkpoints" / "step1" / "epoch-2")
    assert states["model_name"] == "varnet" and states["epoch"] == 2
    assert states["model_config"]["num_cascades"] == 2  # the tiny preset, carried by the checkpoint
    assert states["args"]["task"] == "brain"
    log = np.load(run / "loss_log" / "step1" / "loss_log.npy")
    assert log.shape == (2, 2) and list(log[:, 0]) == [1.0, 2.0] and np.isfinite(log[:, 1]).all()
    assert any((run / "wandb").rglob("*.wandb")), "offline wandb run files missing"
    assert not list((run / "checkpoints" / "step1").glob(".*partial"))
    # same arguments -> bit-identical loss log and weights
    second = _run(_args(micro, tmp_path / "b"))
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


def test_step_resume_numbering_and_new_lr(micro, tmp_path):
    first = _run(_args(micro, tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "net" / "checkpoints" / "step1" / "epoch-2"
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


def test_kill_and_resume_matches_uninterrupted(micro, tmp_path):
    reference = _run(_args(micro, tmp_path / "ref", "--stop_epoch", "3"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    # a run killed with SIGKILL in the middle of epoch 2 ...
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py", *_args(micro, out, "--stop_epoch", "3")], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag1 = out / "net" / "checkpoints" / "step1" / "epoch-1"
    deadline = time.time() + 300
    while not (tag1 / OPTIM_STATES).is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tag1 / MODEL_STATES).is_file()
    assert not (out / "net" / "checkpoints" / "step1" / "epoch-3").exists()
    # ... restarted from its last checkpoint reaches the same weights at the next epoch boundaries
    resumed = _run(_args(micro, out, "--stop_epoch", "3", "--restart_from_checkpoint", str(tag1), preset=False))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for epoch in (2, 3):
        wa = _weights(tmp_path / "ref" / "net" / "checkpoints" / "step1" / f"epoch-{epoch}")
        wb = _weights(out / "net" / "checkpoints" / "step1" / f"epoch-{epoch}")
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"weights differ at epoch {epoch}"
    ref_log = np.load(tmp_path / "ref" / "net" / "loss_log" / "step1" / "loss_log.npy")
    res_log = np.load(out / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert np.array_equal(ref_log, res_log)


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
    res = _run(_args(data, tmp_path / "out", *extra), timeout=120)
    assert res.returncode != 0
    assert words in res.stderr, res.stderr[-2000:]
    if case == "corrupt_h5":
        assert "brain_acc4_2.h5" in res.stderr
    assert not (tmp_path / "out" / "net" / "checkpoints").exists()


def test_bf16_and_zero_stage_options(micro, tmp_path):
    res = _run(_args(micro, tmp_path, "--bf16", "--zero_stage", "2", "--stop_epoch", "1"))
    assert res.returncode == 0, res.stderr[-3000:]
    config = __import__("json").loads((tmp_path / "net" / "checkpoints" / "step1" / "run_config.json").read_text())
    ds = config["deepspeed"]
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.01
    log = np.load(tmp_path / "net" / "loss_log" / "step1" / "loss_log.npy")
    assert np.isfinite(log).all()


def test_two_ranks_each_read_their_share(micro, tmp_path):
    """torchrun with 2 CPU processes (gloo): ZeRO-1 shards the optimizer state over both ranks."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), "train.py",
           *_args(micro, tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
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
