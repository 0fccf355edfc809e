"""Shared building blocks of distillation methods: adapters, KD losses, object sets (grouping,
box masks, pooling and painting), label descriptors and encoders, same-image attention, and
relation graphs (cosine edge matrices, node and edge losses, background mining)."""

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
    gt_box_mask,
    paint_in_masks,
    pool_in_masks,
)
from distill.modules.relation_graph import (
    adaptive_background_weight,
    background_cross_entropy,
    cosine_edge_matrix,
    edge_loss,
    mine_background,
    node_errors,
    node_loss,
    per_image_sum_of_means,
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
    "adaptive_background_weight",
    "background_cross_entropy",
    "box_cell_masks",
    "gt_box_mask",
    "build_adapter",
    "cosine_edge_matrix",
    "edge_loss",
    "kl_div_with_temperature",
    "label_descriptors",
    "masked_mse",
    "mine_background",
    "node_loss",
    "node_errors",
    "paint_in_masks",
    "per_image_sum_of_means",
    "pool_in_masks",
]
