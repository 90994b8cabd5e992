"""TiTok-MRI codec against standard codecs, at tiny scale: the Pillow JPEG 2000 / JPEG round trips within the
tokens' byte budget (data/standard_codecs.py), ``scripts/codec.py evaluate --standard`` scored through the
same metrics as the token decode, the figures, ``scripts/codec_report.py`` and ``bash scripts/demo.sh
--codec --use-artifacts`` end to end on the tiny simulator data with tiny weights (conftest.py fixtures)."""
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import standard_codecs as sc
from data.codec_io import find_subjects, read_subject, read_token_file
from models.artifacts import load_artifact
from utils.metrics import dice_scores, psnr, ssim_map

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLI = _load("codec")
REPORT = _load("codec_report")


def _run(capsys, main, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error(code, err, words, status=1):
    lines = [line for line in err.strip().splitlines() if line]
    assert code == status and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err


@pytest.fixture(scope="module")
def acdc(tiny_cine):
    """The tiny ACDC patient (labelled ED/ES) as the codec reads it."""
    root = tiny_cine / "ACDC"
    name, kind, path = find_subjects(root)[0]
    return root, read_subject(name, kind, path)


@pytest.fixture(scope="module")
def wide_weights(codec_weights_builder, tmp_path_factory):
    """Tiny codec weights with K 128 from a codebook of 4096: 192 bytes of ids per frame, room for a JPEG 2000
    codestream of a 48 x 48 frame."""
    return codec_weights_builder(tmp_path_factory.mktemp("wide") / "weights", num_latent_tokens=128, codebook_size=4096,
                                 decoder=True)


def _encode(capsys, data, weights, out):
    code, _, err = _run(capsys, CLI.main, ["encode", "--data", str(data), "--weights", str(weights), "--out", str(out)])
    assert code == 0, err
    return out


# ------------------------------------------------------------------------------------------ the standard codecs


def test_quantiser_and_rate_control(acdc):
    _, subject = acdc
    q, vmax = sc.quantise(subject.frames)
    assert q.dtype == np.uint8 and q.shape == subject.frames.shape and q.max() == 255
    assert vmax == float(np.float32(subject.frames.max()))
    step = vmax / 255
    assert np.abs(sc.dequantise(q, vmax) - subject.frames).max() <= step / 2 * 1.001  # rounding, nothing clipped
    image = q[0, 1]
    for method in sc.STANDARDS:
        for cap in (220, 300, 600):
            stream, setting, over = sc.encode_frame(image, method, cap)
            assert not over and len(stream) <= cap, (method, cap, len(stream))
            assert sc.encode_frame_at(image, method, setting) == stream  # the setting reproduces the stream
            upper = 95 if method == "jpeg" else image.size
            if setting < upper:  # the largest stream within the cap: one step more does not fit
                assert len(sc.encode_frame_at(image, method, setting + 1)) > cap or \
                    len(sc.encode_frame_at(image, method, setting + 1)) <= len(stream)
            back = sc.decode_frame(stream, method, image.shape)
            assert back.dtype == np.uint8 and back.shape == image.shape
        # a budget nothing meets: the smallest stream, flagged; it is no larger than Pillow's own smallest file
        stream, setting, over = sc.encode_frame(image, method, 10)
        assert over and setting == 1 and len(stream) > 10
        buf = io.BytesIO()
        if method == "jpeg":
            Image.fromarray(image).save(buf, format="JPEG", quality=1, optimize=True)
        else:
            Image.fromarray(image).save(buf, format="JPEG2000", no_jp2=True, irreversible=True, quality_mode="rates",
                                        quality_layers=[float(image.size)])
        plain = buf.getvalue()
        assert len(stream) < len(plain)  # the writer's metadata is gone ...
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(plain))), sc.decode_frame(stream, method, image.shape))
    assert b"OpenJPEG" not in sc.encode_frame_at(image, "jpeg2000", 100)  # ... its comment
    assert b"JFIF" not in sc.encode_frame_at(image, "jpeg", 50)
    coded = sc.encode_frames(q[:2], "jpeg2000", 200)
    assert coded.sizes.shape == (2 * q.shape[1],) and (coded.sizes <= 200).all() and not coded.over_budget.any()
    assert sc.decode_frames(coded.streams, "jpeg2000", q[:2].shape).shape == q[:2].shape
    with pytest.raises(sc.StandardCodecError, match="unknown standard codec 'png'"):
        sc.encode_frames(q, "png", 100)
    with pytest.raises(sc.StandardCodecError, match="no positive value"):
        sc.quantise(np.zeros((2, 8, 8)))


