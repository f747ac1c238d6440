"""The ``selfsup`` command: pretrain, eval, export (and transfer, experiment).

Settings come from a dataclass in :mod:`selfsup.config`: every field is a flag (``--batch-size``, help from
the field's comment; see :mod:`selfsup.flags`), a YAML recipe (``--config``) sets any of them, flags given on
the command line win. Errors in settings or data are printed as one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from selfsup.config import EvalConfig, ExportConfig, PretrainConfig
from selfsup.files import json_text
from selfsup.flags import add_settings_flags, given_settings, settings_from_args
from selfsup.settings import ConfigError, load_yaml


def _settings(args: argparse.Namespace) -> Any:
    recipe = load_yaml(args.config) if getattr(args, "config", None) else None
    return settings_from_args(args, recipe, source=getattr(args, "config", None) or "command line")


DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "default.yaml"
# Settings that say how and where to run, not what to train: given alone, the default recipe still runs.
_RUN_ONLY_SETTINGS = {"out", "progress", "device", "num_workers", "log_every", "report"}


def _cmd_pretrain(args: argparse.Namespace) -> int:
    if not given_settings(args) - _RUN_ONLY_SETTINGS and not args.config and not args.resume:
        print(f"no settings given: running the embedded default recipe {DEFAULT_RECIPE}")
        args.config = str(DEFAULT_RECIPE)
    config = _settings(args)
    if config.framework == "tensorflow":
        from selfsup.tf.pretrain import pretrain_tensorflow  # imports TensorFlow after torch, as it must

        pretrain_tensorflow(config)
        return 0
    if config.devices > 1 and "WORLD_SIZE" not in os.environ:
        from selfsup.train.launch import launch_local

        if config.batch_size % config.devices or config.batch_size // config.devices < 2:
            raise ConfigError(f"setting 'batch_size' ({config.batch_size}) must split evenly into at least 2 "
                              f"images for each of the {config.devices} processes (--devices)")

        return launch_local(config.devices, args.argv)
    from selfsup.pipeline import pretrain

    result = pretrain(config, resume=args.resume)
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
    from selfsup.eval.run import export_torchvision

    config = _settings(args)
    for name in ("checkpoint", "output"):
        if getattr(config, name) is None:
            raise ConfigError(f"setting '{name}' is required (--{name} PATH)")
    path = export_torchvision(config.checkpoint, config.output)
    print(f"wrote {path}: a torchvision state_dict (load with strict=False; only fc is missing)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one line for a bad flag (argparse prints the whole usage first, which hides it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selfsup", description="Self-supervised pretraining (BYOL, SimCLR) "
                                     "and evaluation of image encoders.")
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="pretrain an encoder; with no arguments: SimCLR on the "
                                   "embedded digits data, then the kNN / linear table")
    pretrain.add_argument("--config", help="YAML recipe (see configs/); flags override it")
    pretrain.add_argument("--resume", help="checkpoint to continue from, or 'auto' for the newest in OUT")
    add_settings_flags(pretrain, PretrainConfig)
    pretrain.set_defaults(func=_cmd_pretrain)

    evaluate = commands.add_parser("eval", help="kNN and linear-probe accuracy of a pretrained encoder")
    evaluate.add_argument("--config", help="YAML file of eval settings")
    add_settings_flags(evaluate, EvalConfig)
    evaluate.set_defaults(func=_cmd_eval)

    export = commands.add_parser("export", help="write the backbone as a torchvision ResNet state_dict")
    add_settings_flags(export, ExportConfig)
    export.set_defaults(func=_cmd_export)

    for module_name, adder in (("selfsup.eval.transfer_cli", "add_transfer_parser"),
                               ("selfsup.experiments.cli", "add_experiment_parser")):
        try:
            module = __import__(module_name, fromlist=[adder])
        except ImportError:
            continue
        getattr(module, adder)(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # A log line may carry a path that is not valid UTF-8; print it escaped rather than crash the run.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    argv = sys.argv[1:] if argv is None else list(argv)
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
