"""The CMRxRecon ranking metric (utils.metrics) and ``evaluate.py --task cine``.

Per-image PSNR/SSIM/NMSE are cross-checked against scikit-image with the organisers' normalisations
written out independently here; run4Ranking's crop, rounding and slice choice against hand-computed
MATLAB indices; the group/overall aggregation (plain and adjusted) against hand sums.
"""
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils import physics
from utils.metrics import (
    CINE_PROTOCOLS,
    aggregate_ranking_scores,
    cine_ranking_metrics,
    file_scores,
    matlab_round,
    normalize_cine,
    ranking_crop_shape,
    ranking_slices,
    run4ranking,
)


def _pair(rng, shape=(3, 2, 25, 37), noise=2e-5):
    """A smooth positive 'target' and a noisy 'reconstruction', float32 (as img4ranking)."""
    t = ndi.gaussian_filter(rng.random(shape), sigma=(0,) * (len(shape) - 2) + (2, 2)) * 1e-3
    r = t + noise * rng.standard_normal(shape)
    r.flat[7] = 3 * t.max()  # a hot pixel: the normalisations (max, z-score, p99.5) react differently
    return t.astype(np.float32), r.astype(np.float32)


# The organisers' normalisations, written out in numpy (Evaluation.py of each year).
_NORMALISE = {
    "2023": lambda x: x / x.max(),
    "2024": lambda x: (x - np.mean(x)) / (np.std(x) + 1e-8),
    "2025": lambda x: np.abs(x) / np.percentile(np.abs(x), 99.5),
}


def _skimage_scores(recon, target, protocol, swap, dtype=np.float64):
    """Per-image loop exactly as the organisers' calmetric: normalise both, reference = target (or the
    reconstruction when ``swap``), data_range = the reference's max."""
    out = {k: np.zeros(recon.shape[:-2]) for k in ("psnr", "ssim", "nmse")}
    for idx in np.ndindex(*recon.shape[:-2]):
        gt = _NORMALISE[protocol](target[idx].astype(dtype))
        pred = _NORMALISE[protocol](recon[idx].astype(dtype))
        if swap:
            gt, pred = pred, gt
        out["psnr"][idx] = peak_signal_noise_ratio(gt, pred, data_range=gt.max())
        out["ssim"][idx] = structural_similarity(gt, pred, data_range=gt.max())
        out["nmse"][idx] = np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2
    return out


# ---------------------------------------------------------------------------------- per-image scores


@pytest.mark.parametrize("protocol", CINE_PROTOCOLS)
@pytest.mark.parametrize("swap", [False, True])
def test_scores_match_scikit_image(protocol, swap):
    rng = np.random.default_rng(int(protocol))
    t, r = _pair(rng)
    ours = cine_ranking_metrics(r, t, protocol, swap=swap)
    ref = _skimage_scores(r, t, protocol, swap)
    for k in ("psnr", "ssim", "nmse"):
        assert ours[k].shape == (3, 2) and ours[k].dtype == np.float64
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)  # float64 both sides
    assert np.all(ours["ssim"] < 1) and np.all(ours["nmse"] > 0)


def test_single_precision_organiser_path_agrees_to_rounding():
    """The organisers feed float32 (single) images to scikit-image, which then computes in float32;
    ours computes in float64: they agree to float32 rounding."""
    t, r = _pair(np.random.default_rng(5), shape=(3, 2, 40, 52))
    for protocol in CINE_PROTOCOLS:
        ours = cine_ranking_metrics(r, t, protocol)
        ref = _skimage_scores(r, t, protocol, swap=protocol != "2023", dtype=np.float32)
        np.testing.assert_allclose(ours["ssim"], ref["ssim"], atol=1e-5)
        np.testing.assert_allclose(ours["psnr"], ref["psnr"], atol=1e-3)
        np.testing.assert_allclose(ours["nmse"], ref["nmse"], rtol=1e-4)


def test_argument_swap_default_per_protocol():
    t, r = _pair(np.random.default_rng(6))
    for protocol in CINE_PROTOCOLS:
        default = cine_ranking_metrics(r, t, protocol)
        swapped = protocol in ("2024", "2025")
        same = cine_ranking_metrics(r, t, protocol, swap=swapped)
        exchanged = cine_ranking_metrics(t, r, protocol, swap=not swapped)  # swapping = exchanging the inputs
        for k in default:
            np.testing.assert_array_equal(default[k], same[k])
            np.testing.assert_allclose(default[k], exchanged[k], rtol=1e-12)
        # the swap matters: NMSE's denominator, and data_range after 2023 (x / max makes both maxima 1)
        other = cine_ranking_metrics(r, t, protocol, swap=not swapped)
        assert not np.allclose(default["nmse"], other["nmse"])
        assert np.allclose(default["psnr"], other["psnr"]) == (protocol == "2023")


