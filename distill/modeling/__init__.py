"""Detection models: yacs FCOS and the Distill meta-architectures (registered on import)."""

from distill.modeling.fcos import FCOS, build_fcos_resnet_fpn_backbone
from distill.modeling.meta_arch import (
    DistillFCOS,
    DistillGeneralizedRCNN,
    DistillRetinaNet,
)

__all__ = [
    "FCOS",
    "DistillFCOS",
    "DistillGeneralizedRCNN",
    "DistillRetinaNet",
    "build_fcos_resnet_fpn_backbone",
]
