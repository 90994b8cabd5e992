"""Submitted weights: one ``<name>.safetensors`` per model, its configuration in the file's metadata.

Format (version 1)
------------------
A standard safetensors file written with :func:`safetensors.torch.save_model` (tensors shared between
modules, e.g. PromptMR's one PReLU slope used by many blocks, are stored once and re-tied on loading),
float32 tensors named as in the model's ``state_dict``. Its header metadata holds one key,
``"mri_artifact"``, a JSON object::

    {"format": "mri-recon-artifact", "format_version": 1,
     "model_name": "promptmr",              # registry name (models/__init__.py)
     "model_config": {...},                 # ModelConfig.to_dict(): rebuilds the model exactly
     "source": ".../checkpoints/step3/epoch-45",   # the checkpoint it was exported from
     "epoch": 45, "step": 3,                # of that checkpoint (null if unknown)
     "anatomy": "brain", "acceleration": 4} # what the model was trained for (null for classifiers)

Loading reads only that JSON and raw tensors: nothing is ever unpickled. A file without this metadata,
with a newer ``format_version``, an unknown model or a configuration/tensor mismatch is an
:class:`ArtifactError` naming the file.

Names ``reconstruct.py --weights artifacts`` expects in ``artifacts/``::

    brain_acc4.safetensors  brain_acc8.safetensors  knee_acc4.safetensors  knee_acc8.safetensors
    anatomy_cnn.safetensors                          (the brain/knee classifier)

Commands::

    python -m utils.artifacts export --checkpoint <result>/<net>/checkpoints/step3/epoch-45 --out artifacts/brain_acc4.safetensors
    python -m utils.artifacts export-result --result_path <result> --out_dir artifacts [--net_prefix promptmr]
    python -m utils.artifacts info artifacts/brain_acc4.safetensors

``export-result`` takes, for each net ``<net_prefix>_{brain,knee}_acc{4,8}`` and the classifier net
``anatomy_cnn``, the last epoch of the highest recipe step under ``<result>/<net>/checkpoints/``
(:func:`find_result_checkpoint`, also used by ``reconstruct.py --weights result``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from utils.checkpoint import CheckpointError, MODEL_STATES, epoch_of_tag, latest_epoch_tag, load_model_states
from utils.io import OutputError, atomic_path, prepare_output_dir, prepare_output_file

__all__ = [
    "ArtifactError", "ArtifactInfo", "FORMAT", "FORMAT_VERSION", "METADATA_KEY", "RECON_ROLES",
    "CLASSIFIER_ARTIFACT", "recon_artifact_name", "result_net_names", "artifact_names", "save_artifact",
    "read_artifact_info", "load_artifact", "load_checkpoint_model", "find_result_checkpoint",
    "export_checkpoint", "export_result", "main",
]

FORMAT = "mri-recon-artifact"
FORMAT_VERSION = 1
METADATA_KEY = "mri_artifact"
SUFFIX = ".safetensors"
#: (anatomy, acceleration) of the four reconstruction models, in a fixed order.
RECON_ROLES: Tuple[Tuple[str, int], ...] = (("brain", 4), ("brain", 8), ("knee", 4), ("knee", 8))
CLASSIFIER_ARTIFACT = "anatomy_cnn"
_STEP_RE = re.compile(r"^step(\d+)$")


class ArtifactError(ValueError):
    """Weights that cannot be used (message: ``<file>: <problem>``)."""


def recon_artifact_name(anatomy: str, acceleration: int) -> str:
    """``brain_acc4`` etc.: the artifact (file stem) of one reconstruction model."""
    return f"{anatomy}_acc{int(acceleration)}"


def artifact_names() -> List[str]:
    """The five artifact stems ``reconstruct.py`` loads: four reconstruction models, then the classifier."""
    return [recon_artifact_name(a, acc) for a, acc in RECON_ROLES] + [CLASSIFIER_ARTIFACT]


def result_net_names(net_prefix: str = "promptmr", classifier_net: str = "anatomy_cnn") -> Dict[str, str]:
    """``{artifact stem: training net name}``, e.g. ``brain_acc4 -> promptmr_brain_acc4`` (train_recipe.sh)."""
    nets = {recon_artifact_name(a, acc): f"{net_prefix}_{recon_artifact_name(a, acc)}" for a, acc in RECON_ROLES}
    nets[CLASSIFIER_ARTIFACT] = classifier_net
    return nets


# --------------------------------------------------------------------------------------------- metadata


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """What an artifact (or checkpoint) says about its model; the JSON in the safetensors metadata."""

    model_name: str
    model_config: Dict[str, Any]
    source: str
    epoch: Optional[int] = None
    step: Optional[int] = None
    anatomy: Optional[str] = None
    acceleration: Optional[int] = None
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> Dict[str, str]:
        payload = {"format": FORMAT, **dataclasses.asdict(self)}
        return {METADATA_KEY: json.dumps(payload, sort_keys=True)}

    @classmethod
    def from_metadata(cls, path, metadata: Optional[Dict[str, str]]) -> "ArtifactInfo":
        """Parse and check the metadata of ``path``; any problem is an :class:`ArtifactError`."""
        if not metadata or METADATA_KEY not in metadata:
            raise ArtifactError(f"{path}: not an artifact of this pipeline: no {METADATA_KEY!r} metadata "
                                f"(export weights with `python -m utils.artifacts export`)")
        try:
            payload = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON ({exc.msg})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ArtifactError(f"{path}: metadata {METADATA_KEY!r} is not a {FORMAT!r} object")
        version = payload.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise ArtifactError(f"{path}: metadata: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ArtifactError(f"{path}: format_version {version} is newer than this code reads ({FORMAT_VERSION})")
        payload.pop("format")
        return cls.from_payload(path, payload)

    @classmethod
    def from_payload(cls, path, payload: Dict[str, Any]) -> "ArtifactInfo":
        """Check every field's presence and type (:data:`_FIELD_TYPES`); any problem is one
        :class:`ArtifactError` naming ``path`` and the field."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - fields)
        if unknown:
            raise ArtifactError(f"{path}: metadata has unknown field(s) {unknown}")
        for key in ("model_name", "model_config", "source"):
            if key not in payload:
                raise ArtifactError(f"{path}: metadata has no {key!r}")
        for key, value in payload.items():
            problem = _field_problem(key, value)
            if problem:
                raise ArtifactError(f"{path}: metadata field {key!r} {problem}, got {value!r} ({type(value).__name__})")
        return cls(**payload)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ANATOMIES = tuple(dict.fromkeys(a for a, _ in RECON_ROLES)) + ("cine",)  # cine: CMRxRecon models
