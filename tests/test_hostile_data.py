"""Hostile data files (issue 14, data side): every case is one clear line naming the file and key, a
non-zero exit, the good volume beside it still written, nothing temporary or partial left behind, and
``routing.json`` always valid JSON.

The corpus is built in a temporary folder from one tiny volume (2 slices, 2 coils, 48 x 48 k-space,
written by :func:`data.volumes.write_challenge_pair`): each case copies it, damages the copy with h5py,
and names the bad copy ``brain_test1.h5`` so it sorts before the good ``brain_test2.h5``. The tools run
in-process (``reconstruct.main``, ``data.cli.main``, ``data.baselines._main``) on tiny random
artifacts; one subprocess runs ``python -m data.formats check`` over the whole corpus.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import reconstruct
from data import baselines
from data import convert
from data import cli
from data import formats as F
from data.masks import estimate_acceleration, make_mask
from data.volumes import write_challenge_pair
from models import build_model
from utils import io as uio
from utils.artifacts import ArtifactInfo, artifact_names, save_artifact
from utils.physics import fft2c

REPO = Path(__file__).resolve().parents[1]
SLICES, COILS, SIZE = 2, 2, 48
GOOD, BAD = "brain_test2.h5", "brain_test1.h5"  # the bad volume sorts first


# --------------------------------------------------------------------------------------------- corpus


def _tiny_kspace(seed: int = 0) -> torch.Tensor:
    """Fully sampled complex64 ``(2, 2, 48, 48)``: an ellipse with coil phases, plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    obj = ((yy / 0.7) ** 2 + (xx / 0.6) ** 2 < 1) * 1e-3
    coils = np.stack([obj * np.exp(1j * (c + xx)) * (1 + 0.2 * c * yy) for c in range(COILS)])
    images = np.stack([coils * (1 + 0.1 * s) for s in range(SLICES)]).astype(np.complex64)
    images += (rng.standard_normal(images.shape) * 1e-6).astype(np.complex64)
    return fft2c(torch.from_numpy(images))


@pytest.fixture(scope="module")
def good_pair(tmp_path_factory):
    """One valid leaderboard pair (undersampled k-space, fixed acc-4 mask, 384 x 384 images)."""
    root = tmp_path_factory.mktemp("good")
    mask = make_mask("fixed", SIZE, 4)
    return write_challenge_pair(root / "kspace" / GOOD, root / "image" / GOOD, _tiny_kspace(), mask, undersample=True)


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    """Random tiny VarNets for the four roles and a random tiny classifier (routing is not under test)."""
    art = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    for name in artifact_names():
        if name.endswith(("acc4", "acc8")):
            anatomy, acc = name.split("_acc")
            model = build_model("varnet", "tiny")
            info = ArtifactInfo("varnet", model.config.to_dict(), "test", anatomy=anatomy, acceleration=int(acc))
        else:
            model = build_model("anatomy_cnn", "tiny")
            info = ArtifactInfo("anatomy_cnn", model.config.to_dict(), "test")
        save_artifact(model, art / f"{name}.safetensors", info)
    return art


def _replace(f: h5py.File, key: str, **create) -> None:
    del f[key]
    f.create_dataset(key, **create)


def _set_mask(f: h5py.File, keep) -> None:
    mask = f["mask"][()]
    new = np.zeros_like(mask)
    keep(mask, new)
    f["mask"][...] = new
    f["kspace"][...] = f["kspace"][()] * new  # leaderboard k-space is zero off the mask


def _acs_only(mask, new):
    est = estimate_acceleration(mask)
    new[est.acs_left:est.acs_right] = 1


def _no_centre(mask, new):
    new[:] = mask
    est = estimate_acceleration(mask)
    new[est.acs_left:est.acs_right] = 0  # the ACS block (with the centre line) removed, the comb kept


def _bomb(f: h5py.File) -> None:
    """Chunked, never written: ~410 GiB declared in a few KB, mask width and slices still consistent."""
    _replace(f, "kspace", shape=(SLICES, 140_000, 4096, SIZE), dtype=np.complex64, chunks=(1, 1, 256, SIZE))


def _image_bomb(f: h5py.File) -> None:
    _replace(f, "image_grappa", shape=(200_000, 384, 384), dtype=np.float32, chunks=(1, 384, 384))


