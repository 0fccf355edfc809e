"""LGD: label-guided self-distillation for object detection (AAAI 2022).

Importing the package registers the ``LGD`` distiller (config node ``LGD.*``).
"""

from lgd.distiller import LGD
from lgd.implicit_teacher import ImplicitTeacher

__all__ = ["LGD", "ImplicitTeacher"]
