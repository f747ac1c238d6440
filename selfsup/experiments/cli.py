"""``selfsup experiment temperature``, ``byol-ablation`` and ``text``: the command-line side.

Each experiment's flags come from its settings class (:mod:`selfsup.flags`): the pretraining settings it uses
and its own. Each writes OUT/report.md with PNG figures, OUT/results.json, and prints its table.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys

from selfsup.flags import add_settings_flags, settings_from_args


def _command(argv: list[str] | None) -> str:
    return "selfsup " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's CPU threads set to ``count`` for the experiment, and put back after it."""
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _runner(function_path: str):
    def run(args: argparse.Namespace) -> int:
        module, name = function_path.rsplit(".", 1)
        settings = settings_from_args(args)
        with _threads(settings.threads):
            getattr(__import__(module, fromlist=[name]), name)(settings, command=_command(args.argv))
        return 0
    return run


def add_experiment_parser(subparsers, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Register ``experiment`` with its sub-commands on the ``selfsup`` command's sub-parsers.

    ``argv`` is recorded in the reports as the command that made them (default: ``sys.argv``)."""
    from selfsup.experiments.byol_ablation import ByolAblationSettings
    from selfsup.experiments.temperature import TemperatureSettings
    from selfsup.experiments.text import TextExperimentSettings

    experiment = subparsers.add_parser("experiment", help="experiments that answer the classic questions, "
                                       "with a Markdown report and figures")
    commands = experiment.add_subparsers(dest="experiment", required=True)
    for name, settings_class, runner, text in (
            ("temperature", TemperatureSettings, "selfsup.experiments.temperature.run_temperature_experiment",
             "SimCLR over temperatures: kNN accuracy, similarity distributions, weight of the hardest negatives"),
            ("byol-ablation", ByolAblationSettings, "selfsup.experiments.byol_ablation.run_byol_ablation",
             "BYOL vs no predictor vs no EMA vs a random target: which collapse"),
            ("text", TextExperimentSettings, "selfsup.experiments.text.run_text_experiment",
             "does contrastive learning carry over to text? SimCSE from scratch on offline text, against "
             "random init and TF-IDF")):
        parser = commands.add_parser(name, help=text, description=text)
        add_settings_flags(parser, settings_class)
        parser.set_defaults(func=_runner(runner), argv=argv)
    return experiment
