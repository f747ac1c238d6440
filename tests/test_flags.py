"""One mechanism builds every command's flags from its settings class (selfsup.flags): every flag has a help
line from its field's comment, booleans are --flag/--no-flag, and recipes and flags land in the same settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from selfsup.cli import build_parser
from selfsup.flags import add_settings_flags, settings_from_args
from selfsup.settings import ConfigError, field_help

COMMANDS = [["pretrain"], ["eval"], ["export"], ["experiment", "temperature"], ["experiment", "byol-ablation"],
            ["transfer", "detect"], ["transfer", "segment"]]


def _subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_flag_has_a_help_line(command):
    parser = _subparser(build_parser(), command)
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert flags
    for action in flags:
        text = (action.help or "").split("(default")[0].strip()
        assert len(text) > 10, f"selfsup {' '.join(command)} {action.option_strings[0]} has no help line"
        if action.nargs == 0 and action.dest not in ("help",):
            assert any(option.startswith("--no-") for option in action.option_strings), action.option_strings


def test_help_lines_come_from_the_fields_comments():
    helps = field_help(__import__("selfsup.config", fromlist=["PretrainConfig"]).PretrainConfig)
    assert helps["crop_size"].startswith("Side of the augmented training views; None: image_size.")
    assert "Touvron et al. 2019" in helps["crop_size"], "a comment of several lines is joined"
    assert helps["batch_size"].startswith("Global batch, split evenly over the processes")


@dataclass(frozen=True)
class Inner:
    # How many.
    count: int = 1
    # Whether.
    enabled: bool = True


@dataclass(frozen=True)
class Outer:
    # The inner settings.
    inner: Inner = field(default_factory=lambda: Inner(count=3))
    # A name.
    name: str = "x"


def _parse(cls, argv, recipe=None):
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, cls)
    return settings_from_args(parser.parse_args(argv), recipe)


def test_nested_settings_flatten_into_flags_and_recipes_reach_them():
    assert _parse(Outer, []) == Outer()
    assert _parse(Outer, ["--count", "5", "--no-enabled"]) == Outer(inner=Inner(count=5, enabled=False))
    assert _parse(Outer, ["--name", "y"], {"count": 7}) == Outer(inner=Inner(count=7), name="y")
    assert _parse(Outer, ["--count", "9"], {"count": 7}).inner.count == 9, "flags win over the recipe"
    with pytest.raises(ConfigError, match="unknown setting.*'cuont'"):
        _parse(Outer, [], {"cuont": 7})


def test_two_fields_of_one_flag_name_are_refused():
    @dataclass(frozen=True)
    class Clash:
        # The inner settings.
        inner: Inner = field(default_factory=Inner)
        # Another count.
        count: int = 0

    with pytest.raises(TypeError, match="--count"):
        add_settings_flags(argparse.ArgumentParser(), Clash)


def test_method_options_are_flags_that_reach_method_args():
    from selfsup.config import PretrainConfig

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, PretrainConfig)
    config = settings_from_args(parser.parse_args(["--method", "simclr", "--temperature", "0.2"]),
                                {"method_args": {"projection_dim": 64}})
    assert (config.method_args.temperature, config.method_args.projection_dim) == (0.2, 64)
    with pytest.raises(ConfigError, match="'prediction_hidden_dim' is not an option of method 'simclr'"):
        settings_from_args(parser.parse_args(["--method", "simclr", "--prediction-hidden-dim", "8"]))
