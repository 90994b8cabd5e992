"""Typed model configurations: one dataclass per model family, strict about unknown keys."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Mapping, Type, TypeVar

T = TypeVar("T", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base class for model configs.

    Subclasses are dataclasses whose fields are the model's hyperparameters (names fixed by the
    issue tracker: they are CLI flags and checkpoint keys). ``PRESETS`` maps a preset name to a dict
    of overrides of the defaults.
    """

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def field_names(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls: Type[T], values: Mapping[str, Any], preset: str | None = None) -> T:
        """Build from ``preset`` (if given) overridden by ``values``; unknown keys raise ``ValueError``."""
        merged: Dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.PRESETS:
                raise ValueError(f"{cls.__name__}: unknown preset {preset!r}; known: {sorted(cls.PRESETS)}")
            merged.update(cls.PRESETS[preset])
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown hyperparameter(s) {unknown}; known: {list(cls.field_names())}"
            )
        merged.update(values)
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of JSON-serialisable values (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent hyperparameters (override in subclasses)."""
