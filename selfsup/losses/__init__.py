"""Losses of self-supervised methods. Importing this package needs nothing but torch."""

from selfsup.losses.byol import BYOLLoss
from selfsup.losses.ntxent import NTXentLoss

__all__ = ["BYOLLoss", "NTXentLoss"]
