"""Union-box features of object pairs, with the two-box rectangle mask branch.

The union box of a pair is RoIAligned from the FPN like an object box. A 2-channel binary mask
(subject box, object box, drawn inside the union box on a (4R - 1)^2 grid, R the pooler
resolution) goes through conv 7x7/2 -> ReLU -> BN -> max-pool 3/2 -> conv 3x3 -> ReLU -> BN to
an (C, R, R) map that is added to the pooled union feature. The sum then goes through its own
copy of the detector's box head MLP.
"""

from __future__ import annotations

import torch
from detectron2.structures import Boxes
from torch import nn


def union_boxes(subject: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """(M, 4) x (M, 4) XYXY -> (M, 4) the smallest box containing both."""
    return torch.cat([torch.minimum(subject[:, :2], obj[:, :2]),
                      torch.maximum(subject[:, 2:], obj[:, 2:])], dim=1)  # fmt: skip


def rectangle_masks(subject: torch.Tensor, obj: torch.Tensor, size: int) -> torch.Tensor:
    """(M, 2, size, size) float: 1 on the cells of the union-box grid covered by the subject
    (channel 0) and the object (channel 1) box; a cell is covered when its centre is inside."""
    union = union_boxes(subject, obj)
    scale = size / (union[:, 2:] - union[:, :2]).clamp(min=1e-6)  # (M, 2) cells per pixel, x y
    centres = torch.arange(size, device=subject.device, dtype=subject.dtype) + 0.5
    masks = []
    for box in (subject, obj):
        lo = (box[:, :2] - union[:, :2]) * scale
        hi = (box[:, 2:] - union[:, :2]) * scale
        inside_x = (centres[None] >= lo[:, :1]) & (centres[None] <= hi[:, :1])  # (M, size)
        inside_y = (centres[None] >= lo[:, 1:]) & (centres[None] <= hi[:, 1:])
        masks.append(inside_y[:, :, None] & inside_x[:, None, :])
    return torch.stack(masks, dim=1).float()


class RectangleMaskBranch(nn.Module):
    """(M, 2, 4R - 1, 4R - 1) masks -> (M, channels, R, R) maps."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(2, channels // 2, kernel_size=7, stride=2, padding=3),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(channels // 2, momentum=0.01),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(channels // 2, channels, kernel_size=3, stride=1, padding=1),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(channels, momentum=0.01),
        )

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.layers(masks)


class UnionFeatures(nn.Module):
    """Pair features: pooled union box + rectangle-mask map, through a box-head MLP.

    Args:
        pooler: a detectron2 ``ROIPooler`` over the FPN levels (output R x R).
        channels: FPN width C.
        resolution: R, the pooler's output size.
        head: the MLP (a detectron2 box head taking (M, C, R, R)).
    """

    def __init__(self, pooler: nn.Module, channels: int, resolution: int, head: nn.Module):
        super().__init__()
        self.pooler = pooler
        self.resolution = resolution
        self.mask_branch = RectangleMaskBranch(channels)
        self.head = head

    def forward(
        self, features: list[torch.Tensor], boxes: list[torch.Tensor], pairs: list[torch.Tensor]
    ) -> torch.Tensor:
        """(M, D) features of every pair of every image, image-major.

        Args:
            features: the FPN maps the pooler reads.
            boxes: per image, (N_i, 4) XYXY object boxes.
            pairs: per image, (M_i, 2) (subject, object) indices.
        """
        subjects = torch.cat([b[p[:, 0]] for b, p in zip(boxes, pairs, strict=True)])
        objects = torch.cat([b[p[:, 1]] for b, p in zip(boxes, pairs, strict=True)])
        unions = union_boxes(subjects, objects)
        counts = [len(p) for p in pairs]
        pooled = self.pooler(features, [Boxes(u) for u in unions.split(counts)])
        masks = rectangle_masks(subjects, objects, 4 * self.resolution - 1)
        return self.head(pooled + self.mask_branch(masks))
