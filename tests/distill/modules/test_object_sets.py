"""Object grouping, box cell masks, pooling inside masks and painting into masks."""

from __future__ import annotations

import torch

from distill.modules import (
    ObjectGroups,
    box_cell_masks,
    gt_box_mask,
    paint_in_masks,
    pool_in_masks,
)


def test_groups_slots_pack_unpack_any_order():
    index = torch.tensor([1, 0, 1, 2, 1, 0])
    groups = ObjectGroups(index, num_images=4)
    assert groups.slot.tolist() == [0, 0, 1, 0, 2, 1]
    assert groups.counts.tolist() == [2, 3, 1, 0] and groups.max_objects == 3
    values = torch.arange(12.0).view(6, 2)
    packed = groups.pack(values)
    assert packed.shape == (4, 3, 2) and packed[3].abs().sum() == 0
    assert torch.equal(groups.unpack(packed), values)
    parts = groups.split(values)  # per image, input order kept within each image
    assert [p.tolist() for p in parts] == [
        [[2.0, 3.0], [10.0, 11.0]], [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]], [[6.0, 7.0]], []
    ]  # fmt: skip


def test_same_image_mask_is_block_diagonal():
    groups = ObjectGroups(torch.tensor([0, 0, 0, 1, 2, 2]), num_images=3)
    mask = groups.same_image_mask()
    expected = torch.ones(6, 6, dtype=torch.bool)
    for block in ([0, 1, 2], [3], [4, 5]):
        expected[torch.tensor(block)[:, None], torch.tensor(block)] = False
    assert torch.equal(mask, expected)
    assert (~mask).any(dim=1).all()  # every object attends at least to itself


def test_box_cell_masks_hand_built():
    # 64x64 input, 8x8 grid (stride 8): box (8, 8, 24, 16) -> (1, 1, 3, 2), centre (2, 1.5),
    # half sizes (1, 0.5): columns 1..3, rows 1..2 (integer cell coordinates, inclusive).
    boxes = torch.tensor([[8.0, 8.0, 24.0, 16.0], [10.0, 10.0, 10.0, 30.0]])
    masks = box_cell_masks(boxes, (64, 64), (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:3, 1:4] = True
    assert torch.equal(masks[0], expected)
    assert not masks[1].any()  # zero width covers nothing


def test_gt_box_mask_is_the_union_of_each_image_boxes():
    boxes = [
        torch.tensor([[8.0, 8.0, 24.0, 16.0], [40.0, 40.0, 56.0, 56.0]]),
        torch.zeros(0, 4),  # an image without objects
    ]
    mask = gt_box_mask(boxes, (64, 64), (8, 8))
    assert mask.shape == (2, 1, 8, 8) and mask.dtype == torch.float32
    union = box_cell_masks(boxes[0], (64, 64), (8, 8)).any(dim=0).float()
    assert torch.equal(mask[0, 0], union) and mask[0, 0, 1, 1] == 1 and mask[0, 0, 6, 6] == 1
    assert mask[1].sum() == 0


def test_whole_image_box_covers_every_cell_of_every_level():
    height, width = 96, 160
    boxes = torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]])
    for stride in (8, 16, 32, 64, 128):
        grid = (-(-height // stride), -(-width // stride))
        assert box_cell_masks(boxes, (height, width), grid).all()


def test_pool_is_mask_mean_and_zero_for_empty_masks():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 6, 7, generator=g)
    masks = torch.rand(4, 6, 7, generator=g) > 0.5
    masks[2] = False
    groups = ObjectGroups(torch.tensor([0, 1, 1, 0]), 2)
    pooled = pool_in_masks(features, masks, groups)
    for t, b in enumerate(groups.image_index.tolist()):
        cells = features[b][:, masks[t]]
        expected = cells.mean(dim=1) if masks[t].any() else torch.zeros(5)
        assert torch.allclose(pooled[t], expected, atol=1e-6)


def test_paint_is_a_plain_sum_per_image():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:3] = True  # overlaps object 0 at cell (1, 1)
    masks[2] = True  # object of image 1
    vectors = torch.tensor([[1.0, 10.0], [2.0, 20.0], [5.0, 50.0]])
    painted = paint_in_masks(vectors, masks, ObjectGroups(torch.tensor([0, 0, 1]), 2))
    assert painted.shape == (2, 2, 4, 4)
    assert painted[0, :, 1, 1].tolist() == [3.0, 30.0]  # v_0 + v_1
    assert painted[0, :, 0, 0].tolist() == [1.0, 10.0]
    assert painted[0, :, 3, 3].tolist() == [0.0, 0.0]  # covered by none
    assert (painted[1, 0] == 5.0).all()


def test_empty_batch():
    groups = ObjectGroups(torch.zeros(0, dtype=torch.long), 2)
    masks = torch.zeros(0, 3, 3, dtype=torch.bool)
    assert pool_in_masks(torch.randn(2, 4, 3, 3), masks, groups).shape == (0, 4)
    assert paint_in_masks(torch.zeros(0, 4), masks, groups).abs().sum() == 0