# ------------------------------------------------------------------------------------------ evaluate --standard


def test_evaluate_standard_equals_the_metrics_of_the_round_trip(acdc, wide_weights, tmp_path, capsys):
    root, subject = acdc
    tokens_path = _encode(capsys, root, wide_weights, tmp_path / "tokens.npz")
    tokens = read_token_file(tokens_path)
    item = tokens.items[0]
    streams = tmp_path / "streams"
    code, out, err = _run(capsys, CLI.main, ["evaluate", "--tokens", str(tokens_path), "--data", str(root), "--weights",
                                             str(wide_weights), "--standard", "jpeg2000", "--standard_out", str(streams),
                                             "--json", "--figures", str(tmp_path / "fig")])
    assert code == 0, err
    report = json.loads(out)
    row, summary = report["items"][0], report["summary"]
    assert report["method"] == summary["method"] == row["method"] == "jpeg2000"
    budget = 128 * 12 / 8 + CLI.SIDE_BYTES / item.num_frames
    assert row["budget_bytes_per_frame"] == pytest.approx(budget) and row["stream_cap_bytes"] == 192
    assert row["over_budget"] is False and summary["over_budget"] is False and row["over_budget_frames"] == 0

    # the stored streams: every frame within its cap; achieved bytes as reported
    folder = streams / item.name
    files = sorted(folder.glob("t*_z*.j2k"))
    assert len(files) == item.num_frames
    sizes = np.array([f.stat().st_size for f in files])
    assert (sizes <= 192).all() and row["stream_bytes_max"] == sizes.max()
    assert row["bytes_per_frame"] == pytest.approx(sizes.mean() + CLI.SIDE_BYTES / item.num_frames)
    assert row["bytes_per_frame"] <= budget
    assert row["compression_ratio"] == pytest.approx(48 * 48 * 2 / row["bytes_per_frame"])
    side = json.loads((folder / "side.json").read_text())
    assert side["vmax"] == float(np.float32(subject.frames.max())) and side["shape"] == list(item.shape)

    # decode the files with Pillow here, dequantise as documented, apply the metric functions
    t, z, h, w = item.shape
    q = np.stack([np.asarray(Image.open(folder / f"t{i:03d}_z{j:03d}.j2k")) for i in range(t) for j in range(z)])
    decoded = (q.astype(np.float32) * np.float32(np.float32(side["vmax"]) / 255)).reshape(t, z, h, w)
    original = subject.frames
    data_range = float(original.max())
    assert row["psnr"] == pytest.approx(float(np.mean(psnr(decoded, original, data_range, axis=(-2, -1)))), rel=1e-6)
    ssim = ssim_map(torch.from_numpy(decoded.reshape(-1, h, w)).double(), torch.from_numpy(original.reshape(-1, h, w)).double(),
                    data_range).mean(dim=(-2, -1))
    assert row["ssim"] == pytest.approx(float(ssim.mean()), rel=1e-6)
    codec, _ = CLI.load_codec(wide_weights)
    phases = (item.ed, item.es)
    seg = [CLI.segment_frames(codec.segmenter, decoded[p], item.scale, tokens.image_size) for p in phases]
    dice = np.nanmean([dice_scores(s, subject.labels[p]) for s, p in zip(seg, phases)], axis=0)
    same = lambda got, want: (got is None and np.isnan(want)) or got == pytest.approx(float(want))  # noqa: E731 (JSON: NaN -> null)
    assert all(same(row[f"dice_{key}"], dice[i]) for i, key in enumerate(("rv", "myo", "lv")))
    volumes = CLI.ejection_fraction(seg[0], seg[1], item.spacing[1:])
    assert volumes["rv_edv_ml"] > 0  # the random segmenter finds some "RV": a value to compare
    assert all(same(row[f"{key}_decoded"], volumes[key]) for key in ("rv_edv_ml", "rv_esv_ml", "lv_edv_ml", "rv_ef", "lv_ef"))
    assert row["decode_ms_per_frame"] > 0 and row["encode_ms_per_frame"] > 0
    # the figure of the first labelled item
    strip = tmp_path / "fig" / "codec_strip_jpeg2000_k128.png"
    with Image.open(strip) as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_evaluate_standard_over_budget_is_flagged(acdc, codec_weights, tmp_path, capsys):
    root, _ = acdc
    tokens_path = _encode(capsys, root, codec_weights, tmp_path / "tokens.npz")  # K 8 x 7 bits: 7 bytes per frame
    for method in sc.STANDARDS:
        code, out, err = _run(capsys, CLI.main, ["evaluate", "--tokens", str(tokens_path), "--data", str(root),
                                                 "--weights", str(codec_weights), "--standard", method, "--json_out",
                                                 str(tmp_path / f"{method}.json")])
        assert code == 0, err
        assert "OVER BUDGET in 18 frame(s)" in out
        report = json.loads((tmp_path / f"{method}.json").read_text())
        row, summary = report["items"][0], report["summary"]
        assert row["over_budget"] is True and row["over_budget_frames"] == row["frames"] == 18
        assert summary["over_budget"] is True and summary["bytes_per_frame"] > summary["budget_bytes_per_frame"] > 7
        assert row["stream_bytes_min"] > row["stream_cap_bytes"] == 7
    # the token decode's report names its method too, and draws its strip
    code, out, err = _run(capsys, CLI.main, ["evaluate", "--tokens", str(tokens_path), "--data", str(root), "--weights",
                                             str(codec_weights), "--json", "--figures", str(tmp_path / "fig")])
    assert code == 0, err
    assert json.loads(out)["summary"]["method"] == "titok" and (tmp_path / "fig" / "codec_strip_titok_k8.png").is_file()


