"""Which device a run uses: one rule for pretraining, evaluation and transfer."""

from __future__ import annotations

import torch

from selfsup import dist


def resolve_device(name: str) -> torch.device:
    """The device named by a ``device`` setting.

    ``"auto"``: this process's GPU when CUDA is available (the local rank's, under torchrun), else the CPU.
    ``"cuda"`` without an index means the local rank's GPU too, so that ``torch.cuda.set_device`` always
    gets an index. Any other name as torch spells it (``"cpu"``, ``"cuda:1"``, ``"mps"``).

    Raises:
        ValueError: for a name torch does not know, or a CUDA device on a machine without one.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"setting 'device': {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"setting 'device': {name!r} asked for, but CUDA is not available on this machine; "
                             "use --device cpu or auto")
        index = device.index if device.index is not None else dist.local_rank()
        if index >= torch.cuda.device_count():
            raise ValueError(f"setting 'device': {name!r}, but this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
        device = torch.device("cuda", index)
    return device
