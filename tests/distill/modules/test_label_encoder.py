"""Label descriptors, the PointNet label encoder and same-image attention."""

from __future__ import annotations

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

from distill.modules import (
    ObjectGroups,
    PointNetLabelEncoder,
    SameImageAttention,
    label_descriptors,
)


def instances(boxes, classes, size=(96, 128)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def batch():
    return [
        instances([[4, 6, 40, 50], [60, 10, 127, 95], [-5, 0, 20, 200]], [3, 0, 79]),
        instances([], []),
        instances([[10, 10, 30, 30]], [7]),
    ]


def test_descriptor_ranges_one_hot_and_context_rows():
    height, width = 96, 128
    labels = label_descriptors(batch(), (height, width), num_classes=80, context_box=True)
    d = labels.descriptors
    assert d.shape == (3 + 1 + 1 + 1, 84)  # T = sum_b N_b + [N_b > 0]: no row for the empty image
    assert d.min() >= -1 and d.max() <= 1
    assert labels.groups.image_index.tolist() == [0, 0, 0, 0, 2, 2]
    assert labels.is_context.tolist() == [False, False, False, True, False, True]
    real, context = d[~labels.is_context], d[labels.is_context]
    assert set(real[:, 4:].unique().tolist()) == {-1.0, 1.0}
    assert ((real[:, 4:] == 1).sum(dim=1) == 1).all()
    assert real[:, 4:].argmax(dim=1).tolist() == [3, 0, 79, 7]
    assert (context[:, 4:] == -1).all()
    expected = torch.tensor([-1, -1, 1 - 2 / width, 1 - 2 / height])
    assert torch.allclose(context[:, :4], expected.expand(2, 4))
    # clamped to [0, W-1] x [0, H-1] before normalising: box 2 of image 0 leaves the image
    assert labels.boxes[2].tolist() == [0.0, 0.0, 20.0, 95.0]
    assert torch.allclose(d[0, :4], torch.tensor([4 / 128, 6 / 96, 40 / 128, 50 / 96]) * 2 - 1)


def test_descriptors_without_context_and_of_an_empty_batch():
    labels = label_descriptors(batch(), (96, 128), num_classes=80)
    assert len(labels.descriptors) == 4 and not labels.is_context.any()
    empty = label_descriptors([instances([], []), instances([], [])], (96, 128), 80, True)
    assert empty.descriptors.shape == (0, 84) and empty.groups.num_images == 2


def encode(encoder, gt, seed_perm=None):
    labels = label_descriptors(gt, (96, 128), num_classes=80, context_box=True)
    return encoder(labels.descriptors, labels.groups), labels


def test_encoder_shape_sign_and_parameter_count():
    torch.manual_seed(0)
    encoder = PointNetLabelEncoder(84, 256)
    assert sum(p.numel() for p in encoder.parameters()) == 4_893_392
    out, labels = encode(encoder, batch())
    assert out.shape == (len(labels.descriptors), 256) and (out >= 0).all()


def test_encoder_is_permutation_equivariant_within_an_image():
    torch.manual_seed(0)
    encoder = PointNetLabelEncoder(84, 32)
    gt = batch()
    out, _ = encode(encoder, gt)
    permuted = [instances(gt[0].gt_boxes.tensor[[2, 0, 1]], gt[0].gt_classes[[2, 0, 1]])]
    out_p, _ = encode(encoder, permuted + gt[1:])
    assert torch.allclose(out_p[:3], out[[2, 0, 1]], atol=1e-5)
    assert torch.allclose(out_p[3:], out[3:], atol=1e-5)  # context row and the other image


def test_encoder_images_are_independent():
    torch.manual_seed(0)
    encoder = PointNetLabelEncoder(84, 32)
    gt = batch()
    out, _ = encode(encoder, gt)
    other = gt[:2] + [instances([[50, 40, 90, 90], [0, 0, 8, 8]], [1, 2])]
    out_other, _ = encode(encoder, other)
    assert torch.allclose(out_other[:4], out[:4], atol=1e-6)


def test_same_image_attention_equals_one_attention_per_image():
    torch.manual_seed(0)
    attention = SameImageAttention(16, num_heads=4)
    assert SameImageAttention(256, 8).attention.in_proj_weight.numel() == 3 * 256 * 256
    assert sum(p.numel() for p in SameImageAttention(256, 8).parameters()) == 263_168
    groups = ObjectGroups(torch.tensor([0, 0, 1, 1, 1, 0]), 2)
    query, key_value = torch.randn(6, 3, 16), torch.randn(6, 16)
    out = attention(query, key_value, groups)
    assert out.shape == (6, 3, 16)
    mha: nn.MultiheadAttention = attention.attention
    for image in (0, 1):
        rows = (groups.image_index == image).nonzero().flatten()
        kv = key_value[rows][:, None].expand(-1, 3, -1)
        expected, _ = mha(query[rows], kv, kv, need_weights=False)
        assert torch.allclose(out[rows], expected, atol=1e-5)
    assert attention(torch.randn(0, 16), torch.randn(0, 16), ObjectGroups(
        torch.zeros(0, dtype=torch.long), 2)).shape == (0, 16)  # fmt: skip
