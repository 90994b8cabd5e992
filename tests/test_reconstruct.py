"""reconstruct.py: routing from data only, both weight sources, outputs, bad inputs, missing weights.

A hand-made tiny leaderboard (3 slices, 2 coils, brain 400 x 64, knee 440 x 56) and tiny models saved
in the DeepSpeed layout (``mp_rank_00_model_states.pt``) run in-process in a few seconds. The classifier
is a tiny AnatomyCNN whose linear head is fitted (class-mean difference) to the two synthetic anatomies,
so routing by content can be checked against the truth.
"""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import evaluate
import reconstruct
from data.formats import read_reconstruction_file, write_image_file, write_kspace_file
from data.masks import make_mask
from models import build_model
from models import artifacts
from utils.checkpoint import MODEL_STATES
from utils.physics import center_crop_or_pad, fft2c, ifft2c, rss

SLICES, COILS = 3, 2
SHAPES = {"brain": (400, 64), "knee": (440, 56)}
ROLES = [("brain", 4), ("brain", 8), ("knee", 4), ("knee", 8)]


def _object(anatomy: str, height: int, width: int, s: int) -> np.ndarray:
    """Brain: a filled ellipse; knee: two bright bars running through the readout, clear of the sides (distinct
    textures for the classifier, and the shapes data.routing's physical cues expect of a head and a knee)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    if anatomy == "brain":
        obj = ((yy / 0.45) ** 2 + (xx / 0.8) ** 2 < 1) * (1 + 0.2 * np.cos(5 * yy + s))
    else:
        obj = ((np.abs(xx - 0.3) < 0.15) * 2.0 + (np.abs(xx + 0.3) < 0.15) * 2.0 + 0.1) * (np.abs(xx) < 0.7)
    return obj.astype(np.float32)


def _volume(anatomy: str, seed: int):
    """Fully sampled k-space (S, C, H, W) and its RSS label (S, 384, 384)."""
    rng = np.random.default_rng(seed)
    h, w = SHAPES[anatomy]
    xx = np.linspace(-1, 1, w)[None, :]
    images = np.stack([
        np.stack([_object(anatomy, h, w, s) * np.exp(1j * (c + xx)) * (1 + 0.3 * c) for c in range(COILS)])
        for s in range(SLICES)
    ]).astype(np.complex64) * 1e-4
    images += (rng.standard_normal(images.shape) + 1j * rng.standard_normal(images.shape)).astype(np.complex64) * 1e-7
    k = fft2c(torch.from_numpy(images))
    label = center_crop_or_pad(rss(ifft2c(k), dim=-3), (384, 384)).numpy()
    return k.numpy(), label


def write_leaderboard_volume(root: Path, folder: str, name: str, anatomy: str, acc: int, seed: int):
    k, label = _volume(anatomy, seed)
    mask = make_mask("fixed", k.shape[-1], acc)
    masked = k * mask
    zf = center_crop_or_pad(rss(ifft2c(torch.from_numpy(masked)), dim=-3), (384, 384)).numpy()
    write_kspace_file(root / folder / "kspace" / name, masked, mask)
    write_image_file(root / folder / "image" / name, zf, zf, label)


def make_leaderboard(root: Path) -> Path:
    for i, folder in enumerate(("acc4", "acc8")):
        acc = int(folder[3:])
        write_leaderboard_volume(root, folder, "brain_test1.h5", "brain", acc, 10 + i)
        write_leaderboard_volume(root, folder, "knee_test1.h5", "knee", acc, 20 + i)
    return root


def save_states(tag: Path, model, name: str, epoch: int, args=None) -> None:
    """A DeepSpeed-layout model-states file (what utils/engine.py writes, minus the optimizer)."""
    tag.mkdir(parents=True, exist_ok=True)
    torch.save({"module": model.state_dict(), "model_name": name, "model_config": model.config.to_dict(),
                "epoch": epoch, "args": args or {}}, tag / MODEL_STATES)


def fitted_classifier(leaderboard: Path):
    """Tiny AnatomyCNN with its head set to separate the synthetic anatomies (class-mean difference)."""
    torch.manual_seed(0)
    model = build_model("anatomy_cnn", "tiny").eval()
    feats, seen = {}, []
    hook = model.head.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    for anatomy in ("brain", "knee"):
        imgs = torch.from_numpy(np.concatenate([
            h5py.File(p, "r")["image_grappa"][()] for p in sorted(leaderboard.glob(f"acc*/image/{anatomy}_*.h5"))
        ]))
        with torch.no_grad():
            model(imgs[None])
        feats[anatomy] = seen.pop().mean(0)  # mean of the head's input over the slices
    hook.remove()
    w = feats["knee"] - feats["brain"]
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[1] = w * 50 / w.norm() ** 2
        model.head.bias[1] = -(w * (feats["knee"] + feats["brain"]) / 2).sum() * 50 / w.norm() ** 2
    return model


def make_result(result: Path, leaderboard: Path, prefix: str = "varnet") -> Path:
    """Four tiny VarNets (3 adjacent slices, config not a preset) at step3, decoys at step1, and the classifier."""
    for i, (anatomy, acc) in enumerate(ROLES):
        net = result / f"{prefix}_{anatomy}_acc{acc}" / "checkpoints"
        args = {"task": anatomy, "acceleration": acc}
        torch.manual_seed(100 + i)
        save_states(net / "step1" / "epoch-9", build_model("varnet", "tiny", num_adj_slices=3), "varnet", 9, args)
        for epoch in (2, 3):
            torch.manual_seed(200 + 10 * i + epoch)
            save_states(net / "step3" / f"epoch-{epoch}", build_model("varnet", "tiny", num_adj_slices=3), "varnet", epoch, args)
    save_states(result / "anatomy_cnn" / "checkpoints" / "step1" / "epoch-1", fitted_classifier(leaderboard), "anatomy_cnn", 1)
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    leaderboard = make_leaderboard(root / "Data" / "leaderboard")
    result = make_result(root / "result", leaderboard)
    art = root / "artifacts"
    assert artifacts.main(["export-result", "--result_path", str(result), "--out_dir", str(art), "--net_prefix", "varnet"]) == 0
    return {"leaderboard": leaderboard, "result": result, "artifacts": art}


def run_reconstruct(data: Path, result: Path, *extra, weights="result", art=None, capsys=None):
    argv = ["--path_data", str(data), "--result_path", str(result), "--weights", weights, "--net_prefix", "varnet",
            "--batch_size", "2", "--device", "cpu", "--no_progress", *extra]
    if art is not None:
        argv += ["--artifacts_dir", str(art)]
    rc = reconstruct.main(argv)
    out_root = result / reconstruct.OUTPUT_SUBDIR
    routing = json.loads((out_root / reconstruct.ROUTING_FILE).read_text())
    captured = capsys.readouterr() if capsys is not None else None
    return rc, out_root, routing, captured


def test_end_to_end_from_result_and_artifacts(setup, tmp_path, capsys):
    lb = setup["leaderboard"]
    result = tmp_path / "r1"
    shutil.copytree(setup["result"], result)  # checkpoints and outputs share --result_path
    rc, out_root, routing, cap = run_reconstruct(lb, result, capsys=capsys)
    assert rc == 0, cap.err
    assert routing["failed"] == 0 and routing["slices"] == 4 * SLICES and routing["budget_seconds"] == 3600
    for name, rec in routing["volumes"].items():
        folder, fname = name.split("/")
        anatomy, acc = fname.split("_")[0], int(folder[3:])
        assert (rec["anatomy"], rec["acceleration"], rec["model"]) == (anatomy, acc, f"{anatomy}_acc{acc}")
        assert rec["confidence"] > 0.9 and rec["acc_spacing"] == pytest.approx(acc, rel=0.1) and rec["warning"] is None
        assert rec["weights"].endswith(f"varnet_{anatomy}_acc{acc}/checkpoints/step3/epoch-3")  # highest step, last epoch
        recon = read_reconstruction_file(out_root / folder / fname)
        assert recon.dtype == np.float32 and recon.shape == (SLICES, 384, 384) and recon.max() > 0
    assert "% of the 3600 s budget" in cap.out
    assert not list(out_root.rglob(".*tmp"))
    assert evaluate.main(["--path_leaderboard_data", str(lb), "--path_your_data", str(out_root), "--no_progress", "--workers", "1"]) == 0
    assert "Leaderboard SSIM : " in capsys.readouterr().out

    rc2, out2, routing2, cap2 = run_reconstruct(lb, tmp_path / "r2", weights="artifacts", art=setup["artifacts"], capsys=capsys)
    assert rc2 == 0, cap2.err
    assert sorted(p.name for p in setup["artifacts"].iterdir()) == sorted(f"{n}.safetensors" for n in artifacts.artifact_names())
    for name, rec in routing["volumes"].items():
        assert routing2["volumes"][name]["model"] == rec["model"]
        assert np.array_equal(read_reconstruction_file(out_root / name), read_reconstruction_file(out2 / name))


def test_routing_ignores_file_and_folder_names(setup, tmp_path, capsys):
    """Swap the acc4/acc8 folders and give every file the other anatomy's name: same models, same outputs."""
    lb = setup["leaderboard"]
    rc, out_ref, ref, _ = run_reconstruct(lb, tmp_path / "ref", weights="artifacts", art=setup["artifacts"], capsys=capsys)
    assert rc == 0
    moved = {}
    renamed = tmp_path / "renamed"
    for folder, other in (("acc4", "acc8"), ("acc8", "acc4")):
        for anatomy, new in (("brain", "knee_test7.h5"), ("knee", "brain_test3.h5")):
            for kind in ("kspace", "image"):
                dst = renamed / other / kind / new
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(lb / folder / kind / f"{anatomy}_test1.h5", dst)
            moved[f"{folder}/{anatomy}_test1.h5"] = f"{other}/{new}"
    rc, out_new, new, cap = run_reconstruct(renamed, tmp_path / "new", weights="artifacts", art=setup["artifacts"], capsys=capsys)
    assert rc == 0, cap.err
    for old_name, new_name in moved.items():
        a, b = ref["volumes"][old_name], new["volumes"][new_name]
        assert (a["anatomy"], a["acceleration"], a["model"]) == (b["anatomy"], b["acceleration"], b["model"])
        assert np.array_equal(read_reconstruction_file(out_ref / old_name), read_reconstruction_file(out_new / new_name))
    # the output layout mirrors the input folder, routing stays with the content
    assert new["volumes"]["acc4/knee_test7.h5"]["model"] == "brain_acc8"


