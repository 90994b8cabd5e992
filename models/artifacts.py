"""Weights to models: build the model an artifact or a DeepSpeed checkpoint describes, export checkpoints as
artifacts, and the artifacts command line. It lives in ``models/`` beside the registry it builds from; the
file format (names, metadata, writing, reading headers, locating checkpoints) is :mod:`utils.artifacts`,
which imports no model code. Every name of :mod:`utils.artifacts` is available here too.

Commands::

    python -m models.artifacts export --checkpoint <result>/<net>/checkpoints/step3/epoch-45 --out artifacts/brain_acc4.safetensors
    python -m models.artifacts export-result --result_path <result> --out_dir artifacts [--net_prefix promptmr]
    python -m models.artifacts info artifacts/brain_acc4.safetensors

``export-result`` takes, for each net ``<net_prefix>_{brain,knee}_acc{4,8}`` and the classifier net
``anatomy_cnn``, the last epoch of the highest recipe step under ``<result>/<net>/checkpoints/``
(:func:`utils.artifacts.find_result_checkpoint`, also used by ``reconstruct.py --weights result``).
Loading never unpickles anything: safetensors, or ``torch.load(weights_only=True)`` for checkpoints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from models import CLASSIFIERS, build_model, model_entry
from utils.artifacts import *  # noqa: F401,F403 - the format's API, re-exported
from utils.artifacts import (
    MODEL_STATES,
    SUFFIX,
    _STEP_RE,
    ArtifactError,
    ArtifactInfo,
    check_config_types,
    find_result_checkpoint,
    read_artifact_info,
    result_net_names,
    save_artifact,
)
from utils.checkpoint import CheckpointError, epoch_of_tag, load_model_states
from utils.io import OutputError, prepare_output_dir, prepare_output_file

__all__ = [*__import__("utils.artifacts", fromlist=["__all__"]).__all__, "load_artifact", "load_checkpoint_model",
           "export_checkpoint", "export_result", "main"]

def _model_from_info(path, info: ArtifactInfo) -> nn.Module:
    """Build the (randomly initialised) model an artifact or checkpoint describes."""
    try:
        config_cls = model_entry(info.model_name)[1]
    except ValueError as exc:
        raise ArtifactError(f"{path}: cannot build model {info.model_name!r}: {exc}") from None
    check_config_types(path, config_cls, info.model_config)
    try:
        return build_model(info.model_name, **info.model_config)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: cannot build model {info.model_name!r} from its stored config: {exc}") from None


def load_artifact(path, device: torch.device | str = "cpu") -> Tuple[nn.Module, ArtifactInfo]:
    """Build the model an artifact describes and load its weights (strict, no unpickling); eval mode."""
    from safetensors.torch import load_model

    info = read_artifact_info(path)
    model = _model_from_info(path, info)
    try:
        load_model(model, str(path), strict=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 - missing/unexpected keys, wrong shapes, corrupt data
        raise ArtifactError(f"{path}: weights do not fit {info.model_name!r} with the stored config: "
                            f"{str(exc).strip().splitlines()[-1].strip()}") from None
    return model.to(device).eval(), info


def _info_from_states(checkpoint: Path, states: Dict[str, Any]) -> ArtifactInfo:
    for key in ("module", "model_name", "model_config"):
        if key not in states:
            raise ArtifactError(f"{checkpoint / MODEL_STATES}: not a checkpoint of this pipeline: no {key!r}")
    args = states.get("args") or {}
    if not isinstance(args, dict):
        raise ArtifactError(f"{checkpoint / MODEL_STATES}: client state 'args' must be a dict, got {type(args).__name__}")
    classifier = isinstance(states["model_name"], str) and states["model_name"] in CLASSIFIERS
    try:
        epoch = states["epoch"] if "epoch" in states else epoch_of_tag(checkpoint)
    except CheckpointError:
        epoch = None
    step = _STEP_RE.match(checkpoint.parent.name)
    return ArtifactInfo.from_payload(checkpoint / MODEL_STATES, dict(
        model_name=states["model_name"],
        model_config=states["model_config"],
        source=str(checkpoint),
        epoch=epoch,
        step=states["step"] if "step" in states else (int(step.group(1)) if step else None),
        anatomy=None if classifier else args.get("task"),
        # a cine model trained over several R (a list) serves every acceleration: null
        acceleration=None if classifier or isinstance(args.get("acceleration"), (list, tuple)) else args.get("acceleration"),
    ))


def load_checkpoint_model(checkpoint, device: torch.device | str = "cpu") -> Tuple[nn.Module, ArtifactInfo]:
    """Model and :class:`ArtifactInfo` of a DeepSpeed tag ``.../epoch-N`` (``torch.load(weights_only=True)``)."""
    checkpoint = Path(checkpoint)
    try:
        states = load_model_states(checkpoint)
    except CheckpointError as exc:
        raise ArtifactError(str(exc)) from None
    info = _info_from_states(checkpoint, states)
    zero_stage = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage")
    model = _model_from_info(checkpoint, info)
    try:
        model.load_state_dict(states["module"], strict=True)
    except RuntimeError as exc:
        hint = " (ZeRO-3 checkpoints keep the weights partitioned; train with --zero_stage 1 or 2)" if zero_stage == 3 else ""
        raise ArtifactError(f"{checkpoint / MODEL_STATES}: weights do not fit {info.model_name!r} with the stored "
                            f"config{hint}: {str(exc).strip().splitlines()[-1].strip()}") from None
    return model.float().to(device).eval(), info


def export_checkpoint(checkpoint, out) -> Path:
    """Export one DeepSpeed checkpoint tag to the artifact file ``out``."""
    model, info = load_checkpoint_model(checkpoint)
    return save_artifact(model, out, info)


def export_result(result_path, out_dir, net_prefix: str = "promptmr", classifier_net: str = "anatomy_cnn") -> List[Path]:
    """Export the four reconstruction nets and the classifier of a result folder as ``out_dir/<stem>.safetensors``.

    Every net is located first, so a missing one fails before anything is written.
    """
    nets = result_net_names(net_prefix, classifier_net)
    found = {stem: find_result_checkpoint(result_path, net) for stem, net in nets.items()}
    return [export_checkpoint(tag, Path(out_dir) / f"{stem}{SUFFIX}") for stem, tag in found.items()]


def _describe(path: Path, info: ArtifactInfo) -> str:
    role = (f"{info.anatomy} acc{info.acceleration}" if info.acceleration is not None else f"{info.anatomy}, every acceleration") if info.anatomy else "classifier"
    return f"{path}: {info.model_name} ({role}), epoch {info.epoch} step {info.step}, from {info.source}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.artifacts", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("export", help="export one DeepSpeed checkpoint tag (.../stepK/epoch-N)")
    one.add_argument("--checkpoint", required=True, type=Path)
    one.add_argument("--out", required=True, type=Path, help="artifacts/<name>.safetensors")
    res = sub.add_parser("export-result", help="export the 4 reconstruction models and the classifier of a result folder")
    res.add_argument("--result_path", required=True, type=Path)
    res.add_argument("--out_dir", required=True, type=Path)
    res.add_argument("--net_prefix", default="promptmr", help="reconstruction nets are <prefix>_{brain,knee}_acc{4,8}")
    res.add_argument("--classifier_net", default="anatomy_cnn")
    show = sub.add_parser("info", help="print what artifact files hold")
    show.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            if args.out.suffix != SUFFIX:
                raise ArtifactError(f"{args.out}: artifact file names end with {SUFFIX}")
            prepare_output_file(args.out)  # before any work: --out must be writable, not a folder
            paths = [export_checkpoint(args.checkpoint, args.out)]
        elif args.command == "export-result":
            prepare_output_dir(args.out_dir)
            paths = export_result(args.result_path, args.out_dir, args.net_prefix, args.classifier_net)
        else:
            paths = list(args.paths)
        for path in paths:
            print(_describe(path, read_artifact_info(path)))
    except (ArtifactError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
