"""Training a sentence-embedding method: batches drawn from two sources of text, and a short loop.

The loop is AdamW with a linear warmup and a cosine decay (selfsup's :func:`selfsup.schedules.warmup_cosine`),
the target-momentum rule given by the caller, and the collapse monitors of the image side logged every
``log_every`` steps. Batches, views and dropout masks are functions of the seed: every variant trained
with one seed sees the same texts in the same order.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from selfsup.monitors import embedding_monitors
from selfsup.schedules import warmup_cosine
from selfsup.text.tokenizer import WordVocabulary
from selfsup.text.views import TokenAugmentation, two_views


class MixedBatches:
    """Batches of token sequences, ``share`` of each batch from the first source, the rest from the second
    (each source read in a reshuffled order, epoch after epoch), so that a small in-domain source is not
    drowned by a large one. With one source, or ``share`` None, batches come from the sources pooled."""

    def __init__(self, sources: Sequence[Sequence[Sequence[int]]], batch_size: int, share: float | None,
                 seed: int) -> None:
        sources = [list(s) for s in sources if len(s)]
        if not sources:
            raise ValueError("MixedBatches: no text to train on")
        if share is None or len(sources) == 1:
            self.sources = [[seq for source in sources for seq in source]]
            self.counts = [batch_size]
        else:
            if len(sources) != 2 or not 0 < share < 1:
                raise ValueError(f"MixedBatches: a share in (0, 1) mixes two sources, got {share} for "
                                 f"{len(sources)} sources")
            first = min(max(round(share * batch_size), 1), batch_size - 1)
            self.sources = sources
            self.counts = [first, batch_size - first]
        self.generator = random.Random(seed)
        self.orders = [[] for _ in self.sources]

    def _take(self, index: int, count: int) -> list[Sequence[int]]:
        taken = []
        while len(taken) < count:
            if not self.orders[index]:
                order = list(range(len(self.sources[index])))
                self.generator.shuffle(order)
                self.orders[index] = order
            taken.append(self.sources[index][self.orders[index].pop()])
        return taken

    def next(self) -> list[Sequence[int]]:
        return [seq for index, count in enumerate(self.counts) for seq in self._take(index, count)]


@dataclass
class TrainedRun:
    """What one training run logged: rows of loss and monitors, the last batch's projections, its time."""

    rows: list[dict] = field(default_factory=list)
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    diverged: bool = False
    seconds: float = 0.0


def train_text_method(method: nn.Module, vocabulary: WordVocabulary, batches: MixedBatches,
                      augmentation: TokenAugmentation, steps: int, learning_rate: float, weight_decay: float,
                      seed: int, momentum_at: Callable[[int, int], float] | None = None, log_every: int = 25,
                      device: str | torch.device = "cpu", on_step: Callable[[], None] | None = None,
                      log: Callable[[str], None] = print, name: str = "") -> TrainedRun:
    """Train ``method`` (views stacked as (2B, L), see :mod:`selfsup.text.methods`) for ``steps`` steps.

    AdamW on the parameters that take gradients, warmup over the first tenth of the steps then cosine to 0.
    ``momentum_at(step, steps)`` is the target momentum after each step (BYOL); None for methods without a
    target. A non-finite loss stops the run with ``diverged`` set.
    """
    views_generator = random.Random(seed + 1)
    torch.manual_seed(seed + 2)  # the dropout masks
    parameters = [p for p in method.parameters() if p.requires_grad]
    # The fused kernel: on a CPU the unfused update of the embedding table costs a third of a step.
    fused = torch.device(device).type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay, fused=fused)
    warmup = max(steps // 10, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    run = TrainedRun()
    start = time.perf_counter()
    method.train()
    for step in range(steps):
        ids, mask = vocabulary.pad(two_views(batches.next(), augmentation, views_generator))
        output = method(ids.to(device), mask.to(device))
        if not torch.isfinite(output.loss.detach()):
            log(f"[{name}] loss is {output.loss.item()} at step {step}: stopping this variant")
            run.diverged = True
            break
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        scheduler.step()
        momentum = momentum_at(step, steps) if momentum_at is not None else None
        if momentum is not None:
            method.update_target(momentum)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            row = {"step": step + 1, "loss": round(output.loss.item(), 6), "lr": lr}
            if momentum is not None:
                row["momentum"] = momentum
            row.update({k: round(v, 6) if math.isfinite(v) else v
                        for k, v in embedding_monitors(*output.embeddings).items()})
            run.rows.append(row)
        run.embeddings = output.embeddings
        if on_step is not None:
            on_step()
    run.seconds = round(time.perf_counter() - start, 1)
    return run
