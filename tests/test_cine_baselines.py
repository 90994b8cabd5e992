"""Tests for data/cine_baselines.py: zero-filled, GRAPPA per frame, ESPIRiT CG-SENSE and the CLI, on a tiny
synthetic multi-coil cine (a beating disc in a body, smooth localised coil maps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import data.cine_baselines as cb
from data.cine import list_cine_cases, write_cine_fullsample, write_cine_undersampled
from data.cine_masks import make_cine_mask
from data.matlab import read_mat
from utils.metrics import run4ranking
from utils.physics import fft2c, rss

T, COILS, KY, KX = 8, 8, 48, 64


def _maps(ky: int, kx: int, coils: int) -> np.ndarray:
    """Smooth complex coil maps ``(C, ky, kx)``: Gaussians on a ring around the field of view."""
    y, x = np.meshgrid(np.linspace(-1, 1, ky), np.linspace(-1, 1, kx), indexing="ij")
    angles = 2 * np.pi * np.arange(coils) / coils
    return np.stack([np.exp(-((y - 1.1 * np.sin(a)) ** 2 + (x - 1.1 * np.cos(a)) ** 2) / 0.6)
                     * np.exp(1j * (a + 0.7 * x * np.cos(a) + 0.7 * y * np.sin(a))) for a in angles])


def _cine(t: int = T, slices: int = 1, seed: int = 0, noise: float = 0.0) -> torch.Tensor:
    """Fully sampled k-space ``(t, slices, C, KY, KX)`` complex64: an ellipse body with a disc whose radius
    beats over the cycle; the readout is 2x oversampled (the body fills the central half of kx)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, KY), np.linspace(-1, 1, KX), indexing="ij")
    x2 = 2 * x
    images = np.zeros((t, slices, KY, KX), dtype=np.complex128)
    for z in range(slices):
        body = 0.5 * ((y / 0.8) ** 2 + (x2 / 0.8) ** 2 < 1)
        for _ in range(4):
            cy, cx, ay, ax = rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), *rng.uniform(0.08, 0.25, 2)
            body = body + rng.uniform(-0.2, 0.4) * ((((y - cy) / ay) ** 2 + ((x2 - cx) / ax) ** 2) < 1)
        radius = 0.22 + 0.07 * np.cos(2 * np.pi * np.arange(t) / t)[:, None, None]
        disc = ((y[None] - 0.1) ** 2 + (x2[None] + 0.1) ** 2) < radius ** 2
        images[:, z] = np.where(disc, 1.0, body[None]) * np.exp(1j * 0.3 * np.pi * (x + y))
    k = fft2c(torch.from_numpy(images[:, :, None] * _maps(KY, KX, COILS)[None, None]).to(torch.complex64))
    if noise:
        g = torch.Generator().manual_seed(seed)
        k = k + noise * torch.randn(k.shape, dtype=torch.complex64, generator=g)
    return k


def _nmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().square().sum() / ref.abs().square().sum())


def _mask(family: str, acc: int, shape=(T, KY, KX), seed: int = 1) -> np.ndarray:
    return make_cine_mask(family, shape, acc, rng=None if family in ("uniform", "kt_uniform") else seed)


@pytest.fixture(scope="module")
def full() -> torch.Tensor:
    return _cine(slices=2)


