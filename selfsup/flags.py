"""Command-line flags from settings dataclasses: the one mechanism behind every command's flags.

Each field of a settings class is a flag (``batch_size`` -> ``--batch-size``; booleans ``--flag/--no-flag``)
whose help line is the field's comment (:func:`selfsup.config.field_help`) and its default. A nested settings
field (an experiment's ``pretrain: PretrainConfig``) contributes the flags of its own fields that the outer
class lists in ``pretrain_flags``; ``PretrainConfig.method_args`` contributes one flag per option of the
methods it can run. Values come from the defaults, then a YAML recipe, then the flags given; the result is
checked by :func:`selfsup.config.from_dict`, as strictly as a recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from selfsup.config import PretrainConfig
from selfsup.settings import ConfigError, field_help, from_dict

Path = tuple[str, ...]  # where a flag's value goes: ("pretrain", "method_args", "temperature")


@dataclass(frozen=True)
class _Flag:
    path: Path
    annotation: Any
    default: Any
    help: str


def _parse(annotation: Any):
    """A parser for one command-line string; its __name__ is what argparse names in an error."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is Literal:  # choices of one type: Literal[8, 16, 32] parses integers
        annotation = type(typing.get_args(annotation)[0])
    if annotation is dict or typing.get_origin(annotation) is dict:
        return parse_mapping
    base = {int: int, float: float}.get(annotation, str)

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

    parse.__name__ = {int: "integer", float: "number"}.get(annotation, "string")
    return parse


def parse_mapping(text: str) -> dict[str, Any]:
    """A mapping setting on the command line: ``NAME=VALUE,NAME=VALUE`` (``""``: empty); each value an integer, a
    number, true/false, none or else a string (lists and nested mappings: in a YAML recipe)."""
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name.isidentifier():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE[,NAME=VALUE...], got {text!r}")
        values[name] = _scalar(value)
    return values


parse_mapping.__name__ = "mapping"


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _method_option_flags(methods: list[str], prefix: Path, config: PretrainConfig) -> list[_Flag]:
    """One flag per option of ``methods`` (an option two methods share is one flag); defaults as ``config``
    sets them for its own method, else the method's."""
    from selfsup.methods import METHODS

    by_name: dict[str, list] = {}
    for method in methods:
        settings = METHODS[method].Settings
        defaults = config.method_args if method == config.method else settings()
        hints, helps = typing.get_type_hints(settings), field_help(settings)
        for option in dataclasses.fields(settings):
            by_name.setdefault(option.name, []).append((method, hints[option.name], getattr(defaults, option.name),
                                                        helps.get(option.name, "")))
    flags = []
    for name, entries in by_name.items():
        owners = ", ".join(f"{method}: {default}" for method, _, default, _ in entries)
        text = f"[{'option of ' + ', '.join(m for m, *_ in entries)}] {entries[0][3]} (default {owners})"
        flags.append(_Flag(prefix + ("method_args", name), entries[0][1], argparse.SUPPRESS, text))
    return flags


def _flags(cls: type, defaults: Any, prefix: Path = (), only: tuple[str, ...] | None = None) -> list[_Flag]:
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    flags: list[_Flag] = []
    for settings_field in dataclasses.fields(cls):
        name, annotation = settings_field.name, hints[settings_field.name]
        if cls is PretrainConfig and name == "method_args":  # the options of the methods it may run
            from selfsup.methods import METHODS

            methods = sorted(METHODS) if only is None or "method" in only else [defaults.method]
            flags += _method_option_flags(methods, prefix, defaults)
            continue
        if only is not None and name not in only:
            continue
        default = getattr(defaults, name)
        if cls is PretrainConfig and name == "method":
            from selfsup.methods import METHODS

            annotation = Literal[tuple(sorted(METHODS))]  # the methods known when the parser is built
        if cls is PretrainConfig and name == "backbone_args":  # a mapping (checked by the config): NAME=VALUE,...
            annotation = dict[str, Any]
        if dataclasses.is_dataclass(annotation):
            flags += _flags(annotation, default, prefix + (name,), only=getattr(cls, f"{name}_flags", None))
        else:
            flags.append(_Flag(prefix + (name,), annotation, default, helps.get(name, "")))
    return flags


