"""Metrics a person can follow: a JSON-lines file (and TensorBoard when it is installed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.files import json_text


def _row_step(line: str) -> int | None:
    """The step of a JSON row; None for a blank line or one cut short by a killed run."""
    try:
        return int(json.loads(line).get("step", 0)) if line.strip() else None
    except ValueError:
        return None


class MetricsLog:
    """Appends one JSON object per line to ``path``; on resume, rows after the resumed step are dropped
    so the file reads as one uninterrupted run."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                    if (step := _row_step(line)) is not None and step <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None:
            self.path.write_text("", encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                self._writer = None

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json_text(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._writer.add_scalar(key, value, row.get("step", 0))

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
