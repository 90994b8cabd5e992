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