def test_evaluate_standard_bad_inputs(acdc, codec_weights, tmp_path, capsys):
    root, _ = acdc
    tokens_path = _encode(capsys, root, codec_weights, tmp_path / "tokens.npz")
    base = ["evaluate", "--tokens", str(tokens_path), "--data", str(root)]
    _one_error(*_run(capsys, CLI.main, base + ["--weights", str(codec_weights), "--standard", "png"])[::2],
               "--standard must be one of jpeg2000, jpeg, got 'png'", status=2)
    _one_error(*_run(capsys, CLI.main, base + ["--weights", str(tmp_path / "none"), "--standard", "jpeg2000"])[::2],
               "weights folder not found")
    _one_error(*_run(capsys, CLI.main, base + ["--weights", str(codec_weights), "--standard_out", str(tmp_path / "s")])[::2],
               "--standard_out needs --standard", status=2)
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------ evaluate --scorer


def test_evaluate_scorer_is_an_independent_segmenter(acdc, codec_weights, codec_weights_builder, tmp_path, capsys):
    """--scorer: Dice/EF come from the given segmenter, on the same decoded frames (decoding still uses the
    codec's own segmenter features); bad scorers are one clear error."""
    root, subject = acdc
    tokens_path = _encode(capsys, root, codec_weights, tmp_path / "tokens.npz")
    other = codec_weights_builder(tmp_path / "other", seed=1) / "titok_seg.safetensors"
    base = ["evaluate", "--tokens", str(tokens_path), "--data", str(root), "--weights", str(codec_weights), "--json"]
    reports = {}
    for name, extra in (("own", []), ("other", ["--scorer", str(other)])):
        code, out, err = _run(capsys, CLI.main, base + extra)
        assert code == 0, err
        reports[name] = json.loads(out)
    own, indep = reports["own"]["items"][0], reports["other"]["items"][0]
    assert reports["other"]["scorer"] == str(other) and reports["own"]["scorer"] == "the codec's segmenter"
    assert indep["psnr"] == own["psnr"] and indep["ssim"] == own["ssim"]  # the same decoded frames
    # the Dice of the decoded frames is the independent segmenter's, by hand
    codec, _ = CLI.load_codec(codec_weights)
    tokens = read_token_file(tokens_path)
    item = tokens.items[0]
    decoded = CLI.decode_item(codec, tokens, item, None, None, 64)
    scorer, _ = load_artifact(other)
    phases = (item.ed, item.es)
    same = lambda got, want: (got is None and np.isnan(want)) or got == pytest.approx(float(want))  # noqa: E731
    for net, row in ((scorer, indep), (codec.segmenter, own)):
        seg = [CLI.segment_frames(net, decoded[p], item.scale, tokens.image_size) for p in phases]
        dice = np.nanmean([dice_scores(s, subject.labels[p]) for s, p in zip(seg, phases)], axis=0)
        assert all(same(row[f"dice_{key}"], dice[i]) for i, key in enumerate(("rv", "myo", "lv")))
    keys = [k for k in own if k.startswith(("dice_", "lv_", "rv_"))]
    assert any(own[k] != indep[k] for k in keys)  # the two segmenters disagree somewhere: the flag took effect
    # bad scorers
    base = base[:-1]
    _one_error(*_run(capsys, CLI.main, base + ["--scorer", str(tmp_path / "none.safetensors")])[::2], "segmenter weights not found")
    _one_error(*_run(capsys, CLI.main, base + ["--scorer", str(codec_weights / "titok.safetensors")])[::2],
               "holds 'titok', expected a segmenter")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    _one_error(*_run(capsys, CLI.main, base + ["--scorer", str(tmp_path / "bad.safetensors")])[::2], "bad.safetensors")


