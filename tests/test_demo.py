"""scripts/demo.sh end to end at tiny scale: simulate -> baselines -> train (the real recipe scripts) ->
reconstruct -> evaluate -> figures; with the shipped artifacts, also on the real-anatomy leaderboard."""
import json
import os
import subprocess
from pathlib import Path

import h5py
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_demo_chain_tiny(tmp_path):
    """The training chain; DEMO_REALTEST=0: the real-anatomy leaderboard (minutes of reconstruction on the CPU)
    is tested with the shipped artifacts in test_demo_real_anatomy_leaderboard_tiny."""
    env = {**os.environ, "DEMO_PRESET": "tiny", "DATA_ROOT": str(tmp_path / "Data"), "RESULT_ROOT": str(tmp_path / "result"),
           "WANDB_MODE": "disabled", "NUM_WORKERS": "0", "DEMO_REALTEST": "0"}
    res = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    table = res.stdout[res.stdout.index("== demo leaderboard SSIM"):]
    assert "zero_filled" in table and "grappa" in table and "model" in table
    assert "real anatomy" not in table and not (tmp_path / "RealData").exists() and not (tmp_path / "result" / "realtest").exists()
    recon = tmp_path / "result" / "test_reconstruct" / "reconstructions_leaderboard"
    assert len(list(recon.glob("acc*/*.h5"))) == 4
    _assert_routing_right(json.loads((recon / "routing.json").read_text()))  # the classifier trained by the demo
    scores = json.loads((recon / "leaderboard_ssim.json").read_text())
    zero_filled = json.loads((tmp_path / "result" / "baselines" / "zero_filled" / "leaderboard_ssim.json").read_text())
    assert 0 < scores["total"] <= 1 and 0 < zero_filled["total"] < 1
    assert len(list((tmp_path / "result" / "figures").glob("*.png"))) == 4
    # The demo's own tiny models (12 steps each, identity_init, the tiny recipe's rates) beat zero-filled at
    # both accelerations (measured 0.854 / 0.846 vs 0.821 / 0.834 with seed 430; 0.78-0.81 with the reference
    # start and the earlier rates). The shipped weights on this data: test_demo_real_anatomy_leaderboard_tiny.
    for key in ("acc4", "acc8", "total"):
        assert scores[key] > zero_filled[key], (key, scores, zero_filled)


def _assert_routing_right(routing):
    """Every volume reconstructed, by the model of its true anatomy and acceleration (reconstruct.py routes
    from the data only; the truth is in the file and folder names)."""
    assert routing["failed"] == 0 and len(routing["volumes"]) == 4
    for name, record in routing["volumes"].items():
        folder, file = name.split("/")
        assert record["anatomy"] == file.split("_")[0] and f"acc{record['acceleration']}" == folder, (name, record)
        assert record["model"] == f"{record['anatomy']}_acc{record['acceleration']}"