def add_settings_flags(parser: argparse.ArgumentParser, cls: type, defaults: Any | None = None) -> None:
    """Add a flag for every setting of ``cls`` (defaults from ``defaults``, else the class's own)."""
    defaults = defaults if defaults is not None else cls()
    seen: dict[str, Path] = {}
    for flag in _flags(cls, defaults):
        option = "--" + flag.path[-1].replace("_", "-")
        if option in seen:
            raise TypeError(f"{cls.__name__}: {option} would set both {'.'.join(seen[option])} and "
                            f"{'.'.join(flag.path)}")
        seen[option] = flag.path
        shown = "" if flag.default is argparse.SUPPRESS else f" (default: {_shown(flag.default)})"
        kwargs: dict[str, Any] = {"dest": "/".join(flag.path), "default": argparse.SUPPRESS,
                                  "help": (flag.help + shown).strip().replace("%", "%%"),
                                  "metavar": flag.path[-1].upper()}
        annotation = _unwrap_optional(flag.annotation)
        if typing.get_origin(annotation) is Literal:
            kwargs["choices"] = typing.get_args(annotation)
            kwargs["metavar"] = "{" + ",".join(str(c) for c in kwargs["choices"]) + "}"
        if typing.get_origin(annotation) is dict:
            kwargs["metavar"] = "NAME=VALUE,..."
        if annotation is bool:
            kwargs.pop("metavar")
            parser.add_argument(option, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(annotation) is tuple:
            element = typing.get_args(annotation)[0]
            if typing.get_origin(element) is Literal:
                kwargs["choices"] = typing.get_args(element)
                kwargs["metavar"] = "{" + ",".join(str(c) for c in kwargs["choices"]) + "}"
            parser.add_argument(option, nargs="+", type=_parse(element), **kwargs)
        else:
            parser.add_argument(option, type=_parse(annotation), **kwargs)
    parser.set_defaults(settings_class=cls, settings_defaults=defaults)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def given_settings(args: argparse.Namespace) -> set[str]:
    """The settings given on the command line, as ``a/b`` paths (``pretrain/epochs``, ``method_args/...``)."""
    return {key for key in vars(args) if "/" in key or key in _field_names(args.settings_class)}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _overrides(instance: Any) -> dict[str, Any]:
    """The fields of a settings object that differ from its class's defaults, nested ones included."""
    values: dict[str, Any] = {}
    reference = type(instance)()
    for settings_field in dataclasses.fields(instance):
        value, default = getattr(instance, settings_field.name), getattr(reference, settings_field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            nested = _overrides(value)
            if nested or type(value) is not type(default):
                values[settings_field.name] = nested
        elif value != default:
            values[settings_field.name] = value
    return values


def settings_from_args(args: argparse.Namespace, recipe: dict[str, Any] | None = None,
                       source: str = "command line") -> Any:
    """The settings object of a command: its defaults, then ``recipe`` (a YAML mapping of settings by name, as
    the flags name them; a method's options under ``method_args``), then the flags given."""
    cls, defaults = args.settings_class, args.settings_defaults
    values = _overrides(defaults)
    if recipe:
        paths = {flag.path[-1]: flag.path for flag in _flags(cls, defaults) if "method_args" not in flag.path}
        method_args = next((flag.path[:-1] for flag in _flags(cls, defaults) if "method_args" in flag.path), None)
        unknown = sorted(key for key in recipe if key not in paths and not (key == "method_args" and method_args))
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(repr(k) for k in unknown)}; known "
                              f"settings: {', '.join(sorted(paths) + (['method_args'] if method_args else []))}")
        for key, value in recipe.items():
            if key == "method_args":
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: 'method_args' must be a mapping of the method's options")
                for name, option in value.items():
                    _put(values, method_args + (name,), option)
            else:
                _put(values, paths[key], value)
    for key, value in vars(args).items():
        if "/" in key or key in _field_names(cls):
            _put(values, tuple(key.split("/")), value)
    return from_dict(cls, values, source=source)


def _put(values: dict[str, Any], path: Path, value: Any) -> None:
    *parents, name = path
    for parent in parents:
        if not isinstance(values.get(parent), dict):
            values[parent] = {}
        values = values[parent]
    values[name] = value
