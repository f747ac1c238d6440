"""Distributed helpers that also work in a single process with no process group.

Everything here is a no-op (rank 0, world size 1, gather = identity) unless `torch.distributed`
has been initialised, so library code calls these helpers unconditionally.

Where gradients flow: :func:`gather_with_grad` concatenates every rank's tensor along dim 0. Its
backward sums the incoming gradient over all ranks (all-reduce) and hands each rank the slice that
belongs to its own input. With DDP averaging parameter gradients over ranks, the result equals the
single-process gradient of the mean loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    """True when a process group is initialised and has more than one rank."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank()
    return 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """Rank 0: the process that logs, writes reports and checkpoints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the all-reduced gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.local_batch = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(torch_dist.get_world_size())]
        torch_dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss depends on this rank's rows (they are negatives everywhere), so the
        # gradient w.r.t. them is the sum over ranks of what each rank computed for them.
        grad = grad_output.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = torch_dist.get_rank() * ctx.local_batch
        return grad[start : start + ctx.local_batch]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (N, ...) from all ranks into (world_size * N, ...), keeping gradients.

    Requires the same N on every rank. Identity when not distributed.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks without gradients (for monitoring and evaluation)."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    torch_dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; identity when not distributed)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
    return value / world_size()


def init_from_environment(device_type: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, ...).

    Returns True when this process is one of several. NCCL on GPUs, gloo on CPUs.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return is_distributed()


def local_rank() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))
