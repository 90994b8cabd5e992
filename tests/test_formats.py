"""data.formats: round trips, the validator and its CLI on good, corrupted and malformed files."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from data import formats as F

REPO = Path(__file__).resolve().parents[1]


def _kspace(S=2, C=3, H=8, W=10, seed=0):
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((S, C, H, W)) + 1j * rng.standard_normal((S, C, H, W))).astype(np.complex64)
    mask = np.zeros(W, np.float32)
    mask[::2] = 1
    mask[W // 2] = 1  # the centre line (ACS) every challenge mask has
    return k, mask


def _images(S=2, size=F.IMAGE_SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((S, size, size), dtype=np.float32) * 1e-4 for _ in range(3)]


def _pair(folder: Path, name="brain_acc4_1.h5", S=2):
    k, m = _kspace(S=S)
    F.write_kspace_file(folder / "kspace" / name, k, m)
    F.write_image_file(folder / "image" / name, *_images(S))
    return folder / "kspace" / name, folder / "image" / name


def test_roundtrip(tmp_path):
    kpath, ipath = _pair(tmp_path)
    vol = F.read_kspace_file(kpath)
    k, m = _kspace()
    np.testing.assert_array_equal(vol.kspace, k)
    np.testing.assert_array_equal(vol.mask, m)
    assert vol.kspace.dtype == np.complex64 and vol.num_slices == 2
    imgs = F.read_image_file(ipath)
    assert set(imgs) == {*F.IMAGE_KEYS, "max"}
    assert imgs["max"] == pytest.approx(float(imgs["image_label"].max()))
    assert F.validate_path(tmp_path) == []
    rec = tmp_path / "out" / "acc4" / "brain_test1.h5"
    F.write_reconstruction_file(rec, imgs["image_label"])
    np.testing.assert_array_equal(F.read_reconstruction_file(rec), imgs["image_label"])
    assert not list(rec.parent.glob(".*.tmp"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.h5"
    with pytest.raises(ValueError):
        F.write_kspace_file(target, np.zeros((1, 1, 4, 4), np.complex64), np.ones(5))
    assert not target.exists() and not list(tmp_path.glob("*"))


def _one_problem(path):
    problems = F.validate_path(path)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda f: f.__delitem__("mask"), "mask", "missing key"),
        (lambda f: (f.__delitem__("mask"), f.create_dataset("mask", data=np.ones(7))), "mask", "width 7"),
        (lambda f: (f.__delitem__("mask"), f.create_dataset("mask", data=np.full(10, 0.5))), "mask", "not binary"),
        (lambda f: (f.__delitem__("kspace"), f.create_dataset("kspace", data=np.zeros((2, 3, 8, 10), np.float32))),
         "kspace", "complex"),
        (lambda f: (f.__delitem__("kspace"), f.create_dataset("kspace", data=np.zeros((3, 8, 10), np.complex64))),
         "kspace", "4 dimensions"),
        (lambda f: f["kspace"].__setitem__((0, 0, 0, 0), np.nan), "kspace", "non-finite"),
    ],
)
def test_kspace_problems(tmp_path, mutate, key, words):
    kpath, _ = _pair(tmp_path)
    with h5py.File(kpath, "a") as f:
        mutate(f)
    line = _one_problem(kpath)
    assert line.startswith(str(kpath)) and f": {key}:" in line and words in line


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda f: f.__delitem__("image_grappa"), "image_grappa", "missing key"),
        (lambda f: f.attrs.__delitem__("max"), "attr max", "missing"),
        (lambda f: (f.__delitem__("image_input"), f.create_dataset("image_input", data=np.zeros((2, 384, 384), np.complex64))),
         "image_input", "real numeric"),
        (lambda f: (f.__delitem__("image_input"), f.create_dataset("image_input", data=np.zeros((3, 384, 384), np.float32))),
         "image_grappa", "differs from image_input"),
        (lambda f: f["image_label"].__setitem__((1, 2, 3), np.inf), "image_label", "non-finite"),
    ],
)
def test_image_problems(tmp_path, mutate, key, words):
    _, ipath = _pair(tmp_path)
    with h5py.File(ipath, "a") as f:
        mutate(f)
    line = _one_problem(ipath)
    assert f": {key}:" in line and words in line


def test_truncated_and_garbage_files(tmp_path):
    kpath, ipath = _pair(tmp_path)
    data = kpath.read_bytes()
    kpath.write_bytes(data[: len(data) // 3])
    assert "unreadable or truncated" in _one_problem(kpath)
    ipath.write_bytes(b"not an h5 file at all")
    with pytest.raises(F.FormatError, match="unreadable"):
        F.read_image_file(ipath)


def test_tree_level_problems(tmp_path):
    _pair(tmp_path / "train" / "brain", "brain_acc4_1.h5")
    k, m = _kspace(S=3)
    F.write_kspace_file(tmp_path / "train" / "brain" / "kspace" / "brain_acc8_2.h5", k, m)
    F.write_image_file(tmp_path / "train" / "brain" / "image" / "brain_acc8_2.h5", *_images(S=2))
    F.write_kspace_file(tmp_path / "train" / "brain" / "kspace" / "brain_acc8_3.h5", k, m)
    problems = F.validate_path(tmp_path)
    assert len(problems) == 2, problems
    assert any("brain_acc8_2.h5: kspace: 3 slices" in p for p in problems)
    assert any("brain_acc8_3.h5" in p and "no image file" in p for p in problems)


def test_check_cli_exit_codes(tmp_path):
    _pair(tmp_path / "leaderboard" / "acc4", "knee_test1.h5")
    cmd = [sys.executable, "-m", "data.formats", "check", str(tmp_path)]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with h5py.File(tmp_path / "leaderboard" / "acc4" / "image" / "knee_test1.h5", "a") as f:
        del f["image_label"]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "knee_test1.h5: image_label: missing key" in bad.stdout
    missing = subprocess.run(cmd[:-1] + [str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 1 and "path not found" in missing.stdout


def test_anatomy_from_name():
    assert F.anatomy_from_name("x/brain_acc4_12.h5") == "brain"
    assert F.anatomy_from_name("knee_test3.h5") == "knee"
    with pytest.raises(F.FormatError):
        F.anatomy_from_name("liver_test1.h5")


def test_fastmri_reader(tmp_path):
    k, _ = _kspace(S=2, C=4, H=16, W=12)
    p = tmp_path / "file1000001.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = k
        f["reconstruction_rss"] = np.ones((2, 320, 320), np.float32)
        f.attrs["max"] = 1.0
    out = F.read_fastmri_file(p)
    assert out["kspace"].shape == (2, 4, 16, 12) and out["mask"].sum() == 12 and out["max"] == 1.0
