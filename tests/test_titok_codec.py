"""TiTok-MRI codec end to end at tiny scale: frame placement, the ACDC datasets, the training objectives,
train.py --task acdc through the engine, and scripts/codec.py (encode -> decode -> evaluate on the tiny
simulator output, deterministic decoding, and its bad inputs)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.acdc_datasets import AcdcFrameDataset, Placement, collate_acdc, place_frames, unplace_frames
from data.cine import read_acdc_patient, write_acdc_patient
from data.codec_io import TokenFile, TokenItem, read_token_file, write_token_file
from data.matlab import read_mat
from models import build_model
from models.titok_mri import CODEC_ARTIFACTS, TiTokMRI, neighbour_offsets
from utils.objectives import (CodecDiTObjective, SegmentationObjective, TokenizerObjective, cavity_area_error,
                              soft_dice_loss)

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _load_cli():
    spec = importlib.util.spec_from_file_location("codec_cli", REPO / "scripts" / "codec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load_cli()


@pytest.fixture(scope="module")
def weights(codec_weights):
    """Tiny codec weights (conftest.py: make_codec_weights; tiny_cine is conftest's too)."""
    return codec_weights


@pytest.fixture(scope="module")
def encoded(tiny_cine, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "tokens.npz"
    assert CLI.main(["encode", "--data", str(tiny_cine), "--weights", str(weights), "--out", str(out)]) == 0
    return out


def _run(capsys, argv):
    code = CLI.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------ data side


def test_placement_round_trip():
    x = torch.rand(2, 3, 40, 30)
    placed, place = place_frames(x, (48, 48))
    assert placed.shape == (2, 3, 48, 48) and not place.resampled and (place.top, place.left) == (4, 9)
    assert torch.equal(unplace_frames(placed, place), x)
    assert placed[..., :4, :].abs().sum() == 0
    big = torch.rand(5, 96, 64)
    placed, place = place_frames(big, (48, 48))
    assert place == Placement((96, 64), (48, 48), (48, 32), 0, 8) and placed.shape == (5, 48, 48)
    assert unplace_frames(placed, place).shape == (5, 96, 64)
    labels = torch.randint(0, 4, (96, 64), dtype=torch.uint8)
    lp, lplace = place_frames(labels, (48, 48), labels=True)
    assert lp.dtype == torch.uint8 and set(lp.unique().tolist()) <= {0, 1, 2, 3}


def test_acdc_dataset_modes(tiny_cine):
    root = tiny_cine / "ACDC" / "training"
    patient = read_acdc_patient(root / "patient001", load_cine=True)
    t, z = patient.cine.shape[:2]
    frames = AcdcFrameDataset([root], (48, 48), "frames")
    labelled = AcdcFrameDataset([root], (48, 48), "labelled")
    context = AcdcFrameDataset([root], (48, 48), "context", neighbour_offsets(2))
    assert len(frames) == len(context) == t * z and len(labelled) == 2 * z
    s = context[1]  # slice 0, frame 1
    assert s.frames.shape == (5, 1, 48, 48) and not bool(s.has_label) and int(s.slice_index) == 1
    scale = np.percentile(patient.cine, 99.5)
    ed, es = patient.info.ed - 1, patient.info.es - 1
    for k, frame in enumerate([1, 0, 2, ed, es]):  # the frame, its neighbours -1, +1, then ED and ES
        np.testing.assert_allclose(s.frames[k, 0].numpy(), patient.cine[frame, 0] / scale, rtol=2e-3, atol=2e-3)
    lab = labelled[0]
    assert bool(lab.has_label) and torch.equal(lab.label, torch.from_numpy(patient.labels[patient.info.ed][0].astype(np.int64)))
    batch = collate_acdc([context[0], context[1]])
    assert batch.frames.shape == (2, 5, 1, 48, 48) and batch.label.shape == (2, 48, 48)


def test_token_file_round_trip(tmp_path):
    ids = np.arange(2 * 3 * 4 * 8, dtype=np.uint16).reshape(24, 8) % 100
    item = TokenItem("training/patient001", "acdc", (4, 3, 40, 30), 0, 812.5, 0, 2, (30.0, 10.0, 1.5, 1.5), {"group": "NOR"})
    item2 = TokenItem("P001/cine_sax", "cmrxrecon", (2, 6, 48, 48), 12, 2.0 ** -12, 0, 1, (1.0, 1.0, 1.0, 1.0), {})
    tokens = TokenFile(ids, 8, 128, (48, 48), [item, item2], "ab" * 32, "cd" * 32)
    path = write_token_file(tmp_path / "t.npz", tokens)
    back = read_token_file(path)
    assert back.ids.dtype == np.uint16 and np.array_equal(back.ids, ids)
    assert back.items == [item, item2] and back.weights_sha256 == "ab" * 32 and back.image_size == (48, 48)
    assert np.array_equal(back.item_ids(item2), ids[12:].reshape(2, 6, 8))


# ------------------------------------------------------------------------------------------ objectives


def test_dice_and_area_terms():
    labels = torch.randint(0, 4, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    perfect = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, labels) < 1e-3 and cavity_area_error(perfect, labels) < 1e-3
    wrong = torch.roll(perfect, 1, dims=1)  # every pixel in the wrong class
    assert soft_dice_loss(wrong, labels) > 0.9
    all_lv = torch.zeros_like(perfect)
    all_lv[:, 3] = 50  # LV everywhere, no RV: both cavity areas far off
    assert cavity_area_error(all_lv, labels) > 0.6


def test_codec_objectives_train_and_are_deterministic(tiny_cine):
    torch.manual_seed(0)
    root = tiny_cine / "ACDC" / "training"
    tok = build_model("titok", "tiny")
    batch = collate_acdc([AcdcFrameDataset([root], (48, 48), "frames")[i] for i in range(2)])
    loss = TokenizerObjective("l2")(tok.train(), batch, torch.device("cpu"))
    loss.backward()
    assert torch.isfinite(loss) and tok.encoder.project.weight.grad.abs().sum() > 0
    seg = build_model("nnmamba_seg", "acdc_tiny")
    lab = collate_acdc([AcdcFrameDataset([root], (48, 48), "labelled")[i] for i in range(2)])
    obj = SegmentationObjective()
    obj(seg, lab, torch.device("cpu")).backward()
    assert set(obj.log_values) == {"train/ce", "train/dice"}
    with pytest.raises(ValueError, match="labelled frames only"):
        obj(seg, batch, torch.device("cpu"))

    dit = build_model("titok_dit", "tiny")
    conditioner = TiTokMRI(tok, None, seg, dit_config=dit.config)
    conditioner.zero_grad(set_to_none=True)  # the gradients of the two objectives above
    ctx = AcdcFrameDataset([root], (48, 48), "context", neighbour_offsets(2))
    ed_index = [i for i in range(len(ctx)) if bool(ctx[i].has_label)][:1] + [1]
    cbatch = collate_acdc([ctx[i] for i in ed_index])
    objective = CodecDiTObjective(conditioner, dice_weight=0.5, volume_weight=0.5, seed=3)
    first = objective(dit, cbatch, torch.device("cpu"))
    first.backward()
    assert "train/decoded_dice" in objective.log_values
    assert all(p.grad is None for p in conditioner.parameters())  # frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dit.parameters())
    assert torch.equal(objective(dit, cbatch, torch.device("cpu")), first)  # same batch, same draws
    cbatch.epoch = cbatch.epoch + 1
    assert not torch.equal(objective(dit, cbatch, torch.device("cpu")), first)
    through = CodecDiTObjective(conditioner, sampler_steps=2, seed=3)(dit, cbatch, torch.device("cpu"))
    assert torch.isfinite(through)


# ------------------------------------------------------------------------------------------ train.py


def _train_main_fails(capsys, argv):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    return str(exc.value.code) + capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--model", "titok", "--task", "brain"], "--model titok trains on ACDC frames: use --task acdc"),
    (["--model", "promptmr", "--task", "acdc"], "--task acdc trains the TiTok-MRI codec networks"),
    (["--model", "titok_dit", "--preset", "tiny", "--task", "acdc"], "needs the trained tokenizer: --tokenizer PATH"),
    (["--model", "nnmamba_seg", "--preset", "tiny", "--task", "acdc"], "use --preset acdc_demo|acdc_tiny|acdc2d"),
    (["--model", "titok", "--task", "acdc", "--acceleration", "4"], "--mask_type/--acceleration do not apply"),
    (["--model", "titok", "--preset", "tiny", "--task", "acdc", "--data_path_val", "x"], "not supported with --task acdc"),
])
def test_train_acdc_flag_checks(capsys, tmp_path, tiny_cine, extra, words):
    argv = ["--net_name", "n", "--result_path", str(tmp_path), "--data_path_train", str(tiny_cine / "ACDC"), *extra]
    assert words in _train_main_fails(capsys, argv)


