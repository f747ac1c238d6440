"""Self-supervised methods: a backbone, heads and a loss put together, one short file each.

:data:`METHODS` maps each name that ``--method`` takes to its class; adding a method is one file and one line
here (see :mod:`selfsup.methods.base` for what the class holds). A user's own method is added the same way::

    from selfsup.methods import METHODS
    METHODS["my-method"] = MyMethod
"""

from selfsup.methods.barlow_twins import BarlowTwins, BarlowTwinsSettings
from selfsup.methods.base import Method
from selfsup.methods.byol import BYOL, BYOLSettings
from selfsup.methods.dino import DINO, DINOSettings
from selfsup.methods.moco_v2 import MoCoV2, MoCoV2Settings
from selfsup.methods.moco_v3 import MoCoV3, MoCoV3Settings
from selfsup.methods.momentum import cosine_momentum, ema_update_, frozen_copy
from selfsup.methods.output import MethodOutput
from selfsup.methods.simclr import SimCLR, SimCLRSettings
from selfsup.methods.simsiam import SimSiam, SimSiamSettings
from selfsup.methods.vicreg import VICReg, VICRegSettings

METHODS: dict[str, type[Method]] = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "moco-v2": MoCoV2,
    "moco-v3": MoCoV3,
    "barlow-twins": BarlowTwins,
    "vicreg": VICReg,
    "dino": DINO,
}


def method_class(name: str) -> type[Method]:
    """The class of method ``name``; an unknown name is an error that lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"setting 'method': unknown method {name!r}; known methods: "
                         f"{', '.join(sorted(METHODS))}") from None


__all__ = ["BYOL", "BYOLSettings", "DINO", "DINOSettings", "METHODS", "BarlowTwins", "BarlowTwinsSettings", "Method",
           "MethodOutput", "MoCoV2", "MoCoV2Settings", "MoCoV3", "MoCoV3Settings", "SimCLR", "SimCLRSettings",
           "SimSiam", "SimSiamSettings", "VICReg", "VICRegSettings", "cosine_momentum", "ema_update_", "frozen_copy",
           "method_class"]
