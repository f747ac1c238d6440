"""DINO's loss: cross-entropy between a centred, sharpened teacher and the student, over pairs of views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist


def dino_teacher_temperature(epoch: float, warmup_epochs: float, start: float = 0.04, end: float = 0.07) -> float:
    """DINO's teacher temperature at ``epoch`` (a float: fractions of an epoch count): linear from ``start`` at
    epoch 0 to ``end`` at ``warmup_epochs``, then ``end`` (Caron et al. 2021, section 4.1 and appendix: 0.04 to
    0.07 over the first 30 epochs). The paper's code steps once per epoch, reaching ``end`` at epoch
    ``warmup_epochs - 1`` (``np.linspace`` over ``warmup_epochs`` values); this reaches it at ``warmup_epochs``.

    Raises:
        ValueError: on a negative epoch or warmup, or a non-positive temperature.
    """
    if not epoch >= 0:
        raise ValueError(f"dino_teacher_temperature: epoch must be >= 0, got {epoch}")
    if not warmup_epochs >= 0:
        raise ValueError(f"dino_teacher_temperature: warmup_epochs must be >= 0, got {warmup_epochs}")
    if not (start > 0 and end > 0):
        raise ValueError(f"dino_teacher_temperature: temperatures must be > 0, got start={start}, end={end}")
    if epoch >= warmup_epochs:
        return float(end)
    return float(start + (end - start) * epoch / warmup_epochs)


class DINOLoss(nn.Module):
    r"""DINO loss (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski and Joulin 2021, "Emerging Properties in
    Self-Supervised Vision Transformers", eqs. 1 to 4 and Algorithm 1).

    For teacher view a and student view b, with :math:`c` the center, :math:`\tau_t` and :math:`\tau_s` the
    teacher and student temperatures and K the output dimension:

    .. math::
        P_t^{(a)} = \mathrm{softmax}\left((g_t^{(a)} - c) / \tau_t\right), \qquad
        \log P_s^{(b)} = \mathrm{log\_softmax}\left(g_s^{(b)} / \tau_s\right), \\
        \mathcal{L} = \frac{1}{|\mathcal{P}|} \sum_{(a, b) \in \mathcal{P}} \frac{1}{N} \sum_n
                      \sum_{k=1}^{K} -P_{t,nk}^{(a)} \log P_{s,nk}^{(b)}

    over the pairs :math:`\mathcal{P}` of a teacher view a and a *different* student view b (eq. 3). Student
    view i and teacher view i are the same crop: ``student_outputs`` lists the global views first, in the order
    of ``teacher_outputs``, then the local views. The teacher's probabilities are detached (no gradient reaches
    the teacher).

    The center is a buffer (1, K), in the state dict, that the loss uses before it is updated: after each
    forward in training mode (``self.training``; eval mode leaves it alone), :meth:`update_center` sets
    :math:`c \leftarrow m c + (1 - m) \frac{1}{B} \sum_{i=1}^{B} g_t(x_i)` (eq. 4), the mean over the B rows of
    all teacher views of the global batch (all-reduced across ranks, as in the paper's code), m =
    ``center_momentum``.

    The teacher temperature is ``teacher_temperature`` unless ``forward`` is given one: the method computes the
    warmup 0.04 -> 0.07 with :func:`dino_teacher_temperature`. The loss is local to each rank apart from the
    center, so DDP's gradient mean equals the single-process gradient on the global batch.

    Shapes: ``student_outputs`` a list of V tensors (N, K), ``teacher_outputs`` a list of G <= V tensors (N, K)
    -> scalar; any entry may instead be a (v, N, K) block of v consecutive views (the method passes the views
    that went through the network together as one block, ``logits.view(v, N, K)``, which saves copying them).
    Computed in float32 (float64 for float64 input, with the center cast to it), also under bf16/fp16 autocast.

    Raises:
        ValueError: on ``out_dim`` < 1, non-positive temperatures, a momentum outside [0, 1], views that are not
            lists of (N, ``out_dim``) tensors of one N >= 1, more teacher than student views, or no pair of
            different views (one view of each).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, teacher_temperature: float = 0.04, student_temperature: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"DINOLoss: out_dim must be >= 1, got {out_dim}")
        _check_temperature("teacher_temperature", teacher_temperature)
        _check_temperature("student_temperature", student_temperature)
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"DINOLoss: center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = int(out_dim)
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    def forward(self, student_outputs: Sequence[torch.Tensor], teacher_outputs: Sequence[torch.Tensor],
                teacher_temperature: float | None = None) -> torch.Tensor:
        student_views, n = self._check_views("student_outputs", student_outputs)
        teacher_views, teacher_n = self._check_views("teacher_outputs", teacher_outputs)
        if n != teacher_n:
            raise ValueError(f"DINOLoss: student and teacher views must have the same N, got {n} and {teacher_n}")
        if teacher_views > student_views:
            raise ValueError(f"DINOLoss: {teacher_views} teacher views but only {student_views} student views (the "
                             f"teacher's views are the student's first views)")
        if student_views == 1:
            raise ValueError("DINOLoss: one view each gives no pair of different views")
        if teacher_temperature is None:
            teacher_temperature = self.teacher_temperature
        _check_temperature("teacher_temperature", teacher_temperature)

        compute_dtype = torch.promote_types(student_outputs[0].dtype, torch.float32)
        device_type = student_outputs[0].device.type
        students, teachers = _blocks(student_outputs), _blocks(teacher_outputs)
        k = students[0].shape[2]
        with torch.autocast(device_type=device_type, enabled=False):
            center = self.center.to(compute_dtype)
            teacher_probabilities = [  # (N K,) each: one per teacher view
                row for block in teachers
                for row in F.softmax((block.detach().to(compute_dtype) - center) / teacher_temperature, dim=2)
                .reshape(block.shape[0], n * k)]
            teacher_sum = sum(teacher_probabilities[1:], teacher_probabilities[0])  # (N K,): sum_a P_a
            # sum over pairs of different views = sum_b (sum_a P_a) . log P_b - sum_{a < G} P_a . log P_a: per
            # block of student views a matrix-vector product with sum_a P_a (no (V, N, K) temporary) and, for
            # the views that are teacher views too, their own dot product.
            all_pairs, same_crop, view = 0.0, 0.0, 0
            for block in students:
                views = block.shape[0]
                log_probabilities = F.log_softmax(block.to(compute_dtype) / self.student_temperature, dim=2)
                log_probabilities = log_probabilities.reshape(views, n * k)
                all_pairs = all_pairs + (log_probabilities @ teacher_sum).sum()
                for offset in range(min(views, len(teacher_probabilities) - view)):
                    same_crop = same_crop + log_probabilities[offset] @ teacher_probabilities[view + offset]
                view += views
            pairs = len(teacher_probabilities) * (view - 1)
            loss = -(all_pairs - same_crop) / (n * pairs)
        if self.training:
            self.update_center(teacher_outputs)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_outputs: Sequence[torch.Tensor]) -> None:
        """``center <- m center + (1 - m) mean(teacher rows of the global batch)`` (eq. 4), in place."""
        self._check_views("teacher_outputs", teacher_outputs)
        teachers = _blocks(teacher_outputs)
        compute_dtype = torch.promote_types(torch.promote_types(teachers[0].dtype, self.center.dtype),
                                            torch.float32)
        with torch.autocast(device_type=self.center.device.type, enabled=False):
            column_sums = sum(block.detach().to(compute_dtype).sum(dim=(0, 1)) for block in teachers)  # (K,)
            rows = sum(block.shape[0] * block.shape[1] for block in teachers)
            sums = torch.cat([column_sums, column_sums.new_full((1,), rows)])
            sums = dist.all_reduce_sum_with_grad(sums)  # under no_grad: a plain all-reduce of sums and counts
            batch_center = (sums[:-1] / sums[-1]).view(1, -1)
            self.center.mul_(self.center_momentum).add_((1 - self.center_momentum) * batch_center.to(self.center))

    def _check_views(self, name: str, views: Sequence[torch.Tensor]) -> tuple[int, int]:
        """The number of views in ``views`` and their N; a ValueError naming ``name`` if they are not a list of
        (N, K) views or (v, N, K) blocks of v views of one N."""
        if isinstance(views, torch.Tensor) or len(views) < 1:
            raise ValueError(f"DINOLoss: {name} must be a non-empty list of (N, {self.out_dim}) tensors")
        blocks = _blocks(views)
        n = blocks[0].shape[1] if blocks[0].ndim == 3 else -1
        if any(block.ndim != 3 or block.shape[2] != self.out_dim or block.shape[1] != n for block in blocks):
            raise ValueError(f"DINOLoss: {name} must hold (N, {self.out_dim}) tensors of one N (or (v, N, "
                             f"{self.out_dim}) blocks of v views), got shapes {[tuple(v.shape) for v in views]}")
        if n < 1:
            raise ValueError(f"DINOLoss: the batch is empty (N = 0) in {name}")
        return sum(block.shape[0] for block in blocks), n


def _blocks(views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The views as (v, N, K) blocks: an (N, K) view is a block of one (no copy either way)."""
    return [view.unsqueeze(0) if view.ndim == 2 else view for view in views]


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"DINOLoss: {name} must be > 0, got {value}")
