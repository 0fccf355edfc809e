"""LGD's implicit teacher: feature maps built from the labels and the student's own features.

For a batch with FPN maps P^l (B, C, H_l, W_l):

1. label encoding: descriptors of the ground-truth objects (and one whole-image context row per
   image) -> PointNet set encoder -> Linear + LayerNorm + ReLU: one label embedding z_i (C,);
2. appearance encoding, per level: P~ = ReLU(GN1(conv3x3(P^l))), averaged inside each object's
   box cells: a_i^l (C,);
3. inter-object relation: attention among the objects of the same image (queries a^l and keys /
   values z by default), shared across levels: o_i^l;
4. intra-object mapping, per level: tokens Linear(o_i^l) painted (summed) into their boxes,
   conv3x3, plus the context token's Linear broadcast everywhere, ReLU, then a refinement
   [conv3x3, GN1, ReLU] x 2, conv3x3, GN1.

The result has exactly the student's FPN keys and shapes, and each map of each image has zero
mean and unit variance over (C, H_l, W_l). GN1 is a one-group GroupNorm without affine
parameters; every layer is shared across levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import nn

from distill.modules import (
    LinearNormReLU,
    PointNetLabelEncoder,
    SameImageAttention,
    box_cell_masks,
    label_descriptors,
    paint_in_masks,
    pool_in_masks,
)

# Which side of the relation attention asks: the appearance embeddings (as the official code
# runs) or the label embeddings (as the official code's comment describes).
INTERACTIONS = ("appearance_query", "label_query")


class GroupNorm1(nn.Module):
    """One-group GroupNorm without affine parameters: per-sample normalisation over (C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 1)


def conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1)


class ImplicitTeacher(nn.Module):
    """Builds one teacher map per student FPN level from the labels and the student's maps.

    Args:
        channels: C, the student's FPN width (the teacher maps have the same width).
        num_classes: K, the foreground classes of the one-hot label descriptors.
        num_heads: heads of the relation attention.
        context_box: add the whole-image context token per image.
        detach_appearance: stop the teacher's gradients from reaching the student's FPN maps.
        interaction: ``"appearance_query"`` or ``"label_query"``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_heads: int = 8,
        context_box: bool = True,
        detach_appearance: bool = False,
        interaction: str = "appearance_query",
    ):
        super().__init__()
        if interaction not in INTERACTIONS:
            raise ValueError(f"ImplicitTeacher: interaction must be one of {INTERACTIONS}")
        self.num_classes = num_classes
        self.context_box = context_box
        self.detach_appearance = detach_appearance
        self.interaction = interaction
        self.label_encoder = PointNetLabelEncoder(4 + num_classes, channels)
        self.label_proj = LinearNormReLU(channels, channels)
        self.appearance_proj = nn.Sequential(conv3x3(channels), GroupNorm1(), nn.ReLU())
        self.relation = SameImageAttention(channels, num_heads)
        self.token_proj = nn.Linear(channels, channels)
        self.context_proj = nn.Linear(channels, channels) if context_box else None
        self.render = conv3x3(channels)
        self.refine = nn.Sequential(
            conv3x3(channels), GroupNorm1(), nn.ReLU(),
            conv3x3(channels), GroupNorm1(), nn.ReLU(),
            conv3x3(channels), GroupNorm1(),
        )  # fmt: skip

    def forward(
        self,
        features: dict[str, torch.Tensor],
        gt_instances: list[Instances],
        image_size: tuple[int, int],
    ) -> dict[str, torch.Tensor]:
        """Teacher maps for a batch.

        Args:
            features: the student's FPN maps, level -> (B, C, H_l, W_l).
            gt_instances: per image, ``gt_boxes`` (XYXY, input pixels) and ``gt_classes``.
            image_size: (H, W) of the padded input batch.

        Returns:
            level -> (B, C, H_l, W_l), the same keys and shapes as ``features``.
        """
        labels = label_descriptors(gt_instances, image_size, self.num_classes, self.context_box)
        groups = labels.groups
        label_embed = self.label_proj(self.label_encoder(labels.descriptors, groups))  # (T, C)

        masks, appearance = {}, []
        for level, x in features.items():
            masks[level] = box_cell_masks(labels.boxes, image_size, x.shape[-2:])
            x = x.detach() if self.detach_appearance else x
            appearance.append(pool_in_masks(self.appearance_proj(x), masks[level], groups))
        appearance = torch.stack(appearance, dim=1)  # (T, L, C)

        if self.interaction == "appearance_query":
            relation = self.relation(appearance, label_embed, groups)
        else:
            relation = self.relation(label_embed, appearance, groups)  # (T, L, C)

        objects = ~labels.is_context
        tokens = self.token_proj(relation) * objects[:, None, None]  # context rows paint nothing
        context = None
        if self.context_proj is not None:
            context = relation.new_zeros((groups.num_images, *relation.shape[1:]))
            context[groups.image_index[labels.is_context]] = self.context_proj(
                relation[labels.is_context]
            )  # (B, L, C); zeros for images without objects (and no context row)
        out = {}
        for index, level in enumerate(features):
            painted = paint_in_masks(tokens[:, index], masks[level], groups)
            rendered = self.render(painted)
            if context is not None:
                rendered = rendered + context[:, index, :, None, None]
            out[level] = self.refine(F.relu(rendered))
        return out
