"""``selfsup experiment temperature`` and ``selfsup experiment byol-ablation``: the command-line side.

Both take the flags of :class:`selfsup.experiments.common.ExperimentSettings`; each writes OUT/report.md with
PNG figures, OUT/results.json, and prints its table.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys

import torch

from selfsup.experiments.common import ExperimentSettings


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _add_common_flags(parser: argparse.ArgumentParser, default_out: str, default_epochs: int) -> None:
    parser.add_argument("--data", help="training data: a folder, .npz/.npy file or built-in name "
                        "(default: CIFAR-10 train from $SELFSUP_DATASETS or ../shared/datasets)")
    parser.add_argument("--test-data", help="labelled data for kNN (default: CIFAR-10 test, or the built-in "
                        "data set's test split)")
    parser.add_argument("--subset", type=_positive_int, help="train on N images, stratified by class")
    parser.add_argument("--test-subset", type=_positive_int, help="evaluate on N test images, stratified")
    parser.add_argument("--epochs", type=_positive_int, default=default_epochs)
    parser.add_argument("--batch-size", type=_positive_int, default=256)
    parser.add_argument("--width", type=float, default=1.0, help="ResNet-18 width multiplier")
    parser.add_argument("--image-size", type=int, help="default: the data's own side for images <= 64 px")
    parser.add_argument("--optimizer", choices=("lars", "sgd", "adamw"), default="lars")
    parser.add_argument("--base-lr", type=float, help="per 256 images (default: the method's paper value)")
    parser.add_argument("--projection-hidden-dim", type=_positive_int)
    parser.add_argument("--projection-dim", type=_positive_int)
    parser.add_argument("--prediction-hidden-dim", type=_positive_int, default=4096)
    parser.add_argument("--knn-k", type=_positive_int, default=200)
    parser.add_argument("--log-every", type=_positive_int, default=5, help="steps between monitor rows")
    parser.add_argument("--analysis-pairs", type=_positive_int, default=512,
                        help="pairs of views analysed at the end of each run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice; "
                        "1 is often fastest on a busy shared machine)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")


def settings_from_args(args: argparse.Namespace) -> ExperimentSettings:
    return ExperimentSettings(
        data=args.data, test_data=args.test_data, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        width=args.width, image_size=args.image_size, subset=args.subset, test_subset=args.test_subset,
        optimizer=args.optimizer, base_lr=args.base_lr, projection_hidden_dim=args.projection_hidden_dim,
        projection_dim=args.projection_dim, prediction_hidden_dim=args.prediction_hidden_dim, knn_k=args.knn_k,
        log_every=args.log_every, analysis_pairs=args.analysis_pairs, device=args.device,
        num_workers=args.num_workers, seed=args.seed)


def _command(argv: list[str] | None) -> str:
    return "selfsup " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's CPU threads set to ``count`` for the experiment, and put back after it."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cmd_temperature(args: argparse.Namespace) -> int:
    from selfsup.experiments.temperature import run_temperature_experiment

    with _threads(args.threads):
        run_temperature_experiment(settings_from_args(args), args.temperatures, command=_command(args.argv))
    return 0


def _cmd_byol_ablation(args: argparse.Namespace) -> int:
    from selfsup.experiments.byol_ablation import run_byol_ablation

    with _threads(args.threads):
        run_byol_ablation(settings_from_args(args), args.variants, args.momentum_base,
                          command=_command(args.argv))
    return 0


def add_experiment_parser(subparsers, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Register ``experiment`` with its sub-commands on the ``selfsup`` command's sub-parsers.

    ``argv`` is recorded in the reports as the command that made them (default: ``sys.argv``)."""
    from selfsup.experiments.byol_ablation import DEFAULT_MOMENTUM_BASE, variants
    from selfsup.experiments.temperature import DEFAULT_TEMPERATURES

    experiment = subparsers.add_parser("experiment", help="experiments that answer the classic questions, "
                                       "with a Markdown report and figures")
    commands = experiment.add_subparsers(dest="experiment", required=True)

    temperature = commands.add_parser("temperature", help="SimCLR over temperatures: kNN accuracy, similarity "
                                      "distributions, weight of the hardest negatives")
    _add_common_flags(temperature, "runs/experiment-temperature", 10)
    temperature.add_argument("--temperatures", type=float, nargs="+", default=list(DEFAULT_TEMPERATURES))
    temperature.set_defaults(func=_cmd_temperature, argv=argv)

    ablation = commands.add_parser("byol-ablation", help="BYOL vs no predictor vs no EMA vs a random target: "
                                   "which collapse")
    _add_common_flags(ablation, "runs/experiment-byol-ablation", 10)
    ablation.add_argument("--variants", nargs="+", choices=list(variants()), default=list(variants()))
    ablation.add_argument("--momentum-base", type=float, default=DEFAULT_MOMENTUM_BASE,
                          help="tau_base of the EMA variants (default: %(default)s, solo-learn's CIFAR value)")
    ablation.set_defaults(func=_cmd_byol_ablation, argv=argv)
    return experiment
