"""Typed, strict settings: dataclasses whose fields are the settings, checked on load.

The machinery every settings class uses: :func:`from_dict` (an unknown key or a value of the wrong type is an
error that names the setting, raised before any work starts), the YAML loader, and the help line of each
field, read from its comment (:func:`field_help`). The settings of pretraining and evaluation are in
:mod:`selfsup.config`.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A setting is unknown or has a bad value; the message names it."""


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if dataclasses.is_dataclass(annotation):  # nested settings: a mapping of their own fields
        if isinstance(value, annotation):
            return value
        return from_dict(annotation, value, source=f"setting '{name}'")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"setting '{name}': {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"setting '{name}': {value!r} has the wrong type ({'; '.join(errors)})")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"setting '{name}': expected a list, got {value!r}")
        return tuple(_check_type(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"setting '{name}': expected a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting '{name}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting '{name}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"setting '{name}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"setting '{name}': expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported annotation {annotation!r} for setting '{name}'")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, values: dict[str, Any], source: str = "settings") -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys and bad types raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(repr(k) for k in unknown)}; "
                          f"known settings: {', '.join(sorted(types_))}")
    checked = {name: _check_type(name, value, types_[name]) for name, value in values.items()}
    return cls(**checked)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with two fixes: a duplicate key is an error (PyYAML keeps the last one silently),
    and numbers such as ``1e-3`` are numbers (YAML 1.1 wants ``1.0e-3``; YAML 1.2 and people read both)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe with the safe loader (no arbitrary Python objects); duplicate keys are an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        values = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    return values


def field_help(cls: type) -> dict[str, str]:
    """The help line of each field of dataclass ``cls``: the comment lines just above the field and the
    comment at the end of its line, joined. Settings are documented once, where they are defined."""
    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a frozen application): no help text, the flags still work
            continue
        comments = {token.start[0]: token.string.lstrip("#").strip()
                    for token in tokenize.generate_tokens(io.StringIO(source).readline)
                    if token.type == tokenize.COMMENT}
        lines = source.splitlines()
        names = {f.name for f in dataclasses.fields(klass)}
        for number, line in enumerate(lines, start=1):
            match = re.match(r"^    (\w+)\s*:", line)
            if not match or match.group(1) not in names:
                continue
            above, block = number - 1, []
            while above in comments and lines[above - 1].lstrip().startswith("#"):
                block.insert(0, comments[above])
                above -= 1
            if number in comments:
                block.append(comments[number])
            if block or match.group(1) not in helps:  # a subclass's field without a comment keeps the base's
                helps[match.group(1)] = " ".join(block)
    return helps


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass, nested settings included (tuples become lists, so it survives JSON
    and YAML)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(dataclasses.asdict(config))