def _images_resized(f: h5py.File, shape) -> None:
    for key in F.IMAGE_KEYS:
        _replace(f, key, data=np.full(shape, 1e-4, np.float32))
    f.attrs["max"] = 1e-4


# name -> (file damaged: "kspace" | "image", damage, {tool: key in the message}, words in the message)
# tools: check (python -m data.formats check), reconstruct, baselines (--kind grappa).
CASES = {
    "max_list": ("image", lambda f: f.attrs.__setitem__("max", [1.0, 2.0]),
                 dict.fromkeys(("check", "reconstruct", "baselines"), "attr max"), "must be one number"),
    "max_string": ("image", lambda f: f.attrs.__setitem__("max", "big"),
                   dict.fromkeys(("check", "reconstruct", "baselines"), "attr max"), "must be a real number"),
    "max_empty": ("image", lambda f: f.attrs.__setitem__("max", h5py.Empty("f")), {"check": "attr max"},
                  "must be a real number"),
    "max_1e30": ("image", lambda f: f.attrs.__setitem__("max", 1e30),
                 {"check": "attr max"}, "differs from the maximum of image_label"),
    "kspace_bomb": ("kspace", _bomb, dict.fromkeys(("check", "reconstruct"), "kspace"), "over the 8 GiB limit"),
    "image_bomb": ("image", _image_bomb, dict.fromkeys(("check", "reconstruct", "baselines"), "image_grappa"),
                   "over the 8 GiB limit"),
    "acs_only_mask": ("kspace", lambda f: _set_mask(f, _acs_only), dict.fromkeys(("check", "reconstruct"), "mask"),
                      "ACS lines around the centre are sampled, none outside"),
    "mask_without_centre": ("kspace", lambda f: _set_mask(f, _no_centre), dict.fromkeys(("check", "reconstruct"), "mask"),
                            "centre line (column 24) not sampled"),
    "zero_slices_kspace": ("kspace", lambda f: _replace(f, "kspace", shape=(0, COILS, SIZE, SIZE), dtype=np.complex64),
                           dict.fromkeys(("check", "reconstruct"), "kspace"), "no slices"),
    "zero_coils": ("kspace", lambda f: _replace(f, "kspace", shape=(SLICES, 0, SIZE, SIZE), dtype=np.complex64),
                   dict.fromkeys(("check", "reconstruct"), "kspace"), "no coils"),
    "zero_slices_image": ("image", lambda f: _images_resized(f, (0, 384, 384)),
                          {"check": "image_input", "reconstruct": "image_grappa", "baselines": "image_grappa"}, "no slices"),
    "images_320": ("image", lambda f: _images_resized(f, (SLICES, 320, 320)),
                   {"check": "image_input", "reconstruct": "image_grappa", "baselines": "image_grappa"},
                   "expected 384x384 slices"),
}


def _corpus(root: Path, good_pair, case: str = None) -> Path:
    """``root/acc4/{kspace,image}/`` with the good volume and, for ``case``, the damaged one (sorting first)."""
    for src in good_pair:
        dst = root / "acc4" / src.parent.name
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst / GOOD)
        if case is not None:
            shutil.copy(src, dst / BAD)
    if case is not None:
        kind, damage = CASES[case][:2]
        with h5py.File(root / "acc4" / kind / BAD, "r+") as f:
            damage(f)
    return root


def _bad_file(root: Path, case: str) -> Path:
    return root / "acc4" / CASES[case][0] / BAD


def _cases_for(tool: str):
    return [c for c, spec in CASES.items() if tool in spec[2]]


