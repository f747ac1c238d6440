"""What a run records about itself beside its settings, so that a result can be traced to what made it: the
command line, the versions of selfsup, torch and Python, when it started, and the channel statistics the
images were normalised with. It goes under the key ``"run"`` of ``OUT/config.json`` and into ``report.md``.
"""

from __future__ import annotations

import platform
import shlex
import sys
from datetime import datetime
from typing import Any


def command_line(argv: list[str] | None = None, program: str = "selfsup") -> str:
    """``argv`` (default: this process's arguments) as one shell-quoted line, after ``program``."""
    return " ".join([program, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])


def run_record(command: str | None, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float],
               statistics_of: str, **extra: Any) -> dict[str, Any]:
    """The ``"run"`` mapping of ``config.json``.

    Args:
        command: the command line that started the run; None: this process's (``sys.argv``).
        mean, std: the per-channel statistics the images are normalised with.
        statistics_of: where they come from, in words ("the training data (in memory)", "ImageNet", ...).
        extra: further entries (the checkpoint a run resumed from, ...).
    """
    import torch

    from selfsup import __version__

    return {"command": command or command_line(), "selfsup_version": __version__,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "normalization": {"mean": list(mean), "std": list(std), "statistics_of": statistics_of}, **extra}


def describe_run(record: dict[str, Any]) -> list[str]:
    """Markdown bullet lines of a :func:`run_record` (for the report); keys it lacks are left out."""
    lines = []
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    versions = ", ".join(f"{name} {record[key]}" for name, key in (
        ("selfsup", "selfsup_version"), ("torch", "torch_version"), ("Python", "python_version")) if record.get(key))
    if versions:
        lines.append(f"- versions: {versions}")
    if record.get("started"):
        lines.append(f"- started: {record['started']}" + (f", resumed from `{record['resumed_from']}`"
                                                          if record.get("resumed_from") else ""))
    norm = record.get("normalization")
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        numbers = ", ".join(f"{v:.4g}" for v in norm["mean"]), ", ".join(f"{v:.4g}" for v in norm["std"])
        lines.append(f"- normalisation: per-channel mean ({numbers[0]}) and std ({numbers[1]}), the statistics of "
                     f"{norm.get('statistics_of', 'unknown data')}")
    optimizer = record.get("optimizer")
    if isinstance(optimizer, dict) and {"optimizer", "base_lr", "weight_decay"} <= optimizer.keys():
        lines.append(f"- optimizer: {optimizer['optimizer']}, base learning rate {optimizer['base_lr']:g} per 256 "
                     f"images, weight decay {optimizer['weight_decay']:g}"
                     + (f" ({optimizer['reason']})" if optimizer.get("reason") else ""))
    return lines
