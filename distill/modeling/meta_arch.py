"""Distillation-enabled detectron2 meta-architectures, registered in ``META_ARCH_REGISTRY``.

Each is a subclass of the plain detector with the same parameter names, plus ``distillers.*``.
``PLAIN_META_ARCHITECTURES`` maps each to the detector that loads its extracted student.
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet

from distill.modeling.distill_arch import DistillMixin
from distill.modeling.fcos import FCOS


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillMixin, GeneralizedRCNN):
    """Faster/Mask R-CNN student with distillers; eval is exactly ``GeneralizedRCNN``."""


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillMixin, RetinaNet):
    """RetinaNet student with distillers; eval is exactly ``RetinaNet``."""


@META_ARCH_REGISTRY.register()
class DistillFCOS(DistillMixin, FCOS):
    """FCOS student with distillers; eval is exactly :class:`distill.modeling.fcos.FCOS`."""


PLAIN_META_ARCHITECTURES = {
    "DistillGeneralizedRCNN": "GeneralizedRCNN",
    "DistillRetinaNet": "RetinaNet",
    "DistillFCOS": "FCOS",
}

# The config node holding each supported detector's head settings (NUM_CLASSES, IN_FEATURES),
# for the Distill students and the plain detectors they load into.
HEAD_CONFIG_NODES = {
    "DistillGeneralizedRCNN": "ROI_HEADS",
    "DistillRetinaNet": "RETINANET",
    "DistillFCOS": "FCOS",
    "GeneralizedRCNN": "ROI_HEADS",
    "RetinaNet": "RETINANET",
    "FCOS": "FCOS",
}
