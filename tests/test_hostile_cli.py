"""Hostile inputs to the CLI side (issue 14): artifacts, evaluate.py, train.py flags and data, the ninja cache.

Every case runs on a corpus built in ``tmp_path`` from the tiny simulated data (``tiny_data`` /
``tiny_artifacts`` in conftest.py) and asserts the exit status, that the message names the file or
flag, and which outputs exist. Entry points run in-process (``main(argv)``), except training runs that
reach DeepSpeed (a subprocess, as users start them).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import evaluate
import reconstruct
import train
from data.formats import read_reconstruction_file, write_image_file, write_reconstruction_file
from models import MODEL_REGISTRY
from models import artifacts
from models.artifacts import ArtifactError, load_artifact, read_artifact_info

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _keep_path(monkeypatch):
    """train.main() may put the interpreter's folder first on PATH: restore it after each test."""
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))


def _rewrite_metadata(src: Path, dst: Path, mutate) -> Path:
    """Copy an artifact with its metadata JSON changed by ``mutate(dict)`` (tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()[artifacts.METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    mutate(meta)
    save_file(tensors, str(dst), metadata={artifacts.METADATA_KEY: json.dumps(meta)})
    return dst


# ------------------------------------------------------------------------------------ artifacts (#5)

BAD_FIELDS = [
    ("acceleration", lambda m: m.update(acceleration=[4])),
    ("acceleration", lambda m: m.update(acceleration="four")),
    ("acceleration", lambda m: m.update(acceleration=True)),
    ("acceleration", lambda m: m.update(acceleration=0)),
    ("epoch", lambda m: m.update(epoch="3")),
    ("step", lambda m: m.update(step=1.5)),
    ("anatomy", lambda m: m.update(anatomy="lung")),
    ("source", lambda m: m.update(source={"a": 1})),
    ("model_name", lambda m: m.update(model_name=7)),
    ("model_config", lambda m: m.update(model_config=[1, 2])),
    ("model_config.num_cascades", lambda m: m["model_config"].update(num_cascades="2")),
    ("model_config.sens_chans", lambda m: m["model_config"].update(sens_chans=2.5)),
]


@pytest.mark.parametrize("field, mutate", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_artifact_metadata_with_a_wrong_type(tiny_artifacts, tmp_path, capsys, field, mutate):
    bad = _rewrite_metadata(tiny_artifacts / "brain_acc4.safetensors", tmp_path / "brain_acc4.safetensors", mutate)
    with pytest.raises(ArtifactError) as exc:
        load_artifact(bad)
    message = str(exc.value)
    assert str(bad) in message and f"'{field}'" in message and "\n" not in message
    if "." not in field:  # header-level fields fail without building anything
        with pytest.raises(ArtifactError):
            read_artifact_info(bad)
        assert artifacts.main(["info", str(bad)]) == 1
        err = capsys.readouterr().err
        assert str(bad) in err and f"'{field}'" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [[4], "four"])
def test_bad_artifact_fails_only_its_volumes(tiny_data, tiny_artifacts, tmp_path, capsys, value):
    """The bad brain_acc4 artifact sorts first (acc4/brain_test1): the other three volumes are written."""
    art = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, art)
    bad = art / "brain_acc4.safetensors"
    _rewrite_metadata(tiny_artifacts / bad.name, bad, lambda m: m.update(acceleration=value))
    result = tmp_path / "result"
    rc = reconstruct.main(["--path_data", str(tiny_data / "leaderboard"), "--result_path", str(result),
                           "--weights", "artifacts", "--artifacts_dir", str(art), "--device", "cpu", "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 1
    out_root = result / reconstruct.OUTPUT_SUBDIR
    routing = json.loads((out_root / reconstruct.ROUTING_FILE).read_text())
    failed = routing["volumes"]["acc4/brain_test1.h5"]
    assert failed["status"] == "error" and str(bad) in failed["error"] and "'acceleration'" in failed["error"]
    assert str(bad) in err and "Traceback" not in err
    assert not (out_root / "acc4" / "brain_test1.h5").exists()
    for name in ("acc4/knee_test1.h5", "acc8/brain_test1.h5", "acc8/knee_test1.h5"):
        assert routing["volumes"][name]["status"] == "ok", routing["volumes"][name]
        assert read_reconstruction_file(out_root / name).shape == (2, 384, 384)


def _tiny_checkpoint(tmp_path: Path) -> Path:
    """A model-states file in the DeepSpeed tag layout, as utils/engine.py writes it."""
    from models import build_model
    from utils.checkpoint import MODEL_STATES

    model = build_model("varnet", "tiny")
    tag = tmp_path / "net" / "checkpoints" / "step1" / "epoch-1"
    tag.mkdir(parents=True)
    torch.save({"module": model.state_dict(), "model_name": "varnet", "model_config": model.config.to_dict(),
                "epoch": 1, "args": {"task": "brain", "acceleration": 4}}, tag / MODEL_STATES)
    return tag


@pytest.mark.parametrize("where", ["under_a_file", "a_folder", "wrong_suffix"])
def test_export_out_unwritable(tmp_path, capsys, where):
    tag = _tiny_checkpoint(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = {"under_a_file": blocker / "brain_acc4.safetensors", "a_folder": tmp_path / "dir.safetensors",
           "wrong_suffix": tmp_path / "brain_acc4.pt"}[where]
    if where == "a_folder":
        out.mkdir()
    assert artifacts.main(["export", "--checkpoint", str(tag), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(out) in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and ".safetensors" in p.name]  # nothing written
    # the same checkpoint exports fine to a good location
    good = tmp_path / "ok" / "brain_acc4.safetensors"
    assert artifacts.main(["export", "--checkpoint", str(tag), "--out", str(good)]) == 0 and good.is_file()


# ------------------------------------------------------------------------------------ evaluate.py

def _board(tiny_data: Path, tmp_path: Path):
    """Leaderboard image folders and perfect reconstructions (image_label) of the four tiny volumes."""
    lb, out = tmp_path / "leaderboard", tmp_path / "out"
    for label in sorted((tiny_data / "leaderboard").glob("acc*/image/*.h5")):
        acc = label.parent.parent.name
        (lb / acc / "image").mkdir(parents=True, exist_ok=True)
        shutil.copy(label, lb / acc / "image" / label.name)
        with h5py.File(label, "r") as f:
            write_reconstruction_file(out / acc / label.name, f["image_label"][()])
    return lb, out


def _evaluate(capsys, lb, out, *extra):
    rc = evaluate.main(["--path_leaderboard_data", str(lb), "--path_your_data", str(out), "--no_progress",
                        "--workers", "1", *map(str, extra)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_evaluate_good_board_scores_one(tiny_data, tmp_path, capsys):
    lb, out = _board(tiny_data, tmp_path)
    rc, stdout, _ = _evaluate(capsys, lb, out, "--json", tmp_path / "s.json")
    assert rc == 0 and "Leaderboard SSIM : 1.0000" in stdout
    assert json.loads((tmp_path / "s.json").read_text())["total"] == 1.0


def test_evaluate_max_far_above_the_label(tiny_data, tmp_path, capsys):
    """#8: attr max = 1e30 against an all-zero reconstruction scored SSIM 1.0."""
    lb, out = _board(tiny_data, tmp_path)
    label = lb / "acc4" / "image" / "brain_test1.h5"
    with h5py.File(label, "r+") as f:
        f.attrs["max"] = 1e30
        shape = f["image_label"].shape
    write_reconstruction_file(out / "acc4" / "brain_test1.h5", np.zeros(shape, np.float32))
    rc, stdout, err = _evaluate(capsys, lb, out, "--json", tmp_path / "s.json")
    assert rc == 1 and "Leaderboard SSIM" not in stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(str(label) in line and "max" in line for line in lines), err
    assert not any("knee_test1" in line or "acc8" in line for line in lines), err  # the good volumes are fine
    assert not (tmp_path / "s.json").exists()


