"""evaluate.py (leaderboard scoring CLI) and data.baselines, end to end on tiny h5 files."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi

import evaluate
from data.baselines import write_baseline
from data.baselines import _main as baselines_main
from data.formats import write_image_file, write_reconstruction_file
from utils.metrics import leaderboard_foreground_mask, leaderboard_ssim

REPO = Path(__file__).resolve().parents[1]
SIZE = 384  # the leaderboard image size (evaluate.py rejects others)
# volume name -> slice count (different counts make slice- and volume-weighted means differ)
VOLUMES = {"brain_test1": 2, "brain_test2": 3, "knee_test1": 1}


def _label(rng, slices):
    vol = ndi.gaussian_filter(rng.random((slices, SIZE, SIZE)), sigma=(0, 2, 2))
    vol[:, :, :4] = 0  # background
    return (1e-3 * vol).astype(np.float32)


def _make_leaderboard(root: Path, accs=("acc4", "acc8"), seed=0):
    """Leaderboard image files; image_input/image_grappa are noisy copies of the label."""
    rng = np.random.default_rng(seed)
    labels = {}
    for acc in accs:
        for name, slices in VOLUMES.items():
            label = _label(rng, slices)
            noisy = lambda s: (label + rng.normal(0, s, label.shape)).astype(np.float32)  # noqa: E731
            write_image_file(root / acc / "image" / f"{name}.h5", noisy(1e-4), noisy(3e-5), label)
            labels[f"{acc}/{name}"] = label
    return labels


def _write_recons(out: Path, labels, noise=0.0, seed=1):
    rng = np.random.default_rng(seed)
    recons = {}
    for key, label in labels.items():
        recon = (label + noise * rng.normal(0, 1, label.shape)).astype(np.float32)
        write_reconstruction_file(out / f"{key}.h5", recon)
        recons[key] = recon
    return recons


def _run(capsys, *argv):
    rc = evaluate.main([*map(str, argv), "--no_progress"])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def board(tmp_path):
    return tmp_path / "leaderboard", _make_leaderboard(tmp_path / "leaderboard")


def test_identical_reconstruction_scores_exactly_one(board, tmp_path, capsys):
    lb, labels = board
    _write_recons(tmp_path / "out", labels)
    rc, out, _ = _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "out", "--json", tmp_path / "s.json")
    assert rc == 0
    assert "Leaderboard SSIM : 1.0000" in out and "(acc4): 1.0000" in out and "(acc8): 1.0000" in out
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["total"] == 1.0 and result["acc4"] == 1.0 and result["acc8"] == 1.0
    assert result["volumes"]["acc4/brain_test1"]["psnr"] is None  # inf written as null (strict JSON)


def test_json_scores_match_direct_computation(board, tmp_path, capsys):
    lb, labels = board
    recons = _write_recons(tmp_path / "out", labels, noise=1e-4)
    rc, out, _ = _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "out", "--json", tmp_path / "s.json")
    assert rc == 0
    result = json.loads((tmp_path / "s.json").read_text())
    assert set(result["volumes"]) == {f"{a}/{n}" for a in ("acc4", "acc8") for n in VOLUMES}
    for acc in ("acc4", "acc8"):
        slice_scores = []
        for name, slices in VOLUMES.items():
            label, recon = labels[f"{acc}/{name}"], recons[f"{acc}/{name}"]
            mask = leaderboard_foreground_mask(label, name.split("_")[0])
            s = leaderboard_ssim(recon, label, float(label.max()), mask=mask)
            vol = result["volumes"][f"{acc}/{name}"]
            assert vol["slices"] == slices and vol["ssim"] == pytest.approx(s.mean(), abs=1e-12)
            slice_scores.extend(s)
        assert result[acc] == pytest.approx(np.mean(slice_scores), abs=1e-12)  # mean over slices, not volumes
        assert result["details"][acc]["slices"] == sum(VOLUMES.values())
        assert f"(acc4): {result['acc4']:.4f}" in out
    assert 0 < result["acc4"] < 0.999
    assert result["total"] == pytest.approx((result["acc4"] + result["acc8"]) / 2)
    assert f"Leaderboard SSIM : {result['total']:.4f}" in out


def test_more_noise_scores_lower(board, tmp_path, capsys):
    lb, labels = board
    totals = []
    for i, noise in enumerate((1e-5, 1e-4, 3e-4)):
        _write_recons(tmp_path / f"out{i}", labels, noise=noise)
        rc, _, _ = _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", tmp_path / f"out{i}", "--json", tmp_path / f"{i}.json")
        assert rc == 0
        totals.append(json.loads((tmp_path / f"{i}.json").read_text())["total"])
    assert totals[0] > totals[1] > totals[2]


def _expect_failure(capsys, lb, out, bad_file, words, *extra):
    rc, stdout, err = _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", out, *extra)
    assert rc != 0
    assert "Leaderboard SSIM" not in stdout
    lines = [line for line in err.splitlines() if str(bad_file) in line]
    assert len(lines) == 1 and all(w in lines[0] for w in words), err


def test_missing_reconstruction_file_is_an_error(board, tmp_path, capsys):
    lb, labels = board
    _write_recons(tmp_path / "out", labels)
    bad = tmp_path / "out" / "acc8" / "knee_test1.h5"
    bad.unlink()
    _expect_failure(capsys, lb, tmp_path / "out", bad, ["not found"], "--json", tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_missing_key_is_an_error(board, tmp_path, capsys):
    lb, labels = board
    _write_recons(tmp_path / "out", labels)
    bad = tmp_path / "out" / "acc4" / "brain_test2.h5"
    with h5py.File(bad, "w") as f:
        f["other"] = labels["acc4/brain_test2"]
    _expect_failure(capsys, lb, tmp_path / "out", bad, ["reconstruction", "missing key"])


def test_output_key_option(board, tmp_path, capsys):
    lb, labels = board
    for key, label in labels.items():
        write_reconstruction_file(tmp_path / "out" / f"{key}.h5", label, key="recon_alt")
    assert _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "out", "--output_key", "recon_alt")[0] == 0
    bad = tmp_path / "out" / "acc4" / "brain_test1.h5"
    _expect_failure(capsys, lb, tmp_path / "out", bad, ["reconstruction", "missing key"])


def test_wrong_shape_is_an_error(board, tmp_path, capsys):
    lb, labels = board
    _write_recons(tmp_path / "out", labels)
    bad = tmp_path / "out" / "acc4" / "knee_test1.h5"
    write_reconstruction_file(bad, np.zeros((2, SIZE, SIZE), np.float32))  # label has 1 slice
    _expect_failure(capsys, lb, tmp_path / "out", bad, ["shape", "(2, 384, 384)", "(1, 384, 384)"])


def test_non_finite_reconstruction_is_an_error(board, tmp_path, capsys):
    lb, labels = board
    recons = _write_recons(tmp_path / "out", labels)
    bad = tmp_path / "out" / "acc8" / "brain_test1.h5"
    r = recons["acc8/brain_test1"].copy()
    r[0, 5, 5] = np.nan
    write_reconstruction_file(bad, r)
    _expect_failure(capsys, lb, tmp_path / "out", bad, ["non-finite"])


def test_single_acceleration_reports_it_without_total(tmp_path, capsys):
    labels = _make_leaderboard(tmp_path / "lb", accs=("acc4",))
    _write_recons(tmp_path / "out", labels, noise=1e-4)
    rc, out, _ = _run(
        capsys, "--path_leaderboard_data", tmp_path / "lb", "--path_your_data", tmp_path / "out", "--json", tmp_path / "s.json"
    )
    assert rc == 0
    assert "n/a" in out and "(acc4):" in out and "(acc8)" not in out
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["total"] is None and result["acc8"] is None and 0 < result["acc4"] < 1


def test_no_acceleration_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "lb").mkdir()
    rc, _, err = _run(capsys, "--path_leaderboard_data", tmp_path / "lb", "--path_your_data", tmp_path / "out")
    assert rc != 0 and "no acc4/image or acc8/image" in err


# ------------------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("kind,key", [("zero_filled", "image_input"), ("grappa", "image_grappa")])
def test_baseline_writes_the_chosen_image(board, tmp_path, kind, key, capsys):
    lb, labels = board
    argv = ["baseline", "--kind", kind, "--path_leaderboard_data", str(lb), "--out", str(tmp_path / kind), "--no_progress"]
    assert baselines_main(argv) == 0
    for name in labels:
        acc, vol = name.split("/")
        with h5py.File(lb / acc / "image" / f"{vol}.h5", "r") as f:
            expected = f[key][()]
        with h5py.File(tmp_path / kind / f"{name}.h5", "r") as f:
            assert f["reconstruction"].dtype == np.float32
            np.testing.assert_array_equal(f["reconstruction"][()], expected)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["acc4", "acc8"]


def test_baseline_reports_bad_file_and_continues(board, tmp_path):
    lb, _ = board
    bad = lb / "acc4" / "image" / "brain_test2.h5"
    with h5py.File(bad, "a") as f:
        del f["image_grappa"]
    problems = write_baseline(lb, tmp_path / "out", "grappa", progress=False)
    assert len(problems) == 1 and str(bad) in problems[0] and "image_grappa" in problems[0]
    assert len(list((tmp_path / "out").rglob("*.h5"))) == 2 * len(VOLUMES) - 1


def test_cli_end_to_end_grappa_beats_zero_filled(board, tmp_path, capsys):
    """The entry points as real processes (grappa), compared with the in-process zero-filled score:
    GRAPPA (less noise) scores higher; a missing file gives exit status 1 naming the file."""
    lb, _ = board
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=REPO, capture_output=True, text=True)  # noqa: E731
    proc = run("-m", "data.baselines", "baseline", "--kind", "grappa", "--path_leaderboard_data", lb, "--out", tmp_path / "grappa")
    assert proc.returncode == 0, proc.stderr
    proc = run("evaluate.py", "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "grappa", "--json", tmp_path / "g.json")
    assert proc.returncode == 0, proc.stderr
    grappa = json.loads((tmp_path / "g.json").read_text())["total"]
    assert f"Leaderboard SSIM : {grappa:.4f}" in proc.stdout
    assert write_baseline(lb, tmp_path / "zf", "zero_filled", progress=False) == []
    assert _run(capsys, "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "zf", "--json", tmp_path / "z.json")[0] == 0
    assert grappa > json.loads((tmp_path / "z.json").read_text())["total"]
    (tmp_path / "grappa" / "acc8" / "knee_test1.h5").unlink()
    proc = run("evaluate.py", "--path_leaderboard_data", lb, "--path_your_data", tmp_path / "grappa")
    assert proc.returncode == 1 and "acc8/knee_test1.h5" in proc.stderr and "not found" in proc.stderr


def test_result_does_not_depend_on_worker_count(board, tmp_path):
    lb, labels = board
    _write_recons(tmp_path / "out", labels, noise=1e-4)
    one, problems = evaluate.evaluate_leaderboard(lb, tmp_path / "out", progress=False, workers=1)
    three, _ = evaluate.evaluate_leaderboard(lb, tmp_path / "out", progress=False, workers=3)
    assert problems == [] and one == three


def test_leaderboard_path_starts_without_torch():
    """Scoring a leaderboard imports numpy/OpenCV/h5py only: no seconds spent importing torch, no OpenMP pool."""
    code = "import sys, evaluate; assert 'torch' not in sys.modules, 'evaluate imports torch'; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
