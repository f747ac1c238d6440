"""Checkpoints: written atomically, loaded without unpickling code, the last K kept."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from selfsup.files import atomic_torch_save, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or is not one of ours; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write a checkpoint atomically (see :func:`selfsup.files.atomic_write_bytes`)."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, no code from the file runs.

    Raises:
        CheckpointError: missing, truncated or not a checkpoint, or carrying objects other than tensors
            and plain Python values (for example a pickle that would run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and plain values, which could run "
            f"code when unpickled. Only load checkpoints you trust. ({str(error).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or not a PyTorch file ({error})") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a selfsup checkpoint (expected a dict, got {type(state).__name__})")
    return state


_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:09d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


_UNFINISHED_FILE = re.compile(r"^\.step_\d+\.pt\..*\.tmp$")  # see selfsup.files.atomic_write_bytes


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and the temporary files of writes that a killed run
    left unfinished (called just after a write of ours has finished, so none is still in progress)."""
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    for unfinished in Path(directory).glob(".step_*.tmp"):
        if _UNFINISHED_FILE.match(unfinished.name):
            unfinished.unlink(missing_ok=True)
