"""The training step, once: views -> method -> loss -> backward -> optimizer -> schedule -> momentum update,
and the monitors of a logged step. ``selfsup pretrain``, the experiments and the benchmarks all run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from selfsup import dist
from selfsup.methods.base import Method
from selfsup.methods.output import MethodOutput
from selfsup.monitors import embedding_monitors


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message gives the step, the learning rate and likely causes."""


def likely_causes(method: Method) -> str:
    """What usually makes a loss or the weights non-finite: the method's own suspects first (a temperature
    too low, ...), then a learning rate too high, fp16 overflow, corrupt images."""
    causes = [*method.nonfinite_causes(), "a learning rate too high for this batch size",
              "fp16 overflow (try precision bf16 or fp32)", "corrupt input images"]
    return "Likely causes: " + ", ".join(causes[:-1]) + f", or {causes[-1]}."


@dataclass
class StepResult:
    """What one step did: the method's output (loss, features, embeddings), the learning rate and target
    momentum it used (None: no target), and whether (and why) it was skipped for a non-finite loss."""

    output: MethodOutput
    lr: float
    momentum: float | None
    skipped: bool = False
    message: str = ""  # why it was skipped


class TrainingStep:
    """One optimisation step of ``method``, with its optimizer, schedule and target-momentum rule.

    Args:
        method: the :class:`~selfsup.methods.Method` (its hooks give the momentum rule).
        optimizer, scheduler: built over ``method.learnable_parameters()`` (see :func:`build_optimizer`).
        total_steps: the length of the schedules (momentum).
        steps_per_epoch: turns a step into the run's epoch for the method's progress hooks (``begin_step``,
            ``adjust_gradients``: DINO's teacher temperature and frozen last layer).
        model: what the views go through, ``method`` or its DistributedDataParallel wrapper.
        precision: ``bf16`` / ``fp16`` run the forward pass under autocast (fp16 with a gradient scaler).
        grad_clip: clip the gradients' global norm to this value.
        channels_last: hand the views to the network in NHWC layout.
        on_nonfinite: ``stop`` raises :class:`NonFiniteLossError`; ``skip`` leaves the weights, the optimizer
            state and BatchNorm's statistics as they were and moves the schedule on.
    """

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, scheduler, total_steps: int,
                 steps_per_epoch: int, *,
                 model: nn.Module | None = None, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                 grad_clip: float | None = None, channels_last: bool = False,
                 on_nonfinite: Literal["stop", "skip"] = "stop", device_type: str = "cpu") -> None:
        self.method, self.model = method, model if model is not None else method
        self.optimizer, self.scheduler, self.total_steps = optimizer, scheduler, total_steps
        if steps_per_epoch < 1:
            raise ValueError(f"TrainingStep: steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.grad_clip, self.channels_last, self.on_nonfinite = grad_clip, channels_last, on_nonfinite
        self.device_type = device_type
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def __call__(self, views: Sequence[torch.Tensor], step: int, epoch: int | None = None) -> StepResult:
        """Step ``step`` (0-based) of the run on the method's ``views`` (a batch's tensors, in the order of its
        view recipes); ``epoch`` (0-based) only names it in messages."""
        lr = self.optimizer.param_groups[0]["lr"]
        momentum = self.method.momentum_at(step, self.total_steps)
        progress = step / self.steps_per_epoch
        self.method.begin_step(progress)
        if self.channels_last:
            views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        # The forward pass updates BatchNorm's running statistics: a skipped step puts them back, else one NaN
        # batch leaves NaN statistics (and NaN features at evaluation) for good.
        saved_buffers = [b.detach().clone() for b in self.method.buffers()] if self.on_nonfinite == "skip" else None
        autocast = torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype \
            else nullcontext()
        with autocast:
            output = self.model(*views)
        # Judged on the mean over ranks, so that a NaN on any rank skips the step on all of them.
        if not torch.isfinite(dist.all_reduce_mean(output.loss.detach())):
            where = f"step {step}" + (f" (epoch {epoch + 1}, lr {lr:.4g})" if epoch is not None else f" (lr {lr:.4g})")
            message = f"loss is {output.loss.item()} at {where}. {likely_causes(self.method)}"
            if self.on_nonfinite == "stop":
                raise NonFiniteLossError(message)
            with torch.no_grad():
                for buffer, saved in zip(self.method.buffers(), saved_buffers):
                    buffer.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return StepResult(output, lr, momentum, skipped=True, message=message)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(output.loss).backward()
        self.method.adjust_gradients(progress)
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if momentum is not None:
            self.method.update_target(momentum)
        return StepResult(output, lr, momentum)

    @staticmethod
    def monitors(result: StepResult) -> dict[str, float]:
        """The row a logged step writes: loss (mean over ranks), learning rate, momentum (methods with a
        target) and the collapse monitors of the two views' embeddings (:func:`embedding_monitors`)."""
        row = {"loss": round(dist.all_reduce_mean(result.output.loss.detach()).item(), 6), "lr": result.lr}
        if result.momentum is not None:
            row["momentum"] = result.momentum
        row.update({k: round(float(v), 5) for k, v in embedding_monitors(*result.output.embeddings).items()})
        return row
