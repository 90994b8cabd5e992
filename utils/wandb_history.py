"""The logged history of offline wandb runs, read from their run files without network or login.

An offline run (``<run_dir>/wandb/offline-run-<time>-<id>/run-<id>.wandb``) is wandb's transaction log: a
7-byte header (``:W&B``, magic ``0xBEE1``, version 0), then LevelDB-log blocks of 32 KiB in which every
chunk has a 7-byte header (CRC-32 of the type byte and the data, little-endian length, type FULL / FIRST /
MIDDLE / LAST); whole records are protobuf ``Record`` messages of the schema wandb ships
(``wandb.proto.wandb_internal_pb2``). wandb 0.31 has no Python reader of its own (its datastore moved
into the Go ``wandb-core``), so this module reads the log format with wandb's schema. Nothing is sent
anywhere, and a run killed mid-write (a torn last record) is read up to its last whole record.

History: ``{metric: {step: value}}`` of the numbers each ``run.log(values, step=...)`` recorded
(``train/loss``, ``train/lr``, ``train/epoch_loss``, ``val/ssim``, ...; wandb's own ``_step``,
``_runtime``, ``_timestamp`` are left out). The engine names its runs ``<net_name>-step<k>``;
:func:`step_histories` merges the runs of one step (an interrupted run and its resumption) in start order.
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
import zlib
from pathlib import Path
from typing import Dict, List

__all__ = ["WandbRun", "WandbFileError", "read_wandb_run", "find_run_files", "step_histories", "merge_histories"]

_HEADER = struct.Struct("<4sHB")
_HEADER_IDENT, _HEADER_MAGIC, _HEADER_VERSION = b":W&B", 0xBEE1, 0
_CHUNK = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_STEP_NAME = re.compile(r"^(?P<net>.+)-step(?P<step>\d+)$")

History = Dict[str, Dict[int, float]]


class WandbFileError(ValueError):
    """A file that is not a wandb run file (message names it and the problem)."""


@dataclasses.dataclass
class WandbRun:
    path: Path
    run_id: str
    name: str  # display name, e.g. "brain_acc4-step2"
    start_time: float  # seconds since the epoch (0 when the run record is missing)
    history: History
    truncated: bool  # the file ends in a torn record (a run killed while writing)


def _records(path: Path, data: bytes):
    """Yield ``(payload bytes)`` of each whole record; returns True (via StopIteration value) if torn."""
    if len(data) < _HEADER.size:
        raise WandbFileError(f"{path}: not a wandb run file: {len(data)} bytes, shorter than its header")
    ident, magic, version = _HEADER.unpack_from(data, 0)
    if ident != _HEADER_IDENT or magic != _HEADER_MAGIC or version != _HEADER_VERSION:
        raise WandbFileError(f"{path}: not a wandb run file (header {data[:7]!r})")
    pos, pending = _HEADER.size, None
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        if pos + _CHUNK.size > len(data):
            return True
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        start, end = pos + _CHUNK.size, pos + _CHUNK.size + length
        if end > len(data) or (zlib.crc32(data[start:end], zlib.crc32(bytes([kind]))) & 0xFFFFFFFF) != crc:
            return True  # a torn tail: everything before it is whole
        chunk = data[start:end]
        pos = end
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE and pending is not None:
            pending += chunk
        elif kind == _LAST and pending is not None:
            yield pending + chunk
            pending = None
        elif kind == 0 and length == 0:  # zero fill after a writer's last block
            return False
        else:
            raise WandbFileError(f"{path}: corrupt wandb run file: chunk type {kind} at byte {pos - length - _CHUNK.size}")
    return pending is not None


def read_wandb_run(path) -> WandbRun:
    """History, name and start time of one ``run-<id>.wandb`` file (see the module doc)."""
    from wandb.proto import wandb_internal_pb2 as pb  # schema only: no service, no network

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WandbFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    history: History = {}
    run_id, name, start = path.stem.replace("run-", "", 1), "", 0.0
    records = _records(path, data)
    truncated = False
    while True:
        try:
            payload = next(records)
        except StopIteration as stop:
            truncated = bool(stop.value)
            break
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - a record that is not a protobuf Record
            raise WandbFileError(f"{path}: corrupt wandb run file: a record is not a wandb protobuf") from None
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id or run_id
            name = record.run.display_name or name
            start = record.run.start_time.seconds + record.run.start_time.nanos * 1e-9 or start
        elif kind == "history":
            step = int(record.history.step.num)
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key or key.startswith("_"):
                    continue
                try:
                    value = json.loads(item.value_json)
                except ValueError:
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    history.setdefault(key, {})[step] = float(value)
    return WandbRun(path, run_id, name, start, history, truncated)


def find_run_files(run_dir) -> List[Path]:
    """Every ``run-*.wandb`` under ``<run_dir>/wandb`` (sorted; wandb's ``latest-run`` link is skipped)."""
    return sorted(p for p in (Path(run_dir) / "wandb").glob("*/run-*.wandb") if not p.parent.is_symlink())


def merge_histories(runs: List[WandbRun]) -> History:
    """One history from runs of the same step in start order: a later run (a resumption) replaces
    everything the earlier ones logged from its first step on, as the loss logs drop the rows after the
    restart epoch."""
    merged: History = {}
    for run in sorted(runs, key=lambda r: (r.start_time, r.path.name)):
        steps = [s for series in run.history.values() for s in series]
        if not steps:
            continue
        first = min(steps)
        for series in merged.values():
            for s in [s for s in series if s >= first]:
                del series[s]
        for key, series in run.history.items():
            merged.setdefault(key, {}).update(series)
    return {k: dict(sorted(v.items())) for k, v in merged.items() if v}


def step_histories(run_dir, net_name: str) -> Dict[int, History]:
    """``{k: history}`` of the engine's runs ``<net_name>-step<k>`` under ``<run_dir>/wandb`` (merged per
    step); runs named otherwise are left out. Raises :class:`WandbFileError` for an unreadable file."""
    by_step: Dict[int, List[WandbRun]] = {}
    for path in find_run_files(run_dir):
        run = read_wandb_run(path)
        match = _STEP_NAME.match(run.name)
        if match and match.group("net") == net_name:
            by_step.setdefault(int(match.group("step")), []).append(run)
    return {step: merge_histories(runs) for step, runs in sorted(by_step.items())}
