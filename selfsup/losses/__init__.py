"""Losses of self-supervised methods. Importing this package needs nothing but torch."""

from selfsup.losses.barlow_twins import BarlowTwinsLoss
from selfsup.losses.byol import BYOLLoss
from selfsup.losses.dino import DINOLoss, dino_teacher_temperature
from selfsup.losses.infonce import InfoNCELoss
from selfsup.losses.negative_cosine import NegativeCosineLoss
from selfsup.losses.ntxent import NTXentLoss
from selfsup.losses.vicreg import VICRegLoss

__all__ = ["BYOLLoss", "BarlowTwinsLoss", "DINOLoss", "InfoNCELoss", "NTXentLoss", "NegativeCosineLoss",
           "VICRegLoss", "dino_teacher_temperature"]