def test_train_dit_through_the_engine(tiny_cine, weights, tmp_path):
    """train.py --task acdc --model titok_dit with the tokenizer and segmenter frozen, decoding through the
    sampler (step 3's objective), through real DeepSpeed; the checkpoint exports and decodes."""
    args = ["--net_name", "titok_dit", "--model", "titok_dit", "--preset", "tiny", "--task", "acdc",
            "--data_path_train", str(tiny_cine / "ACDC" / "training"), "--result_path", str(tmp_path),
            "--tokenizer", str(weights / CODEC_ARTIFACTS["tokenizer"]), "--segmenter", str(weights / CODEC_ARTIFACTS["segmenter"]),
            "--num_epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--batch_size", "4",
            "--gradient_accumulation_steps", "1", "--gradient_clipping", "1.0", "--sampler_steps", "2", "--log_every", "1"]
    res = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = np.load(tmp_path / "titok_dit" / "loss_log" / "step1" / "loss_log.npy")
    assert log.shape == (1, 2) and np.isfinite(log).all()
    from models.artifacts import load_checkpoint_model

    dit, info = load_checkpoint_model(tmp_path / "titok_dit" / "checkpoints" / "step1" / "epoch-1")
    assert info.model_name == "titok_dit" and info.anatomy == "acdc" and dit.config.num_neighbours == 2