def _undersample(k: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    return k * torch.from_numpy(mask)[:, None, None]


# Image NMSE of GRAPPA over that of zero-filling, upper bounds (measured 0.07, 0.02, 0.40): a random
# per-frame draw leaves gaps of up to 12 lines in the outer k-space that no kernel bridges well. The data are
# noise-free, so the kernels get the light Tikhonov weight of the SNU default (lamda 0.01), not the cine
# default tuned on noisy data.
@pytest.mark.parametrize("family, bound", [("uniform", 0.15), ("kt_uniform", 0.1), ("kt_gaussian", 0.5)])
def test_grappa_per_frame_restores_missing_lines(full, family, bound):
    mask = _mask(family, 4)
    under = _undersample(full, mask)
    filled = cb.grappa_cine_kspace(under, mask, lamda=0.01)
    assert filled.shape == full.shape and filled.dtype == torch.complex64
    sampled = torch.from_numpy(mask != 0)[:, None, None].expand_as(full)
    assert torch.equal(filled[sampled], under[sampled]), "measured samples must be kept"
    assert _nmse(filled, full) < 1.5 * bound * _nmse(under, full)
    ref = cb.rss_images(full)
    assert _nmse(cb.rss_images(filled), ref) < bound * _nmse(cb.zero_filled_cine(under, mask), ref)


def test_grappa_frames_subset_equals_all_frames(full):
    mask = _mask("kt_gaussian", 4)
    under = _undersample(full[:, :1], mask)
    every = cb.grappa_cine_kspace(under, mask)
    some = cb.grappa_cine_kspace(under, mask, frames=[5, 1])
    torch.testing.assert_close(some, every[[5, 1]])


def test_grappa_rejects_two_dimensional_masks(full):
    mask = _mask("kt_radial", 4)
    with pytest.raises(ValueError, match="line mask"):
        cb.grappa_cine_kspace(_undersample(full, mask), mask)


@pytest.mark.parametrize("family, acc", [("kt_radial", 8), ("uniform", 4)])
def test_sense_beats_zero_filled_and_keeps_samples(full, family, acc):
    mask = _mask(family, acc)
    under = _undersample(full, mask)
    coil_k = cb.sense_cine_kspace(under, mask, frames=range(3), lamda=0.001, iterations=20)
    sampled = torch.from_numpy(mask[:3] != 0)[:, None, None].expand(3, *full.shape[1:])
    assert torch.equal(coil_k[sampled], under[:3][sampled]), "measured samples must be kept"
    ref = cb.rss_images(full[:3])
    zf = cb.zero_filled_cine(under, mask, frames=range(3))
    assert _nmse(cb.rss_images(coil_k), ref) < 0.2 * _nmse(zf, ref)


def test_sense_temporal_prior_helps_on_noisy_kt_data():
    noisy = _cine(slices=1, seed=3, noise=0.005)
    clean = _cine(slices=1, seed=3)
    mask = _mask("kt_uniform", 8)
    under = _undersample(noisy, mask)
    ref = cb.rss_images(clean[:3])
    with_prior = cb.reconstruct_cine(under, mask, "sense", frames=range(3), lamda=0.05)
    without = cb.reconstruct_cine(under, mask, "sense", frames=range(3), lamda=0.05, temporal_prior=False)
    assert _nmse(with_prior, ref) < 0.5 * _nmse(without, ref)  # measured 0.23


def test_time_average_and_calibration_region(full):
    mask = _mask("kt_uniform", 4)
    average, count = cb.time_averaged_kspace(_undersample(full, mask), mask)
    assert average.shape == full.shape[1:] and count.shape == (KY, KX)
    np.testing.assert_array_equal(count.numpy(), mask.sum(0))
    acs = slice(KY // 2 - 8, KY // 2 + 8)  # 16 ACS lines, sampled in every frame: the exact time average
    torch.testing.assert_close(average[:, :, acs], full.mean(0)[:, :, acs])
    line = 3  # outside the ACS: the mean over the frames that sampled it
    frames = np.flatnonzero(mask[:, line, 0])
    assert 0 < frames.size < T
    torch.testing.assert_close(average[:, :, line], full[frames][:, :, :, line].mean(0))
    assert cb.calibration_block(count, 64, every_frame=T) == (acs.start, acs.stop)
    assert cb.calibration_block(count, 20) == (KY // 2 - 10, KY // 2 + 10)  # the moving comb fills all lines
    rows, cols = cb.calibration_region(count, 32, 40, every_frame=T)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (acs.start, acs.stop, KX // 2 - 20, KX // 2 + 20)
    radial = torch.from_numpy(_mask("kt_radial", 8).sum(0).astype(np.int64))
    rows, cols = cb.calibration_region(radial, 64, 64, every_frame=T)  # the 16 x 16 block and the spokes' hub
    assert 16 <= rows.stop - rows.start < 24 and 16 <= cols.stop - cols.start < 24
    assert bool((radial[rows, cols] == T).all())
    grow = lambda s: slice(s.start - 1, s.stop + 1)  # noqa: E731
    assert not bool((radial[grow(rows), grow(cols)] == T).all())


def test_espirit_maps_match_the_true_maps(full):
    maps = cb.espirit_maps(full.mean(0)[:, :, KY // 2 - 12:KY // 2 + 12, KX // 2 - 16:KX // 2 + 16], (KY, KX))
    assert maps.shape == (2, 2, COILS, KY, KX)
    true = torch.from_numpy(_maps(KY, KX, COILS)).to(torch.complex64)
    true = true / rss(true, dim=0)
    image = cb.rss_images(full).mean(0)[0]
    inside = image > 0.2 * image.max()
    agreement = (maps[0, 0].conj() * true).sum(0).abs()  # 1 where equal up to a phase
    assert float(agreement[inside].min()) > 0.98
    # the body lies inside the field of view: no second sensitivity anywhere, the second set is cropped
    assert float(maps[:, 1].abs().max()) == 0.0


def test_auto_routes_by_mask_family():
    for family in ("uniform", "kt_uniform", "kt_gaussian", "kt_radial"):
        assert cb.choose_method(_mask(family, 8)) == cb.AUTO_METHODS[family]
    assert set(cb.AUTO_METHODS.values()) <= {"grappa", "sense"}


def test_bad_arguments(full):
    mask = _mask("uniform", 4)
    with pytest.raises(ValueError, match="does not match"):
        cb.zero_filled_cine(full, mask[:, :-1])
    with pytest.raises(ValueError, match="method"):
        cb.reconstruct_cine(full, mask, "magic")
    with pytest.raises(ValueError, match=r"\(t, slices, coils, ky, kx\)"):
        cb.zero_filled_cine(full[0], mask)


# ----------------------------------------------------------------------------- the CLI


def _set(tmp_path, subjects=(1, 2, 3), acc=4):
    """A 2023-layout CMRxRecon set: FullSample and AccFactor04 for ``subjects`` (sax, 3 slices)."""
    set_dir = tmp_path / "CMRxRecon" / "MultiCoil" / "Cine" / "ValidationSet"
    for number in subjects:
        k = _cine(slices=3, seed=number).numpy()
        write_cine_fullsample(set_dir, f"P{number:03d}", "sax", k)
        write_cine_undersampled(set_dir, f"P{number:03d}", "sax", k, _mask("uniform", acc)[0], acc)
    return set_dir


def test_cli_end_to_end_with_a_truncated_subject(tmp_path, capsys):
    set_dir = _set(tmp_path)
    bad = set_dir / "AccFactor04" / "P002" / "cine_sax.mat"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    out = tmp_path / "R"
    stale = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet" / "AccFactor04" / "P002" / "cine_sax.mat"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old result")
    rc = cb._main(["--path_data", str(set_dir), "--out", str(out), "--method", "zero_filled", "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [line for line in err.splitlines() if str(bad) in line]
    assert len(lines) == 1 and "truncated" in lines[0], err
    assert not stale.exists(), "a stale output of an earlier run would be scored"
    for case in list_cine_cases(set_dir):
        target = out / "Submission" / "MultiCoil" / "Cine" / "ValidationSet" / case.relpath
        if case.subject == "P002":
            continue
        image = read_mat(target, ["img4ranking"])["img4ranking"]
        expected = run4ranking(cb.zero_filled_cine(case.read_kspace(), case.read_mask())).numpy()
        assert image.dtype == np.float32 and image.shape == expected.shape == (3, 2, KY // 2, round(KX / 3))
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-6 * float(expected.max()))
    assert not list(out.rglob(".*.tmp")), "atomic writes leave no temporary files"


def test_cli_auto_writes_full_reconstructions_and_report(tmp_path, capsys):
    import json

    set_dir = _set(tmp_path, subjects=(1,))
    out = tmp_path / "R"
    rc = cb._main(["--path_data", str(set_dir), "--out", str(out), "--method", "auto", "--full", "--no_progress"])
    assert rc == 0, capsys.readouterr().err
    rel = "ValidationSet/AccFactor04/P001/cine_sax.mat"
    full_image = read_mat(out / "Reconstruction" / "MultiCoil" / "Cine" / rel, ["reconstruction"])["reconstruction"]
    assert full_image.shape == (T, 3, KY, KX)
    sub = read_mat(out / "Submission" / "MultiCoil" / "Cine" / rel, ["img4ranking"])["img4ranking"]
    np.testing.assert_allclose(sub, run4ranking(full_image).numpy(), rtol=1e-6)
    report = json.loads((out / "cine_baseline.json").read_text())
    record = report["cases"][rel]
    assert record["status"] == "ok" and record["method"] == cb.AUTO_METHODS["uniform"] and record["family"] == "uniform"
    assert report["frames"] == T * 3 and report["seconds_per_frame"] > 0


def test_cli_unusable_output_fails_before_any_work(tmp_path, capsys):
    set_dir = _set(tmp_path, subjects=(1,))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = cb._main(["--path_data", str(set_dir), "--out", str(blocker / "R"), "--method", "zero_filled", "--no_progress"])
    assert rc == 2
    assert "error: --out" in capsys.readouterr().err
    rc = cb._main(["--path_data", str(tmp_path / "nothing"), "--out", str(tmp_path / "R2"), "--no_progress"])
    assert rc == 2 and not (tmp_path / "R2").exists()
