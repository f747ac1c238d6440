"""InfoNCE, the contrastive loss of MoCo: queries against their keys and a queue (or batch) of negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist
from selfsup.losses.shapes import check_pair


class InfoNCELoss(nn.Module):
    r"""InfoNCE loss of MoCo (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
    Learning", eq. 1; with the MoCo v2 defaults of Chen et al. 2020, "Improved Baselines with Momentum
    Contrastive Learning"; and the in-batch form of MoCo v3, Chen, Xie and He 2021, "An Empirical Study of
    Training Self-Supervised Vision Transformers", Algorithm 1).

    With every row :math:`\ell_2`-normalised, query :math:`q_i`, its key :math:`k_i` and the negatives
    :math:`\mathcal{N}`:

    .. math::
        \ell_i = -\log \frac{\exp(q_i \cdot k_i / t)}
                            {\exp(q_i \cdot k_i / t) + \sum_{n \in \mathcal{N}} \exp(q_i \cdot n / t)}

    and the loss is the mean of :math:`\ell_i` over the N queries. The negatives are

    * ``queue`` given (MoCo v1/v2): the K rows of the queue, the same for every query. The queue carries no
      gradient (it is detached here). Nothing is gathered across processes: the method keeps one queue,
      identical on every rank. ``queue_normalized=True`` says its rows are unit vectors already (MoCo v2
      enqueues normalised keys), which skips normalising all K rows at every step.
    * ``queue=None`` (MoCo v3): the keys of the other queries, ``logits = q @ k.T / t`` with label i, from all
      ranks when ``gather_distributed=True`` and world size > 1: this rank's N queries are scored against the
      NW keys of the global batch, and query i of rank r has its positive at column r N + i.

    Where gradients flow: into ``q`` always. Into ``k`` only when ``k`` requires grad; in MoCo the keys come
    from the momentum encoder under ``torch.no_grad()``, so they do not, and across processes they are then
    gathered with :func:`selfsup.dist.gather_no_grad` (as MoCo v3's ``concat_all_gather``). Keys that do
    require grad are gathered with :func:`selfsup.dist.gather_with_grad` instead, so that DDP's gradient mean
    equals the single-process gradient on the global batch in both cases (whether ``k`` requires grad must then
    be the same on every rank, as the two gathers are different collectives).

    MoCo v3's code multiplies this loss by 2t (``CrossEntropyLoss()(logits, labels) * (2 * T)``) to make
    the gradient scale independent of t; that factor is not built in here, the method applies it.

    Shapes: ``q`` and ``k`` (N, D), row i of ``k`` the positive of ``q_i``; ``queue`` (K, D) or None
    -> scalar. Computed in float32 (float64 for float64 input) with log-sum-exp, also under bf16/fp16
    autocast.

    Raises:
        ValueError: on a non-positive temperature, ``q``/``k`` that are not 2-D or differ in shape, an empty
            batch, or a queue that is not (K, D) with K >= 1 and the queries' D.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InfoNCELoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_distributed = gather_distributed

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None,
                queue_normalized: bool = False) -> torch.Tensor:
        check_pair("InfoNCELoss", q, k, names=("q", "k"))
        n = q.shape[0]
        if queue is not None and (queue.ndim != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] < 1):
            raise ValueError(f"InfoNCELoss: the queue must be (K, D) with K >= 1 and D = {q.shape[1]}, got "
                             f"{tuple(queue.shape)} (pass queue=None for in-batch negatives)")

        # At least float32 whatever autocast chose (exp(1 / 0.2) and its sums); float64 stays float64.
        compute_dtype = torch.promote_types(q.dtype, torch.float32)
        with torch.autocast(device_type=q.device.type, enabled=False):
            # 1/t on the N query rows rather than on the N x K logits: one pass over (N, D), not (N, K).
            q = F.normalize(q.to(compute_dtype), dim=1) / self.temperature
            k = F.normalize(k.to(compute_dtype), dim=1)
            if queue is not None:
                negatives = queue.detach().to(compute_dtype)
                if not queue_normalized:
                    negatives = F.normalize(negatives, dim=1)
                positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
                logits = torch.cat([positive, q @ negatives.T], dim=1)  # (N, 1 + K)
                labels = torch.zeros(n, dtype=torch.long, device=q.device)
                return F.cross_entropy(logits, labels)

            offset = 0
            if self.gather_distributed and dist.is_distributed():
                # Momentum keys need no gradient (MoCo v3); keys that require one get it back on their rank.
                k = dist.gather_with_grad(k) if k.requires_grad else dist.gather_no_grad(k)
                offset = dist.rank() * n
            logits = q @ k.T  # (N, NW)
            labels = torch.arange(offset, offset + n, device=q.device)
            return F.cross_entropy(logits, labels)