def test_demo_real_anatomy_leaderboard_tiny(tmp_path):
    """DEMO_PRESET=tiny bash scripts/demo.sh --use-artifacts with the real-anatomy leaderboard on (the default):
    one table with both leaderboards, every real volume routed to brain at its acceleration, and the shipped
    artifacts ahead of zero-filled and GRAPPA on the real leaderboard at acc4, acc8 and in total."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEMO_REALTEST", "REALTEST_ROOT", "ARTIFACTS_DIR")}
    env.update(DEMO_PRESET="tiny", DATA_ROOT=str(tmp_path / "Data"), RESULT_ROOT=str(tmp_path / "result"),
               WANDB_MODE="disabled", NUM_WORKERS="0")
    res = subprocess.run(["bash", "scripts/demo.sh", "--use-artifacts"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    real_data, result, real = tmp_path / "RealData", tmp_path / "result", tmp_path / "result" / "realtest"
    # the real leaderboard beside DATA_ROOT (default REALTEST_ROOT), leaderboard only; DATA_ROOT holds no real test
    assert sorted(p.relative_to(real_data).as_posix() for p in real_data.glob("*/*/*/*.h5")) == sorted(
        f"leaderboard/acc{a}/{kind}/brain_test{i}.h5" for a in (4, 8) for kind in ("kspace", "image") for i in (1, 2, 3))
    assert not (tmp_path / "Data" / "RealData").exists()
    with h5py.File(real_data / "leaderboard/acc8/kspace/brain_test3.h5", "r") as f:  # realtest_tiny: 2 slices
        assert f["kspace"].shape[:2] == (2, 8) and f["kspace"].shape[-2] == 768

    lines = res.stdout[res.stdout.index("== demo leaderboard SSIM"):].splitlines()
    assert "synthetic" in lines[0] and "real anatomy (brain only)" in lines[0], lines[0]
    assert lines[1].split() == ["acc4", "acc8", "Total"] * 2, lines[1]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:5]}
    assert set(rows) == {"zero_filled", "grappa", "model"} and all(len(r) == 6 for r in rows.values()), lines
    files = {"zero_filled": "baselines/zero_filled", "grappa": "baselines/grappa",
             "model": "test_reconstruct/reconstructions_leaderboard"}
    scores = {}
    for name, sub in files.items():  # the table shows what evaluate.py wrote, synthetic then real
        synthetic, scores[name] = (json.loads((root / sub / "leaderboard_ssim.json").read_text()) for root in (result, real))
        assert rows[name] == [round(d[k], 4) for d in (synthetic, scores[name]) for k in ("acc4", "acc8", "total")], name

    routing = json.loads((real / files["model"] / "routing.json").read_text())
    assert routing["weights"] == "artifacts" and routing["failed"] == 0
    assert sorted(routing["volumes"]) == [f"acc{a}/brain_test{i}.h5" for a in (4, 8) for i in (1, 2, 3)]
    for name, record in routing["volumes"].items():
        acc = int(name.split("/")[0][3:])
        assert (record["status"], record["anatomy"], record["acceleration"], record["model"]) == (
            "ok", "brain", acc, f"brain_acc{acc}"), (name, record)
    assert "real anatomy routing: 6 of 6 volumes to brain" in res.stdout
    # the synthetic tiny leaderboard: routed right by the shipped classifier, the shipped weights well ahead
    _assert_routing_right(json.loads((result / files["model"] / "routing.json").read_text()))
    synthetic = {name: json.loads((result / sub / "leaderboard_ssim.json").read_text()) for name, sub in files.items()}
    for key in ("acc4", "acc8", "total"):
        assert synthetic["model"][key] > synthetic["zero_filled"][key] + 0.03, (key, synthetic)
    for key in ("acc4", "acc8", "total"):
        assert scores["model"][key] > max(scores["zero_filled"][key], scores["grappa"][key]), (key, scores)


@pytest.mark.parametrize("model", ["promptmr", "kgmgt"])
def test_cine_demo_with_artifacts_tiny(tmp_path, model):
    """MODEL=<model> bash scripts/demo.sh --cine --use-artifacts on the tiny cine data: baselines, the shipped
    cine weights (PromptMR+: artifacts/cine.safetensors, KGMgT: artifacts/kgmgt/cine.safetensors), reconstruct,
    2025-protocol scores, PNG strips and GIFs."""
    env = {**os.environ, "DEMO_PRESET": "tiny", "DATA_ROOT": str(tmp_path / "Data"), "RESULT_ROOT": str(tmp_path / "result"),
           "WANDB_MODE": "disabled", "NUM_WORKERS": "0", "MODEL": model}
    res = subprocess.run(["bash", "scripts/demo.sh", "--cine", "--use-artifacts"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    table = res.stdout[res.stdout.index("== demo cine SSIM"):]
    rows = {line.split()[0]: line.split()[-4:] for line in table.splitlines()[2:] if line.strip()}
    assert set(rows) >= {"zero_filled", "parallel", "model"}
    result = tmp_path / "result"
    scores = {name: json.loads((path / "cine_scores.json").read_text())["ssim"] for name, path in
              (("zero_filled", result / "baselines" / "zero_filled"), ("baseline", result / "baselines" / "auto"),
               ("model", result))}
    assert all(0 < s <= 1 for s in scores.values())
    assert scores["model"] > scores["zero_filled"], scores  # the shipped weights help on unseen subjects
    routing = json.loads((result / "Reconstruction" / "routing.json").read_text())
    assert routing["failed"] == 0 and routing["cases"]
    shipped = REPO / "artifacts" / ("cine.safetensors" if model == "promptmr" else f"{model}/cine.safetensors")
    assert {Path(case["weights"]).resolve() for case in routing["cases"].values()} == {shipped.resolve()}, routing
    figures = result / "figures"
    assert len(list(figures.glob("*.png"))) >= 3 and len(list(figures.glob("*.gif"))) >= 3
