"""DINO's loss: cross-entropy between a centred, sharpened teacher and the student, over pairs of views."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
        with torch.autocast(device_type=device_type, enabled=False):
            teacher = teachers[0] if len(teachers) == 1 else torch.cat(teachers)  # (G, N, K)
            # P_a = softmax((g_t - c) / tau_t), computed in place in one new (G, N, K) tensor
            teacher_probabilities = teacher.detach().to(compute_dtype) - self.center.to(compute_dtype)
            rows = teacher_probabilities.mul_(1 / teacher_temperature).view(-1, teacher.shape[2])
            for chunk in rows.split(max(1, _CHUNK_ELEMENTS // rows.shape[1])):
                _softmax_rows_(chunk)
            loss = _StudentCrossEntropy.apply(teacher_probabilities, self.student_temperature, *students)
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


class _StudentCrossEntropy(torch.autograd.Function):
    r"""The mean over pairs (a, b), a != b, of :math:`-\frac{1}{N}\sum_n P_{a,n} \cdot \log p_{b,n}`, with
    :math:`p_b = \mathrm{softmax}(x_b)`, :math:`x_b = g_b / \tau_s`, and its gradient, with no (V, N, K)
    temporaries.

    With :math:`T = \sum_a P_a`, :math:`Q_b = T - P_b` for a student view that is a teacher view too (b < G)
    and :math:`Q_b = T` otherwise, and :math:`c_b = |\{a \ne b\}|` (G - 1 or G; each :math:`P_a` sums to 1):

    .. math::
        \sum_{a \ne b} -P_a \cdot \log p_b = c_b \,\mathrm{lse}(x_b) - Q_b \cdot x_b, \qquad
        \frac{\partial}{\partial g_b} = \frac{1}{\tau_s}\,(c_b\, p_b - Q_b).

    Autograd's log-softmax keeps (V, N, K) log-probabilities and builds the gradient through three more tensors
    of that size. Here the forward keeps only the log-sum-exp of each row, (V, N), and the backward writes the
    gradient into the one new (V, N, K) tensor, recomputing p_b there; both go through the rows a chunk at a
    time, small enough to stay in cache between their passes (exp is cheap next to a trip to memory). At the
    paper's sizes (10 views, N = 128, K = 65,536, 2 CPU threads) that is 0.35 s against autograd's 0.82 s and
    torch's own soft-target cross-entropy's 0.81 s for one target per view (benchmarks/dino_loss.py).

    Shapes: ``teacher_probabilities`` (G, N, K) rows that sum to 1 (no gradient), ``student_blocks`` (v, N, K)
    each, V = sum of v >= 2 views, G <= V -> scalar in the teacher's dtype.
    """

    @staticmethod
    def forward(ctx, teacher_probabilities: torch.Tensor, student_temperature: float,
                *student_blocks: torch.Tensor) -> torch.Tensor:
        g, n, k = teacher_probabilities.shape
        teacher_sum = teacher_probabilities.sum(dim=0)  # (N, K): T
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // k)
        x = teacher_probabilities.new_empty(min(n, rows_per_chunk), k)  # x_b = g_b / tau_s, a chunk of rows
        total = teacher_probabilities.new_zeros(())
        log_sum_exps, view = [], 0
        for block in student_blocks:
            block_log_sum_exps = teacher_probabilities.new_empty(block.shape[:2])
            for logits, lse in zip(block, block_log_sum_exps, strict=True):  # (N, K) each: one view
                for start in range(0, n, rows_per_chunk):
                    rows = slice(start, start + rows_per_chunk)
                    chunk = _scaled(logits[rows], 1 / student_temperature, out=x[:len(lse[rows])])
                    total -= torch.dot(chunk.reshape(-1), teacher_sum[rows].reshape(-1))
                    if view < g:  # Q_b = T - P_b: the same crop is no pair
                        total += torch.dot(chunk.reshape(-1), teacher_probabilities[view, rows].reshape(-1))
                    lse[rows] = _softmax_rows_(chunk, normalize=False)  # only lse is kept
                total += (g - (view < g)) * lse.sum()
                view += 1
            log_sum_exps.append(block_log_sum_exps)
        ctx.save_for_backward(teacher_probabilities, teacher_sum, *log_sum_exps, *student_blocks)
        ctx.student_temperature, ctx.blocks = student_temperature, len(student_blocks)
        ctx.mean = 1 / (n * g * (view - 1))  # 1 / (N |pairs|)
        return total * ctx.mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        teacher_probabilities, teacher_sum, *saved = ctx.saved_tensors
        log_sum_exps, student_blocks = saved[:ctx.blocks], saved[ctx.blocks:]
        g, n, k = teacher_probabilities.shape
        scale = float(grad_loss) * ctx.mean / ctx.student_temperature
        rows_per_chunk = max(1, _CHUNK_ELEMENTS // k)
        # a chunk for inputs of another dtype (bf16 under autocast): computed here, then copied
        work = teacher_probabilities.new_empty(min(n, rows_per_chunk), k)
        gradients, view = [], 0
        for block, block_log_sum_exps in zip(student_blocks, log_sum_exps, strict=True):
            block_gradient = torch.empty_like(block, memory_format=torch.contiguous_format)
            for logits, lse, gradient in zip(block, block_log_sum_exps, block_gradient, strict=True):
                for start in range(0, n, rows_per_chunk):
                    rows = slice(start, start + rows_per_chunk)
                    same_dtype = gradient.dtype == work.dtype
                    chunk = gradient[rows] if same_dtype else work[:len(lse[rows])]
                    # p_b, then (c_b p_b - Q_b) / tau_s times the loss's gradient
                    _scaled(logits[rows], 1 / ctx.student_temperature, out=chunk).sub_(lse[rows, None]).exp_()
                    chunk.mul_((g - (view < g)) * scale).sub_(teacher_sum[rows], alpha=scale)
                    if view < g:
                        chunk.add_(teacher_probabilities[view, rows], alpha=scale)
                    if not same_dtype:
                        gradient[rows] = chunk
                view += 1
            gradients.append(block_gradient)
        return None, None, *gradients


# Elements of one chunk of rows the student's loss works through at a time (4 MiB in float32): small enough to
# stay in cache between the chunk's passes.
_CHUNK_ELEMENTS = 1 << 20


def _scaled(x: torch.Tensor, factor: float, out: torch.Tensor) -> torch.Tensor:
    """``out = x * factor`` computed in ``out``'s dtype (one pass when the dtypes agree)."""
    if x.dtype == out.dtype:
        return torch.mul(x, factor, out=out)
    return out.copy_(x).mul_(factor)  # bf16 logits: the product in float32, not rounded to bf16 first


def _softmax_rows_(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Softmax over the last dimension of the (R, K) ``x``, in place (only exp(x - max) if not ``normalize``);
    returns the log-sum-exp of each row, (R,)."""
    row_max = x.amax(dim=-1, keepdim=True)
    sums = x.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
    if normalize:
        x.div_(sums)
    return (row_max + sums.log()).squeeze(-1)


def _blocks(views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The views as (v, N, K) blocks: an (N, K) view is a block of one (no copy either way)."""
    return [view.unsqueeze(0) if view.ndim == 2 else view for view in views]


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"DINOLoss: {name} must be > 0, got {value}")