def _no_temporaries(*roots: Path) -> None:
    left = [p for r in roots if r.exists() for p in r.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not left, left


def _strict_json(path: Path):
    """Parse JSON refusing the non-standard Infinity/NaN constants that allow_nan would have written."""
    def refuse(name):
        raise AssertionError(f"{path}: non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _run_reconstruct(data: Path, result: Path, art: Path, capsys):
    argv = ["--path_data", str(data), "--result_path", str(result), "--weights", "artifacts",
            "--artifacts_dir", str(art), "--batch_size", "2", "--device", "cpu", "--no_progress"]
    rc = reconstruct.main(argv)
    cap = capsys.readouterr()
    return rc, result / reconstruct.OUTPUT_SUBDIR, cap


def _run_baselines(data: Path, out: Path, capsys):
    rc = baselines._main(["baseline", "--kind", "grappa", "--path_leaderboard_data", str(data), "--out", str(out),
                          "--no_progress"])
    return rc, capsys.readouterr()


def _outputs(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------- each case, each tool


def test_good_corpus_passes_everywhere(tmp_path, good_pair, tiny_artifacts, capsys):
    """The baseline the cases are measured against: the good volume alone passes all three tools."""
    data = _corpus(tmp_path / "lb", good_pair)
    assert cli.main(["check", str(data)]) == 0
    rc, out_root, cap = _run_reconstruct(data, tmp_path / "result", tiny_artifacts, capsys)
    assert rc == 0, cap.err
    assert _outputs(out_root) == [f"acc4/{GOOD}", "routing.json"]
    rc, cap = _run_baselines(data, tmp_path / "base", capsys)
    assert rc == 0, cap.err


@pytest.mark.parametrize("case", _cases_for("check"))
def test_check_reports_one_line(case, tmp_path, good_pair, capsys):
    data = _corpus(tmp_path / "lb", good_pair, case)
    assert cli.main(["check", str(data)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    key, words = CASES[case][2]["check"], CASES[case][3]
    assert lines[0].startswith(f"{_bad_file(data, case)}: {key}: ") and words in lines[0], lines[0]


@pytest.mark.parametrize("case", _cases_for("reconstruct"))
def test_reconstruct_keeps_the_good_volume(case, tmp_path, good_pair, tiny_artifacts, capsys):
    data = _corpus(tmp_path / "lb", good_pair, case)
    rc, out_root, cap = _run_reconstruct(data, tmp_path / "result", tiny_artifacts, capsys)
    assert rc == 1
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, cap.err
    key, words = CASES[case][2]["reconstruct"], CASES[case][3]
    assert f"{_bad_file(data, case)}: {key}: " in errors[0] and words in errors[0], errors[0]
    routing = _strict_json(out_root / reconstruct.ROUTING_FILE)
    assert routing["failed"] == 1 and routing["volumes"][f"acc4/{BAD}"]["status"] == "error"
    assert routing["volumes"][f"acc4/{GOOD}"]["status"] == "ok"
    assert _outputs(out_root) == [f"acc4/{GOOD}", "routing.json"]
    assert F.read_reconstruction_file(out_root / "acc4" / GOOD).shape == (SLICES, 384, 384)
    assert "Traceback" not in cap.err


@pytest.mark.parametrize("case", _cases_for("baselines"))
def test_baselines_keep_the_good_volume(case, tmp_path, good_pair, capsys):
    data = _corpus(tmp_path / "lb", good_pair, case)
    out = tmp_path / "base"
    rc, cap = _run_baselines(data, out, capsys)
    assert rc == 1
    key, words = CASES[case][2]["baselines"], CASES[case][3]
    assert f"{_bad_file(data, case)}: {key}: " in cap.err and words in cap.err, cap.err
    assert _outputs(out) == [f"acc4/{GOOD}"]


def test_check_cli_whole_hostile_corpus(tmp_path, good_pair):
    """Every bad file of every case in one tree: one line each, nothing for the good files, exit 1."""
    root = tmp_path / "Data"
    for case in CASES:
        _corpus(root / case, good_pair, case)
    bomb = _bad_file(root / "kspace_bomb", "kspace_bomb")
    with h5py.File(bomb, "r") as f:  # under 1 MB on disk (the replaced data's space is not reclaimed) ...
        declared = f["kspace"].size * f["kspace"].dtype.itemsize
    assert bomb.stat().st_size < 2**20 and declared > 400 * 2**30  # ... declaring hundreds of GiB
    res = subprocess.run([sys.executable, "-m", "data.formats", "check", str(root)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert sorted(line.split(": ")[0] for line in lines) == sorted(str(_bad_file(root / c, c)) for c in CASES)
    assert "Traceback" not in res.stderr and f"{len(CASES)} problem(s) found" in res.stderr


def test_label_readers_reject_a_forged_max(tmp_path, good_pair):
    """evaluate.py reads image_label through read_image_file: a forged data range never reaches SSIM."""
    data = _corpus(tmp_path / "lb", good_pair, "max_1e30")
    with pytest.raises(F.FormatError, match=r"brain_test1.h5: attr max: 1e\+30 differs"):
        F.read_image_file(_bad_file(data, "max_1e30"), keys=["image_label"])
    image = F.read_image_file(data / "acc4" / "image" / GOOD, keys=["image_label"])
    assert image["max"] == float(image["image_label"].max())


def test_header_checks_read_nothing(tmp_path, good_pair, monkeypatch):
    """The bomb and the slice/width agreement are decided on headers: no dataset is read."""
    data = _corpus(tmp_path / "lb", good_pair, "kspace_bomb")
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda *a: pytest.fail("a dataset was read"))
    with pytest.raises(F.FormatError, match="over the 8 GiB limit"):
        F.check_pair(_bad_file(data, "kspace_bomb"), data / "acc4" / "image" / BAD)
    with h5py.File(data / "acc4" / "image" / GOOD, "r+") as f:
        _replace(f, "image_grappa", shape=(SLICES + 1, 384, 384), dtype=np.float32)
    with pytest.raises(F.FormatError, match=f"kspace: {SLICES} slices but {GOOD} has {SLICES + 1}"):
        F.check_pair(data / "acc4" / "kspace" / GOOD, data / "acc4" / "image" / GOOD, key="image_grappa")


def test_acs_only_mask_is_json_safe():
    """The estimate of an ACS-only mask is infinite: routing refuses it, and the report writer maps any
    non-finite number to null."""
    mask = np.zeros(SIZE, np.float32)
    mask[22:26] = 1
    assert estimate_acceleration(mask).spacing == float("inf")
    safe = reconstruct._json_safe({"a": float("inf"), "b": [float("nan"), 1.5], "c": {"d": -float("inf")}})
    assert json.dumps(safe, allow_nan=False) == '{"a": null, "b": [null, 1.5], "c": {"d": null}}'
    with pytest.raises(F.FormatError, match="mask: only the 4 ACS lines"):
        reconstruct.route_volume(_Classifier(), np.zeros((1, 384, 384), np.float32), mask, "cpu", "x.h5")


class _Classifier:
    def predict(self, images):
        return torch.zeros(1, dtype=torch.long), torch.ones(1)


# --------------------------------------------------------------------------------------------- output locations


def test_result_path_is_a_file(tmp_path, good_pair, tiny_artifacts, capsys, monkeypatch):
    data = _corpus(tmp_path / "lb", good_pair)
    monkeypatch.setattr(reconstruct, "read_volume", lambda job: pytest.fail("work started"))
    for result in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        (tmp_path / "a_file").write_text("not a folder")
        with pytest.raises(SystemExit) as exc:
            _run_reconstruct(data, result, tiny_artifacts, capsys)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--result_path" in err and f"{tmp_path / 'a_file'} is a file, not a folder" in err, err
    assert _outputs(tmp_path) == sorted(["a_file", *(f"lb/acc4/{k}/{GOOD}" for k in ("image", "kspace"))])


def test_baselines_out_is_a_file(tmp_path, good_pair, capsys):
    data = _corpus(tmp_path / "lb", good_pair)
    out = tmp_path / "out.h5"
    out.write_text("a file")
    rc, cap = _run_baselines(data, out, capsys)
    assert rc == 2 and f"{out} is a file, not a folder" in cap.err and "--out" in cap.err
    assert out.read_text() == "a file"


def test_convert_out_is_a_file(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file1.h5").write_bytes(b"never read")
    out = tmp_path / "out"
    out.write_text("a file")
    assert convert.convert_fastmri_folder(src, out / "train", "knee", 4) == 2
    assert f"{out} is a file, not a folder" in capsys.readouterr().err


def _fail_mkstemp(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", os.path.join(kwargs.get("dir", "."), ".x.tmp"))


def test_unwritable_result_folder_fails_first(tmp_path, good_pair, tiny_artifacts, capsys, monkeypatch):
    data = _corpus(tmp_path / "lb", good_pair)
    monkeypatch.setattr(uio.tempfile, "mkstemp", _fail_mkstemp)
    monkeypatch.setattr(reconstruct, "read_volume", lambda job: pytest.fail("work started"))
    with pytest.raises(SystemExit) as exc:
        _run_reconstruct(data, tmp_path / "result", tiny_artifacts, capsys)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'result' / reconstruct.OUTPUT_SUBDIR}: cannot write: Permission denied" in err
    assert ".tmp" not in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(uio.OutputError, match=f"^{folder / 'x.h5'}: cannot write: Permission denied$"):
            F.write_reconstruction_file(folder / "x.h5", np.zeros((1, 4, 4), np.float32))
    finally:
        folder.chmod(0o755)


def _full_disk_h5(monkeypatch, under: Path):
    """h5py dataset creation fails with ENOSPC for files below ``under`` (a full disk)."""
    real = h5py.Group.create_dataset

    def create_dataset(self, *args, **kwargs):
        if Path(self.file.filename).is_relative_to(under):
            raise OSError(errno.ENOSPC, "Can't write data (No space left on device)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


def test_full_disk_reconstruct(tmp_path, good_pair, tiny_artifacts, capsys, monkeypatch):
    data = _corpus(tmp_path / "lb", good_pair, "zero_coils")
    result = tmp_path / "result"
    _full_disk_h5(monkeypatch, result)
    rc, out_root, cap = _run_reconstruct(data, result, tiny_artifacts, capsys)
    assert rc == 1
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, cap.err
    assert f"error: {out_root / 'acc4' / GOOD}: cannot write: No space left on device" in errors
    assert _outputs(out_root) == ["routing.json"] and _strict_json(out_root / "routing.json")["failed"] == 2


def test_full_disk_routing_json(tmp_path, good_pair, tiny_artifacts, capsys, monkeypatch):
    data = _corpus(tmp_path / "lb", good_pair)
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(f".{reconstruct.ROUTING_FILE}."):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    rc, out_root, cap = _run_reconstruct(data, tmp_path / "result", tiny_artifacts, capsys)
    assert rc == 1
    assert f"error: {out_root / reconstruct.ROUTING_FILE}: cannot write: No space left on device" in cap.err
    assert "routing.json NOT written" in cap.out
    assert _outputs(out_root) == [f"acc4/{GOOD}"]


def test_full_disk_baselines(tmp_path, good_pair, capsys, monkeypatch):
    data = _corpus(tmp_path / "lb", good_pair)
    out = tmp_path / "base"
    stale = out / "acc4" / GOOD
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    _full_disk_h5(monkeypatch, out)
    rc, cap = _run_baselines(data, out, capsys)
    assert rc == 1
    assert f"{stale}: cannot write: No space left on device (removed the stale {stale})" in cap.err
    assert _outputs(out) == []


# --------------------------------------------------------------------------------------------- the atomic writer


def test_atomic_path_names_the_final_path(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.h5"
    with pytest.raises(uio.OutputError) as exc:  # full disk while writing the temporary file
        with uio.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(exc.value) == f"{target}: cannot write: No space left on device" and exc.value.errno == errno.ENOSPC
    assert isinstance(exc.value, OSError) and _outputs(tmp_path) == []
    _no_temporaries(tmp_path)

    (tmp_path / "file").write_text("x")
    with pytest.raises(uio.OutputError, match=f"^{tmp_path / 'file' / 'sub' / 'x.h5'}: cannot write: "
                                              f"{tmp_path / 'file'} is a file, not a folder$"):
        with uio.atomic_path(tmp_path / "file" / "sub" / "x.h5"):
            pass
    with pytest.raises(uio.OutputError, match="is a folder"):
        with uio.atomic_path(tmp_path / "out"):
            pass

    monkeypatch.setattr(uio.tempfile, "mkstemp", _fail_mkstemp)  # a read-only folder
    with pytest.raises(uio.OutputError, match=f"^{target}: cannot write: Permission denied$"):
        F.write_reconstruction_file(target, np.zeros((1, 4, 4), np.float32))


def test_atomic_path_other_errors_pass_through(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with uio.atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="bad value"):
        with uio.atomic_path(tmp_path / "x.json"):
            raise ValueError("bad value")
    assert _outputs(tmp_path) == []


def test_prepare_output_dir(tmp_path, monkeypatch):
    assert uio.prepare_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and _outputs(tmp_path) == []  # the probe file is gone
    (tmp_path / "f").write_text("x")
    with pytest.raises(uio.OutputError, match=f"^{tmp_path / 'f'}: cannot write: is a file, not a folder$"):
        uio.prepare_output_dir(tmp_path / "f")
    with pytest.raises(uio.OutputError, match="is a folder, expected a file path"):
        uio.prepare_output_file(tmp_path / "a")
    monkeypatch.setattr(uio.tempfile, "mkstemp", _fail_mkstemp)
    with pytest.raises(uio.OutputError, match=f"^{tmp_path / 'a' / 'r.json'}: cannot write: Permission denied$"):
        uio.prepare_output_file(tmp_path / "a" / "r.json")