def test_identical_images_and_degenerate_images():
    t, _ = _pair(np.random.default_rng(7))
    for protocol in CINE_PROTOCOLS:
        s = cine_ranking_metrics(t, t, protocol)
        assert np.all(s["ssim"] == 1.0) and np.all(s["nmse"] == 0) and np.all(np.isinf(s["psnr"]))
    zeros = np.zeros((2, 16, 16), np.float32)
    assert np.all(np.isnan(cine_ranking_metrics(zeros, zeros, "2023")["ssim"]))  # 0 / max 0
    scaled = cine_ranking_metrics(5 * t, t, "2025")  # scale-invariant normalisations: a perfect score
    assert np.allclose(scaled["ssim"], 1.0) and np.allclose(scaled["nmse"], 0, atol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        cine_ranking_metrics(t[..., :-1], t, "2023")
    with pytest.raises(ValueError, match="protocol"):
        cine_ranking_metrics(t, t, "2022")


def test_normalisations_closed_form():
    x = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]], dtype=torch.float64)
    assert torch.equal(normalize_cine(x, "2023"), x / 5)
    z = normalize_cine(x, "2024")
    assert torch.allclose(z, (x - 2) / (np.sqrt(3.5) + 1e-8))
    big = torch.arange(1000, dtype=torch.float64).reshape(1, 10, 100) - 500  # negative values: |x|
    p = np.percentile(np.abs(big.numpy()), 99.5)
    assert torch.allclose(normalize_cine(big, "2025"), big.abs() / p, rtol=1e-15)
    zero = torch.zeros(1, 4, 4, dtype=torch.float64)
    assert torch.equal(normalize_cine(zero, "2025"), zero)  # percentile 0: |x| unscaled


def test_batching_does_not_change_scores():
    t, r = _pair(np.random.default_rng(8), shape=(5, 3, 20, 24))
    a = cine_ranking_metrics(r, t, "2025", chunk=2)
    b = cine_ranking_metrics(r, t, "2025", chunk=64)
    c = cine_ranking_metrics(r[2, 1], t[2, 1], "2025")  # a single 2-D image
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k][2, 1] == pytest.approx(float(c[k]), rel=1e-12)


# ------------------------------------------------------------------------------- run4Ranking geometry


def test_matlab_round_halves_away_from_zero():
    assert [matlab_round(v) for v in (0.5, 1.5, 2.5, 12.5, 2.4999, -2.5, -0.4, 0.0)] == [1, 2, 3, 13, 2, -3, 0, 0]


@pytest.mark.parametrize(
    "ny, nx, crop, start",
    [
        # crop = (round(ny/2), round(nx/3)); 0-based start = MATLAB floor(m/2)+1+ceil(-s/2) minus 1
        ((246), 512, (123, 171), (62, 171)),  # 246/2 = 123 (odd crop of an even size: start 123-61)
        ((204), 448, (102, 149), (51, 150)),  # 448/3 = 149.33 -> 149; start 224-74
        ((25), 37, (13, 12), (6, 12)),  # 12.5 -> 13 (Python's round gives 12); 37/3 = 12.33 -> 12
        ((27), 38, (14, 13), (6, 13)),  # 13.5 -> 14; 38/3 = 12.67 -> 13, start 19-6
    ],
)
def test_crop_rounding_and_offsets(ny, nx, crop, start):
    assert ranking_crop_shape(ny, nx) == crop
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    image = np.broadcast_to(1 + 1000 * yy + xx, (3, 1, ny, nx)).astype(np.float64)
    out = run4ranking(image)
    assert out.shape == (3, 1) + crop and out.dtype == torch.float32
    assert out[0, 0, 0, 0] == 1 + 1000 * start[0] + start[1]
    assert out[0, 0, -1, -1] == 1 + 1000 * (start[0] + crop[0] - 1) + (start[1] + crop[1] - 1)


