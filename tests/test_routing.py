"""Routing that never silently misroutes (data/routing.py, reconstruct.py --strict_routing).

Real brain slices the classifier never saw (nibabel's example4d, held-out slices; the shipped
classifier was trained on phantoms only) route to brain; a short-axis cardiac frame (a torso), pure
noise and an all-zero volume are flagged as neither anatomy, and --strict_routing refuses them (exit 1,
no output) while the other volumes are still reconstructed; agreement gives no warning.
Volumes are small (1-2 slices, 2-4 coils); the reconstruction models are the tiny VarNets of
tests/test_reconstruct.py.
"""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import reconstruct
from data import real_anatomy as ra
from data import routing
from data.formats import write_image_file, write_kspace_file
from models import artifacts
from tests.test_reconstruct import make_leaderboard, make_result, write_leaderboard_volume

pytest.importorskip("nibabel")
REPO = Path(__file__).resolve().parent.parent
SHIPPED_CLASSIFIER = REPO / "artifacts" / "anatomy_cnn.safetensors"


class _Stub:
    """A classifier that says ``knee`` with probability ``p`` whatever it is shown."""

    def __init__(self, p: float):
        self.p = p

    def predict(self, images):
        label = int(self.p > 0.5)
        return torch.tensor([label]), torch.tensor([self.p if label else 1 - self.p])


@pytest.fixture(scope="module")
def real_brain():
    """Two held-out example4d slices (never in any training split) on the challenge brain grid,
    4 coils, acc 4: (kspace, mask, image_grappa)."""
    held = ra.source("example4d").held_out
    real = ra.load_slices("example4d", held[4:6], 0)
    mag = ra.to_grid(real.images, real.pixel_mm, 0.6, (768, 396))
    return ra.routing_case(mag, 4, seed=3)[:3]


@pytest.fixture(scope="module")
def out_of_distribution():
    """name -> (kspace, mask, image_grappa, image_label): a cardiac frame, noise, zeros (cine-like 512 x 246)."""
    shape = (512, 246)
    return {
        "cardiac": ra.routing_case(ra.cardiac_magnitude(np.random.default_rng(6), 1, shape, 1.4), 4, 6, coils=2),
        "noise": ra.routing_case(None, 4, 12, coils=2, shape=(1, *shape)),
        "empty": ra.routing_case(None, 4, -1, coils=2, shape=(1, *shape)),
    }


def test_catalogue_split_and_orientation():
    for src in ra.SOURCES.values():
        assert not set(src.held_out) & set(src.train), src.name
        assert src.anatomy in ("brain", "knee", "other") and "==" in src.package
    assert ra.sources_for("knee") == []  # no real knee ships: said, not invented
    held = ra.source("example4d").held_out
    used = [i for _, _, idx, _ in ra.realtest_volumes() for i in idx]
    assert set(used) <= set(held) and len(used) == len(set(used)) * 2  # same slabs at acc 4 and acc 8
    tiny = ra.realtest_volumes(ra.REALTEST_PRESETS["realtest_tiny"])  # the tiny demo's: 3 x 2 held-out slices
    assert [len(idx) for _, _, idx, _ in tiny] == [2] * 6 and {i for _, _, idx, _ in tiny for i in idx} <= set(held)
    s = ra.load_slices("example4d", (12,), 0)
    assert s.images.dtype == np.float32 and s.images.shape == (1, 96, 128) and s.images.min() >= 0
    rows = s.images[0].sum(1)
    assert rows[:48].sum() > 0 and s.pixel_mm == (2.0, 2.0)


def test_real_brain_routes_to_brain_with_the_shipped_classifier(real_brain):
    """The phantom-trained classifier never saw real anatomy: the physical cues carry the decision."""
    from models.artifacts import load_artifact

    kspace, mask, grappa = real_brain
    classifier, _ = load_artifact(SHIPPED_CLASSIFIER, "cpu")
    r = reconstruct.route_volume(classifier, grappa, mask, "cpu", "real.h5", kspace)
    assert r.anatomy == "brain" and r.confidence > 0.95 and r.role == "brain_acc4"
    assert r.cues["votes"] == {"height": -1, "edges": 0, "readout": -1, "margins": -1}
    assert r.cues["score"] == -5
    assert (r.warning is None) == (r.classifier_label == "brain")  # a disagreeing classifier is reported


@pytest.mark.parametrize("p_knee, warned", [(0.05, False), (0.77, True), (0.9999, True)])
def test_cues_overrule_a_wrong_classifier_and_say_so(real_brain, p_knee, warned):
    kspace, mask, grappa = real_brain
    r = reconstruct.route_volume(_Stub(p_knee), grappa, mask, "cpu", "real.h5", kspace)
    assert r.anatomy == "brain"  # the misroute (knee at 0.77) cannot happen
    assert (r.warning is not None) == warned
    if warned:
        assert "physical cues say brain" in r.warning and "classifier knee" in r.warning
    expected = 1 / (1 + math.exp(-(5 - max(-4, min(4, math.log(p_knee / (1 - p_knee)))))))
    assert r.confidence == pytest.approx(expected, rel=1e-6)