def test_evaluate_rejects_320_images(tiny_data, tmp_path, capsys):
    lb, out = _board(tiny_data, tmp_path)
    label = lb / "acc8" / "image" / "knee_test1.h5"
    small = np.random.default_rng(0).random((2, 320, 320)).astype(np.float32) * 1e-3
    write_image_file(label, small, small, small)
    write_reconstruction_file(out / "acc8" / "knee_test1.h5", small)
    rc, stdout, err = _evaluate(capsys, lb, out)
    assert rc == 1 and "Leaderboard SSIM" not in stdout
    assert str(label) in err and "384x384" in err and "(2, 320, 320)" in err


@pytest.mark.parametrize("case, flag", [
    ("workers_negative", "--workers"),
    ("workers_zero", "--workers"),
    ("figure_volumes_negative", "--figure_volumes"),
    ("figure_volumes_zero", "--figure_volumes"),
    ("json_is_a_folder", "--json"),
    ("json_under_a_file", "--json"),
    ("figures_under_a_file", "--figures"),
])
def test_evaluate_flags_checked_before_any_work(tiny_data, tmp_path, capsys, monkeypatch, case, flag):
    lb, out = _board(tiny_data, tmp_path)
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    extra = {
        "workers_negative": ["--workers", "-1"],
        "workers_zero": ["--workers", "0"],
        "figure_volumes_negative": ["--figures", tmp_path / "figs", "--figure_volumes", "-1"],
        "figure_volumes_zero": ["--figures", tmp_path / "figs", "--figure_volumes", "0"],
        "json_is_a_folder": ["--json", tmp_path],
        "json_under_a_file": ["--json", blocker / "s.json"],
        "figures_under_a_file": ["--figures", blocker / "figs"],
    }[case]
    monkeypatch.setattr(evaluate, "score_volume", lambda *a: pytest.fail("a volume was scored before the flags were checked"))
    argv = ["--path_leaderboard_data", str(lb), "--path_your_data", str(out), "--no_progress", *map(str, extra)]
    with pytest.raises(SystemExit) as exc:
        evaluate.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "error: " in last and flag in last and "Traceback" not in err
    if case.endswith("under_a_file"):
        assert str(blocker) in last
    assert not (tmp_path / "figs").exists() and blocker.read_text() == "x"
    assert not list(tmp_path.rglob("*.json"))


