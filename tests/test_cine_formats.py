"""data.cine: CMRxRecon 2023/2024 trees and ACDC read/written as shipped, and `check` on every bad input."""
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from data import cine as C
from data import cli
from data import formats as F
from data import matlab as M

REPO = Path(__file__).resolve().parents[1]
T, S, NC, KY, KX = 3, 2, 3, 16, 24


def _kspace(seed=0, shape=(T, S, NC, KY, KX)):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _mask(acc=4, frames=None):
    m = np.zeros((KY, KX))
    m[::acc] = 1
    m[KY // 2 - 2: KY // 2 + 2] = 1
    if frames is None:
        return m
    return np.stack([np.roll(m, t, axis=0) for t in range(frames)])


def _tree(root: Path, subjects=("P001",), accs=(4,), views=("sax", "lax")) -> Path:
    set_dir = root / "MultiCoil" / "Cine" / "TrainingSet"
    for i, subject in enumerate(subjects):
        for j, view in enumerate(views):
            k = _kspace(seed=10 * i + j)
            C.write_cine_fullsample(set_dir, subject, view, k)
            for acc in accs:
                C.write_cine_undersampled(set_dir, subject, view, k, _mask(acc), acc)
    return set_dir


# ------------------------------------------------------------------------------------------ reading


def test_tree_cases_and_readers(tmp_path):
    set_dir = _tree(tmp_path, subjects=("P001", "P002"), accs=(4, 8))
    cases = C.list_cine_cases(set_dir)
    assert len(cases) == 2 * 2 * 2
    case = next(c for c in cases if c.subject == "P002" and c.view == "sax" and c.acceleration == 8)
    assert case.mask_name == "AccFactor08" and case.kspace_key == "kspace_sub08" and case.mask_key == "mask08"
    assert case.relpath == Path("AccFactor08/P002/cine_sax.mat") and case.group == "cine_sax/AccFactor08"
    assert case.full_path == set_dir / "FullSample" / "P002" / "cine_sax.mat" and case.layout == "2023"
    full = case.read_full()
    assert full.shape == (T, S, NC, KY, KX) and full.dtype == np.complex64
    np.testing.assert_array_equal(full, _kspace(seed=10))
    mask = case.read_mask()
    assert mask.shape == (KY, KX) and mask.dtype == np.float32
    np.testing.assert_array_equal(case.read_kspace(), full * mask)
    with h5py.File(case.kspace_path, "r") as f:  # the challenge's own h5py reading sees the same axes
        assert f["kspace_sub08"].shape == (T, S, NC, KY, KX) and f["kspace_sub08"].dtype.names == ("real", "imag")
    with h5py.File(case.mask_path, "r") as f:
        assert f["mask08"].shape == (KY, KX) and f["mask08"].attrs["MATLAB_class"] == b"double"
    assert [c.subject for c in C.list_cine_cases(set_dir, views=["lax"])] == ["P001", "P002"] * 2
    assert [(f.subject, f.view) for f in C.list_fullsample(set_dir)] == [
        ("P001", "lax"), ("P001", "sax"), ("P002", "lax"), ("P002", "sax")]
    assert C.find_cine_sets(tmp_path) == [set_dir] and C.find_cine_sets(set_dir) == [set_dir]
    with C.open_cine_kspace(case.kspace_path) as var:  # lazy, frame by frame
        assert var.shape == (T, S, NC, KY, KX) and var.key == "kspace_sub08"
        np.testing.assert_array_equal(var[1], full[1] * mask)
        np.testing.assert_array_equal(var[2, 1], full[2, 1] * mask)


def test_2024_layout(tmp_path):
    """2024 names (Format_Task{1,2}.txt): UnderSample_TaskN/..._kus_<Pattern><R>.mat (kus) and
    Mask_TaskN/..._mask_<Pattern><R>.mat (mask); kt masks (t, ky, kx); TrainingSet masks without kus."""
    set_dir = tmp_path / "MultiCoil" / "Cine" / "ValidationSet"
    k = _kspace()
    C.write_cine_fullsample(set_dir, "P001", "lvot", k)
    kpath, mpath = C.write_cine_undersampled(set_dir, "P001", "lvot", k, _mask(8, frames=T), 8, pattern="ktRadial",
                                             layout="2024")
    assert kpath == set_dir / "UnderSample_Task2" / "P001" / "cine_lvot_kus_ktRadial8.mat"
    assert mpath == set_dir / "Mask_Task2" / "P001" / "cine_lvot_mask_ktRadial8.mat"
    with h5py.File(mpath, "r") as f:
        assert f["mask"].shape == (T, KY, KX)  # MATLAB (nx, ny, nt)
    task1 = set_dir / "Mask_Task1" / "P001" / "cine_lvot_mask_Uniform4.mat"  # mask only: apply to FullSample
    M.write_mat73(task1, {"mask": _mask(4)})
    cases = C.list_cine_cases(set_dir)
    assert len(cases) == 1
    case = cases[0]
    assert (case.pattern, case.acceleration, case.mask_name, case.view, case.layout) == ("ktRadial", 8, "ktRadial8", "lvot", "2024")
    np.testing.assert_array_equal(case.read_kspace(), k * _mask(8, frames=T)[:, None, None].astype(np.float32))
    derived = [c for c in C.list_cine_cases(set_dir, include_mask_only=True) if c.kspace_path is None]
    assert len(derived) == 1 and derived[0].mask_name == "Uniform4" and derived[0].relpath == task1.relative_to(set_dir)
    np.testing.assert_array_equal(derived[0].read_kspace(), k * _mask(4).astype(np.float32))
    assert F.validate_path(tmp_path) == []


def test_v5_mask_and_submission(tmp_path):
    """Small files saved by MATLAB's default (v5/v7, here scipy) read like v7.3; submission file layout."""
    set_dir = _tree(tmp_path)
    mpath = set_dir / "AccFactor04" / "P001" / "cine_sax_mask.mat"
    mpath.unlink()
    scipy.io.savemat(mpath, {"mask04": _mask(4).T})  # MATLAB order (kx, ky)
    np.testing.assert_array_equal(C.read_cine_mask(mpath), _mask(4))
    assert F.validate_path(tmp_path) == []
    sub = tmp_path / "Submission" / "MultiCoil" / "Cine" / "TrainingSet" / C.list_cine_cases(set_dir)[0].relpath
    C.write_submission_file(sub, np.ones((3, 2, 5, 8)))
    with h5py.File(sub, "r") as f:
        assert f["img4ranking"].dtype == np.float32 and f["img4ranking"].shape == (3, 2, 5, 8)
    assert F.validate_path(sub) == []


# ------------------------------------------------------------------------------------------ validator


def _rewrite(path: Path, **variables):
    path.unlink()
    M.write_mat73(path, variables)


def _bomb(path: Path, shape):
    path.unlink()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("kspace_sub04", shape=shape, dtype=np.dtype([("real", "<f4"), ("imag", "<f4")]),
                              chunks=(1, 1, 1) + tuple(shape[-2:]))
        ds.attrs["MATLAB_class"] = np.bytes_("single")


ACC = "AccFactor04/P001/cine_sax.mat"
MASK = "AccFactor04/P001/cine_sax_mask.mat"
FULL = "FullSample/P001/cine_sax.mat"

CINE_CASES = {
    "missing key": (lambda s: _rewrite(s / ACC, kspace_sub08=_kspace()), ACC, "kspace_sub04: missing variable"),
    "wrong ndim": (lambda s: _rewrite(s / ACC, kspace_sub04=_kspace()[0]), ACC, "expected 5 dimensions"),
    "real k-space": (lambda s: _rewrite(s / ACC, kspace_sub04=np.ones((T, S, NC, KY, KX), np.float32)), ACC,
                     "expected complex k-space"),
    "complex mask": (lambda s: _rewrite(s / MASK, mask04=_mask(4) + 0j), MASK, "expected a real 0/1 mask"),
    "non-binary mask": (lambda s: _rewrite(s / MASK, mask04=_mask(4) * 0.5), MASK, "not binary"),
    "mask ndim": (lambda s: _rewrite(s / MASK, mask04=_mask(4, frames=T)[None]), MASK, "expected a mask (ky, kx) or (t, ky, kx)"),
    "mask shape": (lambda s: _rewrite(s / MASK, mask04=_mask(4)[:, :20]), ACC, "does not match its mask (16, 20)"),
    "frames differ": (lambda s: _rewrite(s / ACC, kspace_sub04=_kspace()[:2] * _mask(4)), ACC,
                      "2 frames but FullSample has 3"),
    "slices differ": (lambda s: _rewrite(s / ACC, kspace_sub04=_kspace()[:, :1] * _mask(4)), ACC,
                      "1 slices but FullSample has 2"),
    "non-finite": (lambda s: _nan(s / FULL), FULL, "kspace_full: 1 non-finite values"),
    "truncated": (lambda s: _truncate(s / ACC), ACC, "unreadable or truncated HDF5/v7.3 file"),
    "bomb": (lambda s: _bomb(s / ACC, (10**4, 10**3, 10, 256, 512)), ACC, "exceeds the 16.0 GiB limit"),
    "unwritten data": (lambda s: _bomb(s / ACC, (T, S, NC, KY, KX)), ACC, "but the file stores 0"),
    "missing mask": (lambda s: (s / MASK).unlink(), ACC, "mask file cine_sax_mask.mat is missing"),
    "orphan mask": (lambda s: (s / ACC).unlink(), MASK, "mask without its k-space file cine_sax.mat"),
    "outside mask": (lambda s: _rewrite(s / ACC, kspace_sub04=_kspace(seed=1)), ACC, "nonzero samples outside the mask"),
    "missing full file": (lambda s: (s / FULL).unlink(), ACC, "no FullSample file FullSample/P001/cine_sax.mat"),
    "subject missing": (lambda s: C.write_cine_undersampled(s, "P007", "sax", _kspace(), _mask(4), 4),
                        "AccFactor04/P007", "subject P007 is missing from"),
    "garbage": (lambda s: (s / ACC).write_bytes(b"\x00garbage" * 40), ACC, "not a MATLAB MAT-file"),
}


def _nan(path: Path):
    with h5py.File(path, "r+") as f:  # the user block survives in-place edits
        f["kspace_full"][2, 1, 0, 3, 4] = (np.nan, 0.0)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("name", list(CINE_CASES))
def test_cine_check_one_line(tmp_path, name, capsys):
    set_dir = _tree(tmp_path)
    assert F.validate_path(tmp_path) == []
    mutate, rel, words = CINE_CASES[name]
    mutate(set_dir)
    problems = F.validate_path(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{set_dir / rel}: "), problems[0]
    assert words in problems[0], problems[0]
    assert cli.main(["check", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == problems[0]


def test_2024_mask_dimensions(tmp_path):
    set_dir = tmp_path / "TestSet"  # a set folder given directly
    k = _kspace()
    _, mpath = C.write_cine_undersampled(set_dir, "P001", "sax", k, _mask(4, frames=T), 4, pattern="ktUniform",
                                         layout="2024")
    assert F.validate_path(set_dir) == []
    _rewrite(mpath, mask=_mask(4))
    problems = F.validate_path(set_dir)
    assert len(problems) == 1 and problems[0].startswith(f"{mpath}: mask: expected a mask (t, ky, kx)"), problems


def test_check_cli_exit_codes(tmp_path):
    set_dir = _tree(tmp_path)
    run = lambda p: subprocess.run([sys.executable, "-m", "data.formats", "check", str(p)], cwd=REPO,
                                   capture_output=True, text=True, timeout=120)
    ok = run(tmp_path / "MultiCoil")
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    _nan(set_dir / FULL)
    bad = run(set_dir / FULL)  # a single .mat file
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [f"{set_dir / FULL}: kspace_full: 1 non-finite values"]


# ------------------------------------------------------------------------------------------ ACDC


def _acdc(root: Path, pid=1, split="training"):
    rng = np.random.default_rng(pid)
    cine = rng.random((5, 2, 12, 10)).astype(np.float32) * 100
    labels = {}
    for frame, radius in ((1, 4), (3, 2)):  # LV disc shrinking from ED to ES; RV and myocardium fixed
        lab = np.zeros((2, 12, 10), np.uint8)
        yy, xx = np.mgrid[:12, :10]
        lab[:, (yy - 6) ** 2 + (xx - 5) ** 2 <= (radius + 1) ** 2] = 2
        lab[:, (yy - 6) ** 2 + (xx - 5) ** 2 <= radius ** 2] = 3
        lab[:, :2, :3] = 1
        labels[frame] = lab
    info = C.AcdcInfo(ed=1, es=3, group="DCM", height=181.0, weight=77.5, nb_frame=5)
    return C.write_acdc_patient(root / split, pid, cine, (10.0, 1.5, 1.25), info, labels, frame_ms=35.0), cine, labels


def test_acdc_roundtrip_and_volumes(tmp_path):
    patient, cine, labels = _acdc(tmp_path / "ACDC")
    assert sorted(p.name for p in patient.iterdir()) == [
        "Info.cfg", "patient001_4d.nii.gz", "patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz",
        "patient001_frame03.nii.gz", "patient001_frame03_gt.nii.gz"]
    assert (patient / "Info.cfg").read_text().splitlines() == [
        "ED: 1", "ES: 3", "Group: DCM", "Height: 181.0", "NbFrame: 5", "Weight: 77.5"]
    import nibabel

    disk = nibabel.load(str(patient / "patient001_4d.nii.gz"))
    assert disk.shape == (10, 12, 2, 5)  # NIfTI (x, y, z, t)
    np.testing.assert_allclose(disk.header.get_zooms(), (1.25, 1.5, 10.0, 35.0))
    p = C.read_acdc_patient(patient, load_cine=True)
    assert p.name == "patient001" and p.info.group == "DCM" and p.info.nb_frame == 5
    np.testing.assert_allclose(p.spacing, (10.0, 1.5, 1.25))
    np.testing.assert_array_equal(p.cine, cine)
    np.testing.assert_array_equal(p.ed_image, cine[0])
    np.testing.assert_array_equal(p.es_label, labels[3])
    assert p.ed_label.dtype == np.uint8
    assert C.list_acdc_patients(tmp_path / "ACDC") == [patient] == C.list_acdc_patients(patient)
    # volumes: voxel = 10 * 1.5 * 1.25 mm^3 = 0.01875 mL
    voxel = 0.01875
    ef = C.ejection_fraction(p.ed_label, p.es_label, p.spacing)
    lv_ed, lv_es = int((labels[1] == 3).sum()), int((labels[3] == 3).sum())
    assert ef["lv_edv_ml"] == pytest.approx(lv_ed * voxel) and ef["lv_esv_ml"] == pytest.approx(lv_es * voxel)
    assert ef["lv_ef"] == pytest.approx(100 * (lv_ed - lv_es) / lv_ed)
    assert ef["rv_edv_ml"] == pytest.approx(12 * voxel) and ef["rv_ef"] == pytest.approx(0.0)
    assert ef["myo_mass_g"] == pytest.approx(int((labels[1] == 2).sum()) * voxel * 1.05)
    per_frame = C.cavity_volumes_ml(np.stack([labels[1], labels[3]]), p.spacing)
    np.testing.assert_allclose(per_frame["lv"], [lv_ed * voxel, lv_es * voxel])
    assert np.isnan(C.ejection_fraction(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), (1, 1, 1))["lv_ef"])
    before = (patient / "patient001_4d.nii.gz").read_bytes()
    _acdc(tmp_path / "ACDC")  # deterministic bytes (gzip mtime 0)
    assert (patient / "patient001_4d.nii.gz").read_bytes() == before
    assert not list(patient.glob(".*.tmp"))
    assert F.validate_path(tmp_path) == []


def _cfg(patient: Path, text: str):
    (patient / "Info.cfg").write_text(text)


def _nifti(path: Path, array, spacing=(10.0, 1.5, 1.25)):
    path.unlink()
    C.write_nifti(path, array, spacing)


ACDC_CASES = {
    "cfg key": (lambda p: _cfg(p, "ED: 1\nES: 3\nGroup: DCM\nHeight: 1\nNbFrame: 5\n"), "Info.cfg", "Weight: missing key"),
    "cfg ES range": (lambda p: _cfg(p, "ED: 1\nES: 9\nGroup: DCM\nHeight: 1\nNbFrame: 5\nWeight: 2\n"), "Info.cfg",
                     "ES: frame 9 outside 1..NbFrame=5"),
    "frames": (lambda p: _cfg(p, "ED: 1\nES: 3\nGroup: DCM\nHeight: 1\nNbFrame: 4\nWeight: 2\n"),
               "patient001_4d.nii.gz", "5 frames but Info.cfg NbFrame is 4"),
    "labels": (lambda p: _nifti(p / "patient001_frame03_gt.nii.gz", np.full((2, 12, 10), 5, np.uint8)),
               "patient001_frame03_gt.nii.gz", "labels outside 0-3"),
    "label shape": (lambda p: _nifti(p / "patient001_frame01_gt.nii.gz", np.zeros((2, 12, 9), np.uint8)),
                    "patient001_frame01_gt.nii.gz", "label shape (2, 12, 9) differs from its image (2, 12, 10)"),
    "missing frame": (lambda p: (p / "patient001_frame03.nii.gz").unlink(), "patient001_frame03.nii.gz",
                      "file not found (ES frame 3)"),
    "missing label": (lambda p: (p / "patient001_frame01_gt.nii.gz").unlink(), "patient001_frame01_gt.nii.gz",
                      "file not found (ED label)"),
    "grid": (lambda p: _nifti(p / "patient001_frame01.nii.gz", np.zeros((2, 12, 10), np.float32), (8.0, 1.5, 1.25)),
             "patient001_frame01.nii.gz", "differs from the cine's"),
    "non-finite": (lambda p: _nifti(p / "patient001_frame03.nii.gz", np.full((2, 12, 10), np.nan, np.float32)),
                   "patient001_frame03.nii.gz", "240 non-finite values"),
    "truncated": (lambda p: _truncate(p / "patient001_4d.nii.gz"), "patient001_4d.nii.gz", "cannot be read"),
    "not 4-D": (lambda p: _nifti(p / "patient001_4d.nii.gz", np.zeros((2, 12, 10), np.float32)),
                "patient001_4d.nii.gz", "expected a 4-D cine"),
}


@pytest.mark.parametrize("name", list(ACDC_CASES))
def test_acdc_check_one_line(tmp_path, name):
    patient, _, _ = _acdc(tmp_path)
    mutate, rel, words = ACDC_CASES[name]
    mutate(patient)
    problems = F.validate_path(tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{patient / rel}: "), problems[0]
    assert words in problems[0], problems[0]
    assert cli.main(["check", str(tmp_path / "training")]) == 1


def test_acdc_testing_labels_optional(tmp_path):
    patient, _, _ = _acdc(tmp_path, pid=101, split="testing")
    for gt in patient.glob("*_gt.nii.gz"):
        gt.unlink()
    assert F.validate_path(tmp_path) == []
    p = C.read_acdc_patient(patient)
    assert p.labels == {} and sorted(p.frames) == [1, 3]


def test_snu_and_unrelated_paths_unchanged(tmp_path):
    assert C.validate_cine_path(tmp_path) is None
    assert F.validate_path(tmp_path) == [f"{tmp_path}: -: no .h5 files in kspace/ or image/ folders"]
