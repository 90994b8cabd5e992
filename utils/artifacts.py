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

This module is the format (names, metadata, writing, reading the header, locating checkpoints) and
imports no model code; building a model from an artifact or a checkpoint, exporting, and the command line
(``python -m models.artifacts export | export-result | info``) are :mod:`models.artifacts`, beside the
model registry.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from utils.checkpoint import MODEL_STATES, latest_epoch_tag
from utils.io import atomic_path

__all__ = [
    "ArtifactError", "ArtifactInfo", "FORMAT", "FORMAT_VERSION", "METADATA_KEY", "SUFFIX", "RECON_ROLES",
    "CLASSIFIER_ARTIFACT", "recon_artifact_name", "result_net_names", "artifact_names", "save_artifact",
    "read_artifact_info", "check_config_types", "find_result_checkpoint",
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
                                f"(export weights with `python -m models.artifacts export`)")
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


_ANATOMIES = tuple(dict.fromkeys(a for a, _ in RECON_ROLES)) + ("cine", "acdc")  # cine: CMRxRecon models; acdc: TiTok-MRI codec
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


def check_config_types(path, config_cls, config: Dict[str, Any]) -> None:
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


# --------------------------------------------------------------------------------------------- checkpoints


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


if __name__ == "__main__":  # `python -m utils.artifacts export|export-result|info` keeps working: the CLI is models.artifacts
    import sys

    from models.artifacts import main

    sys.exit(main())
