"""utils/audit.py and utils/wandb_history.py on synthetic result trees (fast: no training).

The real thing (two training runs, wandb offline files written by wandb itself, a killed-and-resumed run)
is audited in tests/test_train.py.
"""
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.audit import DIVERGED, IDENTICAL, INCOMPLETE, WITHIN, compare_results, compare_series, main
from utils.wandb_history import merge_histories, read_wandb_run, step_histories

REPO = Path(__file__).resolve().parents[1]


def _wandb_file(path: Path, name: str, history, start: float = 0.0, block: int = 32768) -> Path:
    """A run file in wandb's format (header, LevelDB-log chunks, protobuf records), records split across
    blocks the way wandb's writer splits them."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    run = pb.Record()
    run.run.run_id, run.run.display_name = path.stem, name
    run.run.start_time.seconds = int(start)
    records.append(run.SerializeToString())
    for step, values in history:
        rec = pb.Record()
        rec.history.step.num = step
        for key, value in values.items():
            item = rec.history.item.add()
            item.key, item.value_json = key, repr(value)
        records.append(rec.SerializeToString())
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\0" * left
                continue
            chunk, data = data[: left - 7], data[left - 7:]
            kind = (1 if not data else 2) if first else (4 if not data else 3)
            out += struct.pack("<IHB", zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, len(chunk), kind) + chunk
            first = False
            if not data:
                break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))
    return path


def _tree(root: Path, net="net", step=1, epochs=3, iters=4, shift=0.0, wandb=True, bump_at=None):
    """A result tree ``root/net`` with a loss log, an iteration log and a wandb run of ``step``."""
    logs = root / net / "loss_log" / f"step{step}"
    logs.mkdir(parents=True, exist_ok=True)
    rows, hist = [], []
    for it in range(1, epochs * iters + 1):
        epoch = (it - 1) // iters + 1
        loss = 1.0 / it + (shift if bump_at is not None and it >= bump_at else 0.0)
        rows.append([epoch, it, loss, 1e-3 / epoch])
        hist.append((it, {"train/loss": loss, "train/lr": 1e-3 / epoch}))
    rows = np.array(rows)
    np.save(logs / "iter_log.npy", rows)
    np.save(logs / "loss_log.npy", np.array([[e, rows[rows[:, 0] == e, 2].mean()] for e in range(1, epochs + 1)]))
    if wandb:
        _wandb_file(root / net / "wandb" / f"offline-run-x{step}" / f"run-x{step}.wandb", f"{net}-step{step}", hist)
    return root


def test_compare_series_verdicts():
    a = {1: 1.0, 2: 0.5, 3: 0.25}
    assert compare_series(a, dict(a))["verdict"] == IDENTICAL
    b = {1: 1.0, 2: 0.5 * (1 + 1e-9), 3: 0.2}
    diverged = compare_series(a, b)
    assert diverged["verdict"] == DIVERGED and diverged["first_key"] == 2 and diverged["value_b"] == b[2]
    assert diverged["max_abs_diff"] == pytest.approx(0.05)
    assert compare_series(a, b, rtol=1e-6)["first_key"] == 3  # 2 is within the tolerance, 3 is not
    within = compare_series(a, {1: 1.0, 2: 0.5 * (1 + 1e-9), 3: 0.25}, rtol=1e-6)
    assert within["verdict"] == WITHIN and within["first_key"] == 2
    short = compare_series(a, {1: 1.0, 2: 0.5})
    assert short["verdict"] == INCOMPLETE and short["first_key"] == 3 and short["only_a"] == 1
    assert compare_series({1: float("nan")}, {1: float("nan")})["verdict"] == IDENTICAL
    assert compare_series({1: float("nan")}, {1: 1.0})["verdict"] == DIVERGED
    assert compare_series({1: 0.0}, {1: -0.0})["verdict"] == DIVERGED  # bit for bit


def test_identical_trees_pass_with_report_and_plots(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    report = compare_results(a, b, out=tmp_path / "out")
    assert report.ok and not report.missing
    names = {r.name for r in report.results}
    assert names == {"loss_log", "iter loss", "iter lr", "wandb train/loss", "wandb train/lr"}
    assert all(r.verdict == IDENTICAL for r in report.results)
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.startswith("# Reproducibility audit: PASS") and "![net step 1](net_step1.png)" in text
    assert (tmp_path / "out" / "net_step1.png").read_bytes()[:4] == b"\x89PNG"


def test_divergence_is_located_and_fails(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b", shift=1e-7, bump_at=6)
    report = compare_results(a, b)
    assert not report.ok
    it = next(r for r in report.results if r.name == "iter loss")
    assert it.verdict == DIVERGED and (it.first_epoch, it.first_iteration) == (2, 6)
    assert it.value_a == pytest.approx(1 / 6) and it.value_b == pytest.approx(1 / 6 + 1e-7)
    assert it.max_abs_diff == pytest.approx(1e-7, rel=1e-6)
    wandb = next(r for r in report.results if r.name == "wandb train/loss")
    assert (wandb.first_epoch, wandb.first_iteration) == (2, 6)  # epoch from the iteration log
    log = next(r for r in report.results if r.name == "loss_log")
    assert log.first_epoch == 2 and log.first_iteration is None
    assert next(r for r in report.results if r.name == "iter lr").verdict == IDENTICAL
    assert compare_results(a, b, rtol=1e-5).ok  # 1e-7 on ~0.17 is within 1e-5


def test_missing_nets_steps_and_series_are_listed(tmp_path):
    a = _tree(_tree(tmp_path / "a"), step=2)
    _tree(a, net="other")
    b = _tree(tmp_path / "b", wandb=False)
    report = compare_results(a, b)
    assert not report.ok
    assert "other: only in A" in report.missing and "net step 2: only in A" in report.missing
    assert "net step 1: wandb train/loss only in A" in report.missing
    assert all(r.verdict == IDENTICAL for r in report.results)  # what was compared agrees
    only = compare_results(a, b, nets=["net", "ghost"])
    assert "ghost: only in neither tree" in only.missing and not any(m.startswith("other") for m in only.missing)


def test_cli_exit_codes_and_bad_input(tmp_path, capsys):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert main(["compare", str(a), str(b)]) == 0
    assert "audit: PASS" in capsys.readouterr().out
    c = _tree(tmp_path / "c", shift=1e-3, bump_at=1)
    assert main(["compare", str(a), str(c)]) == 1
    assert main(["compare", str(a), str(c), "--rtol", "0.1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a result folder" in capsys.readouterr().err
    bad = tmp_path / "d"
    _tree(bad)
    np.save(bad / "net" / "loss_log" / "step1" / "loss_log.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    assert main(["compare", str(a), str(bad)]) == 2
    assert "holds pickled objects (refused)" in capsys.readouterr().err


def test_wandb_reader_blocks_merging_and_torn_tail(tmp_path):
    history = [(i, {"train/loss": 1.0 / i, "train/lr": 0.5, "_runtime": 3.0}) for i in range(1, 3000)]
    path = _wandb_file(tmp_path / "run-a.wandb", "net-step1", history)
    assert path.stat().st_size > 4 * 32768  # records cross the 32 KiB blocks (FIRST/MIDDLE/LAST chunks)
    run = read_wandb_run(path)
    assert run.name == "net-step1" and not run.truncated
    assert run.history["train/loss"] == {i: 1.0 / i for i in range(1, 3000)} and "_runtime" not in run.history
    torn = tmp_path / "run-b.wandb"
    torn.write_bytes(path.read_bytes()[:-5])
    cut = read_wandb_run(torn)
    assert cut.truncated and len(cut.history["train/loss"]) == 2998
    from utils.wandb_history import WandbFileError

    (tmp_path / "junk.wandb").write_bytes(b"not wandb at all")
    with pytest.raises(WandbFileError, match="junk.wandb: not a wandb run file"):
        read_wandb_run(tmp_path / "junk.wandb")
    # a resumption replaces what the earlier run logged from its first step on
    early = _wandb_file(tmp_path / "w" / "wandb" / "r1" / "run-r1.wandb", "net-step1",
                        [(1, {"train/loss": 1.0}), (2, {"train/loss": 2.0}), (3, {"train/loss": 3.0})], start=10)
    late = _wandb_file(tmp_path / "w" / "wandb" / "r2" / "run-r2.wandb", "net-step1",
                       [(2, {"train/loss": 2.5})], start=20)
    _wandb_file(tmp_path / "w" / "wandb" / "r3" / "run-r3.wandb", "othernet-step1", [(1, {"train/loss": 9.0})])
    assert merge_histories([read_wandb_run(late), read_wandb_run(early)]) == {"train/loss": {1: 1.0, 2: 2.5}}
    assert step_histories(tmp_path / "w", "net") == {1: {"train/loss": {1: 1.0, 2: 2.5}}}


def _checkpoint(tag: Path, weights):
    tag.mkdir(parents=True)
    torch.save({"module": weights, "epoch": 1}, tag / "mp_rank_00_model_states.pt")
    return tag


def test_weights_audit(tmp_path, capsys):
    from safetensors.torch import save_file

    w = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(3, dtype=torch.bfloat16)}
    ta = _checkpoint(tmp_path / "x" / "epoch-1", w)
    tb = _checkpoint(tmp_path / "y" / "epoch-1", {k: v.clone() for k, v in w.items()})
    assert main(["weights", str(ta), str(tb), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "weights.md").read_text().startswith("# Weights audit: PASS")
    changed = {"a.weight": w["a.weight"] + 1e-6, "c.extra": torch.zeros(1)}
    tc = _checkpoint(tmp_path / "z" / "epoch-1", changed)
    capsys.readouterr()
    assert main(["weights", str(ta), str(tc)]) == 1
    out = capsys.readouterr().out
    assert "diverged" in out and "b.bias" in out and "only in A" in out and "c.extra" in out and "only in B" in out
    assert main(["weights", str(ta), str(tc), "--rtol", "1e-3"]) == 1  # still one-sided tensors
    # artifacts: folders of .safetensors compared file by file
    (tmp_path / "f1").mkdir(), (tmp_path / "f2").mkdir()
    save_file(w, str(tmp_path / "f1" / "brain_acc4.safetensors"))
    save_file(w, str(tmp_path / "f2" / "brain_acc4.safetensors"))
    save_file(w, str(tmp_path / "f1" / "knee_acc4.safetensors"))
    capsys.readouterr()
    assert main(["weights", str(tmp_path / "f1" / "brain_acc4.safetensors"), str(tmp_path / "f2" / "brain_acc4.safetensors")]) == 0
    assert main(["weights", str(tmp_path / "f1"), str(tmp_path / "f2")]) == 1
    assert "knee_acc4.safetensors" in capsys.readouterr().out


def test_module_entry_point(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b", shift=1.0, bump_at=3)
    res = subprocess.run([sys.executable, "-m", "utils.audit", "compare", str(a), str(b), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "epoch 1, iteration 3" in res.stdout, res.stdout + res.stderr
    assert "# Reproducibility audit: FAIL" in (tmp_path / "o" / "report.md").read_text()
