"""A run's output folder is its own: claimed before any work, locked while the run writes to it.

``selfsup pretrain`` writes a marker (:data:`MARKER`) into the folders it makes. It refuses an ``--out`` that
holds another run or files it did not write, unless the run resumes (``--resume``) or the user says
``--overwrite``; and it refuses a folder another live process is writing (:data:`LOCK`, with that process's
pid and host; a lock whose process is gone is recognised as stale and taken over).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from selfsup.files import atomic_write_text

MARKER = ".selfsup-run"
LOCK = ".selfsup.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _take_lock(lock: Path) -> None:
    claim = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text(encoding="utf-8"))
                pid, host = int(owner["pid"]), str(owner["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = -1, socket.gethostname()  # unreadable: left by a process killed mid-write
            if host == socket.gethostname() and (pid == os.getpid() or not _process_alive(pid)):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise ValueError(f"setting 'out': {lock.parent} is in use by process {pid} on {host} (lock file "
                             f"{lock}); wait for that run to end, or delete the lock if the process is gone") from None
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(claim)
        return
    raise ValueError(f"setting 'out': could not take the lock {lock}; delete it if no run is using the folder")


def claim_run_folder(out: str | Path, resuming: bool, overwrite: bool) -> Path:
    """Check that ``out`` may hold this run, create it, lock it and mark it; returns the lock to release.

    Raises:
        ValueError: ``out`` is a file; it holds another run or files selfsup did not write (and the run
            neither resumes nor overwrites); another live process holds its lock.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"setting 'out': {out} is a file, not a folder; give a folder for the run's outputs")
    if out.is_dir() and not resuming and not overwrite:
        entries = sorted(p.name for p in out.iterdir() if p.name != LOCK)
        if entries == [MARKER]:  # a run of ours that stopped before writing anything: reuse it
            entries = []
        if MARKER in entries:
            raise ValueError(f"setting 'out': {out} holds another run; continue it with --resume auto, start over "
                             "with --overwrite, or give another --out")
        if entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise ValueError(f"setting 'out': {out} holds files that selfsup did not write ({shown}); give a new "
                             "or empty folder, or --overwrite to write the run's files beside them")
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    _take_lock(lock)
    old_checkpoints = out / "checkpoints"
    if overwrite and not resuming and old_checkpoints.is_dir() and any(old_checkpoints.iterdir()):
        # Starting over: the other run's checkpoints go aside, so that --resume auto never picks one of them.
        aside = out / f"checkpoints-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        old_checkpoints.rename(aside)
    if not (out / MARKER).exists():
        atomic_write_text(out / MARKER, "This folder holds a selfsup run; selfsup pretrain refuses to reuse it "
                          "unless --resume or --overwrite is given.\n")
    return lock


def release_run_folder(lock: Path) -> None:
    """Remove the lock that :func:`claim_run_folder` took (if it is still this process's)."""
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        if int(owner.get("pid", -1)) == os.getpid():
            lock.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass
