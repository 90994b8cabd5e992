"""The staged recipe scripts (PRESET=tiny) and the classifier on simulated volumes."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from data.formats import read_image_file
from data.simulate import generate_dataset
from models import build_model
from utils.checkpoint import load_model_states

REPO = Path(__file__).resolve().parents[1]


def _env(data: Path, result: Path, **extra):
    return {**os.environ, "DATA_ROOT": str(data), "RESULT_ROOT": str(result), "PRESET": "tiny", "NUM_WORKERS": "0",
            "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **extra}


def _script(name, env, *args):
    res = subprocess.run(["bash", f"scripts/{name}", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_three_step_recipe_chain(tmp_path, micro_data):
    data = micro_data(tmp_path / "Data", volumes=1, slices=2, coils=2, height=384, width=40)
    env = _env(data, tmp_path / "result")
    for step in (1, 2, 3):
        _script(f"train_knee_acc8_step{step}.sh", env)
    ckpts = tmp_path / "result" / "promptmr_knee_acc8" / "checkpoints"
    assert [sorted(p.name for p in (ckpts / f"step{k}").glob("epoch-*")) for k in (1, 2, 3)] == [
        ["epoch-1"], ["epoch-2"], ["epoch-3"]]
    s2 = load_model_states(ckpts / "step2" / "epoch-2")
    s3 = load_model_states(ckpts / "step3" / "epoch-3")
    assert s2["args"]["aug_on"] and s2["args"]["aug_weight_fliph"] == 0.5 and s2["lr_schedule"]["max_lr"] == 7e-4
    assert s3["args"]["mask_type"] == "random_offset" and not s3["args"]["aug_on"]
    assert s3["lr_schedule"] == {"max_lr": 3e-4, "min_lr": 0.0, "warmup_epochs": 0.0, "num_epochs": 3.0, "origin_epoch": 2.0}
    assert s3["model_config"] == s2["model_config"]  # tiny promptmr carried through the steps


def test_recipe_rejects_bad_arguments(tmp_path):
    res = subprocess.run(["bash", "scripts/train_recipe.sh", "liver", "4", "1"], cwd=REPO,
                         env=_env(tmp_path, tmp_path), capture_output=True, text=True)
    assert res.returncode != 0 and "anatomy must be brain or knee" in res.stderr
    res = subprocess.run(["bash", "scripts/train_brain_acc4_step1.sh"], cwd=REPO,
                         env=_env(tmp_path, tmp_path, PRESET="huge"), capture_output=True, text=True)
    assert res.returncode != 0 and "PRESET must be" in res.stderr


@pytest.fixture(scope="module")
def tiny_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "Data"
    generate_dataset(out, preset="tiny", seed=5, progress=False)
    return out


def test_classifier_separates_simulated_brain_and_knee(tiny_sim, tmp_path):
    env = _env(tiny_sim, tmp_path / "result")
    _script("train_cnn.sh", env, "--num_epochs", "6", "--preset", "default")
    tag = tmp_path / "result" / "anatomy_cnn" / "checkpoints" / "step1" / "epoch-6"
    states = load_model_states(tag)
    model = build_model(states["model_name"], **states["model_config"])
    model.load_state_dict(states["module"])
    model.eval()
    truth, predicted = [], []
    for path in sorted((tiny_sim / "leaderboard").glob("acc*/image/*.h5")):
        images = torch.from_numpy(read_image_file(path, keys=("image_grappa",))["image_grappa"])[None]
        with torch.no_grad():
            label, confidence = model.predict(images)
        truth.append(0 if path.name.startswith("brain") else 1)
        predicted.append(int(label))
    assert predicted == truth


def test_titok_recipe_chain_and_shared_segmenter(tmp_path, tiny_cine):
    """scripts/train_titok_step{1,2,3}.sh at PRESET=tiny: step 3 exports the three networks the codec loads; a
    second K with TITOK_SEGMENTER trains no segmenter of its own and uses the given one; a TITOK_SEGMENTER that
    is not a folder is one error before any training."""
    first = tmp_path / "k8"
    env = _env(tiny_cine, first)
    for step in (1, 2, 3):
        _script(f"train_titok_step{step}.sh", env)
    weights = first / "titok_weights"
    assert sorted(p.name for p in weights.iterdir()) == ["titok.safetensors", "titok_dit.safetensors",
                                                        "titok_seg.safetensors"]
    seg = first / "titok_seg" / "checkpoints" / "step2" / "epoch-1"
    second = tmp_path / "again"  # another run reusing the first one's tokenizer (as another K would its own)
    shutil.copytree(first / "titok_tokenizer", second / "titok_tokenizer")
    _script("train_titok_step2.sh", _env(tiny_cine, second, TITOK_SEGMENTER=str(seg)))
    assert not (second / "titok_seg").exists() and (second / "titok_dit" / "checkpoints" / "step2" / "epoch-1").is_dir()
    res = subprocess.run(["bash", "scripts/train_titok_step2.sh"], cwd=REPO, capture_output=True, text=True,
                         env=_env(tiny_cine, tmp_path / "bad", TITOK_SEGMENTER=str(tmp_path / "missing")))
    assert res.returncode == 2 and "TITOK_SEGMENTER" in res.stderr and not (tmp_path / "bad").exists()
