"""Tests of the synthetic challenge data set (data.simulate, data.phantoms) on the tiny preset.

The tiny tree is generated once per module (single torch thread: fastest on a shared CPU).
numpy.fft serves as an independent reference for the image definitions.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, uniform_filter

from data import simulate as sim
from data.phantoms import CoilArray, make_grid, smooth_field

PRESET = sim.PRESETS["tiny"]
SEED = 7
THRESHOLD = {"brain": 5e-5, "knee": 2e-5}  # leaderboard foreground thresholds


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Data")
    sim.generate_dataset(root, "tiny", SEED, progress=False)
    return root


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in f.keys()}
        out.update({f"attr:{k}": v for k, v in f.attrs.items()})
    return out


def _files(root: Path, kind: str, split: str = "*") -> list:
    return sorted(root.glob(f"{split}/*/{kind}/*.h5"))


def _anatomy(path: Path) -> str:
    return path.name.split("_")[0]


def _acc(path: Path) -> int:
    """Acceleration from a train name (brain_acc4_1.h5) or a leaderboard folder (acc4/kspace/x.h5)."""
    part = path.name.split("_")[1] if path.parents[2].name == "train" else path.parents[1].name
    return int(part.replace("acc", ""))


def _fixed_mask(width: int, acc: int) -> np.ndarray:
    """Independent reference of the challenge's fixed mask."""
    n_acs = int(round(0.08 * width))
    lines = np.arange(width) % acc == (width // 2) % acc
    left = width // 2 - n_acs // 2
    lines[left:left + n_acs] = True
    return lines.astype(np.float32)


def _rss_crop(kspace: np.ndarray) -> np.ndarray:
    """numpy reference: RSS of the centred orthonormal inverse FFT, centre crop/pad to 384x384."""
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    rss = np.sqrt((np.abs(img) ** 2).sum(1))
    S, H, W = rss.shape
    out = np.zeros((S, 384, 384), np.float64)
    h, w = min(H, 384), min(W, 384)
    out[:, (384 - h) // 2:(384 - h) // 2 + h, (384 - w) // 2:(384 - w) // 2 + w] = \
        rss[:, (H - h) // 2:(H - h) // 2 + h, (W - w) // 2:(W - w) // 2 + w]
    return out


def _ssim(x: np.ndarray, y: np.ndarray, data_range: float, region: np.ndarray) -> float:
    """Mean 7x7 SSIM (fastMRI constants) of one slice over ``region``."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = uniform_filter(x, 7), uniform_filter(y, 7)
    vx, vy = uniform_filter(x * x, 7) - mx * mx, uniform_filter(y * y, 7) - my * my
    cxy = uniform_filter(x * y, 7) - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[region].mean())


def _foreground(label: np.ndarray, anatomy: str) -> np.ndarray:
    return binary_dilation(label > THRESHOLD[anatomy], iterations=3)


# --------------------------------------------------------------------------------------------- layout


def test_tree_layout_and_names(tree):
    found = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    expected = set()
    for spec in sim.volume_specs(PRESET):
        for path in spec.paths(tree):
            expected.add(path.relative_to(tree).as_posix())
    assert found == expected
    assert "train/brain/kspace/brain_acc4_1.h5" in found
    assert "train/knee/image/knee_acc8_2.h5" in found
    assert "leaderboard/acc8/kspace/knee_test1.h5" in found
    assert len(found) == 2 * 2 * 2 * (PRESET.train_volumes + PRESET.leaderboard_volumes) + 2 * 2 * PRESET.real_train_volumes
    assert f"train/brain/kspace/brain_acc8_{PRESET.train_volumes + 1}.h5" in found  # real anatomy after the phantoms


def test_kspace_files_schema(tree):
    for path in _files(tree, "kspace"):
        data = _read(path)
        assert set(data) == {"kspace", "mask"}, path
        k, m = data["kspace"], data["mask"]
        assert k.dtype == np.complex64 and m.dtype == np.float32
        S, C, H, W = k.shape
        assert (S, C) == (PRESET.slices, PRESET.coils)
        if _anatomy(path) == "brain":
            assert (H, W) == PRESET.brain_shape
        else:
            assert H == PRESET.knee_height and W in PRESET.knee_widths
        assert m.shape == (W,)
        np.testing.assert_array_equal(m, _fixed_mask(W, _acc(path)))
        assert np.isfinite(k).all()
        # smooth phase and centred object: the k-space energy peaks at the DC position
        energy = (np.abs(k) ** 2).sum((0, 1))
        peak = np.unravel_index(np.argmax(energy), energy.shape)
        assert abs(peak[0] - H // 2) <= 3 and abs(peak[1] - W // 2) <= 3, (path, peak)


def test_image_files_schema_and_max(tree):
    for path in _files(tree, "image"):
        data = _read(path)
        assert set(data) == {"image_input", "image_grappa", "image_label", "attr:max"}, path
        for key in ("image_input", "image_grappa", "image_label"):
            assert data[key].dtype == np.float32 and data[key].shape == (PRESET.slices, 384, 384)
            assert np.isfinite(data[key]).all() and data[key].min() >= 0
        assert data["attr:max"] == pytest.approx(float(data["image_label"].max()), rel=1e-6)
        assert 1e-4 <= data["attr:max"] <= 2e-3, path


def test_leaderboard_kspace_is_undersampled_on_the_fixed_mask(tree):
    files = _files(tree, "kspace", "leaderboard")
    assert len(files) == 2 * 2 * PRESET.leaderboard_volumes
    for path in files:
        data = _read(path)
        k, m = data["kspace"], data["mask"]
        W = k.shape[-1]
        acc = _acc(path)
        n_acs = int(round(0.08 * W))
        outside = np.ones(W, bool)
        outside[W // 2 - n_acs // 2:W // 2 - n_acs // 2 + n_acs] = False
        # outside the ACS: exactly the comb of spacing acc at offset (W//2) % acc
        np.testing.assert_array_equal(np.flatnonzero(m * outside) % acc, (W // 2) % acc)
        assert (m * outside).sum() == (outside & (np.arange(W) % acc == (W // 2) % acc)).sum()
        assert int(m.sum()) == int(_fixed_mask(W, acc).sum())
        assert np.all(k[..., m == 0] == 0), path
        sampled = np.abs(k).sum((0, 1, 2)) > 0
        assert sampled[m == 1].mean() > 0.9  # sampled lines carry data (knee edges may be zero)
        # image_input is the zero-filled RSS of exactly this k-space
        image = _read(tree / path.parents[1].relative_to(tree) / "image" / path.name)
        np.testing.assert_allclose(image["image_input"], _rss_crop(k), rtol=1e-4, atol=1e-5 * image["attr:max"])


def test_train_kspace_fully_sampled_and_knee_edges_zero(tree):
    lo, hi = PRESET.knee_zero_columns
    for path in _files(tree, "kspace", "train"):
        k = _read(path)["kspace"]
        nonzero = np.abs(k).sum((0, 1, 2)) > 0
        if _anatomy(path) == "brain":
            assert nonzero.all(), path
            continue
        left, right = int(np.argmax(nonzero)), int(np.argmax(nonzero[::-1]))
        assert lo <= left <= hi and lo <= right <= hi, (path, left, right)
        assert nonzero[left:k.shape[-1] - right].all(), path  # fully sampled between the zero edges
        assert np.all(k[..., :left] == 0) and np.all(k[..., k.shape[-1] - right:] == 0)


def test_train_images_match_their_kspace(tree):
    for name in ("brain_acc4_1.h5", "knee_acc8_1.h5"):
        anatomy = name.split("_")[0]
        k = _read(tree / "train" / anatomy / "kspace" / name)
        image = _read(tree / "train" / anatomy / "image" / name)
        scale = image["attr:max"]
        np.testing.assert_allclose(image["image_label"], _rss_crop(k["kspace"]), atol=1e-5 * scale)
        np.testing.assert_allclose(image["image_input"], _rss_crop(k["kspace"] * k["mask"]), atol=1e-5 * scale)


# --------------------------------------------------------------------------------------------- content


def test_grappa_beats_zero_filled_at_acc4(tree):
    for path in _files(tree, "image"):
        if _acc(path) != 4:
            continue
        data = _read(path)
        label, max_value = data["image_label"].astype(np.float64), data["attr:max"]
        nmse = {k: float(((data[k] - label) ** 2).sum() / (label**2).sum()) for k in ("image_input", "image_grappa")}
        assert nmse["image_grappa"] < 0.5 * nmse["image_input"], (path, nmse)
        ssim = {}
        for key in ("image_input", "image_grappa"):
            ssim[key] = np.mean([_ssim(data[key][s].astype(np.float64), label[s], max_value,
                                       _foreground(label[s], _anatomy(path))) for s in range(label.shape[0])])
        assert ssim["image_grappa"] > ssim["image_input"], (path, ssim)
        assert ssim["image_input"] < 0.95  # undersampling visibly hurts: the task is non-trivial


def test_foreground_and_background_levels(tree):
    fractions = {"brain": [], "knee": []}
    for path in _files(tree, "image"):
        anatomy = _anatomy(path)
        label = _read(path)["image_label"]
        above = label > THRESHOLD[anatomy]
        fractions[anatomy].append(above.mean())
        assert 0.1 < above.mean() < 0.9, (path, above.mean())
        # the left/right 16 columns are air: below the threshold, but noisy (not exactly zero)
        strips = np.concatenate([label[..., :16], label[..., -16:]], axis=-1)
        assert (strips > THRESHOLD[anatomy]).mean() < 0.01, path
        assert strips.mean() > 0
        # object: the bulk of the above-threshold pixels sit clearly above it
        assert np.median(label[above]) > 2 * THRESHOLD[anatomy], path
    # the knee (leg through the whole field of view) covers more of the image than the head
    assert np.mean(fractions["knee"]) > np.mean(fractions["brain"]) + 0.1


def test_brain_and_knee_differ_and_volumes_vary(tree):
    def label(rel):
        return _read(tree / rel)["image_label"][0]

    brain1, brain2 = label("train/brain/image/brain_acc4_1.h5"), label("train/brain/image/brain_acc4_2.h5")
    knee1 = label("train/knee/image/knee_acc4_1.h5")
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    assert corr(brain1, knee1) < 0.7
    assert corr(brain1, brain2) < 0.95  # per-volume variation (pose, shape, contrast)
    # the head is a closed object with air above and below; the leg runs through top and bottom rows
    assert (brain1[:8] > THRESHOLD["brain"]).mean() < 0.01
    assert (knee1[:8] > THRESHOLD["knee"]).mean() > 0.3


def test_slices_vary_smoothly(tree):
    label = _read(tree / "train/brain/image/brain_acc4_1.h5")["image_label"].astype(np.float64)
    other = _read(tree / "train/brain/image/brain_acc4_2.h5")["image_label"].astype(np.float64)
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    assert corr(label[0], label[1]) > 0.8
    assert corr(label[0], label[1]) > corr(label[0], other[0])
    assert not np.array_equal(label[0], label[1])


# --------------------------------------------------------------------------------------------- determinism


def test_volumes_are_deterministic_and_order_independent(tree, tmp_path):
    specs = [sim.VolumeSpec("train", "knee", 8, 2), sim.VolumeSpec("leaderboard", "brain", 4, 1)]
    for spec in specs:  # regenerated alone, out of order: bit-identical to the full run
        sim.write_volume(tmp_path / "same", spec, PRESET, SEED)
    sim.write_volume(tmp_path / "other", specs[0], PRESET, SEED + 1)
    for spec in specs:
        for ref, new in zip(spec.paths(tree), spec.paths(tmp_path / "same")):
            a, b = _read(ref), _read(new)
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{new}: {key}")
    k_ref, k_other = (_read(p.parents[1] / "kspace" / p.name)["kspace"]
                      for p in (specs[0].paths(tree)[1], specs[0].paths(tmp_path / "other")[1]))
    assert k_ref.shape != k_other.shape or not np.array_equal(k_ref, k_other)


def test_volume_rng_keys():
    spec = sim.VolumeSpec("train", "brain", 4, 1)
    draw = lambda seed, s: sim.volume_rng(seed, s).integers(0, 2**62)  # noqa: E731
    assert draw(0, spec) == draw(0, spec)
    assert draw(0, spec) != draw(1, spec)
    others = [sim.VolumeSpec("leaderboard", "brain", 4, 1), sim.VolumeSpec("train", "knee", 4, 1),
              sim.VolumeSpec("train", "brain", 8, 1), sim.VolumeSpec("train", "brain", 4, 2)]
    assert len({draw(0, s) for s in others + [spec]}) == 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        sim.generate_dataset("unused", "huge", 0)
    with pytest.raises(ValueError, match="anatomy"):
        sim.simulate_kspace(np.random.default_rng(0), "heart", PRESET)
    with pytest.raises(SystemExit):
        sim._main(["--out", "unused", "--preset", "huge"])


# --------------------------------------------------------------------------------------------- phantoms


def test_smooth_field_statistics_and_slice_continuity():
    grid = make_grid(np.arange(4) * 0.02, 96, 80)
    field = smooth_field(np.random.default_rng(0), grid, 12.0, 0.2)
    assert field.shape == (4, 96, 80) and field.dtype == np.float32
    assert abs(field.mean()) < 1e-5 and field.std() == pytest.approx(1.0, rel=1e-4)
    assert np.corrcoef(field[0].ravel(), field[1].ravel())[0, 1] > 0.9  # close slices, similar field
    assert np.abs(np.diff(field, axis=-1)).mean() < 0.3  # smooth in-plane (cell 12 px)
    again = smooth_field(np.random.default_rng(0), grid, 12.0, 0.2)
    np.testing.assert_array_equal(field, again)


def test_coil_maps_smooth_and_normalised():
    rng = np.random.default_rng(3)
    grid = make_grid([0.0, 0.05], 128, 96)
    coils = CoilArray.sample(rng, 8, (0.95, 1.1), (0.0, 0.0, 0.0), axis="z")
    maps = coils.maps(grid)
    assert maps.shape == (2, 8, 128, 96) and maps.dtype == torch.complex64
    rss = maps.abs().pow(2).sum(1).sqrt()
    assert float(rss[0, 64, 48]) == pytest.approx(1.0, rel=0.05)  # normalised at the centre
    inside = rss[:, 32:96, 24:72]
    assert float(inside.max() / inside.min()) < 4.0  # moderate intensity bias over the object
    # smooth complex maps: small change between neighbouring pixels, distinct coils
    step = (maps[..., 1:, :] - maps[..., :-1, :]).abs().max()
    assert float(step) < 0.1 * float(maps.abs().max())
    flat = maps[0].reshape(8, -1)
    gram = (flat @ flat.conj().T).abs()
    assert float((gram / gram.diagonal().sqrt()[:, None] / gram.diagonal().sqrt()[None]).fill_diagonal_(0).max()) < 0.99
    with pytest.raises(ValueError, match="axis"):
        CoilArray.sample(rng, 4, (1.0, 1.0), (0.0, 0.0, 0.0), axis="x")


# --------------------------------------------------------------------------------------------- real anatomy


def test_real_training_volumes_use_only_training_slices(monkeypatch):
    """Every real training slab comes from a source's training split (never a held-out slice) as a run of
    consecutive slices; sources and time points vary over volumes."""
    from data import real_anatomy as ra

    seen = []
    load = ra.load_slices

    def spy(name, slices=None, frame=0):
        seen.append((name, tuple(slices), frame))
        return load(name, slices, frame)

    monkeypatch.setattr(ra, "load_slices", spy)
    monkeypatch.setattr(ra, "kspace_from_magnitude", lambda rng, mag, z, anatomy, coils: (mag, z))
    shapes = set()
    for i in range(12):
        mag, z = ra.real_train_kspace(np.random.default_rng(i), (200, 160), 4, 2, pixel_mm=1.6)
        shapes.add(mag.shape)
        assert mag.dtype == np.float32 and mag.min() >= 0 and np.isfinite(mag).all()
        assert len(z) == mag.shape[0] and np.all(np.diff(z) > 0)
    for name, slices, frame in seen:
        src = ra.source(name)
        assert set(slices) <= set(src.train) and not set(slices) & set(src.held_out), (name, slices)
        assert list(slices) == list(range(slices[0], slices[0] + len(slices)))
    assert {name for name, _, _ in seen} == set(ra.TRAIN_SOURCES)
    assert {frame for name, _, frame in seen if name == "example4d"} == {0, 1}
    assert shapes == {(4, 200, 160)}


def test_real_augmentation_changes_shape_and_contrast_and_is_seeded():
    from data import real_anatomy as ra

    real = ra.load_slices("example4d", (2, 3), 0)
    mag = ra.to_grid(real.images, real.pixel_mm, 1.6, (160, 160))
    z = np.array([-0.01, 0.01], np.float32)
    a = ra.augment_magnitude(np.random.default_rng(1), mag, z)
    b = ra.augment_magnitude(np.random.default_rng(2), mag, z)
    np.testing.assert_array_equal(a, ra.augment_magnitude(np.random.default_rng(1), mag, z))
    assert a.shape == mag.shape and a.min() >= 0
    support = lambda m: m > 0.1 * m.max()  # noqa: E731
    assert (support(a) != support(b)).mean() > 0.02  # the head moved / changed shape
    assert (support(a) != support(mag)).mean() > 0.02
    corr = float(np.corrcoef(a.ravel(), mag.ravel())[0, 1])
    assert 0.2 < corr < 0.98  # the same anatomy, not the same image


def test_real_training_volume_in_tree_is_real_brain(tree):
    """The tree's real-anatomy training volume: challenge scale and levels like the phantoms, brain
    outline with air around it, and different from every phantom volume."""
    name = f"brain_acc4_{PRESET.train_volumes + 1}.h5"
    real = _read(tree / "train/brain/image" / name)["image_label"]
    assert real.shape == (PRESET.slices, 384, 384) and 1e-4 <= float(real.max()) <= 2e-3
    inside = real[real > THRESHOLD["brain"]]
    assert sim.LABEL_MEDIAN["brain"][0] * 0.8 <= float(np.median(inside)) <= sim.LABEL_MEDIAN["brain"][1] * 1.2
    assert (real[:, :8] > THRESHOLD["brain"]).mean() < 0.01 and (real[:, :, :8] > THRESHOLD["brain"]).mean() < 0.01
    for i in range(1, PRESET.train_volumes + 1):
        phantom = _read(tree / f"train/brain/image/brain_acc4_{i}.h5")["image_label"]
        assert float(np.corrcoef(real[0].ravel(), phantom[0].ravel())[0, 1]) < 0.9