# ------------------------------------------------------------------------------------------ report


def _summary(method, k, bytes_per_frame, psnr_db, dice, over=False, budget=None):
    s = {"method": method, "tokens_per_frame": k, "bytes_per_frame": bytes_per_frame, "compression_ratio": 4096 * 2 / bytes_per_frame,
         "psnr": psnr_db, "ssim": 0.5, "dice_rv": dice[0], "dice_myo": dice[1], "dice_lv": dice[2],
         "dice_original_rv": 0.8, "dice_original_myo": 0.7, "dice_original_lv": 0.9, "lv_ef_error": 3.0, "rv_ef_error": 5.5,
         "original_lv_ef_error": 1.5, "original_rv_ef_error": 2.5, "decode_ms_per_frame": 12.345,
         "dice_ratio": sum(dice) / 2.4}
    if method != "titok":
        s.update(over_budget=over, budget_bytes_per_frame=budget)
    return s


def test_codec_report_table_and_plot(tmp_path, capsys):
    reports = {
        "k32.json": _summary("titok", 32, 48.5, 24.0, (0.6, 0.5, 0.7)),
        "k64.json": _summary("titok", 64, 96.5, 26.0, (0.7, 0.6, 0.8)),
        "j2k32.json": _summary("jpeg2000", 32, 141.0, 20.0, (0.2, 0.1, 0.3), over=True, budget=48.5),
        "j2k64.json": _summary("jpeg2000", 64, 96.0, 22.5, (0.3, 0.2, 0.4), over=False, budget=96.5),
    }
    paths = []
    for name, summary in reports.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps({"method": summary["method"], "summary": summary, "items": []}))
    out = tmp_path / "report"
    code, stdout, err = _run(capsys, REPORT.main, ["--json", *map(str, paths), "--out", str(out)])
    assert code == 0, err
    table = (out / "codec_rd.md").read_text()
    assert table in stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | K | bytes/frame | ratio vs 16-bit | PSNR (dB) | SSIM | Dice RV | Dice MYO | Dice LV "
                              "| Dice mean | Dice ratio | EF err LV | EF err RV | decode ms/frame |")
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]
    assert [c[:2] for c in cells] == [["TiTok-MRI", "32"], ["TiTok-MRI", "64"], ["JPEG 2000 (Pillow)", "32"],
                                      ["JPEG 2000 (Pillow)", "64"], ["original frames", "-"]]
    assert cells[1] == ["TiTok-MRI", "64", "96.5", "84.9", "26.00", "0.5000", "0.700", "0.600", "0.800", "0.700", "0.875",
                        "3.00", "5.50", "12.35"]
    assert cells[2][2] == "141.0 (budget 48.5)*" and cells[3][2] == "96.0" and "*: over the budget" in table
    assert cells[4][6:13] == ["0.800", "0.700", "0.900", "0.800", "1.000", "1.50", "2.50"]
    with Image.open(out / "codec_rd.png") as png:
        assert png.format == "PNG" and png.size[0] > 500 and png.size[1] > 400
    # bad inputs: one line each, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"items": []}))
    _one_error(*_run(capsys, REPORT.main, ["--json", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")])[::2],
               "bad.json: not a scripts/codec.py evaluate report")
    (tmp_path / "cut.json").write_text('{"summary": {')
    _one_error(*_run(capsys, REPORT.main, ["--json", str(tmp_path / "cut.json"), "--out", str(tmp_path / "o")])[::2],
               "cut.json: not JSON")
    _one_error(*_run(capsys, REPORT.main, ["--json", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")])[::2],
               "none.json: file not found")
    assert not (tmp_path / "o").exists()


def test_strip_rejects_mismatched_arrays(tmp_path):
    from data.codec_figures import save_codec_strip

    with pytest.raises(ValueError, match="must be \\(R, h, w\\) with R = 2"):
        save_codec_strip(tmp_path / "x.png", np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="labels_decoded"):
        save_codec_strip(tmp_path / "x.png", np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), None, np.zeros((1, 8, 8)))
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------ the demo


def test_codec_demo_with_artifacts_tiny(tmp_path, codec_weights):
    """bash scripts/demo.sh --codec --use-artifacts on the tiny data: the weights folders of CODEC_ARTIFACTS that
    exist (k8 here; k32 is absent and skipped), encode -> decode -> evaluate (tokens, JPEG 2000, JPEG) -> report."""
    artifacts = tmp_path / "titok"
    shutil.copytree(codec_weights, artifacts / "k8")
    env = dict(ENV, DEMO_PRESET="tiny", DATA_ROOT=str(tmp_path / "data"), RESULT_ROOT=str(tmp_path / "result"),
               CODEC_ARTIFACTS=str(artifacts), CODEC_TOKENS="8 32")
    res = subprocess.run(["bash", "scripts/demo.sh", "--codec", "--use-artifacts"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    result = tmp_path / "result"
    table = res.stdout[res.stdout.index("== TiTok-MRI codec vs standard codecs"):]
    assert table.count("| TiTok-MRI | 8 |") == 1 and "| JPEG 2000 (Pillow) | 8 |" in table and "| JPEG (Pillow) | 8 |" in table
    assert "(budget 7.8)*" in table and "K=32" not in res.stdout
    assert (result / "report" / "codec_rd.md").read_text() in table
    for method in ("titok", "jpeg2000", "jpeg"):
        report = json.loads((result / "k8" / f"eval_{method}.json").read_text())
        assert report["summary"]["method"] == method and report["items"][0]["name"] == "patient003"
        assert (result / "figures" / f"codec_strip_{method}_k8.png").is_file()
    assert (result / "report" / "codec_rd.png").is_file()
    assert (result / "k8" / "decoded" / "patient003" / "patient003_4d.nii.gz").is_file()
    assert not (result / "k32").exists()

    # no weights folder at all: one error line before anything is set up or runs
    env.update(CODEC_ARTIFACTS=str(tmp_path / "empty"), DATA_ROOT=str(tmp_path / "data2"))
    res = subprocess.run(["bash", "scripts/demo.sh", "--codec", "--use-artifacts"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty'}: no codec weights folder k8 k32 with titok.safetensors inside (train them: bash "
        f"scripts/demo.sh --codec)"] and not (tmp_path / "data2").exists()
