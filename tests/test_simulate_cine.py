"""Tests for the beating-heart simulator (data/heart_phantom.py, data/simulate_cine.py), tiny preset."""

import dataclasses

import numpy as np
import pytest
import torch

import data.heart_phantom as heart
from data.cine import (
    ACDC_GROUPS,
    ejection_fraction,
    list_acdc_patients,
    read_acdc_patient,
    read_cine_kspace,
    read_cine_mask,
    validate_cine_path,
)
from data.cine_masks import estimate_cine_mask, make_cine_mask
from data.heart_phantom import GROUPS, LABEL_LV, LABEL_MYO, LABEL_RV, es_frame, render, sample_subject, sax_planes
from data.matlab import mat_variables
from data.simulate_cine import PRESETS, _main, generate_dataset, simulate_subject, subject_rng, subject_specs
from utils.physics import ifft2c, rss

TINY = PRESETS["tiny"]
ACCS = (4, 8, 10)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("cine") / "data"
    assert _main(["--out", str(out), "--preset", "tiny", "--seed", "7", "--no-progress"]) == 0
    return out


def cine_root(out):
    return out / "CMRxRecon" / "MultiCoil" / "Cine"


def relative_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- layout


def test_tree_layout_and_keys(tree):
    expected = []
    for set_name, n in (("TrainingSet", TINY.train_subjects), ("ValidationSet", TINY.val_subjects)):
        for i in range(1, n + 1):
            for view in ("sax", "lax"):
                expected.append(f"{set_name}/FullSample/P{i:03d}/cine_{view}.mat")
                for acc in ACCS:
                    expected += [f"{set_name}/AccFactor{acc:02d}/P{i:03d}/cine_{view}.mat",
                                 f"{set_name}/AccFactor{acc:02d}/P{i:03d}/cine_{view}_mask.mat"]
    assert relative_files(cine_root(tree)) == sorted(expected)
    set_dir = cine_root(tree) / "TrainingSet"
    T, C = TINY.frames, TINY.coils
    for view, slices, (ky, kx) in (("sax", TINY.sax_slices, TINY.sax_shape), ("lax", 3, TINY.lax_shape)):
        full = mat_variables(set_dir / "FullSample" / "P001" / f"cine_{view}.mat")
        assert list(full) == ["kspace_full"]
        shape, dtype = full["kspace_full"]
        assert shape == (T, slices, C, ky, kx) and dtype == np.complex64
        for acc in ACCS:
            folder = set_dir / f"AccFactor{acc:02d}" / "P001"
            sub = mat_variables(folder / f"cine_{view}.mat")
            assert list(sub) == [f"kspace_sub{acc:02d}"] and sub[f"kspace_sub{acc:02d}"][0] == shape
            mask = mat_variables(folder / f"cine_{view}_mask.mat")
            assert list(mask) == [f"mask{acc:02d}"] and mask[f"mask{acc:02d}"][0] == (ky, kx)

    patients = list_acdc_patients(tree / "ACDC")
    names = [f"{p.parent.name}/{p.name}" for p in patients]
    assert names == ["testing/patient003", "training/patient001", "training/patient002"]
    for patient_dir in patients:
        files = {p.name for p in patient_dir.iterdir()}
        patient = read_acdc_patient(patient_dir, load_cine=True)
        info = patient.info
        assert info.ed == 1 and 1 < info.es < TINY.frames and info.nb_frame == TINY.frames
        assert files == {"Info.cfg", f"{patient_dir.name}_4d.nii.gz"} | {
            f"{patient_dir.name}_frame{n:02d}{sfx}.nii.gz" for n in (info.ed, info.es) for sfx in ("", "_gt")}
        assert info.group in ACDC_GROUPS and 140 < info.height < 200 and 40 < info.weight < 130
        assert patient.cine.shape == (TINY.frames, TINY.sax_slices, TINY.sax_shape[0], TINY.sax_shape[1] // 2)
        dz, dy, dx = patient.spacing
        assert dy == dx == TINY.pixel_mm and 5.0 < dz < 40.0
    assert [read_acdc_patient(p).info.group for p in patients] == ["HCM", "NOR", "DCM"]  # groups by subject


def test_trees_pass_the_format_check(tree):
    assert validate_cine_path(cine_root(tree)) == []
    assert validate_cine_path(tree / "ACDC") == []


def test_undersampled_kspace_is_full_times_the_2023_mask(tree):
    for set_name in ("TrainingSet", "ValidationSet"):
        set_dir = cine_root(tree) / set_name
        for view in ("sax", "lax"):
            full = read_cine_kspace(set_dir / "FullSample" / "P001" / f"cine_{view}.mat")
            assert np.abs(full).min() > 0, "fully sampled k-space has no zero samples"
            for acc in ACCS:
                folder = set_dir / f"AccFactor{acc:02d}" / "P001"
                mask = read_cine_mask(folder / f"cine_{view}_mask.mat")
                sub = read_cine_kspace(folder / f"cine_{view}.mat")
                np.testing.assert_array_equal(sub, full * mask)
                ky, kx = mask.shape
                np.testing.assert_array_equal(mask, make_cine_mask("uniform", (1, ky, kx), acc)[0])
                assert mask[ky // 2 - 12:ky // 2 + 12].all(), "24 central ACS lines"
                assert estimate_cine_mask(mask, supported=ACCS) == (acc, "uniform")


# --------------------------------------------------------------------------------------------- acquisition


def test_images_readout_oversampling_and_noise(tree):
    sim = simulate_subject(7, subject_specs(TINY)[0], TINY)
    k = torch.from_numpy(sim.sax.kspace)
    coil_images = ifft2c(k)
    image = rss(coil_images, dim=2).numpy()  # (t, S, ky, kx)
    labels = sim.sax.labels
    ky, kx = image.shape[-2:]
    # the heart sits inside the nominal field of view (central half of the oversampled readout)
    assert (labels[..., : kx // 4] == 0).all() and (labels[..., 3 * kx // 4:] == 0).all()
    # bright blood, dark myocardium (bSSFP) in every frame
    for t in range(image.shape[0]):
        assert image[t][labels[t] == LABEL_LV].mean() > 1.5 * image[t][labels[t] == LABEL_MYO].mean()
    # noise: air is dark but not zero; coils see different, smoothly varying sensitivities
    air = image[0][:, :, :4]
    assert 0 < np.median(air) < 0.2 * np.median(image[0][labels[0] > 0])
    mid = coil_images[0, 1].abs()
    assert not torch.allclose(mid[0], mid[1])
    # the FullSample file holds exactly this k-space (bit-identical regeneration)
    written = read_cine_kspace(cine_root(tree) / "TrainingSet" / "FullSample" / "P001" / "cine_sax.mat")
    np.testing.assert_array_equal(written, sim.sax.kspace)


def test_acdc_images_and_labels_follow_the_cycle(tree):
    efs = {}
    for patient_dir in list_acdc_patients(tree / "ACDC"):
        p = read_acdc_patient(patient_dir, load_cine=True)
        for frame in (p.info.ed, p.info.es):
            image, label = p.frames[frame], p.labels[frame]
            assert set(np.unique(label)) == {0, LABEL_RV, LABEL_MYO, LABEL_LV}
            assert image[label == LABEL_LV].mean() > 1.5 * image[label == LABEL_MYO].mean()
            np.testing.assert_array_equal(image, p.cine[frame - 1])
        ef = ejection_fraction(p.ed_label, p.es_label, p.spacing)
        assert ef["lv_edv_ml"] > ef["lv_esv_ml"] > 0 and ef["rv_edv_ml"] > ef["rv_esv_ml"] > 0
        assert 40 < ef["lv_edv_ml"] < 400 and 40 < ef["myo_mass_g"] < 350
        efs[p.info.group] = ef["lv_ef"]
    assert efs["DCM"] < 40 < efs["NOR"] and efs["DCM"] < efs["HCM"]


def test_labels_every_frame_volume_curve_and_ef(tree):
    sim = simulate_subject(7, subject_specs(TINY)[0], TINY)  # NOR
    for view in (sim.sax, sim.lax):
        T = view.labels.shape[0]
        for t in range(T):
            assert set(np.unique(view.labels[t])) == {0, LABEL_RV, LABEL_MYO, LABEL_LV}, t
    lv = (sim.sax.labels == LABEL_LV).sum(axis=(1, 2, 3))
    assert lv.argmax() == 0 and lv.argmin() == sim.es_frame
    assert 0 < sim.es_frame < TINY.frames // 2 + 1


@pytest.mark.parametrize("group", GROUPS)
def test_ejection_fraction_and_wall_by_group(group):
    """At demo-like resolution (5 slices, 3 mm pixels): LV and RV EF from the labels in the group's
    range (a failing RV in the RV and DCM groups), max volumes at ED and min at ES, myocardium
    thickening in systole."""
    frames, ranges = 12, {"NOR": (50, 80), "DCM": (5, 40), "HCM": (50, 85), "MINF": (10, 55), "RV": (50, 80)}
    for seed in (0, 1):
        subject = sample_subject(np.random.default_rng([seed, GROUPS.index(group)]), group)
        planes = sax_planes(subject, 5, (96, 96), 3.0)
        _, labels = render(subject, planes, frames)
        lv = (labels == LABEL_LV).sum(axis=(1, 2, 3)).astype(float)
        es = es_frame(subject, frames)
        assert lv.argmax() == 0 and lv.argmin() == es
        ef = 100 * (1 - lv[es] / lv[0])
        lo, hi = ranges[group]
        assert lo < ef < hi, (group, seed, ef)
        rv = (labels == LABEL_RV).sum(axis=(1, 2, 3)).astype(float)
        assert rv.argmax() == 0 and rv.argmin() == es
        rv_ef = 100 * (1 - rv[es] / rv[0])
        assert (10 < rv_ef < 40) if group in ("RV", "DCM") else (33 < rv_ef < 80), (group, seed, rv_ef)
        # wall thickness of the mid slice from ring areas: thicker at ES (incompressible myocardium)
        mid = labels[:, 2]
        endo = (mid == LABEL_LV).sum(axis=(1, 2))
        epi = endo + (mid == LABEL_MYO).sum(axis=(1, 2))
        thick = np.sqrt(epi / np.pi) - np.sqrt(endo / np.pi)
        assert thick[es] > 1.05 * thick[0]
        if group == "HCM":
            assert thick[0] * 3.0 > 12.0, "HCM wall at least 12 mm"
        if group == "DCM":
            assert thick[0] * 3.0 < 9.0


def test_render_is_chunk_independent(monkeypatch):
    subject = sample_subject(np.random.default_rng(3), "MINF")
    planes = sax_planes(subject, 2, (32, 48), 6.0)
    whole = render(subject, planes, 6)
    monkeypatch.setattr(heart, "_CHUNK_PIXELS", 2**25)  # one frame per chunk
    chunked = render(subject, planes, 6)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------- reproducibility


def test_bit_identical_per_seed_and_order_independent(tree, tmp_path):
    generate_dataset(tmp_path / "again", "tiny", seed=7, progress=False, subjects=[3, 1])  # other order, subset
    for rel in ("ValidationSet/FullSample/P001/cine_lax.mat", "TrainingSet/AccFactor08/P001/cine_sax.mat"):
        a = read_cine_kspace(cine_root(tree) / rel)
        b = read_cine_kspace(cine_root(tmp_path / "again") / rel)
        np.testing.assert_array_equal(a, b)
    for rel in ("testing/patient003/patient003_4d.nii.gz", "training/patient001/patient001_frame01_gt.nii.gz"):
        assert (tree / "ACDC" / rel).read_bytes() == (tmp_path / "again" / "ACDC" / rel).read_bytes()
    assert not (tmp_path / "again" / "ACDC" / "training" / "patient002").exists()
    other = simulate_subject(8, subject_specs(TINY)[0], TINY)
    assert not np.array_equal(other.sax.kspace, read_cine_kspace(
        cine_root(tree) / "TrainingSet" / "FullSample" / "P001" / "cine_sax.mat"))


def test_specs_seeds_and_bad_arguments(tmp_path, capsys):
    specs = subject_specs(PRESETS["demo"])
    assert [s.name for s in specs] == [f"P{i:03d}" for i in range(1, 9)] + ["P001", "P002", "P003"]
    assert [s.global_number for s in specs] == list(range(1, 12))
    assert [s.group for s in specs[:6]] == ["NOR", "DCM", "HCM", "MINF", "RV", "NOR"]
    a, b = subject_rng(1, specs[0]).random(), subject_rng(1, specs[1]).random()
    assert a != b and a == subject_rng(1, specs[0]).random() and a != subject_rng(2, specs[0]).random()
    assert specs[8].name == specs[0].name and subject_rng(1, specs[8]).random() != a  # keyed by global number
    with pytest.raises(ValueError, match="unknown preset"):
        generate_dataset(tmp_path, "huge")
    with pytest.raises(ValueError, match="seed"):
        generate_dataset(tmp_path, "tiny", seed=-1)
    with pytest.raises(ValueError, match="subjects"):
        generate_dataset(tmp_path, "tiny", subjects=[4])
    with pytest.raises(ValueError, match="group"):
        sample_subject(np.random.default_rng(0), "XYZ")
    with pytest.raises(SystemExit) as exc:
        _main(["--out", str(tmp_path), "--preset", "tiny", "--seed", "-3"])
    assert exc.value.code == 2
    assert not any(tmp_path.iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _main(["--out", str(blocker / "out"), "--preset", "tiny", "--no-progress"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_acdc_tree_only_is_the_same_acdc_data(tree, tmp_path):
    """``--trees acdc`` writes the ACDC tree alone, byte for byte the files of the full run, and skips the LAX
    views; the ``codec`` preset is ``demo`` with more training subjects (its subjects equal demo's)."""
    out = tmp_path / "acdc"
    assert _main(["--out", str(out), "--preset", "tiny", "--seed", "7", "--trees", "acdc", "--no-progress"]) == 0
    assert not (out / "CMRxRecon").exists()
    assert relative_files(out / "ACDC") == relative_files(tree / "ACDC") and relative_files(out)
    for rel in relative_files(out / "ACDC"):
        assert (out / "ACDC" / rel).read_bytes() == (tree / "ACDC" / rel).read_bytes(), rel
    spec = subject_specs(TINY)[0]
    short = simulate_subject(7, spec, TINY, lax=False)
    assert short.lax is None
    np.testing.assert_array_equal(short.sax.kspace, simulate_subject(7, spec, TINY).sax.kspace)
    codec, demo = PRESETS["codec"], PRESETS["demo"]
    assert codec.train_subjects == 5 * demo.train_subjects
    assert dataclasses.replace(codec, name="demo", train_subjects=demo.train_subjects) == demo
    with pytest.raises(ValueError, match="trees"):
        generate_dataset(tmp_path / "x", "tiny", trees="cmrxrecon")
