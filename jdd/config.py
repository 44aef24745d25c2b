"""Typed configs: every option's type, default and range declared once, where it is defined.

A config is a frozen :mod:`dataclasses` dataclass whose fields are declared with :func:`opt`
(default, help text, range or choices). The same declaration serves every entry point:

* Python: ``DCConfig(lr_img=0.1)`` then :func:`validate` (method factories call it);
* the CLI: :func:`add_arguments` derives ``--lr-img`` and its help from the field, and
  :func:`from_namespace` converts and validates the strings the user typed;
* config files / dicts: :func:`from_dict` (unknown keys are refused, listing the valid ones).

Every check raises :class:`ConfigError` (a ``ValueError``) naming the option, what was expected and
what was given, before any data is loaded or anything is compiled.

Why not a CLI library (tyro, simple-parsing, pydantic)? jdd's configs are flat dataclasses with
numeric ranges; argparse already gives complete ``--help`` and one-line errors, and these ~150
lines keep the range checks in the declaration without a new dependency whose error output
(multi-line panels) and help layout we would have to work around.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Sequence

_META = "jdd"


class ConfigError(ValueError):
    """A bad option value: the message names the option, what was expected and what was given."""


def opt(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, choices: Sequence[Any] | None = None,
        cli: bool = True) -> Any:
    """Declare a config field: default, help text and the allowed values.

    Args:
        default: the default value (the validated recipe).
        help: one line for ``--help``.
        ge, gt, le, lt: numeric bounds (inclusive / exclusive). NaN never passes a numeric field.
        choices: the allowed values of a string (or other) field.
        cli: expose the field as a command-line flag.
    """
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "choices": tuple(choices) if choices is not None else None, "cli": cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default (configs are frozen)")
    return dataclasses.field(default=default, metadata={_META: meta})


def flag(name: str) -> str:
    """The CLI flag of a field: ``lr_img`` -> ``--lr-img``."""
    return "--" + name.replace("_", "-")


def fields(cls) -> list[tuple[dataclasses.Field, type, dict]]:
    """(field, resolved type, metadata) of every declared field of a config class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out.append((f, hints[f.name], f.metadata.get(_META, {"help": "", "cli": True})))
    return out


def _describe(tp, meta) -> str:
    parts = []
    base, optional = _base_type(tp)
    if meta.get("choices"):
        shown = ", ".join(str(c) for c in meta["choices"] if c is not None)
        unset = " (or leave it unset)" if "none" in meta["choices"] else " (or none)"
        return "one of: " + shown + (unset if optional else "")
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        base, (f"a tuple of {'numbers' if _elem(base) is float else 'integers'}"
               if _is_tuple(base) else str(base)))
    parts.append(name)
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]:g}")
    text = " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if len(parts) > 1 else "")
    return text + (" (or none)" if optional else "")


def _base_type(tp):
    """(base type, optional?) of ``T`` or ``T | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _is_tuple(tp) -> bool:
    """A ``tuple[int, ...]`` (or ``tuple[float, ...]``) field: several values on the CLI."""
    return typing.get_origin(tp) is tuple


def _elem(tp):
    """The element type of a tuple field (int unless declared ``tuple[float, ...]``)."""
    args = typing.get_args(tp)
    return float if args and args[0] is float else int


def convert(name: str, tp, meta: dict, value: Any) -> Any:
    """Convert ``value`` (a CLI string, a YAML scalar, a Python value) to the field's type and
    check its range; raise :class:`ConfigError` naming ``name``."""
    base, optional = _base_type(tp)
    shown = flag(name)
    none_is_a_choice = "none" in (meta.get("choices") or ())   # e.g. --norm none: no norm
    if value is None or value == "" or (optional and isinstance(value, str) and (
            value.lower() == "none" and not none_is_a_choice)):
        if optional:
            return None
        raise ConfigError(f"{shown}: expected {_describe(tp, meta)}; got nothing")
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                v = low in ("true", "1", "yes")
            elif isinstance(value, (bool, int)) and value in (0, 1):
                v = bool(value)
            else:
                raise ValueError
        elif base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            v = int(value) if not isinstance(value, str) else int(value.strip())
        elif base is float:
            if isinstance(value, bool):
                raise ValueError
            v = float(value)
        elif base is str:
            if not isinstance(value, str):
                raise ValueError
            v = value
        elif _is_tuple(base):
            items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
            v = tuple(_elem(base)(i) for i in items)
            if not v:
                raise ValueError
        else:
            v = value
    except (TypeError, ValueError):
        raise ConfigError(f"{shown}: expected {_describe(tp, meta)}; got {value!r}") from None
    _check_range(shown, tp, meta, v)
    return v


def _check_range(shown: str, tp, meta: dict, v: Any) -> None:
    if meta.get("choices") and v not in meta["choices"]:
        raise ConfigError(f"{shown}: expected {_describe(tp, meta)}; got {v!r}")
    vals = v if isinstance(v, tuple) else (v,)
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        bad = (isinstance(x, float) and not math.isfinite(x))
        for key, ok in (("ge", lambda a, b: a >= b), ("gt", lambda a, b: a > b),
                        ("le", lambda a, b: a <= b), ("lt", lambda a, b: a < b)):
            if meta.get(key) is not None and not ok(x, meta[key]):
                bad = True
        if bad:
            raise ConfigError(f"{shown}: expected {_describe(tp, meta)}; got {x!r}")


def validate(cfg) -> Any:
    """Check every field of a config instance (types and ranges); returns ``cfg``.

    Raises:
        ConfigError: the first bad field, naming it.
    """
    for f, tp, meta in fields(type(cfg)):
        value = getattr(cfg, f.name)
        converted = convert(f.name, tp, meta, value)
        if converted != value and not (isinstance(value, list) and tuple(value) == converted):
            # a Python caller passed e.g. an int for a float: accept the converted value
            object.__setattr__(cfg, f.name, converted)
    post = getattr(cfg, "check", None)
    if callable(post):
        post()
    return cfg


def from_dict(cls, values: dict) -> Any:
    """Build and validate a config from a dict (e.g. a YAML file), refusing unknown keys."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(known))}")
    kw = {}
    for f, tp, meta in fields(cls):
        if f.name in values:
            kw[f.name] = convert(f.name, tp, meta, values[f.name])
    return validate(cls(**kw))


def add_arguments(group, cls, *, defaults: dict | None = None, skip: Sequence[str] = ()) -> None:
    """Add one ``--flag`` per CLI field of ``cls`` to an argparse group (values parsed as strings
    and checked by :func:`from_namespace`, so every error names the flag and the range)."""
    import argparse
    defaults = defaults or {}
    for f, tp, meta in fields(cls):
        if not meta.get("cli", True) or f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        base, _ = _base_type(tp)
        shown = "none" if default is None else (
            " ".join(map(str, default)) if isinstance(default, tuple) else default)
        help_text = f"{meta.get('help', '')} [{_describe(tp, meta)}; default: {shown}]"
        if base is bool:
            group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=help_text,
                               nargs="+" if _is_tuple(base) else None)


def from_namespace(cls, ns, *, defaults: dict | None = None) -> Any:
    """The config from parsed CLI arguments: given flags override ``defaults`` override the
    declared defaults; everything is converted and validated."""
    values = dict(defaults or {})
    for f, _, meta in fields(cls):
        if hasattr(ns, f.name):
            v = getattr(ns, f.name)
            values[f.name] = " ".join(v) if isinstance(v, list) else v
    return from_dict(cls, values)


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}
