"""Distributed helpers that also work in a single process with no process group.

Everything here is a no-op (rank 0, world size 1, gather = identity) unless `torch.distributed`
has been initialised, so library code calls these helpers unconditionally.

Where gradients flow: :func:`gather_with_grad` concatenates every rank's tensor along dim 0. Its
backward sums the incoming gradient over all ranks (all-reduce) and hands each rank the slice that
belongs to its own input. With DDP averaging parameter gradients over ranks, the result equals the
single-process gradient of the mean loss over the global batch. :func:`convert_sync_batchnorm` does the same
for BatchNorm statistics: every rank normalises with the mean and variance of the global batch, and the
gradient through those statistics reaches the rank whose rows produced them.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn


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


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU under NCCL, else the CPU."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (so that all ranks take the same branch)."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (any picklable object), e.g. the checkpoint all ranks resume from."""
    if not is_distributed():
        return value
    holder = [value]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_gradients_(parameters) -> None:
    """Average the ``.grad`` of ``parameters`` over ranks in place, as DDP does for the model it wraps
    (for a small module trained outside DDP, such as the online linear probe)."""
    if not is_distributed():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            torch_dist.all_reduce(parameter.grad, op=torch_dist.ReduceOp.SUM)
            parameter.grad.div_(world_size())


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again an all_reduce(SUM): every rank's output depends on
    every rank's input, so the gradient of an input is the sum of the gradients of all ranks' outputs."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.detach().clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.detach().clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (same shape on every rank), keeping gradients; identity when not distributed.

    Where gradients flow: the backward sums the incoming gradient over ranks, since every rank's sum depends on
    every rank's input. For statistics of the global batch (means, cross-correlations) that each rank then
    turns into the same loss, DDP's gradient mean thus equals the single-process gradient of that loss.
    """
    if not is_distributed():
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (gloo), which :class:`torch.nn.SyncBatchNorm` does
    not run on (and DDP refuses on CPUs).

    In training mode with several ranks, the batch mean and the (biased) variance are those of the global
    batch, from two differentiable all-reduces of per-channel sums (the mean first, then the squared
    deviations from it, more accurate than E[x^2] - E[x]^2); the running statistics are updated as
    BatchNorm updates them (unbiased variance). Otherwise it is plain BatchNorm. Same parameters and
    buffers as BatchNorm, so state dicts load either way.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"CPUSyncBatchNorm: expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        compute_dtype = torch.promote_types(input.dtype, torch.float32)
        values = input.to(compute_dtype)
        reduce_dims = [0, *range(2, values.ndim)]
        shape = [1, values.shape[1]] + [1] * (values.ndim - 2)
        local_count = values.new_full((1,), values.numel() // values.shape[1])
        sums = _AllReduceSumWithGrad.apply(torch.cat([values.sum(reduce_dims), local_count]))
        count = sums[-1].detach()
        if count <= 1:
            raise ValueError(f"CPUSyncBatchNorm: expected more than 1 value per channel when training, got input "
                             f"size {tuple(input.shape)} on {world_size()} ranks")
        mean = sums[:-1] / count
        centered = values - mean.view(shape)
        variance = _AllReduceSumWithGrad.apply(centered.square().sum(reduce_dims)) / count
        output = centered * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = variance.detach() * count / (count - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return output.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm layer of ``module`` normalise over the global batch: PyTorch's
    :class:`~torch.nn.SyncBatchNorm` on GPUs, :class:`CPUSyncBatchNorm` on CPUs. The new layers share the
    old ones' parameters and buffers; nested layers are replaced in place. Returns the converted module."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        converted = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, device))
    return converted
