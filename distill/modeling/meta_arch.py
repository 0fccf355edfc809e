"""Distillation-enabled detectron2 meta-architectures, registered in ``META_ARCH_REGISTRY``.

Each is a subclass of the plain detector with the same parameter names, plus ``distillers.*``.
``PLAIN_META_ARCHITECTURES`` maps each to the detector that loads its extracted student.
"""

from __future__ import annotations

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, RetinaNet

from distill.modeling.distill_arch import DistillMixin, distill_from_config
from distill.modeling.fcos import FCOS


@META_ARCH_REGISTRY.register()
class DistillGeneralizedRCNN(DistillMixin, GeneralizedRCNN):
    """Faster/Mask R-CNN student with distillers; eval is exactly ``GeneralizedRCNN``."""

    @configurable
    def __init__(self, *, distillers=None, teacher=None, **kwargs):
        super().__init__(**kwargs)
        self._setup_distill(distillers, teacher)

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), **distill_from_config(cfg)}


@META_ARCH_REGISTRY.register()
class DistillRetinaNet(DistillMixin, RetinaNet):
    """RetinaNet student with distillers; eval is exactly ``RetinaNet``."""

    @configurable
    def __init__(self, *, distillers=None, teacher=None, **kwargs):
        super().__init__(**kwargs)
        self._setup_distill(distillers, teacher)

    @classmethod
    def from_config(cls, cfg):
        return {**super().from_config(cfg), **distill_from_config(cfg)}


@META_ARCH_REGISTRY.register()
class DistillFCOS(DistillMixin, FCOS):
    """FCOS student with distillers; eval is exactly :class:`distill.modeling.fcos.FCOS`."""

    @configurable
    def __init__(self, *, distillers=None, teacher=None, input_format: str = "BGR", **kwargs):
        super().__init__(**kwargs)
        self.input_format = input_format  # detectron2's FCOS does not keep it
        self._setup_distill(distillers, teacher)

    @classmethod
    def from_config(cls, cfg):
        return {
            **super().from_config(cfg),
            **distill_from_config(cfg),
            "input_format": cfg.INPUT.FORMAT,
        }


PLAIN_META_ARCHITECTURES = {
    "DistillGeneralizedRCNN": "GeneralizedRCNN",
    "DistillRetinaNet": "RetinaNet",
    "DistillFCOS": "FCOS",
}