def test_center_crop_matlab_offsets_differ_only_for_even_size_odd_crop():
    x = torch.arange(8.0).view(1, 8)
    assert physics.center_crop(x, (1, 3), matlab=True).tolist() == [[3.0, 4.0, 5.0]]  # 8//2 - 3//2
    assert physics.center_crop(x, (1, 3)).tolist() == [[2.0, 3.0, 4.0]]  # (8-3)//2
    for size in range(1, 9):
        for crop in range(1, size + 1):
            y = torch.arange(float(size)).view(1, size)
            same = torch.equal(physics.center_crop(y, (1, crop)), physics.center_crop(y, (1, crop), matlab=True))
            assert same == (size % 2 == 1 or crop % 2 == 0)


@pytest.mark.parametrize("sz, kept", [(1, [0]), (2, [0, 1]), (3, [0, 1]), (4, [0, 1]), (5, [1, 2]), (6, [1, 2]), (7, [2, 3])])
def test_central_slices(sz, kept):
    # MATLAB: all when sz < 3, else round(sz/2)-1 : round(sz/2) (1-based)
    assert list(range(sz))[ranking_slices(sz)] == kept
    frames = np.arange(5)[:, None, None, None]
    slices = np.arange(sz)[None, :, None, None]
    image = np.broadcast_to(1 + 10 * frames + slices, (5, sz, 8, 9)).astype(np.float32)
    out = run4ranking(image)
    assert out.shape == (3, len(kept), 4, 3)
    np.testing.assert_array_equal(out[:, :, 0, 0].numpy(), 1 + 10 * np.arange(3)[:, None] + np.array(kept)[None])


def test_run4ranking_combines_coils_by_rss():
    rng = np.random.default_rng(9)
    coils = (rng.standard_normal((4, 3, 5, 12, 18)) + 1j * rng.standard_normal((4, 3, 5, 12, 18))).astype(np.complex64)
    out = run4ranking(coils)
    rss = np.sqrt((np.abs(coils) ** 2).sum(axis=2))[:3, 0:2, 3:9, 6:12]  # slices 0,1; crop (6, 6)
    assert out.shape == (3, 2, 6, 6)
    np.testing.assert_allclose(out.numpy(), rss, rtol=1e-6)
    np.testing.assert_allclose(run4ranking(torch.from_numpy(coils[:, :, 0])).numpy(), np.abs(coils[:3, 0:2, 0, 3:9, 6:12]), rtol=1e-6)
    with pytest.raises(ValueError, match="3 frames"):
        run4ranking(coils[:2])
    with pytest.raises(ValueError, match="slices"):
        run4ranking(coils[0, 0])


# --------------------------------------------------------------------------------------- aggregation


def test_aggregation_plain_and_adjusted_with_a_missing_file():
    f = lambda p, s, n: {"psnr": p, "ssim": s, "nmse": n}
    records = [
        ("cine_sax/AccFactor04", f(30.0, 0.8, 0.02)),
        ("cine_sax/AccFactor04", f(32.0, 0.9, 0.04)),
        ("cine_sax/AccFactor04", None),  # missing: expected but not scored
        ("cine_lax/AccFactor04", f(28.0, 0.7, 0.05)),
    ]
    for protocol in CINE_PROTOCOLS:
        out = aggregate_ranking_scores(records, protocol)
        sax, lax = out["groups"]["cine_sax/AccFactor04"], out["groups"]["cine_lax/AccFactor04"]
        assert list(out["groups"]) == ["cine_lax/AccFactor04", "cine_sax/AccFactor04"]
        assert (sax["n_files"], sax["n_success"], out["n_files"], out["n_success"]) == (3, 2, 4, 3)
        assert sax["ssim"] == pytest.approx(0.85) and sax["psnr"] == pytest.approx(31.0)
        assert sax["ssim_adj"] == pytest.approx(1.7 / 3) and sax["psnr_adj"] == pytest.approx(62.0 / 3)
        expected_nmse_adj = 0.03 * (2 - 2 / 3) if protocol == "2025" else 0.06 / 3
        assert sax["nmse_adj"] == pytest.approx(expected_nmse_adj)
        assert lax["ssim_adj"] == lax["ssim"] == pytest.approx(0.7)
        assert out["ssim"] == pytest.approx((0.85 + 0.7) / 2)  # mean of groups, not of files
        assert out["ssim_adj"] == pytest.approx((1.7 / 3 + 0.7) / 2)
        assert out["nmse_adj"] == pytest.approx((expected_nmse_adj + 0.05) / 2)