# ------------------------------------------------------------------------------------------ codec CLI


def test_encode_decode_evaluate(tiny_cine, weights, encoded, tmp_path, capsys):
    tokens = read_token_file(encoded)
    names = [it.name for it in tokens.items]
    assert names == ["ACDC/training/patient001", "CMRxRecon/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_lax",
                     "CMRxRecon/MultiCoil/Cine/TrainingSet/FullSample/P001/cine_sax"]
    acdc = tokens.items[0]
    patient = read_acdc_patient(tiny_cine / acdc.name, load_cine=True)
    assert acdc.shape == patient.cine.shape and (acdc.ed, acdc.es) == (patient.info.ed - 1, patient.info.es - 1)
    assert tokens.ids.dtype == np.uint16 and tokens.ids.shape == (sum(it.num_frames for it in tokens.items), 8)
    assert tokens.weights_sha256 == CLI.load_codec(weights)[1]["tokenizer"]

    # deterministic decoding: two runs write identical NIfTI bytes and identical .mat arrays (a .mat file's
    # header carries MATLAB's creation time)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        code, _, err = _run(capsys, ["decode", "--tokens", str(encoded), "--weights", str(weights), "--out", str(out)])
        assert code == 0, err
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file()) and len(files) == 6
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files if f.suffix == ".gz")
    assert all(np.array_equal(read_mat(outs[0] / f)["img4ranking"], read_mat(outs[1] / f)["img4ranking"])
               for f in files if f.suffix == ".mat")
    decoded = read_acdc_patient(outs[0] / acdc.name, load_cine=True)
    assert decoded.cine.shape == patient.cine.shape and decoded.info.es == patient.info.es
    mat = read_mat(outs[0] / f"{names[2]}.mat")["img4ranking"]
    assert mat.shape == tuple(tokens.items[2].shape)

    code, out, err = _run(capsys, ["evaluate", "--tokens", str(encoded), "--weights", str(weights), "--data",
                                   str(tiny_cine), "--json", "--steps", "2"])
    assert code == 0, err
    report = json.loads(out)
    rows = {r["name"]: r for r in report["items"]}
    row = rows[acdc.name]
    from utils.metrics import psnr

    expected = np.mean(psnr(decoded.cine, patient.cine, float(patient.cine.max()), axis=(-2, -1)))
    assert row["psnr"] == pytest.approx(expected, rel=1e-4)  # evaluate scores what decode writes
    assert row["bytes_per_frame"] == pytest.approx(8 * 7 / 8 + CLI.SIDE_BYTES / acdc.num_frames)
    assert row["compression_ratio"] == pytest.approx(48 * 48 * 2 / row["bytes_per_frame"])
    for key in ("dice_rv", "dice_myo", "dice_lv", "dice_original_lv", "lv_ef_error", "lv_edv_ml_true", "decode_ms_per_frame"):
        assert key in row, key
    assert "dice_lv" not in rows[names[2]]  # CMRxRecon frames carry no labels
    summary = report["summary"]
    assert summary["frames"] == tokens.ids.shape[0] and summary["file_bytes_per_frame"] == pytest.approx(
        encoded.stat().st_size / tokens.ids.shape[0])
    code, out, _ = _run(capsys, ["evaluate", "--tokens", str(encoded), "--weights", str(weights), "--data", str(tiny_cine)])
    assert code == 0 and "compression" in out and "ACDC/training/patient001" in out


