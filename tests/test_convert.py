"""fastMRI multi-coil files -> the challenge layout (data.convert via python -m data.formats)."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from data.formats import read_image_file, read_kspace_file, validate_path
from utils.physics import fft2c

REPO = Path(__file__).resolve().parents[1]


def _fastmri_file(path: Path, undersampled: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    S, C, H, W = 2, 4, 64, 48
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    obj = ((yy / 0.7) ** 2 + (xx / 0.6) ** 2 < 1) * 1e-3
    coils = np.stack([obj * np.exp(1j * c * xx) * (1 + 0.2 * c * yy) for c in range(C)])
    images = np.stack([coils * (1 + 0.1 * s) for s in range(S)]).astype(np.complex64)
    images += (rng.standard_normal(images.shape) * 1e-6).astype(np.complex64)
    k = fft2c(torch.from_numpy(images)).numpy()
    with h5py.File(path, "w") as f:
        if undersampled:
            mask = np.zeros(W, np.float32)
            mask[::4] = 1
            mask[20:28] = 1
            f["kspace"] = k * mask
            f["mask"] = mask
        else:
            f["kspace"] = k
            f["reconstruction_rss"] = np.ones((S, 320, 320), np.float32)
        f.attrs["max"] = 1.0


def test_convert_fastmri_folder(tmp_path):
    src = tmp_path / "multicoil_train"
    src.mkdir()
    _fastmri_file(src / "file1000000.h5")
    _fastmri_file(src / "file1000001.h5", seed=1)
    _fastmri_file(src / "file1000002.h5", undersampled=True)
    out = tmp_path / "Data" / "train" / "knee"
    cmd = [sys.executable, "-m", "data.formats", "convert-fastmri", "--src", str(src), "--out", str(out),
           "--anatomy", "knee", "--acceleration", "4"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1  # one file could not be converted ...
    assert "file1000002.h5: mask: k-space is undersampled" in res.stderr
    names = sorted(p.name for p in (out / "kspace").glob("*.h5"))
    assert names == ["knee_acc4_1.h5", "knee_acc4_2.h5"]  # ... the good ones are written
    assert validate_path(out) == []
    vol = read_kspace_file(out / "kspace" / "knee_acc4_1.h5")
    assert vol.kspace.shape == (2, 4, 64, 48) and vol.mask.sum() < 48
    images = read_image_file(out / "image" / "knee_acc4_1.h5")
    assert images["image_label"].shape == (2, 384, 384)
    assert images["max"] == float(images["image_label"].max())
    err = lambda key: np.abs(images[key] - images["image_label"]).sum()  # noqa: E731
    assert err("image_grappa") < err("image_input")
