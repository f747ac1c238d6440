"""Writing files so that a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder is written, flushed to
    disk (fsync) and renamed over ``path``; the folder is then synced so the rename itself is durable."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, where a file is to be written", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(temporary, path)
    except OSError as error:  # named by the file the user asked for, not by the temporary one
        Path(temporary).unlink(missing_ok=True)
        if error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:  # some file systems cannot sync a folder; the rename is still atomic
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    # surrogateescape: file names that are not UTF-8 (Linux allows any bytes) are written back as their
    # original bytes instead of failing the write.
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_torch_save(content: Any, path: str | Path) -> Path:
    """``torch.save`` into memory, then :func:`atomic_write_bytes`."""
    import torch

    buffer = io.BytesIO()
    torch.save(content, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text, the one rule for every file selfsup writes: NaN and infinities become null.
    JSON has no NaN, and a reader that meets ``NaN`` (which ``json.dumps`` writes by default) fails or
    silently differs."""
    return json.dumps(_json_safe(value), indent=indent)


def write_json(path: str | Path, value: Any) -> Path:
    """``value`` as indented JSON (:func:`json_text`), written atomically."""
    return atomic_write_text(path, json_text(value, indent=2) + "\n")
