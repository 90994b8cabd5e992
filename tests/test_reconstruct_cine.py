"""reconstruct.py --task cine: mask-routed models, CMRxRecon submission layout, a bad case kept apart.

A tiny ValidationSet (2023 layout: AccFactor04/08/10, uniform and kt masks, 6 frames, 2 slices, 3 coils)
and tiny PromptMR+ cine models saved as artifacts; runs in-process in a few seconds.
"""
import json

import h5py
import numpy as np
import pytest
import torch

import evaluate
import reconstruct
from data.cine import write_cine_fullsample, write_cine_undersampled
from data.cine_masks import make_cine_mask
from models import build_model
from utils import artifacts
from utils.metrics import run4ranking
from utils.physics import fft2c

T, S, C, KY, KX = 6, 2, 3, 64, 36


def _cine(seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, KY), np.linspace(-1, 1, KX), indexing="ij")
    radius = 0.5 + 0.1 * np.cos(2 * np.pi * np.arange(T) / T)[:, None, None, None, None]
    obj = (yy ** 2 + xx ** 2 < radius ** 2) * 1.0 + 0.2
    coils = np.exp(1j * np.arange(C)[None, None, :, None, None] * (xx + 0.3 * yy))
    images = (obj * coils * np.ones((1, S, 1, 1, 1))).astype(np.complex64)
    images += (rng.standard_normal(images.shape) * 1e-3).astype(np.complex64)
    return fft2c(torch.from_numpy(images)).numpy()


@pytest.fixture()
def cine_tree(tmp_path):
    set_dir = tmp_path / "CMRxRecon" / "MultiCoil" / "Cine" / "ValidationSet"
    for i, (acc, family) in enumerate(((4, "uniform"), (8, "kt_uniform"), (10, "uniform"))):
        full = _cine(i)
        write_cine_fullsample(set_dir, f"P00{i + 1}", "sax", full)
        mask = make_cine_mask(family, (T, KY, KX), acc, np.random.default_rng(i))
        write_cine_undersampled(set_dir, f"P00{i + 1}", "sax", full, mask if family != "uniform" else mask[0], acc)
    torch.manual_seed(0)
    model = build_model("promptmr", "cine_tiny")
    art = tmp_path / "artifacts"
    art.mkdir()
    info = artifacts.ArtifactInfo("promptmr", model.config.to_dict(), "test", anatomy="cine", acceleration=None)
    artifacts.save_artifact(model, art / "cine.safetensors", info)
    return set_dir, art, model


def _run(set_dir, art, out, *extra):
    return reconstruct.main(["--task", "cine", "--path_data", str(set_dir), "--result_path", str(out),
                             "--weights", "artifacts", "--artifacts_dir", str(art), "--device", "cpu", "--no_progress", *extra])


def test_cine_submission_layout_routing_and_scores(cine_tree, tmp_path):
    set_dir, art, model = cine_tree
    out = tmp_path / "out"
    assert _run(set_dir, art, out) == 0
    routing = json.loads((out / "Reconstruction" / "routing.json").read_text())
    cases = routing["cases"]
    assert {k: v["acceleration"] for k, v in cases.items()} == {
        "ValidationSet/AccFactor04/P001/cine_sax.mat": 4,
        "ValidationSet/AccFactor08/P002/cine_sax.mat": 8,
        "ValidationSet/AccFactor10/P003/cine_sax.mat": 10,
    }
    assert cases["ValidationSet/AccFactor08/P002/cine_sax.mat"]["family"] == "kt_uniform"
    sub = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet" / "AccFactor04" / "P001" / "cine_sax.mat"
    full = out / "Reconstruction" / "MultiCoil" / "Cine" / "ValidationSet" / "AccFactor04" / "P001" / "cine_sax.mat"
    with h5py.File(sub) as f, h5py.File(full) as g:
        ranked, recon = f["img4ranking"][()], g["reconstruction"][()]
    assert recon.shape == (T, S, KY, KX) and ranked.dtype == np.float32
    assert np.array_equal(ranked, run4ranking(recon).numpy())
    # the model output equals a direct call on frame 0 with its circular neighbours [5, 0, 1]
    from data.cine import read_cine_kspace, read_cine_mask
    k = read_cine_kspace(set_dir / "AccFactor04" / "P001" / "cine_sax.mat")
    mask = read_cine_mask(set_dir / "AccFactor04" / "P001" / "cine_sax_mask.mat")
    kin = torch.from_numpy(k[[5, 0, 1], 0]).transpose(-1, -2)[None]
    m = torch.from_numpy(mask[None, None, :, :1]).transpose(-1, -2).expand(1, 3, 1, KY)
    with torch.no_grad():
        direct = model.eval()(kin * m.unsqueeze(2), m)[0].T.numpy()
    assert np.allclose(recon[0, 0], direct, rtol=1e-4, atol=1e-6)
    # evaluate.py scores the submission
    assert evaluate.main(["--task", "cine", "--protocol", "2025", "--path_gt", str(set_dir),
                          "--path_your_data", str(out), "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert 0 < scores["ssim"] <= 1


def test_bad_case_is_one_line_and_the_rest_are_written(cine_tree, tmp_path, capsys):
    set_dir, art, _ = cine_tree
    bad = set_dir / "AccFactor04" / "P001" / "cine_sax.mat"
    bad.write_bytes(bad.read_bytes()[:3000])
    out = tmp_path / "out"
    assert _run(set_dir, art, out) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(bad) in lines[0]
    subs = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet"
    assert not (subs / "AccFactor04" / "P001" / "cine_sax.mat").exists()
    assert (subs / "AccFactor08" / "P002" / "cine_sax.mat").is_file() and (subs / "AccFactor10" / "P003" / "cine_sax.mat").is_file()
    routing = json.loads((out / "Reconstruction" / "routing.json").read_text())
    assert routing["failed"] == 1


def test_missing_model_and_bad_result_path(cine_tree, tmp_path):
    set_dir, art, _ = cine_tree
    (art / "cine.safetensors").unlink()
    assert _run(set_dir, art, tmp_path / "out") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        _run(set_dir, art, blocker)
    assert exc.value.code == 2
