"""Shared building blocks of distillation methods: adapters, KD losses, object sets (grouping,
box masks, pooling and painting), label descriptors and encoders, same-image attention."""

from distill.modules.adapters import Conv1x1Adapter, ConvStackAdapter, build_adapter
from distill.modules.attention import SameImageAttention
from distill.modules.label_encoder import (
    LabelSet,
    LinearNormReLU,
    PointNetLabelEncoder,
    TNet,
    label_descriptors,
)
from distill.modules.losses import kl_div_with_temperature, masked_mse
from distill.modules.object_sets import (
    ObjectGroups,
    box_cell_masks,
    paint_in_masks,
    pool_in_masks,
)

__all__ = [
    "Conv1x1Adapter",
    "ConvStackAdapter",
    "LabelSet",
    "LinearNormReLU",
    "ObjectGroups",
    "PointNetLabelEncoder",
    "SameImageAttention",
    "TNet",
    "box_cell_masks",
    "build_adapter",
    "kl_div_with_temperature",
    "label_descriptors",
    "masked_mse",
    "paint_in_masks",
    "pool_in_masks",
]
