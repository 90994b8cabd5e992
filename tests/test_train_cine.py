"""train.py --task cine end to end at tiny scale: real DeepSpeed on a tiny CMRxRecon TrainingSet, then
export and reconstruct.py --task cine with the trained weights; cine flag checks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.cine import write_cine_fullsample, write_cine_undersampled
from data.cine_masks import make_cine_mask

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cine_root(tmp_path_factory, cine_fullsample):
    root = tmp_path_factory.mktemp("cine") / "CMRxRecon" / "MultiCoil" / "Cine"  # DATA_ROOT is 3 levels up
    for i in range(2):
        write_cine_fullsample(root / "TrainingSet", f"P00{i + 1}", "sax", cine_fullsample(i))
    full = cine_fullsample(9)
    write_cine_fullsample(root / "ValidationSet", "P010", "sax", full)
    write_cine_undersampled(root / "ValidationSet", "P010", "sax", full, make_cine_mask("uniform", (1, *full.shape[-2:]), 4)[0], 4)
    return root


def _train(root, out, *extra):
    args = ["--net_name", "promptmr_cine", "--model", "promptmr", "--preset", "cine_tiny", "--task", "cine",
            "--data_path_train", str(root / "TrainingSet"), "--result_path", str(out), "--num_epochs", "2",
            "--warmup_epochs", "0", "--num_workers", "0", "--max_lr", "1e-3", "--log_every", "1", *extra]
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def test_cine_recipe_chain_exports_and_reconstructs(cine_root, tmp_path):
    """scripts/train_cine_step{1,2,3}.sh (PRESET=tiny) chain through real DeepSpeed; the step-3 weights
    export to an artifact that reconstruct.py --task cine uses."""
    env = {**ENV, "DATA_ROOT": str(cine_root.parents[2]), "RESULT_ROOT": str(tmp_path), "PRESET": "tiny",
           "NUM_WORKERS": "0", "WANDB_MODE": "disabled", "CINE_MASK": "kt_gaussian"}
    for step in (1, 2, 3):
        res = subprocess.run(["bash", f"scripts/train_cine_step{step}.sh", "--log_every", "1"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "promptmr_cine"
    assert [sorted(p.name for p in (run / "checkpoints" / f"step{k}").glob("epoch-*")) for k in (1, 2, 3)] == [
        ["epoch-1"], ["epoch-2"], ["epoch-3"]]
    from utils.checkpoint import load_model_states

    s3 = load_model_states(run / "checkpoints" / "step3" / "epoch-3")
    assert s3["args"]["task"] == "cine" and s3["args"]["mask_type"] == "kt_gaussian" and s3["args"]["acceleration"] == [4, 8, 10]
    assert s3["model_config"]["output_size"] is None and s3["lr_schedule"]["max_lr"] == 1e-4
    for step in (1, 2, 3):
        log = np.load(run / "loss_log" / f"step{step}" / "loss_log.npy")
        assert log.shape == (1, 2) and np.isfinite(log).all()
    art = tmp_path / "artifacts"
    exported = subprocess.run([sys.executable, "-m", "models.artifacts", "export", "--checkpoint",
                               str(run / "checkpoints" / "step3" / "epoch-3"), "--out", str(art / "cine.safetensors")],
                              cwd=REPO, env=ENV, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-2000:]
    import reconstruct

    out = tmp_path / "recon"
    assert reconstruct.main(["--task", "cine", "--path_data", str(cine_root / "ValidationSet"), "--result_path", str(out),
                             "--weights", "artifacts", "--artifacts_dir", str(art), "--device", "cpu", "--no_progress"]) == 0
    assert (out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet" / "AccFactor04" / "P010" / "cine_sax.mat").is_file()


@pytest.mark.parametrize("extra, words", [
    (("--mask_type", "fixed"), "--mask_type must be one of"),
    (("--data_path_val", "x"), "not supported with --task cine"),
])
def test_cine_flag_errors(cine_root, tmp_path, extra, words):
    res = _train(cine_root, tmp_path, *extra)
    assert res.returncode != 0 and words in res.stderr, res.stderr[-2000:]


def test_snu_mask_family_with_cine_flags_is_refused(tmp_path):
    res = subprocess.run([sys.executable, "train.py", "--net_name", "x", "--task", "brain", "--mask_type", "kt_radial",
                          "--result_path", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "is a cine mask family" in res.stderr


@pytest.mark.parametrize("damage, words", [
    ("truncated", "cine_sax.mat"),
    ("no_kspace", "kspace_full"),
    ("empty_set", "no FullSample cine files"),
])
def test_bad_cine_training_data_fails_before_training(cine_root, tmp_path, damage, words):
    import shutil

    root = tmp_path / "CMRxRecon" / "MultiCoil" / "Cine"
    shutil.copytree(cine_root, root)
    victim = root / "TrainingSet" / "FullSample" / "P002" / "cine_sax.mat"
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:4000])
    elif damage == "no_kspace":
        from data.matlab import write_mat73

        write_mat73(victim, {"kspace_other": np.zeros((2, 1, 2, 4, 4), np.complex64)})
    else:
        shutil.rmtree(root / "TrainingSet" / "FullSample")
        (root / "TrainingSet" / "FullSample").mkdir()
    res = _train(root, tmp_path / "out")
    assert res.returncode != 0, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in res.stderr, res.stderr[-2000:]
    if damage != "empty_set":
        assert str(victim) in errors[0]
    assert not (tmp_path / "out" / "promptmr_cine" / "checkpoints").exists()
