"""The command behaves as the ecosystem's tools do, and its defaults hold on a short run: ``python -m selfsup``,
``--version``, a ``--help`` that imports no torch, ``--flag/--no-flag`` booleans, one spelling of the options
commands share, one default recipe under every run without ``--config``, a warmup that leaves a short run room
to decay, a progress bar over the whole run, TensorBoard that can be switched off, and a run that records what
made it (command, versions, start time, normalisation statistics) in config.json and the report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import selfsup
from selfsup.cli import COMMANDS, DEFAULT_RECIPE, build_parser, default_pretrain_config, main
from selfsup.config import PretrainConfig, resolve
from selfsup.schedules import capped_warmup_steps

ROOT = Path(__file__).resolve().parents[1]


def _run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command that takes flags: pretrain, ..., transfer detect, experiment text."""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser
        return
    for name, subparser in subcommands[0].choices.items():
        yield from _leaf_parsers(subparser, path + (name,))


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


# ---------------------------------------------------------------- the conventions of the ecosystem

def test_python_m_selfsup_is_the_command_and_prints_the_version():
    done = _run_python("-m", "selfsup", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"selfsup {selfsup.__version__}"
    done = _run_python("-m", "selfsup", "export")
    assert done.returncode == 2 and "setting 'checkpoint' is required" in done.stderr


def test_top_level_help_lists_every_command_and_imports_no_torch():
    script = ("import json, sys\n"
              "from selfsup.cli import main\n"
              "for argv in (['--help'], ['--version']):\n"
              "    try:\n"
              "        main(argv)\n"
              "    except SystemExit as exit:\n"
              "        assert exit.code == 0, exit.code\n"
              "heavy = ('torch', 'torchvision', 'numpy')\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    done = _run_python("-c", script)
    assert done.returncode == 0, done.stderr
    *printed, modules = done.stdout.strip().splitlines()
    assert json.loads(modules) == [], "selfsup --help must not import torch (it takes seconds)"
    listing = " ".join(" ".join(printed).split())
    for name, (help_text, _) in COMMANDS.items():
        assert f"{name} {help_text}" in listing, name


def test_the_listing_is_the_same_whether_the_commands_are_built_or_not():
    assert build_parser(full=[]).format_help() == build_parser().format_help()


def test_every_boolean_flag_of_every_command_has_its_no_form():
    commands = dict(_leaf_parsers(build_parser()))
    assert {("pretrain",), ("eval",), ("export",), ("transfer", "detect"), ("transfer", "segment"),
            ("experiment", "temperature"), ("experiment", "byol-ablation"), ("experiment", "text")} <= set(commands)
    for path, parser in commands.items():
        for action in parser._actions:
            if action.nargs == 0 and not isinstance(action, argparse._HelpAction):
                assert isinstance(action, argparse.BooleanOptionalAction), (path, action.option_strings)
                assert {f"--{action.dest.split('/')[-1].replace('_', '-')}",
                        f"--no-{action.dest.split('/')[-1].replace('_', '-')}"} <= set(action.option_strings)


def test_options_that_commands_share_have_one_spelling(tmp_path, capsys):
    commands = {" ".join(path): _options(parser) for path, parser in _leaf_parsers(build_parser())}
    for name, options in commands.items():
        assert not options & {"--lr", "--learning-rate", "--num-threads"}, name
    for name in ("pretrain", "transfer detect", "transfer segment", "experiment temperature",
                 "experiment byol-ablation", "experiment text"):
        assert {"--base-lr", "--threads"} <= commands[name], name
    # A transfer recipe with the old name is refused with the conversion (no alias: transfer recipes have no
    # upgrade path, and the value changed meaning: per 256 images now).
    recipe = tmp_path / "old.yaml"
    recipe.write_text("lr: 0.01\nbatch_size: 4\n")
    assert main(["transfer", "detect", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "'lr' is now 'base_lr'" in capsys.readouterr().err


def test_transfer_base_lr_gives_the_rate_the_recipes_had():
    from selfsup.schedules import scaled_learning_rate
    from selfsup.settings import load_yaml

    was = {"detect_pennfudan_cpu": 0.01, "detect_pennfudan_gpu": 0.01, "segment_pennfudan_cpu": 0.02,
           "segment_pennfudan_gpu": 0.01}
    for name, lr in was.items():
        recipe = load_yaml(ROOT / "configs" / f"transfer_{name}.yaml")
        assert scaled_learning_rate(recipe["base_lr"], recipe["batch_size"]) == lr, name  # exactly: 2^k scaling


# ---------------------------------------------------------------- one default recipe

def _resolved(monkeypatch, argv: list[str]) -> PretrainConfig:
    import selfsup.pipeline

    seen = []

    def fake_pretrain(config, resume=None, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(selfsup.pipeline, "pretrain", fake_pretrain)
    with pytest.raises(SystemExit):
        main(argv)
    return seen[0]


def test_pretrain_starts_from_the_default_recipe_whatever_the_flags(monkeypatch, tmp_path, capsys):
    bare = _resolved(monkeypatch, ["pretrain"])
    short = _resolved(monkeypatch, ["pretrain", "--max-steps", "60"])
    assert short.max_steps == 60 and dataclasses.replace(short, max_steps=None) == bare
    assert bare == default_pretrain_config() and bare.method == "simclr" and bare.width == 0.25
    assert bare.method_args.projection_hidden_dim == 1024
    # Another method takes its own options, as --help shows them; the recipe's other settings stay.
    dino = _resolved(monkeypatch, ["pretrain", "--method", "dino"])
    assert dino.method_args == type(dino.method_args)() and dino.width == 0.25 and dino.epochs == 30
    # A recipe file means what it says: its unset settings keep PretrainConfig's (the papers') defaults.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\n")
    assert _resolved(monkeypatch, ["pretrain", "--config", str(recipe)]) == PretrainConfig(epochs=3)
    capsys.readouterr()


def test_pretrain_help_shows_the_defaults_it_uses(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert str(DEFAULT_RECIPE) in text and "the defaults shown below are its settings" in text
    assert "(default: 0.25)" in text and "(default: simclr)" in text and "simclr: 1024" in text
    assert "--no-tensorboard" in text and "--threads" in text


# ---------------------------------------------------------------- the warmup of a short run

def test_warmup_is_the_configured_one_but_at_most_a_tenth_of_the_run():
    assert capped_warmup_steps(10, 20, 100) == 10, "10 warmup epochs of a 5-epoch run: a tenth of its 100 steps"
    assert capped_warmup_steps(3, 11, 330) == 33, "a tenth exactly is kept (the default recipe)"
    assert capped_warmup_steps(0.5, 391, 1955) == round(0.5 * 391), "kept as given, rounding included"
    assert capped_warmup_steps(1, 10, 100) == 10 and capped_warmup_steps(0, 10, 100) == 0
    assert capped_warmup_steps(10, 1, 5) == 0, "a run of 5 steps has no room for one"


def test_a_five_epoch_schedule_warms_up_then_decays():
    import torch

    from selfsup.train.optim import build_scheduler

    steps_per_epoch, epochs = 20, 5
    total = steps_per_epoch * epochs
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, total, capped_warmup_steps(10, steps_per_epoch, total))
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(rates))
    assert rates[peak] == pytest.approx(1.0) and peak == 9, "the warmup ends after a tenth of the run"
    assert rates[0] < 0.2 and all(a < b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert rates[-1] < 0.01 * rates[peak], "the rate decays to near 0 by the last step"


# ---------------------------------------------------------------- a short run end to end

class _FakeBar:
    """Stands in for tqdm: records the bars the loop opens (unit 'step')."""

    bars: list[_FakeBar] = []

    def __init__(self, iterable=None, total=None, initial=0, unit="it", **kwargs) -> None:
        self.iterable, self.total, self.initial, self.n, self.unit = iterable, total, initial, initial, unit
        self.closed = False
        _FakeBar.bars.append(self)

    def __iter__(self):
        yield from self.iterable

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_description(self, *args, **kwargs) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def external_write_mode(*args, **kwargs):
        return contextlib.nullcontext()


@pytest.fixture
def digits64(tmp_path) -> str:
    from selfsup.data.datasets import load_digits_data

    digits = load_digits_data("train")
    path = tmp_path / "digits64.npz"
    np.savez(path, images=digits.images[:64].numpy(), labels=digits.labels[:64].numpy())
    return str(path)


def test_a_short_run_records_what_made_it_and_resumes(tmp_path, digits64, monkeypatch, capsys):
    import torch
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", _FakeBar)
    _FakeBar.bars = []
    out = tmp_path / "run"
    # No --config: the default recipe (its 3 warmup epochs are more than a tenth of 5 epochs of 4 steps).
    args = ["pretrain", "--data", digits64, "--out", str(out), "--epochs", "5", "--batch-size", "16", "--width",
            "0.125", "--projection-hidden-dim", "32", "--projection-dim", "16", "--log-every", "1", "--num-workers",
            "0", "--no-eval-at-end", "--no-tensorboard", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert main([*args, "--max-steps", "10"]) == 0
        assert torch.get_num_threads() == 1, "--threads sets torch's threads"
        first = capsys.readouterr().out
        assert main([*args, "--resume", "auto"]) == 0
        second = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)

    bars = [bar for bar in _FakeBar.bars if bar.unit == "step"]
    assert [(bar.initial, bar.total, bar.n, bar.closed) for bar in bars] == [(0, 10, 10, True), (10, 20, 20, True)], \
        "one bar for the whole run: max_steps, or every epoch's steps (from the resumed step)"
    for printed in (first, second):
        warmup = [line for line in printed.splitlines() if line.startswith("warmup: ")]
        assert warmup == ["warmup: 2 steps (0.5 epochs, a tenth of the run's 20) instead of the 3 epochs set, so "
                          "that the learning rate decays"]
    assert "resumed from" in second

    rates = [row["lr"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in row]
    assert len(rates) == 20 and int(np.argmax(rates)) <= 2 and rates[-1] < 0.05 * max(rates)
    assert not (out / "tensorboard").exists(), "--no-tensorboard writes no event files"

    config = json.loads((out / "config.json").read_text())
    record = config.pop("run")
    assert PretrainConfig(**{**config, "method_args": None}).width == 0.125, "the settings stay at the top"
    assert record["command"].startswith("selfsup pretrain --data ") and record["command"].endswith("--resume auto")
    assert record["selfsup_version"] == selfsup.__version__ and record["torch_version"] == torch.__version__
    assert record["started"][:2] == "20" and "T" in record["started"]
    assert record["resumed_from"].endswith("step_000000010.pt")
    norm = record["normalization"]
    assert len(norm["mean"]) == len(norm["std"]) == 3 and "the training data" in norm["statistics_of"]
    chosen = record["optimizer"]  # what optimizer auto stood for, and why
    assert chosen == dataclasses.asdict(resolve(PretrainConfig(**{**config, "method_args": None})))
    assert chosen["optimizer"] in ("sgd", "lars") and chosen["reason"].startswith("auto: batch ")
    report = (out / "report.md").read_text()
    assert f"- optimizer: {chosen['optimizer']}, base learning rate {chosen['base_lr']:g} per 256" in report
    assert "## Run" in report and f"- command: `{record['command']}`" in report
    assert f"torch {torch.__version__}" in report and "the statistics of the training data" in report
    assert '"run"' not in report, "the record is shown once, not again in the configuration"


def test_streamed_data_is_normalised_with_imagenet_statistics_and_says_so():
    from selfsup.provenance import describe_run, run_record
    from selfsup.train.build import channel_stats, channel_stats_source

    streamed = types.SimpleNamespace(images=None, name="photos")
    mean, std = channel_stats(streamed)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    record = run_record("selfsup pretrain --data photos", mean, std, channel_stats_source(streamed))
    assert "ImageNet" in record["normalization"]["statistics_of"]
    lines = describe_run(record)
    assert any(line.startswith("- normalisation: per-channel mean (0.485, 0.456, 0.406)") and "ImageNet" in line
               for line in lines)


def test_tensorboard_is_on_by_default_and_a_flag_turns_it_off(monkeypatch):
    assert PretrainConfig().tensorboard and default_pretrain_config().tensorboard
    assert not _resolved(monkeypatch, ["pretrain", "--no-tensorboard"]).tensorboard
