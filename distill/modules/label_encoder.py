"""Ground-truth labels as vectors: per-object label descriptors and a PointNet-style set encoder.

A *label descriptor* describes one object of an image by its box, normalised by the padded input
size, and its class as a one-hot vector, all rescaled to [-1, 1]. An optional *context row* per
image (the whole padded image, no class) lets the encoder see the image as a whole.

:class:`PointNetLabelEncoder` embeds the descriptors of each image as a set: per-object layers,
two learned input transforms (T-Nets) and an image-level max-pooled feature concatenated back to
every object. It is permutation-equivariant within an image and independent across images.
Used by LGD's implicit teacher; any method that conditions on labels can reuse both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import nn

from distill.modules.object_sets import ObjectGroups


@dataclass
class LabelSet:
    """The objects of a batch as flat tensors, grouped by image (context row last per image).

    Attributes:
        descriptors: (T, 4 + K) in [-1, 1]: normalised XYXY box, then the one-hot class.
        boxes: (T, 4) XYXY boxes in input pixels, clamped to the padded image.
        classes: (T,) class ids; -1 on context rows.
        is_context: (T,) bool, True on context rows.
        groups: the image of each object.
    """

    descriptors: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    is_context: torch.Tensor
    groups: ObjectGroups


def label_descriptors(
    gt_instances: list[Instances],
    image_size: tuple[int, int],
    num_classes: int,
    context_box: bool = False,
) -> LabelSet:
    """Build the label descriptors of a batch.

    Boxes are clamped to x in [0, W-1], y in [0, H-1] of the padded input (H, W) and divided by
    W and H; classes are one-hot over ``num_classes``; the concatenation d in [0, 1] is mapped to
    2d - 1. With ``context_box``, every image with at least one object gets one more row, last
    among its objects: the box (0, 0, W, H) with an all-zero class part (all -1 after rescaling).

    Args:
        gt_instances: per image, ``gt_boxes`` (XYXY, input pixels) and ``gt_classes``.
        image_size: (H, W) of the padded batch tensor.
        num_classes: K, the number of foreground classes.
        context_box: add the whole-image context row.

    Returns:
        a :class:`LabelSet` with T = sum_b (N_b + [context_box and N_b > 0]) rows.
    """
    height, width = image_size
    device = gt_instances[0].gt_boxes.device if gt_instances else torch.device("cpu")
    counts = torch.tensor([len(x) for x in gt_instances], device=device)
    boxes = torch.cat([x.gt_boxes.tensor.float() for x in gt_instances]).reshape(-1, 4)
    classes = torch.cat([x.gt_classes for x in gt_instances]).long()
    image_index = torch.repeat_interleave(torch.arange(len(gt_instances), device=device), counts)
    is_context = torch.zeros(len(boxes), dtype=torch.bool, device=device)
    if context_box:
        with_objects = torch.nonzero(counts > 0).flatten()
        whole = boxes.new_tensor([0.0, 0.0, width, height]).expand(len(with_objects), 4)
        boxes = torch.cat([boxes, whole])
        classes = torch.cat([classes, classes.new_full((len(with_objects),), -1)])
        image_index = torch.cat([image_index, with_objects])
        is_context = torch.cat([is_context, torch.ones_like(with_objects, dtype=torch.bool)])
        order = torch.argsort(image_index * 2 + is_context.long(), stable=True)
        boxes, classes, image_index, is_context = (
            t[order] for t in (boxes, classes, image_index, is_context)
        )
    limits = boxes.new_tensor([width - 1, height - 1] * 2)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    unit_boxes = boxes / boxes.new_tensor([width, height] * 2)
    one_hot = F.one_hot(classes.clamp(min=0), num_classes).to(boxes.dtype)
    one_hot = one_hot * (~is_context)[:, None]
    descriptors = torch.cat([unit_boxes, one_hot], dim=1) * 2 - 1
    return LabelSet(
        descriptors=descriptors,
        boxes=boxes,
        classes=classes,
        is_context=is_context,
        groups=ObjectGroups(image_index, len(gt_instances)),
    )


class LinearNormReLU(nn.Linear):
    """Linear layer, LayerNorm without affine parameters, ReLU: (T, in) -> (T, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.relu(F.layer_norm(y, y.shape[-1:]))


class TNet(nn.Module):
    """PointNet's transform network: predicts one (m, m) matrix per object from its vector.

    Per-object layers m -> 64 -> 128 -> 1024 -> 512 -> 256 (each LayerNorm without affine and
    ReLU), then a linear layer to m * m values. No identity is added to the matrix.
    """

    def __init__(self, dim: int, widths: tuple[int, ...] = (64, 128, 1024, 512, 256)):
        super().__init__()
        layers, last = [], dim
        for width in widths:
            layers.append(LinearNormReLU(last, width))
            last = width
        self.layers = nn.Sequential(*layers)
        self.matrix = nn.Linear(last, dim * dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, m) -> (T, m, m)."""
        return self.matrix(self.layers(x)).view(-1, self.dim, self.dim)


class PointNetLabelEncoder(nn.Module):
    """Embeds the label descriptors of each image as a set (PointNet with two T-Nets).

    Per object: u = d M1 with M1 = TNet(d); h1 = f(u) (64); g = h1 M2 with M2 = TNet(h1);
    h3 = f(f(g)) (128, 1024); the image feature G is the max of h3 over the image's objects;
    the output is f([g ; G]). Every f is Linear + LayerNorm (no affine) + ReLU.

    Args:
        in_dim: descriptor width k (4 + number of classes).
        out_dim: output width (the student's FPN width).
        local_dim, mid_dim, global_dim: widths of h1/g, the middle layer and h3/G.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        local_dim: int = 64,
        mid_dim: int = 128,
        global_dim: int = 1024,
    ):
        super().__init__()
        self.input_transform = TNet(in_dim)
        self.local = LinearNormReLU(in_dim, local_dim)
        self.feature_transform = TNet(local_dim)
        self.mid = LinearNormReLU(local_dim, mid_dim)
        self.global_ = LinearNormReLU(mid_dim, global_dim)
        self.fuse = LinearNormReLU(local_dim + global_dim, out_dim)

    def forward(self, descriptors: torch.Tensor, groups: ObjectGroups) -> torch.Tensor:
        """(T, k) descriptors of objects grouped by ``groups`` -> (T, out_dim), all >= 0."""
        u = torch.bmm(descriptors[:, None], self.input_transform(descriptors)).squeeze(1)
        h1 = self.local(u)
        g = torch.bmm(h1[:, None], self.feature_transform(h1)).squeeze(1)
        h3 = self.global_(self.mid(g))
        per_image = h3.new_zeros((groups.num_images, h3.shape[1]))
        index = groups.image_index[:, None].expand_as(h3)
        per_image = per_image.scatter_reduce(0, index, h3, reduce="amax", include_self=False)
        return self.fuse(torch.cat([g, per_image[groups.image_index]], dim=1))