# ------------------------------------------------------------------------------------ train.py flags

def _train_argv(data: Path, result: Path, *extra):
    return ["--net_name", "net", "--model", "varnet", "--preset", "tiny", "--task", "brain",
            "--data_path_train", str(data / "train"), "--result_path", str(result), "--num_workers", "0", *map(str, extra)]


def _train_fails(capsys, argv):
    """Run train.main in-process; it must stop with SystemExit before DeepSpeed starts. Returns (code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    err = capsys.readouterr().err
    code = exc.value.code
    if isinstance(code, str):  # SystemExit("error: ...") prints its message and exits 1
        err, code = err + code, 1
    return code, err


@pytest.mark.parametrize("model", sorted(MODEL_REGISTRY))
def test_every_float_flag_rejects_nan_and_inf(model, capsys):
    """#7: no float flag of train.py (run flags, MRAugment, model hyperparameters) takes nan or inf."""
    parser = train.build_parser(model)
    float_flags = [a for a in parser._actions if a.type in (float, train.finite_float)]
    assert float_flags and all(a.type is train.finite_float for a in float_flags)
    for action in float_flags:
        flag = action.option_strings[0]
        for bad in ("nan", "inf", "-inf", "NaN"):
            with pytest.raises(SystemExit) as exc:
                parser.parse_args(["--net_name", "n", f"{flag}={bad}"])
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"argument {flag}: expected a finite number, got '{bad}'" in err
        assert getattr(parser.parse_args(["--net_name", "n", flag, "0.5"]), action.dest) in (0.5, [0.5])


@pytest.mark.parametrize("extra, words", [
    (["--max_lr", "nan"], "argument --max_lr: expected a finite number"),
    (["--max_lr", "inf"], "argument --max_lr: expected a finite number"),
    (["--num_epochs", "-1"], "--num_epochs must be an integer >= 1, got -1"),
    (["--num_epochs", "0"], "--num_epochs must be an integer >= 1, got 0"),
    (["--num_epochs", "3", "--stop_epoch", "0"], "--stop_epoch must be an integer >= 1, got 0"),
    (["--num_epochs", "3", "--stop_epoch", "5"], "stop_epoch (5) is beyond num_epochs (3)"),
    (["--max_lr", "0"], "--max_lr must be > 0"),
    (["--min_lr", "1"], "--min_lr must be in [0, max_lr"),
    (["--batch_size", "0"], "--batch_size must be an integer >= 1"),
    (["--num_workers", "-2"], "--num_workers must be an integer >= 0"),
    (["--gradient_clipping=-1"], "--gradient_clipping must be >= 0"),
    (["--warmup_epochs=-0.5"], "--warmup_epochs must be >= 0"),
    (["--seed=-1"], "--seed must be an integer >= 0"),
    (["--step", "0"], "--step must be an integer >= 1"),
])
def test_train_flags_checked_up_front(tiny_data, tmp_path, capsys, extra, words):
    code, err = _train_fails(capsys, _train_argv(tiny_data, tmp_path / "result", *extra))
    assert code != 0 and words in err, err
    assert "checkpoint is at epoch" not in err and "Traceback" not in err
    assert not (tmp_path / "result").exists()


