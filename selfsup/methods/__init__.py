"""Self-supervised methods: a backbone, heads and a loss put together, one short file each."""

from selfsup.methods.byol import BYOL
from selfsup.methods.momentum import cosine_momentum, ema_update_, frozen_copy
from selfsup.methods.output import MethodOutput
from selfsup.methods.simclr import SimCLR

__all__ = ["BYOL", "MethodOutput", "SimCLR", "cosine_momentum", "ema_update_", "frozen_copy"]
