"""Detection models: yacs FCOS and the Distill meta-architectures (registered on import)."""

from distill.modeling.fcos import FCOS, build_fcos_resnet_fpn_backbone
from distill.modeling.meta_arch import (
    HEAD_CONFIG_NODES,
    PLAIN_META_ARCHITECTURES,
    DistillFCOS,
    DistillGeneralizedRCNN,
    DistillRetinaNet,
)

__all__ = [
    "FCOS",
    "HEAD_CONFIG_NODES",
    "PLAIN_META_ARCHITECTURES",
    "DistillFCOS",
    "DistillGeneralizedRCNN",
    "DistillRetinaNet",
    "build_fcos_resnet_fpn_backbone",
]