#: field -> (check, what it must be); ``None`` is allowed where the dataclass default is ``None``.
_FIELD_TYPES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "model_name": (lambda v: isinstance(v, str) and bool(v), "must be a non-empty string"),
    "model_config": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "must be a JSON object"),
    "source": (lambda v: isinstance(v, str), "must be a string"),
    "epoch": (lambda v: v is None or (_is_int(v) and v >= 0), "must be a non-negative integer or null"),
    "step": (lambda v: v is None or (_is_int(v) and v >= 1), "must be a positive integer or null"),
    "anatomy": (lambda v: v is None or v in _ANATOMIES, f"must be one of {list(_ANATOMIES)} or null"),
    "acceleration": (lambda v: v is None or (_is_int(v) and v >= 1), "must be a positive integer or null"),
    "format_version": (lambda v: _is_int(v) and v >= 1, "must be a positive integer"),
}


def _field_problem(key: str, value: Any) -> Optional[str]:
    check, expected = _FIELD_TYPES[key]
    return None if check(value) else expected


def _config_value_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` (from JSON or a checkpoint) has the type of the config field's ``default``."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_int(value)
    if isinstance(default, float):
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and (
            not default or all(_config_value_ok(default[0], v) for v in value))
    return True


def _check_config_types(path, config_cls, config: Dict[str, Any]) -> None:
    """Every known ``model_config`` value must have its field's type (unknown keys are left to the
    config's own check); a mismatch is an :class:`ArtifactError` naming ``path`` and the field."""
    for field in dataclasses.fields(config_cls):
        if field.name not in config:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        value = config[field.name]
        if value is None and "Optional" in str(field.type):  # e.g. PromptMR's output_size (cine: full image)
            continue
        if not _config_value_ok(default, value):
            kind = type(default).__name__ + (f" of {type(default[0]).__name__}" if isinstance(default, (tuple, list)) and default else "")
            raise ArtifactError(f"{path}: metadata field 'model_config.{field.name}' must be {kind}, "
                                f"got {value!r} ({type(value).__name__})")


def _model_from_info(path, info: ArtifactInfo) -> nn.Module:
    """Build the (randomly initialised) model an artifact or checkpoint describes."""
    from models import build_model, model_entry  # lazy: models/ never imports this module

    try:
        config_cls = model_entry(info.model_name)[1]
    except ValueError as exc:
        raise ArtifactError(f"{path}: cannot build model {info.model_name!r}: {exc}") from None
    _check_config_types(path, config_cls, info.model_config)
    try:
        return build_model(info.model_name, **info.model_config)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: cannot build model {info.model_name!r} from its stored config: {exc}") from None


# --------------------------------------------------------------------------------------------- artifacts


def save_artifact(model: nn.Module, path, info: ArtifactInfo) -> Path:
    """Write ``model``'s weights (float32, CPU) and ``info`` to ``path`` atomically; returns ``path``."""
    from safetensors.torch import save_model

    path = Path(path)
    if path.suffix != SUFFIX:
        raise ArtifactError(f"{path}: artifact file names end with {SUFFIX}")
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32)
           for t in model.state_dict().values()):
        model = copy.deepcopy(model).to("cpu").float()  # leave the caller's model where it is
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=info.to_metadata())
    return path


def read_artifact_info(path) -> ArtifactInfo:
    """The :class:`ArtifactInfo` of an artifact file (reads only the header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: {exc})") from None
    return ArtifactInfo.from_metadata(path, metadata)


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


# --------------------------------------------------------------------------------------------- checkpoints


def _info_from_states(checkpoint: Path, states: Dict[str, Any]) -> ArtifactInfo:
    for key in ("module", "model_name", "model_config"):
        if key not in states:
            raise ArtifactError(f"{checkpoint / MODEL_STATES}: not a checkpoint of this pipeline: no {key!r}")
    args = states.get("args") or {}
    if not isinstance(args, dict):
        raise ArtifactError(f"{checkpoint / MODEL_STATES}: client state 'args' must be a dict, got {type(args).__name__}")
    from models import CLASSIFIERS  # lazy (see _model_from_info)

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


def find_result_checkpoint(result_path, net_name: str) -> Path:
    """The last epoch of the highest step: ``<result>/<net>/checkpoints/step{k}/epoch-{n}`` (max k, then max n).

    Raises :class:`ArtifactError` naming the expected location when there is none.
    """
    ckpt_dir = Path(result_path) / net_name / "checkpoints"
    steps = sorted(
        (int(m.group(1)), p) for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else ()) if (m := _STEP_RE.match(p.name))
    )
    for _, step_dir in reversed(steps):
        tag = latest_epoch_tag(step_dir)
        if tag is not None:
            return tag
    raise ArtifactError(f"{ckpt_dir}/step{{k}}/epoch-{{n}}/{MODEL_STATES}: no checkpoint found for net {net_name!r} "
                        f"(train it with scripts/train_*.sh, or use --weights artifacts)")


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


# --------------------------------------------------------------------------------------------- CLI


def _describe(path: Path, info: ArtifactInfo) -> str:
    role = f"{info.anatomy} acc{info.acceleration}" if info.anatomy else "classifier"
    return f"{path}: {info.model_name} ({role}), epoch {info.epoch} step {info.step}, from {info.source}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.artifacts", description=__doc__.split("\n")[0])
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