def test_unsupported_acceleration_goes_to_nearest_with_warning(setup, tmp_path, capsys):
    data = tmp_path / "lb6"
    write_leaderboard_volume(data, "acc8", "brain_test5.h5", "brain", 6, 55)
    rc, out_root, routing, cap = run_reconstruct(data, tmp_path / "r", weights="artifacts", art=setup["artifacts"], capsys=capsys)
    assert rc == 0, cap.err
    rec = routing["volumes"]["acc8/brain_test5.h5"]
    assert rec["acc_spacing"] == pytest.approx(6, rel=0.05) and rec["acceleration"] == 8 and rec["model"] == "brain_acc8"
    assert "warning" in cap.err and "brain_test5.h5" in cap.err and "nearest, acc8" in cap.err
    assert "acc8" in rec["warning"]


def test_bad_inputs_are_reported_and_others_reconstructed(setup, tmp_path, capsys):
    data = tmp_path / "bad"
    write_leaderboard_volume(data, "acc4", "brain_test1.h5", "brain", 4, 1)  # good
    write_leaderboard_volume(data, "acc4", "knee_test2.h5", "knee", 4, 2)  # corrupted below
    raw = (data / "acc4/kspace/knee_test2.h5").read_bytes()
    (data / "acc4/kspace/knee_test2.h5").write_bytes(raw[: len(raw) // 3])
    write_leaderboard_volume(data, "acc8", "brain_test3.h5", "brain", 8, 3)  # image file removed below
    (data / "acc8/image/brain_test3.h5").unlink()
    write_leaderboard_volume(data, "acc8", "knee_test4.h5", "knee", 8, 4)  # mask of the wrong width below
    with h5py.File(data / "acc8/kspace/knee_test4.h5", "r+") as f:
        mask = f["mask"][()]
        del f["mask"]
        f["mask"] = mask[:-4]
    result = tmp_path / "r"
    stale = result / reconstruct.OUTPUT_SUBDIR / "acc4" / "knee_test2.h5"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old output")
    rc, out_root, routing, cap = run_reconstruct(data, result, weights="artifacts", art=setup["artifacts"], capsys=capsys)
    assert rc == 1
    assert routing["failed"] == 3 and routing["volumes"]["acc4/brain_test1.h5"]["status"] == "ok"
    assert read_reconstruction_file(out_root / "acc4/brain_test1.h5").shape == (SLICES, 384, 384)
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    assert any("knee_test2.h5" in e and "truncated" in e for e in errors)
    assert any("brain_test3.h5" in e and "no image file" in e for e in errors)
    assert any("knee_test4.h5" in e and "mask" in e and "width" in e for e in errors)
    assert sorted(p.relative_to(out_root).as_posix() for p in out_root.rglob("*") if p.is_file()) == [
        "acc4/brain_test1.h5", "routing.json"]  # no partial, temporary or stale file
    assert "FAILED" in cap.out


def test_missing_weights_fail_only_their_volumes(setup, tmp_path, capsys):
    lb = setup["leaderboard"]
    art = tmp_path / "art"
    shutil.copytree(setup["artifacts"], art)
    (art / "knee_acc8.safetensors").unlink()
    rc, out_root, routing, cap = run_reconstruct(lb, tmp_path / "r1", weights="artifacts", art=art, capsys=capsys)
    assert rc == 1 and routing["failed"] == 1
    assert routing["volumes"]["acc8/knee_test1.h5"]["status"] == "error"
    assert str(art / "knee_acc8.safetensors") in cap.err and "not found" in cap.err
    assert len(list(out_root.glob("acc*/*.h5"))) == 3

    result = tmp_path / "result"
    shutil.copytree(setup["result"], result)
    shutil.rmtree(result / "varnet_brain_acc4")
    rc, out_root, routing, cap = run_reconstruct(lb, result, capsys=capsys)
    assert rc == 1 and routing["failed"] == 1 and routing["volumes"]["acc4/brain_test1.h5"]["status"] == "error"
    assert str(result / "varnet_brain_acc4" / "checkpoints") + "/step{k}/epoch-{n}" in cap.err

    shutil.rmtree(result / "anatomy_cnn")  # no classifier: nothing can be routed, each volume says why
    rc, out_root, routing, cap = run_reconstruct(lb, result, capsys=capsys)
    assert rc == 1 and routing["failed"] == 4 and cap.err.count("anatomy_cnn") >= 4
    assert not list(out_root.glob("acc*/*.h5"))  # stale outputs of the earlier run were removed


def test_model_role_mismatch_is_an_error(setup, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(setup["artifacts"], art)
    shutil.copy(art / "knee_acc4.safetensors", art / "brain_acc4.safetensors")
    shutil.copy(art / "brain_acc8.safetensors", art / "anatomy_cnn.safetensors")
    rc, _, routing, cap = run_reconstruct(setup["leaderboard"], tmp_path / "r", weights="artifacts", art=art, capsys=capsys)
    assert rc == 1 and routing["failed"] == 4
    assert "expected a classifier" in cap.err


def test_cli_errors(tmp_path):
    with pytest.raises(SystemExit) as exc:
        reconstruct.main(["--path_data", str(tmp_path / "missing"), "--result_path", str(tmp_path)])
    assert exc.value.code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no .h5 files"):
        reconstruct.main(["--path_data", str(tmp_path / "empty"), "--result_path", str(tmp_path), "--device", "cpu"])