def test_decoding_reads_the_right_tokens(weights):
    """Frame t's decode depends on its own ids, its neighbours' (t - 1, t + 1) and the ED/ES frames' ids
    (through the segmentation features) and on nothing else; decoding is deterministic."""
    codec, _ = CLI.load_codec(weights)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (2, 6, 8), generator=gen)
    base = codec.decode_cycles(ids, ed=0, es=2)
    assert base.shape == (2, 6, 1, 48, 48) and torch.equal(codec.decode_cycles(ids, ed=0, es=2), base)
    # other batch sizes: the same up to float rounding (BLAS sums in another order)
    assert torch.allclose(codec.decode_cycles(ids, ed=0, es=2, batch_size=5), base, atol=1e-5)
    changed = ids.clone()
    changed[1, 4] = (changed[1, 4] + 1) % 128
    out = codec.decode_cycles(changed, ed=0, es=2)
    moved = [(s, t) for s in range(2) for t in range(6) if not torch.allclose(out[s, t], base[s, t], atol=1e-6)]
    assert moved == [(1, 3), (1, 4), (1, 5)]
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 128  # the ES frame: every frame of that slice sees its features
    out = codec.decode_cycles(changed, ed=0, es=2)
    assert [t for t in range(6) if not torch.allclose(out[0, t], base[0, t], atol=1e-6)] == list(range(6))
    assert torch.equal(out[1], base[1])


def _one_error(code, err, words):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err


def test_cli_bad_inputs(tiny_cine, weights, encoded, tmp_path, capsys, codec_weights_builder):
    decode = ["decode", "--tokens", str(encoded), "--out", str(tmp_path / "out")]
    # tokens from other weights (same architecture, another initialisation)
    other = codec_weights_builder(tmp_path / "other", seed=1)
    _one_error(*_run(capsys, decode + ["--weights", str(other)])[::2], "made by other tokenizer weights")
    # weights for another frame size
    wide = codec_weights_builder(tmp_path / "wide", image_size=(64, 64))
    _one_error(*_run(capsys, decode + ["--weights", str(wide)])[::2], "frame-size mismatch")
    # a truncated token file
    cut = tmp_path / "cut.npz"
    cut.write_bytes(encoded.read_bytes()[: encoded.stat().st_size // 2])
    _one_error(*_run(capsys, ["decode", "--tokens", str(cut), "--weights", str(weights), "--out", str(tmp_path / "o")])[::2],
               "truncated or corrupt")
    # an edited one: ids beyond the codebook, and frames missing
    with np.load(encoded, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    bad = dict(arrays, ids=np.full_like(arrays["ids"], 200))
    np.savez(tmp_path / "ids.npz", **bad)
    _one_error(*_run(capsys, ["decode", "--tokens", str(tmp_path / "ids.npz"), "--weights", str(weights), "--out",
                              str(tmp_path / "o")])[::2], "outside the codebook of 128")
    np.savez(tmp_path / "short.npz", **dict(arrays, ids=arrays["ids"][:-5]))
    _one_error(*_run(capsys, ["decode", "--tokens", str(tmp_path / "short.npz"), "--weights", str(weights), "--out",
                              str(tmp_path / "o")])[::2], "truncated or edited")
    assert not (tmp_path / "o").exists() and not (tmp_path / "out").exists()
    # evaluating against data whose frames differ in size from the encoded ones
    other_data = tmp_path / "data"
    shutil.copytree(tiny_cine / "ACDC", other_data / "ACDC")
    patient = read_acdc_patient(other_data / "ACDC" / "training" / "patient001", load_cine=True)
    shutil.rmtree(patient.path)
    write_acdc_patient(other_data / "ACDC" / "training", 1, patient.cine[..., :40], patient.spacing, patient.info,
                       {f: lab[..., :40] for f, lab in patient.labels.items()})
    code, out, err = _run(capsys, ["evaluate", "--tokens", str(encoded), "--weights", str(weights), "--data", str(other_data)])
    assert code == 1 and "frame-size mismatch" in err and "(6, 3, 48, 40)" in err
    # no data, no weights
    _one_error(*_run(capsys, ["encode", "--data", str(tmp_path / "nowhere"), "--weights", str(weights), "--out",
                              str(tmp_path / "t.npz")])[::2], "data folder not found")
    _one_error(*_run(capsys, decode + ["--weights", str(tmp_path / "none")])[::2], "weights folder not found")
