"""Distillation-enabled detectron2 meta-architectures, registered in ``META_ARCH_REGISTRY``.

Each is a subclass of the plain detector with the same parameter names, plus ``distillers.*``,
and describes its student (kind, head config node, the plain detector that loads its extracted
student) for :class:`distill.student.StudentSpec`.
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet

from distill.modeling.distill_arch import DistillMixin
from distill.modeling.fcos import FCOS


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillMixin, GeneralizedRCNN):
    """Faster/Mask R-CNN student with distillers; eval is exactly ``GeneralizedRCNN``."""

    student_kind = "two_stage"
    head_config_node = "ROI_HEADS"
    plain_architecture = "GeneralizedRCNN"


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillMixin, RetinaNet):
    """RetinaNet student with distillers; eval is exactly ``RetinaNet``."""

    student_kind = "dense"
    head_config_node = "RETINANET"
    plain_architecture = "RetinaNet"


@META_ARCH_REGISTRY.register()
class DistillFCOS(DistillMixin, FCOS):
    """FCOS student with distillers; eval is exactly :class:`distill.modeling.fcos.FCOS`."""

    student_kind = "dense"
    head_config_node = "FCOS"
    plain_architecture = "FCOS"
