"""Command-line flags generated from dataclasses: each option is declared once, as a dataclass field.

``add_dataclass_flags(parser, Config)`` adds ``--<field>`` for every field of ``Config``, typed after
the field's annotation (``bool`` -> :func:`add_bool_flag`, ``float`` -> :func:`finite_float`,
``Tuple[int, ...]``/``List[...]`` -> one or more values, ``Optional[X]`` -> ``X``), with the field's
``metadata`` supplying ``help`` and ``choices``. Every generated flag defaults to ``None`` so a caller can
tell an explicit flag from an absent one (model hyperparameters on top of a preset) and leave the
defaults to the dataclass itself (:func:`given_values`). The training CLI builds its engine, MRAugment
and model flags with it.

Boolean flags accept the three forms the recipes use: ``--flag`` (true), ``--flag true|false`` (also
``1/0``, ``yes/no``, ``on/off``) and ``--no-flag`` (false).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Dict, Iterable, Optional, Tuple

__all__ = ["str2bool", "finite_float", "add_bool_flag", "add_dataclass_flags", "given_values"]


def str2bool(value: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``y/n``, ``on/off`` (any case) -> bool; else an argparse error."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def finite_float(value: str) -> float:
    """argparse type of every float flag: a finite number (``nan``/``inf`` are rejected)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def add_bool_flag(parser, name: str, default: Optional[bool] = None, help: str = "") -> None:  # noqa: A002
    """``--name`` (true), ``--name true|false`` and ``--no-name`` (false), all into ``dest=name``."""
    parser.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)
    parser.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


_SCALARS = {int: int, float: finite_float, str: str}


def _flag_kind(annotation: Any, default: Any) -> Tuple[str, Any]:
    """``("bool" | "scalar" | "list", element type)`` of a field from its annotation (``Optional`` and
    ``Union[X, None]`` unwrapped); falls back on the default's type when the annotation says nothing."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _flag_kind(inner[0], default)
        annotation, origin, args = Any, None, ()
    if annotation is bool:
        return "bool", bool
    if origin in (tuple, list) or annotation in (tuple, list):
        elem = next((a for a in args if a is not Ellipsis), None)
        if elem is None and isinstance(default, (tuple, list)) and default:
            elem = type(default[0])
        return "list", _SCALARS.get(elem, elem or int)
    if annotation in _SCALARS:
        return "scalar", _SCALARS[annotation]
    if isinstance(default, bool):
        return "bool", bool
    if isinstance(default, (tuple, list)):
        return "list", _SCALARS.get(type(default[0]) if default else int, int)
    if default is not None and type(default) in _SCALARS:
        return "scalar", _SCALARS[type(default)]
    return "scalar", str


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def add_dataclass_flags(parser, cls, *, exclude: Iterable[str] = (), show_defaults: bool = True) -> None:
    """Add ``--<field>`` for every field of dataclass ``cls`` not in ``exclude`` (see the module doc).

    ``metadata`` keys used: ``help`` (text), ``choices`` (allowed values). Flags default to ``None``.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back on the defaults' types
        hints = {}
    skip = set(exclude)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        default = _default(field)
        kind, elem = _flag_kind(hints.get(field.name, Any), None if default is dataclasses.MISSING else default)
        text = field.metadata.get("help", "")
        if show_defaults and default is not dataclasses.MISSING and default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
            text = f"{text} (default {shown})" if text else f"default {shown}"
        text = text.replace("%", "%%")
        choices = field.metadata.get("choices")
        if kind == "bool":
            add_bool_flag(parser, field.name, None, text)
        elif kind == "list":
            parser.add_argument(f"--{field.name}", type=elem, nargs="+", default=None, choices=choices, help=text)
        else:
            parser.add_argument(f"--{field.name}", type=elem, default=None, choices=choices, help=text)


def given_values(args: argparse.Namespace | Dict[str, Any], cls, *, exclude: Iterable[str] = ()) -> Dict[str, Any]:
    """The fields of ``cls`` given on the command line (not ``None`` in ``args``), lists as tuples where
    the dataclass default is a tuple; the dataclass supplies every other value."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    skip = set(exclude)
    out: Dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip or values.get(field.name) is None:
            continue
        value = values[field.name]
        out[field.name] = tuple(value) if isinstance(value, list) else value
    return out
