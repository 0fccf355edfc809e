"""Objects of a batch as one flat set: grouping by image, box masks on feature grids, pooling
features inside masks and painting vectors back into them, all as batched tensor ops.

Methods that turn ground-truth objects into vectors and back (label encoders, instance tokens)
keep the T objects of a batch of B images as flat (T, ...) tensors plus the image index of each
object. :class:`ObjectGroups` packs them per image, (B, N_max, ...), so that pooling and painting
are one batched matrix product per feature level, with no Python loop over objects.
"""

from __future__ import annotations

import torch


class ObjectGroups:
    """Which image each of T objects belongs to, and its slot among that image's objects.

    Args:
        image_index: (T,) int64, the image of each object, any order.
        num_images: B, the batch size (images without objects included).

    Attributes:
        image_index: (T,).
        slot: (T,) position of each object among the objects of its image, in input order.
        counts: (B,) number of objects per image.
        max_objects: N_max = counts.max() (0 for an empty batch).
    """

    def __init__(self, image_index: torch.Tensor, num_images: int):
        self.image_index = image_index.long()
        self.num_images = num_images
        self.counts = torch.bincount(self.image_index, minlength=num_images)
        one_hot = torch.nn.functional.one_hot(self.image_index, num_images)  # (T, B)
        running = one_hot.cumsum(dim=0)
        self.slot = running.gather(1, self.image_index[:, None]).squeeze(1) - 1
        self.max_objects = int(self.counts.max()) if len(self.counts) else 0

    def __len__(self) -> int:
        return len(self.image_index)

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """(T, *D) -> (B, N_max, *D), zeros where an image has fewer objects."""
        packed = values.new_zeros((self.num_images, self.max_objects, *values.shape[1:]))
        packed[self.image_index, self.slot] = values
        return packed

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, N_max, *D) -> (T, *D), the inverse of :meth:`pack`."""
        return packed[self.image_index, self.slot]

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """(T, *D) -> B tensors (N_b, *D), each image's objects in input order; no copy when
        the objects already come sorted by image (as RoIs and detections do)."""
        index = self.image_index
        if len(index) > 1 and bool((index[1:] < index[:-1]).any()):
            values = values[torch.argsort(index, stable=True)]
        return list(torch.split(values, self.counts.tolist()))

    def same_image_mask(self) -> torch.Tensor:
        """(T, T) bool attention mask, True where two objects belong to different images
        (blocked); block-diagonal, and every row has at least its own object unblocked."""
        return self.image_index[:, None] != self.image_index[None, :]


def box_cell_masks(
    boxes: torch.Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]
) -> torch.Tensor:
    """Which cells of a feature grid each box covers.

    The box (in pixels of the padded input image, XYXY) is scaled by the grid/image size ratio;
    grid cell (y, x), at integer coordinates, is inside when ``|y - y_c| <= h / 2`` and
    ``|x - x_c| <= w / 2`` for the scaled box's centre (x_c, y_c) and size (w, h). Boxes with
    zero width or height cover nothing.

    Args:
        boxes: (T, 4) XYXY boxes in input pixels.
        image_size: (H, W) of the padded input.
        grid_size: (H_l, W_l) of the feature map.

    Returns:
        (T, H_l, W_l) bool.
    """
    height, width = image_size
    grid_h, grid_w = grid_size
    scale = boxes.new_tensor([grid_w / width, grid_h / height] * 2)
    x1, y1, x2, y2 = (boxes * scale).unbind(dim=1)
    half_w, half_h = (x2 - x1) / 2, (y2 - y1) / 2
    xs = torch.arange(grid_w, device=boxes.device, dtype=boxes.dtype)
    ys = torch.arange(grid_h, device=boxes.device, dtype=boxes.dtype)
    inside_x = (xs[None] - (x1 + half_w)[:, None]).abs() <= half_w[:, None]  # (T, W_l)
    inside_y = (ys[None] - (y1 + half_h)[:, None]).abs() <= half_h[:, None]  # (T, H_l)
    nonempty = (half_w > 0) & (half_h > 0)
    return inside_y[:, :, None] & inside_x[:, None, :] & nonempty[:, None, None]


def gt_box_mask(
    gt_boxes: list[torch.Tensor], image_size: tuple[int, int], grid_size: tuple[int, int]
) -> torch.Tensor:
    """Per image, the feature cells inside any of its ground-truth boxes (the cell convention
    of :func:`box_cell_masks`).

    Args:
        gt_boxes: per image, (T_i, 4) XYXY boxes in input pixels.
        image_size: (H, W) of the padded input batch.
        grid_size: (H_l, W_l) of the feature map.

    Returns:
        (N, 1, H_l, W_l) float mask, 1 inside a box.
    """
    masks = [box_cell_masks(boxes, image_size, grid_size).any(dim=0) for boxes in gt_boxes]
    return torch.stack(masks)[:, None].float()


def pool_in_masks(
    features: torch.Tensor, masks: torch.Tensor, groups: ObjectGroups
) -> torch.Tensor:
    """Average of each object's image features over its mask; 0 for an empty mask.

    Args:
        features: (B, C, H, W).
        masks: (T, H, W) bool or float weights.
        groups: the image of each object.

    Returns:
        (T, C).
    """
    if len(groups) == 0:
        return features.new_zeros((0, features.shape[1]))
    weights = groups.pack(masks.flatten(1).to(features.dtype))  # (B, N, HW)
    sums = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # (B, N, C)
    counts = weights.sum(dim=2, keepdim=True).clamp(min=1)
    return groups.unpack(sums / counts)


def paint_in_masks(
    vectors: torch.Tensor, masks: torch.Tensor, groups: ObjectGroups
) -> torch.Tensor:
    """Sum of the object vectors over the cells each object's mask covers, per image.

    A cell covered by objects i and j gets v_i + v_j; a cell covered by none gets 0.

    Args:
        vectors: (T, C).
        masks: (T, H, W) bool or float weights.
        groups: the image of each object.

    Returns:
        (B, C, H, W).
    """
    height, width = masks.shape[-2:]
    if len(groups) == 0:
        return vectors.new_zeros((groups.num_images, vectors.shape[1], height, width))
    weights = groups.pack(masks.flatten(1).to(vectors.dtype))  # (B, N, HW)
    packed = groups.pack(vectors)  # (B, N, C)
    painted = torch.bmm(packed.transpose(1, 2), weights)  # (B, C, HW)
    return painted.view(groups.num_images, -1, height, width)