def test_simulated_knee_agreement_no_warning():
    from data import simulate as sim

    preset = sim.Preset("t", 1, 1, 1, 2, (768, 396), 640, (372,), (4, 12))
    k = sim.simulate_kspace(np.random.default_rng(2), "knee", preset)
    from data.masks import make_mask
    from data.volumes import volume_images

    mask = make_mask("fixed", k.shape[-1], 8, None)
    grappa = volume_images(k, mask)["image_grappa"]
    cues = routing.physical_cues((k * torch.from_numpy(mask)).numpy(), mask, grappa)
    assert cues.votes["height"] == 1 and cues.votes["edges"] == 1 and cues.score >= 5
    d = routing.decide(cues, 0.97)
    assert d.anatomy == "knee" and d.warning is None and d.confidence > 0.99


@pytest.mark.parametrize("name", ["cardiac", "noise", "empty"])
@pytest.mark.parametrize("p_knee", [0.02, 0.98])
def test_out_of_distribution_is_flagged_whatever_the_classifier_says(out_of_distribution, name, p_knee):
    kspace, mask, grappa, _ = out_of_distribution[name]
    r = reconstruct.route_volume(_Stub(p_knee), grappa, mask, "cpu", f"{name}.h5", kspace)
    assert r.warning is not None and "looks like neither anatomy" in r.warning and f"{name}.h5" in r.warning
    assert r.anatomy == ("knee" if p_knee > 0.5 else "brain")  # the documented fallback: the classifier's label


def _write(root: Path, name: str, case) -> None:
    kspace, mask, grappa, label = case
    write_kspace_file(root / "acc4" / "kspace" / name, kspace, mask)
    label = label if label.max() > 0 else np.full_like(label, 1e-9)  # an image file needs a positive max
    write_image_file(root / "acc4" / "image" / name, grappa, grappa, label)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, out_of_distribution):
    root = tmp_path_factory.mktemp("routing")
    toy = make_leaderboard(root / "toy")  # the toy volumes the tiny models' classifier was fitted to
    result = make_result(root / "result", toy)
    art = root / "artifacts"
    assert artifacts.main(["export-result", "--result_path", str(result), "--out_dir", str(art), "--net_prefix", "varnet"]) == 0
    lb = root / "lb"
    write_leaderboard_volume(lb, "acc4", "vol1.h5", "brain", 4, 31)  # agrees: no warning
    for i, name in enumerate(("cardiac", "noise", "empty"), start=2):
        _write(lb, f"vol{i}.h5", out_of_distribution[name])
    return {"lb": lb, "artifacts": art}


def _run(setup, result: Path, *extra):
    argv = ["--path_data", str(setup["lb"]), "--result_path", str(result), "--weights", "artifacts",
            "--artifacts_dir", str(setup["artifacts"]), "--batch_size", "2", "--device", "cpu", "--no_progress", *extra]
    rc = reconstruct.main(argv)
    out = result / reconstruct.OUTPUT_SUBDIR
    return rc, out, json.loads((out / reconstruct.ROUTING_FILE).read_text())


def test_reconstruct_warns_and_strict_routing_refuses(setup, tmp_path, capsys):
    rc, out, report = _run(setup, tmp_path / "r")
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    vols = report["volumes"]
    assert vols["acc4/vol1.h5"]["warning"] is None and vols["acc4/vol1.h5"]["anatomy"] == "brain"
    assert vols["acc4/vol1.h5"]["cues"]["votes"]["readout"] == -1
    for i in (2, 3, 4):
        rec = vols[f"acc4/vol{i}.h5"]
        assert rec["status"] == "ok" and "looks like neither anatomy" in rec["warning"]
        assert (out / "acc4" / f"vol{i}.h5").exists()
        assert f"vol{i}.h5" in cap.err  # said on the console
    assert report["routing_warnings"] == 3 and report["strict_routing"] is False
    assert "routing WARNING for 3 volume(s)" in cap.out

    rc, out2, strict = _run(setup, tmp_path / "r", "--strict_routing")  # same result folder: stale outputs go
    cap = capsys.readouterr()
    assert rc == 1
    assert strict["volumes"]["acc4/vol1.h5"]["status"] == "ok" and (out2 / "acc4" / "vol1.h5").exists()
    for i in (2, 3, 4):
        rec = strict["volumes"][f"acc4/vol{i}.h5"]
        assert rec["status"] == "error" and "--strict_routing" in rec["error"] and "neither" in rec["warning"]
        assert not (out2 / "acc4" / f"vol{i}.h5").exists()
    assert strict["failed"] == 3 and "NOT reconstructed (--strict_routing)" in cap.out
