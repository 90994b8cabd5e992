"""scripts/demo.sh end to end at tiny scale: simulate -> baselines -> train (the real recipe scripts) ->
reconstruct -> evaluate -> figures."""
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_chain_tiny(tmp_path):
    env = {**os.environ, "DEMO_PRESET": "tiny", "DATA_ROOT": str(tmp_path / "Data"), "RESULT_ROOT": str(tmp_path / "result"),
           "WANDB_MODE": "disabled", "NUM_WORKERS": "0"}
    res = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    table = res.stdout[res.stdout.index("== demo leaderboard SSIM"):]
    assert "zero_filled" in table and "grappa" in table and "model" in table
    recon = tmp_path / "result" / "test_reconstruct" / "reconstructions_leaderboard"
    routing = json.loads((recon / "routing.json").read_text())
    assert len(list(recon.glob("acc*/*.h5"))) == 4
    assert routing  # per-volume routing was recorded
    scores = json.loads((recon / "leaderboard_ssim.json").read_text())
    assert 0 < scores["total"] <= 1
    assert len(list((tmp_path / "result" / "figures").glob("*.png"))) == 4


def test_cine_demo_with_artifacts_tiny(tmp_path):
    """bash scripts/demo.sh --cine --use-artifacts on the tiny cine data: baselines, the shipped PromptMR+
    cine weights (artifacts/cine.safetensors), reconstruct, 2025-protocol scores, PNG strips and GIFs."""
    env = {**os.environ, "DEMO_PRESET": "tiny", "DATA_ROOT": str(tmp_path / "Data"), "RESULT_ROOT": str(tmp_path / "result"),
           "WANDB_MODE": "disabled", "NUM_WORKERS": "0"}
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
    figures = result / "figures"
    assert len(list(figures.glob("*.png"))) >= 3 and len(list(figures.glob("*.gif"))) >= 3
