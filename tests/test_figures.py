"""evaluate.py --figures: comparison PNGs per anatomy and acceleration."""
import numpy as np

import evaluate
from data.formats import write_image_file, write_reconstruction_file


def test_figures_written_per_anatomy_and_acceleration(tmp_path):
    rng = np.random.default_rng(0)
    lb, rec = tmp_path / "leaderboard", tmp_path / "recon"
    for acc in ("acc4", "acc8"):
        for name in ("brain_test1", "brain_test2", "knee_test1"):
            label = (rng.random((3, 384, 384)) * 1e-3).astype(np.float32)
            write_image_file(lb / acc / "image" / f"{name}.h5", label * 0.9, label * 0.95, label)
            write_reconstruction_file(rec / acc / f"{name}.h5", label * 0.97)
    out = tmp_path / "figures"
    assert evaluate.main(["--path_leaderboard_data", str(lb), "--path_your_data", str(rec), "--no_progress",
                          "--figures", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["acc4_brain_test1_slice1.png", "acc4_knee_test1_slice1.png",
                     "acc8_brain_test1_slice1.png", "acc8_knee_test1_slice1.png"]
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