def test_aggregation_group_without_success_and_nan_files():
    out = aggregate_ranking_scores([("a", None), ("b", {"psnr": 30.0, "ssim": float("nan"), "nmse": 0.1})], "2025")
    a, b = out["groups"]["a"], out["groups"]["b"]
    assert np.isnan(a["ssim"]) and a["ssim_adj"] == 0.0 and np.isnan(a["nmse_adj"])
    assert np.isnan(b["ssim"]) and b["psnr"] == 30.0  # NaN skipped, as pandas' mean
    assert out["psnr"] == 30.0 and out["psnr_adj"] == 15.0 and np.isnan(out["ssim"])


def test_file_scores_nan_mean():
    s = file_scores({"psnr": np.array([[30.0, np.nan]]), "ssim": np.array([[0.5, 0.7]]), "nmse": np.array([[np.nan, np.nan]])})
    assert s == {"psnr": 30.0, "ssim": pytest.approx(0.6), "nmse": s["nmse"], "images": 2}
    assert np.isnan(s["nmse"])


# ------------------------------------------------------------------------------ evaluate.py --task cine

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import evaluate  # noqa: E402
from data.cine import write_cine_fullsample, write_cine_undersampled, write_submission_file  # noqa: E402
from data.matlab import write_mat73  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# subject -> view -> (frames, slices); k-space is (t, slices, coils=2, ky=24, kx=36)
CASES = {"P001": {"cine_sax": (4, 3), "cine_lax": (3, 1)}, "P002": {"cine_sax": (3, 5)}}
KY, KX = 24, 36
# hand-computed ranking geometry: crop (round(24/2), round(36/3)) = (12, 12) at MATLAB starts 12-6, 18-6
CROP = (slice(6, 18), slice(12, 24))
KEPT = {1: [0], 2: [0, 1], 3: [0, 1], 5: [1, 2]}


def _kspace(rng, t, sz):
    yy, xx = np.mgrid[:KY, :KX]
    blob = np.exp(-(((yy - KY / 2) / 6.0) ** 2 + ((xx - KX / 2) / 9.0) ** 2))
    image = blob * (1 + 0.3 * rng.random((t, sz, 2, KY, KX))) * np.exp(1j * rng.random((t, sz, 2, 1, 1)))
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)).astype(np.complex64)


def _numpy_target(kspace):
    """run4Ranking by hand in numpy: centred ifft2, RSS, frames 0-2, the kept slices, the crop."""
    image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    rss = np.sqrt((np.abs(image) ** 2).sum(axis=2))
    return rss[:3, KEPT[kspace.shape[1]]][..., CROP[0], CROP[1]].astype(np.float32)


