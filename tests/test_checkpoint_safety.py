"""Checkpoints a user was handed are never unpickled: weights-only loading with DeepSpeed's allow-list.

A tampered file (an object whose ``__reduce__`` runs code), a truncated file and a pickled loss log are
each refused with one error naming the file, and the payload never runs. The end-to-end resume through
``train.py`` is in test_train.py; these tests build the files directly and take a second.
"""
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.checkpoint import (
    MODEL_STATES,
    OPTIM_STATES,
    CheckpointError,
    check_checkpoint_files,
    safe_checkpoint_engine,
    safe_torch_load,
    weights_only_loading,
)
from utils.engine import LossLog


class _Payload:
    """Pickles as ``exec(code)``: what an attacker appends to a checkpoint."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return exec, (self.code,)


def _optimizer_state():
    """The shape of a ZeRO-1 optimizer-state file, with the DeepSpeed types it really holds."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return {
        "optimizer_state_dict": {
            "loss_scaler": LossScaler(1.0),
            "zero_stage": ZeroStageEnum.optimizer_states,
            "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
            "base_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4)}}},
        },
        "ds_version": "0.19.8",
    }


def _tag(root: Path, optimizer=None) -> Path:
    tag = root / "epoch-1"
    tag.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(4)}, "optimizer": None, "model_name": "varnet", "model_config": {},
                "epoch": 1}, tag / MODEL_STATES)
    torch.save(_optimizer_state() if optimizer is None else optimizer, tag / OPTIM_STATES)
    return tag


def test_genuine_deepspeed_types_load(tmp_path):
    tag = _tag(tmp_path)
    states = check_checkpoint_files(tag)
    assert states["epoch"] == 1
    optim = safe_torch_load(tag / OPTIM_STATES)
    assert float(optim["optimizer_state_dict"]["loss_scaler"].cur_scale) == 1.0
    assert torch.equal(safe_checkpoint_engine().load(str(tag / OPTIM_STATES))["optimizer_state_dict"]
                       ["base_optimizer_state"]["state"][0]["exp_avg"], torch.zeros(4))


def test_tampered_optimizer_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    state = _optimizer_state()
    state["optimizer_state_dict"]["extra"] = _Payload(marker)
    tag = _tag(tmp_path, state)
    with pytest.raises(CheckpointError) as scan:
        check_checkpoint_files(tag)
    assert str(tag / OPTIM_STATES) in str(scan.value) and "exec" in str(scan.value)
    # DeepSpeed's loading path (the engine we install) and any direct torch.load inside the guard
    with pytest.raises(CheckpointError) as load:
        safe_checkpoint_engine().load(str(tag / OPTIM_STATES), map_location="cpu")
    assert str(tag / OPTIM_STATES) in str(load.value)
    with weights_only_loading(), pytest.raises(Exception):
        torch.load(tag / OPTIM_STATES, weights_only=False)
    assert not marker.exists(), "the payload ran"


def test_tampered_model_states_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    tag = _tag(tmp_path)
    torch.save({"module": {}, "optimizer": None, "hook": _Payload(marker)}, tag / MODEL_STATES)
    with pytest.raises(CheckpointError, match=str(tag / MODEL_STATES)):
        check_checkpoint_files(tag)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_damaged_optimizer_file_is_one_clear_error(tmp_path, damage):
    tag = _tag(tmp_path)
    path = tag / OPTIM_STATES
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one byte of a tensor record changed: the zip CRC no longer matches
        with zipfile.ZipFile(path) as archive:
            info = next(i for i in archive.infolist() if "/data/" in i.filename)
        name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26 : info.header_offset + 30]), "<u2")
        offset = info.header_offset + 30 + int(name_len) + int(extra_len)
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        check_checkpoint_files(tag)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_zero_tag_without_optimizer_state_is_refused(tmp_path):
    tag = _tag(tmp_path)
    (tag / OPTIM_STATES).unlink()
    with pytest.raises(CheckpointError, match="optimizer state"):
        check_checkpoint_files(tag)


def test_pickled_loss_log_is_refused(tmp_path):
    path = tmp_path / "loss_log.npy"
    np.save(path, np.array([{"epoch": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=f"{path}: not a loss log: holds pickled objects"):
        LossLog(path, keep_until_epoch=3)
    np.save(path, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected float rows"):
        LossLog(path, keep_until_epoch=3)
    np.save(path, np.array([[1.0, 0.5], [2.0, 0.4]]))
    assert LossLog(path, keep_until_epoch=1).rows.tolist() == [[1.0, 0.5]]