@pytest.mark.parametrize("content, words", [
    ('{"zero_optimization": {"stage": 1},}', "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"zero_optimization": 3}', "'zero_optimization' must be an object"),
    (None, "file not found"),
])
def test_bad_deepspeed_config_names_the_file(tiny_data, tmp_path, capsys, content, words):
    config = tmp_path / "ds_config.json"
    if content is not None:
        config.write_text(content)
    code, err = _train_fails(capsys, _train_argv(tiny_data, tmp_path / "result", "--deepspeed_config", config))
    assert code != 0 and f"--deepspeed_config {config}: {words}" in err, err
    assert not (tmp_path / "result").exists()


def test_train_result_path_is_a_file(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "result"
    blocker.write_text("x")
    code, err = _train_fails(capsys, _train_argv(tiny_data, blocker))
    assert code != 0 and str(blocker) in err and "not a folder" in err
    assert blocker.read_text() == "x"


# ------------------------------------------------------------------------------------ training data (#6)

def test_nan_in_training_kspace_stops_with_file_and_slice(tiny_data, tmp_path):
    """#6: a NaN in one k-space slice made every step a skipped DeepSpeed "overflow" and exit status 0."""
    data = tmp_path / "Data"
    shutil.copytree(tiny_data / "train", data / "train")
    victim = data / "train" / "brain" / "kspace" / "brain_acc4_1.h5"
    with h5py.File(victim, "r+") as f:
        k = f["kspace"][1]
        k[0, 7, 11] = np.nan
        f["kspace"][1] = k
    result = tmp_path / "result"
    argv = _train_argv(data, result, "--num_epochs", "2", "--gradient_accumulation_steps", "1", "--num_workers", "1")
    res = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite training loss") and f"{victim} slice 1" in last, res.stderr[-3000:]
    assert "masked_kspace" in last and "Traceback" not in res.stderr
    run = result / "net"
    assert not list((run / "checkpoints" / "step1").glob("epoch-*")) and not (run / "loss_log").exists()


# ------------------------------------------------------------------------------------ CPU Adam build cache

NINJA_CHECK = """
import subprocess, sys
from utils.engine import prefer_interpreter_ninja
found = prefer_interpreter_ninja()
subprocess.run(["ninja"], cwd=sys.argv[1], check=True, capture_output=True)  # how torch.utils.cpp_extension runs it
from torch.utils.cpp_extension import _get_build_directory
print(found)
print(_get_build_directory("cpu_adam", verbose=False))
"""


def test_extension_builds_once_whether_or_not_the_venv_is_activated(tmp_path):
    """The same ninja, build log and build folder with the interpreter's folder on PATH (an activated venv)
    and without it (``.venv/bin/python train.py``), where another ``ninja`` comes first."""
    own = Path(sys.executable).parent / "ninja"
    if not own.is_file():
        pytest.skip(f"no ninja beside {sys.executable}")
    system = tmp_path / "system_bin"  # stands for /usr/bin: a different ninja that must not be used
    system.mkdir()
    (system / "ninja").write_text(f"#!/bin/sh\necho foreign >> {tmp_path / 'foreign_calls'}\nexit 1\n")
    (system / "ninja").chmod(0o755)
    build = tmp_path / "build"
    build.mkdir()
    (build / "in.txt").write_text("x")
    (build / "build.ninja").write_text("rule cp\n  command = cp $in $out && echo built >> compiles\nbuild out.txt: cp in.txt\n")
    base = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != own.parent)
    seen = []
    for path in (os.pathsep.join([str(system), base]), os.pathsep.join([str(own.parent), str(system), base])) * 2:
        res = subprocess.run([sys.executable, "-c", NINJA_CHECK, str(build)], cwd=REPO, capture_output=True, text=True,
                             env={**ENV, "PATH": path}, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        seen.append(tuple(res.stdout.split()[-2:]))
    assert {s[0] for s in seen} == {str(own)}
    assert len(set(seen)) == 1  # one ninja, one build folder
    assert (build / "compiles").read_text().count("built") == 1  # built once, then cached
    assert not (tmp_path / "foreign_calls").exists()
