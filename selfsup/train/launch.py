"""``selfsup pretrain --devices N``: start N processes on this machine, as ``torchrun`` would.

The launcher is torchrun itself (``python -m torch.distributed.run``) with a rendezvous on
127.0.0.1 and a port the operating system picks (port 0, so no two runs collide), running
``python -m selfsup.cli`` with the same arguments in every process. torchrun sets RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`selfsup.dist.init_from_environment` reads them and
joins the process group (NCCL on GPUs, gloo on CPUs). Several machines are started with torchrun
directly (see the README).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import torch


def _requested_device(argv: list[str]) -> str:
    """The value of ``--device`` in ``argv`` ("auto" when absent)."""
    for index, argument in enumerate(argv):
        if argument == "--device" and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith("--device="):
            return argument.split("=", 1)[1]
    return "auto"


def torchrun_command(processes: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``selfsup`` with ``argv`` in ``processes`` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(processes),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", "--rdzv_id", uuid.uuid4().hex,
            "-m", "selfsup.cli", *argv]


def launch_local(processes: int, argv: list[str]) -> int:
    """Run ``selfsup`` with ``argv`` in ``processes`` processes on this machine; returns the exit code
    (0 when every process succeeded).

    One process per GPU when the device is a GPU (``--device`` auto or cuda); on CPUs the cores are
    shared out between the processes (``OMP_NUM_THREADS``, unless already set).

    Raises:
        ValueError: ``processes`` < 2, or more processes than GPUs.
    """
    if processes < 2:
        raise ValueError(f"setting 'devices' must be >= 2 to start several processes, got {processes}")
    device = _requested_device(argv)
    if torch.cuda.is_available() and device in ("auto", "cuda") and processes > torch.cuda.device_count():
        raise ValueError(f"setting 'devices' ({processes}) is more than the {torch.cuda.device_count()} GPU(s) "
                         "of this machine (give --device cpu to run the processes on CPUs)")
    environment = dict(os.environ)
    # torchrun would set 1 thread per process; on CPUs that leaves most cores idle.
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    launcher = subprocess.Popen(torchrun_command(processes, argv), env=environment)
    try:
        return launcher.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too: they save a checkpoint and stop; wait for them.
        return launcher.wait()
