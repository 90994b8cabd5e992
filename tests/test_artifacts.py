"""models/artifacts.py over utils/artifacts.py: export from DeepSpeed-layout checkpoints, safetensors round trip, metadata, errors."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from models import build_model
from models import artifacts
from models.artifacts import ArtifactError, export_checkpoint, find_result_checkpoint, load_artifact, read_artifact_info
from utils.checkpoint import MODEL_STATES


def _save_states(tag, model, name, epoch, args=None):
    tag.mkdir(parents=True, exist_ok=True)
    torch.save({"module": model.state_dict(), "model_name": name, "model_config": model.config.to_dict(),
                "epoch": epoch, "step": int(tag.parent.name[4:]), "args": args or {}}, tag / MODEL_STATES)


def _inputs(width=48, batch=2):
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(batch, 3, 2, 384, width, dtype=torch.complex64, generator=gen)
    mask = torch.zeros(batch, width)
    mask[:, ::4] = 1
    mask[:, width // 2 - 3 : width // 2 + 3] = 1
    return k * mask[:, None, None, None, :], mask


@pytest.fixture
def promptmr_tag(tmp_path):
    torch.manual_seed(3)
    model = build_model("promptmr", "tiny", cascade=1)  # a config that is not a preset
    tag = tmp_path / "result" / "promptmr_knee_acc8" / "checkpoints" / "step3" / "epoch-4"
    _save_states(tag, model, "promptmr", 4, {"task": "knee", "acceleration": 8})
    return tag, model


def test_round_trip_identical_outputs_and_tied_tensors(promptmr_tag, tmp_path):
    tag, model = promptmr_tag
    out = export_checkpoint(tag, tmp_path / "art" / "knee_acc8.safetensors")
    loaded, info = load_artifact(out)
    assert not loaded.training and loaded.config == model.config
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    # PromptMR shares one PReLU between blocks: still one tensor after loading
    n_unique = lambda sd: len({t.data_ptr() for t in sd.values()})  # noqa: E731
    assert n_unique(got) == n_unique(ref) < len(ref)
    k, mask = _inputs()
    with torch.no_grad():
        assert torch.equal(model.eval()(k, mask), loaded(k, mask))
    assert not list(out.parent.glob(".*tmp"))


def test_metadata_content(promptmr_tag, tmp_path):
    tag, model = promptmr_tag
    out = export_checkpoint(tag, tmp_path / "knee_acc8.safetensors")
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()[artifacts.METADATA_KEY])
    assert meta == {
        "format": "mri-recon-artifact", "format_version": 1, "model_name": "promptmr",
        "model_config": model.config.to_dict(), "source": str(tag), "epoch": 4, "step": 3,
        "anatomy": "knee", "acceleration": 8,
    }
    info = read_artifact_info(out)
    assert info.model_config["cascade"] == 1 and info.anatomy == "knee" and info.acceleration == 8


def test_loading_never_unpickles(promptmr_tag, tmp_path, monkeypatch):
    tag, _ = promptmr_tag
    out = export_checkpoint(tag, tmp_path / "a.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during artifact loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    load_artifact(out)


def _rewrite_metadata(src, dst, mutate):
    model, info = load_artifact(src)
    meta = json.loads(info.to_metadata()[artifacts.METADATA_KEY])
    mutate(meta)
    from safetensors.torch import save_model

    save_model(model, str(dst), metadata={artifacts.METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(model_name="unet3000"), "unknown model 'unet3000'"),
    (lambda m: m["model_config"].update(bogus=1), "unknown hyperparameter"),
    (lambda m: m["model_config"].update(cascade=2), "weights do not fit"),
    (lambda m: m.update(format_version=99), "newer than this code reads"),
    (lambda m: m.pop("model_config"), "no 'model_config'"),
    (lambda m: m.update(format="something-else"), "is not a 'mri-recon-artifact' object"),
    (lambda m: m.update(colour="blue"), "unknown field(s) ['colour']"),
])
def test_bad_metadata_is_a_clear_error(promptmr_tag, tmp_path, mutate, message):
    tag, _ = promptmr_tag
    good = export_checkpoint(tag, tmp_path / "good.safetensors")
    bad = tmp_path / "bad.safetensors"
    _rewrite_metadata(good, bad, mutate)
    with pytest.raises(ArtifactError) as exc:
        load_artifact(bad)
    assert str(bad) in str(exc.value) and message in str(exc.value)


def test_not_an_artifact(tmp_path):
    raw = tmp_path / "raw.safetensors"
    save_file({"w": torch.zeros(2)}, str(raw))
    with pytest.raises(ArtifactError, match="no 'mri_artifact' metadata"):
        load_artifact(raw)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        read_artifact_info(junk)
    with pytest.raises(ArtifactError, match="artifact file not found"):
        load_artifact(tmp_path / "missing.safetensors")
    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_json), metadata={"mri_artifact": "{not json"})
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_artifact_info(bad_json)


def test_find_result_checkpoint_and_export_result(tmp_path):
    result = tmp_path / "result"
    torch.manual_seed(0)
    for anatomy, acc in artifacts.RECON_ROLES:
        ckpt = result / f"varnet_{anatomy}_acc{acc}" / "checkpoints"
        for step, epoch in ((1, 15), (2, 30), (3, 44), (3, 45)):
            _save_states(ckpt / f"step{step}" / f"epoch-{epoch}", build_model("varnet", "tiny"), "varnet", epoch,
                         {"task": anatomy, "acceleration": acc})
    (result / "varnet_brain_acc4" / "checkpoints" / "step4").mkdir()  # an empty step is skipped
    assert find_result_checkpoint(result, "varnet_brain_acc4") == result / "varnet_brain_acc4/checkpoints/step3/epoch-45"
    out_dir = tmp_path / "art"
    # no classifier yet: a clear error naming the expected path, nothing written
    with pytest.raises(ArtifactError, match=r"anatomy_cnn/checkpoints/step\{k\}/epoch-\{n\}/mp_rank_00_model_states.pt"):
        artifacts.export_result(result, out_dir, net_prefix="varnet")
    assert not out_dir.exists()
    _save_states(result / "anatomy_cnn" / "checkpoints" / "step1" / "epoch-5", build_model("anatomy_cnn", "tiny"), "anatomy_cnn", 5)
    assert artifacts.main(["export-result", "--result_path", str(result), "--out_dir", str(out_dir), "--net_prefix", "varnet"]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["brain_acc4.safetensors", "brain_acc8.safetensors", "knee_acc4.safetensors",
                            "knee_acc8.safetensors", "anatomy_cnn.safetensors"])
    cnn = read_artifact_info(out_dir / "anatomy_cnn.safetensors")
    assert cnn.model_name == "anatomy_cnn" and cnn.anatomy is None and cnn.epoch == 5
    assert read_artifact_info(out_dir / "knee_acc8.safetensors").source.endswith("varnet_knee_acc8/checkpoints/step3/epoch-45")


def test_bad_checkpoints(tmp_path, capsys):
    tag = tmp_path / "step1" / "epoch-1"
    tag.mkdir(parents=True)
    assert artifacts.main(["export", "--checkpoint", str(tag), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert f"{tag}: not a checkpoint: {MODEL_STATES} missing" in capsys.readouterr().err
    torch.save({"module": build_model("varnet", "tiny").state_dict(), "model_name": "varnet",
                "model_config": build_model("varnet", "demo").config.to_dict(), "epoch": 1}, tag / MODEL_STATES)
    with pytest.raises(ArtifactError, match="weights do not fit 'varnet'"):
        export_checkpoint(tag, tmp_path / "x.safetensors")
    torch.save({"module": {}, "epoch": 1}, tag / MODEL_STATES)
    with pytest.raises(ArtifactError, match="no 'model_name'"):
        export_checkpoint(tag, tmp_path / "x.safetensors")
    with pytest.raises(ArtifactError, match="end with .safetensors"):
        artifacts.save_artifact(build_model("varnet", "tiny"), tmp_path / "x.pt", read_info_stub())
    assert not list(tmp_path.glob("*.safetensors"))


def read_info_stub():
    return artifacts.ArtifactInfo("varnet", build_model("varnet", "tiny").config.to_dict(), "here")


def test_documented_module_commands_keep_working():
    """`python -m utils.artifacts ...` (the command the README and earlier notes give) and
    `python -m models.artifacts ...` are the same command line."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    outputs = []
    for module in ("utils.artifacts", "models.artifacts"):
        res = subprocess.run([sys.executable, "-m", module, "info", "artifacts/cine.safetensors"], cwd=repo,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        outputs.append(res.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1] and "cine, every acceleration" in outputs[0]