def _write_set(root, layout, rng, subjects=CASES, accelerations=(4, 8)):
    """A tiny CMRxRecon set (FullSample + undersampled inputs and masks, written by data.cine) and a
    perfect-but-noisy submission mirroring it; returns (set folder, submission set folder, targets)."""
    gt_set = root / "MultiCoil" / "Cine" / "ValidationSet"
    sub_set = root / "out" / "Submission" / "MultiCoil" / "Cine" / "ValidationSet"
    targets = {}
    for subject, views in subjects.items():
        for view, (t, sz) in views.items():
            k = _kspace(rng, t, sz)
            write_cine_fullsample(gt_set, subject, view[5:], k)
            targets[(subject, view)] = _numpy_target(k)
            for acc in accelerations:
                mask = np.zeros((KY, KX), np.float32)
                mask[:, ::acc] = 1
                mask[:, KX // 2 - 4 : KX // 2 + 4] = 1
                kpath, _ = write_cine_undersampled(gt_set, subject, view[5:], k, mask, acc, layout=layout)
                noise = 0.02 if acc == 4 else 0.05
                recon = targets[(subject, view)] * (1 + noise * rng.standard_normal(targets[(subject, view)].shape))
                write_submission_file(sub_set / kpath.relative_to(gt_set), recon)
    return gt_set, sub_set, targets


@pytest.fixture
def cine_set(tmp_path):
    """The 2023 layout, with one missing, one wrong-shape and one corrupt submission file; returns
    (set folder, submission output root, targets)."""
    gt_set, sub_set, targets = _write_set(tmp_path, "2023", np.random.default_rng(11))
    (sub_set / "AccFactor08" / "P002" / "cine_sax.mat").unlink()  # missing
    write_mat73(sub_set / "AccFactor08" / "P001" / "cine_lax.mat", {"img4ranking": np.ones((3, 1, 12, 11), np.float32)})
    (sub_set / "AccFactor04" / "P002" / "cine_sax.mat").write_bytes(b"MATLAB 7.3 MAT-file, truncated")
    return gt_set, tmp_path / "out", targets


def _expected_file_score(sub_file, target, protocol):
    """The organisers' per-file score, from skimage, with their argument order for the year."""
    recon = evaluate.read_cine_submission(sub_file, target.shape)
    per_image = _skimage_scores(recon, target, protocol, swap=protocol != "2023")
    return {k: float(np.mean(v)) for k, v in per_image.items()}


@pytest.mark.parametrize("protocol", ["2023", "2025"])
def test_cli_scores_set_with_failures(cine_set, tmp_path, capsys, protocol):
    gt_set, out, targets = cine_set
    json_path = tmp_path / "scores" / "cine.json"
    rc = evaluate.main(["--task", "cine", "--protocol", protocol, "--path_gt", str(gt_set), "--path_your_data", str(out),
                        "--json", str(json_path), "--no_progress", "--workers", "2"])
    captured = capsys.readouterr()
    assert rc == 0
    sub_set = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet"
    for name, words in (("AccFactor08/P002/cine_sax.mat", ["not found"]), ("AccFactor08/P001/cine_lax.mat", ["shape", "(3, 1, 12, 11)"]),
                        ("AccFactor04/P002/cine_sax.mat", [])):
        line = [ln for ln in captured.err.splitlines() if str(sub_set / name) in ln]
        assert len(line) == 1 and all(w in line[0] for w in words), captured.err
    assert "cine_sax/AccFactor04" in captured.out and "Overall" in captured.out
    result = json.loads(json_path.read_text())
    assert set(result["groups"]) == {"cine_lax/AccFactor04", "cine_lax/AccFactor08", "cine_sax/AccFactor04", "cine_sax/AccFactor08"}
    assert (result["n_files"], result["n_success"]) == (6, 3) and result["protocol"] == protocol
    assert "error" in result["files"]["AccFactor08/P002/cine_sax"]
    # independent recomputation: numpy ground truth, skimage per image, organisers' aggregation
    expected = {}
    for acc in ("AccFactor04", "AccFactor08"):
        for subject, views in CASES.items():
            for view in views:
                key = f"{acc}/{subject}/{view}"
                if "error" not in result["files"][key]:
                    expected[key] = _expected_file_score(sub_set / acc / subject / f"{view}.mat", targets[(subject, view)], protocol)
                    for m in ("psnr", "ssim", "nmse"):
                        assert result["files"][key][m] == pytest.approx(expected[key][m], rel=1e-5, abs=1e-6), (key, m)
    assert set(expected) == {"AccFactor04/P001/cine_sax", "AccFactor04/P001/cine_lax", "AccFactor08/P001/cine_sax"}
    sax04 = result["groups"]["cine_sax/AccFactor04"]  # P001 scored, P002 corrupt
    assert sax04["ssim"] == pytest.approx(expected["AccFactor04/P001/cine_sax"]["ssim"], rel=1e-6)
    assert sax04["ssim_adj"] == pytest.approx(expected["AccFactor04/P001/cine_sax"]["ssim"] / 2, rel=1e-6)
    assert result["groups"]["cine_lax/AccFactor08"]["n_success"] == 0 and result["groups"]["cine_lax/AccFactor08"]["ssim_adj"] == 0
    assert result["ssim"] == pytest.approx(np.mean([expected[k]["ssim"] for k in expected]), rel=1e-6)  # one file per scored group


def test_cli_submission_levels_and_axis_order(cine_set, capsys):
    gt_set, out, targets = cine_set
    sub_set = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet"
    good = sub_set / "AccFactor04" / "P001" / "cine_sax.mat"
    base = evaluate.evaluate_cine(gt_set, out, "2024", progress=False)[0]["files"]["AccFactor04/P001/cine_sax"]
    # MATLAB-order array written by a plain numpy/h5py writer: accepted (transposed), same scores
    write_mat73(good, {"img4ranking": evaluate.read_cine_submission(good, targets[("P001", "cine_sax")].shape).T.copy()})
    for level in (out, out / "Submission", sub_set):
        result, _ = evaluate.evaluate_cine(gt_set, level, "2024", progress=False)
        assert result["n_files"] == 6 and result["files"]["AccFactor04/P001/cine_sax"] == base
    result, problems = evaluate.evaluate_cine(gt_set, sub_set / "AccFactor04", "2024", progress=False)
    assert result["n_files"] == 3 and set(result["groups"]) == {"cine_sax/AccFactor04", "cine_lax/AccFactor04"}
    assert len(problems) == 1  # the corrupt P002 file only
    swapped = evaluate.evaluate_cine(gt_set, out, "2024", swap=False, progress=False)[0]
    assert swapped["swap"] is False and swapped["files"]["AccFactor04/P001/cine_sax"]["nmse"] != base["nmse"]


def test_cli_usage_errors_and_nothing_scored(cine_set, tmp_path, capsys):
    gt_set, out, _ = cine_set
    for argv, words in (
        (["--protocol", "2025", "--path_gt", str(tmp_path), "--path_your_data", str(out)], "FullSample"),
        (["--protocol", "2026", "--path_gt", str(gt_set), "--path_your_data", str(out)], "protocol"),
        (["--protocol", "2025", "--path_gt", str(gt_set), "--path_your_data", str(tmp_path / "nope")], "not found"),
    ):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(["--task", "cine", *argv])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = evaluate.main(["--task", "cine", "--protocol", "2025", "--path_gt", str(gt_set), "--path_your_data", str(empty), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "none of the 6 expected file(s)" in err and err.count("submission file not found") == 6


def test_cli_subprocess(cine_set, tmp_path):
    gt_set, out, _ = cine_set
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "--task", "cine", "--protocol", "2025", "--path_gt", str(gt_set),
         "--path_your_data", str(out), "--json", str(tmp_path / "r.json"), "--no_progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "protocol 2025" in proc.stdout and (tmp_path / "r.json").is_file()


def test_2024_layout_groups_by_mask_name(tmp_path):
    gt_set, sub_set, targets = _write_set(tmp_path, "2024", np.random.default_rng(12), subjects={"P001": {"cine_sax": (3, 2)}})
    result, problems = evaluate.evaluate_cine(gt_set, tmp_path / "out", "2024", progress=False, workers=1)
    assert not problems and (result["n_files"], result["n_success"]) == (2, 2)
    assert set(result["groups"]) == {"cine_sax/Uniform4", "cine_sax/Uniform8"}
    assert set(result["files"]) == {"UnderSample_Task1/P001/cine_sax_kus_Uniform4", "UnderSample_Task1/P001/cine_sax_kus_Uniform8"}
    f = result["files"]["UnderSample_Task1/P001/cine_sax_kus_Uniform4"]
    expected = _expected_file_score(sub_set / "UnderSample_Task1/P001/cine_sax_kus_Uniform4.mat", targets[("P001", "cine_sax")], "2024")
    assert f["ssim"] == pytest.approx(expected["ssim"], rel=1e-6) and f["images"] == 6
    # the organisers' 2024 submission layout: <Submission>/Cine/<Set>/Task1/P001/cine_sax_kus_Uniform4.mat
    theirs = tmp_path / "theirs" / "Cine" / "ValidationSet" / "Task1"
    theirs.parent.mkdir(parents=True)
    (sub_set / "UnderSample_Task1").rename(theirs)
    for level in (tmp_path / "theirs", theirs):
        again, problems = evaluate.evaluate_cine(gt_set, level, "2024", progress=False, workers=1)
        assert not problems and again["files"] == result["files"]


def test_bad_ground_truth_and_non_finite_submission(cine_set):
    gt_set, out, _ = cine_set
    sub_set = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet"
    k = _kspace(np.random.default_rng(13), 3, 1)
    k[0, 0, 1, 5, 5] = np.nan
    write_cine_fullsample(gt_set, "P001", "lax", k)  # NaN in a ranked frame: both accelerations fail
    bad = sub_set / "AccFactor04" / "P001" / "cine_sax.mat"
    recon = evaluate.read_cine_submission(bad, (3, 2, 12, 12)).copy()
    recon[1, 1, 3, 3] = np.inf
    write_submission_file(bad, recon)
    result, problems = evaluate.evaluate_cine(gt_set, out, "2023", progress=False, workers=2)
    gt_file = gt_set / "FullSample" / "P001" / "cine_lax.mat"
    assert sum(str(gt_file) in p and "non-finite" in p for p in problems) == 2
    assert sum(str(bad) in p and "non-finite" in p for p in problems) == 1
    assert (result["n_files"], result["n_success"]) == (6, 1)  # only AccFactor08/P001/cine_sax is left
    assert "error" not in result["files"]["AccFactor08/P001/cine_sax"]
