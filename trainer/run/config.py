"""Typed configuration: dataclasses filled from a YAML file, then ``key=value`` overrides.

    cfg = load_config(GANConfig, "launch/configs/tiny.yaml", ["loss.r1_gamma=2", "run.seed=3"])

Every section is a dataclass; each field carries a docstring (the string
literal under it), which ``field_docs`` reads for ``--help``. Unknown keys,
wrong types and missing required values are errors that name the key and,
for a typo, the nearest valid key. Values in overrides are parsed as YAML
(``true``, ``[1, 2]``, ``null``), so the file and the command line agree.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


# ----------------------------------------------------------------------------
# Reading.

def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> T:
    """``cls`` from ``base`` (a dict, e.g. a checkpoint's config), then the YAML file, then overrides."""
    return build(cls, raw_config(path, overrides, base))


def raw_config(path: str | Path | None = None, overrides: list[str] | None = None,
               base: dict | None = None) -> dict:
    """The merged nested dict before type checking (``base`` < file < overrides)."""
    data: dict = _copy(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        _merge(data, loaded)
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
        _set(data, key.strip().split("."), value)
    return data


def build(cls: type[T], data: dict, prefix: str = "") -> T:
    """Builds the dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
            raise ConfigError(f"unknown key {prefix}{key}{hint}; valid keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[name]):  # name the leaf that is missing
                    kwargs[name] = build(hints[name], {}, key + ".")
                    continue
                raise ConfigError(f"missing required key {key}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints widen to floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string; people write it that way
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    return value


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = _copy(v)


def _set(data: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = data.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {k} is a value, not a section")
        data = nxt
    data[keys[-1]] = value


def _copy(v: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(v)) if isinstance(v, (dict, list)) else v


# ----------------------------------------------------------------------------
# Writing and documenting.

def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (what run folders and checkpoints store)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring literal that follows it in the class body (a subclass's
    docstring wins over its base's, so a section can re-document the fields it changes)."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, docstring) for every leaf field, in order."""
    docs, hints, out = _attribute_docs(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += field_docs(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        out.append((prefix + f.name, name, default, docs.get(f.name, "")))
    return out


def help_text(cls: type) -> str:
    """Every option with its type, default and docstring, for ``--help``."""
    lines = []
    for key, tp, default, doc in field_docs(cls):
        lines.append(f"  {key} ({tp}, default {default})")
        lines += [f"      {line}" for line in doc.splitlines()]
    return "\n".join(lines)
