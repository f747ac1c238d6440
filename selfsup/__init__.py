"""selfsup: self-supervised representation learning on images (BYOL, SimCLR).

Subpackages follow the flow of a run: data -> transforms -> models -> losses -> methods -> train -> eval.
Importing the top-level package is cheap; import the subpackage you need.
"""

__version__ = "0.1.0"
