"""The ``selfsup`` command (also ``python -m selfsup``): pretrain, eval, export, transfer, experiment.

Settings come from a dataclass in :mod:`selfsup.config`: every field is a flag (``--batch-size``, help from
the field's comment; see :mod:`selfsup.flags`), a YAML recipe (``--config``) sets any of them, flags given on
the command line win. ``selfsup pretrain`` without ``--config`` starts from the embedded default recipe
(:data:`DEFAULT_RECIPE`). Errors in settings or data are printed as one clear line, not a traceback.

Only the command being run has its parser built in full (its flags come from settings classes whose modules
import torch), so ``selfsup --help`` and ``selfsup --version`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfsup import __version__
from selfsup.config import EvalConfig, ExportConfig, PretrainConfig
from selfsup.files import json_text
from selfsup.flags import add_settings_flags, settings_from_args
from selfsup.provenance import command_line
from selfsup.settings import ConfigError, from_dict, load_yaml


def _settings(args: argparse.Namespace) -> Any:
    recipe = load_yaml(args.config) if getattr(args, "config", None) else None
    return settings_from_args(args, recipe, source=getattr(args, "config", None) or "command line")


# The default job, and the settings every `selfsup pretrain` without --config starts from: with no arguments
# it runs as it stands, and `--max-steps 60` (or any flag) changes that one setting of it.
DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"


def default_pretrain_config() -> PretrainConfig:
    """The settings of :data:`DEFAULT_RECIPE`, under every ``selfsup pretrain`` that gives no ``--config``."""
    return from_dict(PretrainConfig, load_yaml(DEFAULT_RECIPE), source=str(DEFAULT_RECIPE))


def _cmd_pretrain(args: argparse.Namespace) -> int:
    if args.config:  # a recipe's unset settings keep PretrainConfig's defaults (the papers'), whatever the base
        args.settings_defaults = PretrainConfig()
    else:
        method = vars(args).get("method")
        if method is not None and method != args.settings_defaults.method:
            # The recipe's method options (projection_hidden_dim: 1024) are SimCLR's; another method takes its own,
            # as --help shows them.
            args.settings_defaults = dataclasses.replace(args.settings_defaults, method=method, method_args=None)
        if "WORLD_SIZE" not in os.environ:  # once, not in every process torchrun starts
            print(f"no --config: the settings of the embedded default recipe {DEFAULT_RECIPE}, with the flags given")
    config = _settings(args)
    command = command_line(args.argv)
    if config.framework == "tensorflow":
        from selfsup.tf.pretrain import pretrain_tensorflow  # imports TensorFlow after torch, as it must

        pretrain_tensorflow(config, command=command)
        return 0
    if config.devices > 1 and "WORLD_SIZE" not in os.environ:
        from selfsup.train.launch import launch_local

        if config.batch_size % config.devices or config.batch_size // config.devices < 2:
            raise ConfigError(f"setting 'batch_size' ({config.batch_size}) must split evenly into at least 2 "
                              f"images for each of the {config.devices} processes (--devices)")

        return launch_local(config.devices, args.argv)
    from selfsup.pipeline import pretrain

    result = pretrain(config, resume=args.resume, command=command)
    from selfsup import dist

    if dist.is_main_process():
        print(f"done: {result.steps} steps; outputs in {result.out_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    config = _settings(args)
    from selfsup.eval.run import run_evaluation

    table = run_evaluation(config)
    print(json_text({"knn_top1": table["knn_top1"], "linear_top1": table["linear_top1"]}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from selfsup.eval.run import export_backbone

    config = _settings(args)
    for name in ("checkpoint", "output"):
        if getattr(config, name) is None:
            raise ConfigError(f"setting '{name}' is required (--{name} PATH)")
    path, description = export_backbone(config.checkpoint, config.output)
    print(f"wrote {path}: {description}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one line for a bad flag (argparse prints the whole usage first, which hides it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_pretrain(commands: argparse._SubParsersAction, help_text: str) -> None:
    pretrain = commands.add_parser("pretrain", help=help_text, description=(
        f"Pretrain an encoder. Without --config, the settings start from the embedded default recipe "
        f"{DEFAULT_RECIPE} (SimCLR on scikit-learn's digits, a quarter-width ResNet-18, 30 epochs: a few minutes on "
        "2 CPU cores, then the kNN / linear table): the defaults shown below are its settings, and the flags given "
        "change them (its method options are SimCLR's; another --method takes that method's own). With --config, a "
        "recipe's unset settings take PretrainConfig's own defaults (the papers'), so that a recipe file means the "
        "same whatever the flags."))
    pretrain.add_argument("--config", help="YAML recipe (see configs/); flags override it")
    pretrain.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest in OUT; give the "
                          "run's --config again (none for a run started without one)")
    add_settings_flags(pretrain, PretrainConfig, default_pretrain_config())
    pretrain.set_defaults(func=_cmd_pretrain)


def _add_eval(commands: argparse._SubParsersAction, help_text: str) -> None:
    evaluate = commands.add_parser("eval", help=help_text, description=help_text)
    evaluate.add_argument("--config", help="YAML file of eval settings")
    add_settings_flags(evaluate, EvalConfig)
    evaluate.set_defaults(func=_cmd_eval)


def _add_export(commands: argparse._SubParsersAction, help_text: str) -> None:
    export = commands.add_parser("export", help=help_text, description=help_text)
    add_settings_flags(export, ExportConfig)
    export.set_defaults(func=_cmd_export)


def _add_transfer(commands: argparse._SubParsersAction, help_text: str) -> None:
    from selfsup.eval.transfer_cli import add_transfer_parser

    add_transfer_parser(commands)


def _add_experiment(commands: argparse._SubParsersAction, help_text: str) -> None:
    from selfsup.experiments.cli import add_experiment_parser

    add_experiment_parser(commands)


# Every command: its one-line help (what `selfsup --help` lists; transfer's and experiment's modules register
# the same line, tests/test_cli_conventions.py checks it) and the function that builds its parser in full.
COMMANDS = {
    "pretrain": ("pretrain an encoder; with no arguments: SimCLR on the embedded digits data, then the kNN / "
                 "linear table", _add_pretrain),
    "eval": ("kNN and linear-probe accuracy of a pretrained encoder", _add_eval),
    "export": ("write the backbone's state_dict in its library's format (torchvision, timm)", _add_export),
    "transfer": ("fine-tune a pretrained backbone for detection or segmentation, against random init at the same "
                 "budget", _add_transfer),
    "experiment": ("experiments that answer the classic questions, with a Markdown report and figures",
                   _add_experiment),
}


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``selfsup`` parser. The commands in ``full`` (None: all) get their whole parser, flags included, which
    imports torch and the settings classes; the others only their line in ``selfsup --help``."""
    parser = _Parser(prog="selfsup", description="Self-supervised pretraining (SimCLR, BYOL and more) and "
                     "evaluation of image encoders.")
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    full = set(COMMANDS) if full is None else set(full)
    for name, (help_text, add_parser) in COMMANDS.items():
        if name in full:
            add_parser(commands, help_text)
        else:
            commands.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The command is the first word that is not an option (the top level takes none with a value).
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(full=[command] if command in COMMANDS else [])
    # A log line may carry a path that is not valid UTF-8; print it escaped rather than crash the run.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        args.argv = argv  # what `pretrain --devices N` hands to the processes it starts
    from selfsup.checkpoints import CheckpointError
    from selfsup.data.images import BadImageError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, BadImageError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"selfsup {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full or read-only disk, a folder where a file should go, ...
        where = f": {error.filename}" if error.filename else ""
        print(f"selfsup {args.command}: error: {error.strerror or error}{where} (selfsup writes atomically: "
              "the files written before, checkpoints included, are intact)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selfsup {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from selfsup.train.loop import TrainingInterrupted
        from selfsup.train.step import NonFiniteLossError

        if isinstance(error, TrainingInterrupted):
            print(f"selfsup {args.command}: {error}", file=sys.stderr)
            return 130
        if isinstance(error, NonFiniteLossError):
            print(f"selfsup {args.command}: error: {error}", file=sys.stderr)
            return 3
        if isinstance(error, RuntimeError) and "DataLoader worker" in str(error):
            print(f"selfsup {args.command}: error: {error}. A data-loading process died (often out of memory): "
                  "lower --num-workers or --batch-size, then continue with --resume auto", file=sys.stderr)
            return 4
        raise


if __name__ == "__main__":
    sys.exit(main())
