"""LGD's implicit teacher: shapes, normalisation, symmetries, independence and size
(spec section 6)."""

from __future__ import annotations

import pytest
import torch
from detectron2.structures import Boxes, Instances
from lgd.implicit_teacher import ImplicitTeacher

from distill.modules import build_adapter

SIZE = (64, 96)  # padded input (H, W)
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def features(channels=32, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        level: torch.randn(batch, channels, -(-SIZE[0] // s), -(-SIZE[1] // s), generator=g)
        for level, s in STRIDES.items()
    }


def instances(boxes, classes):
    inst = Instances(SIZE)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def labels():
    return [
        instances([[4, 6, 40, 50], [30, 10, 90, 60], [10, 20, 30, 30]], [3, 0, 5]),
        instances([[20, 8, 60, 40]], [7]),
        instances([], []),
    ]


def teacher(**kwargs):
    torch.manual_seed(0)
    return ImplicitTeacher(32, num_classes=8, num_heads=4, **kwargs).eval()


@pytest.mark.parametrize("context_box", [True, False])
def test_maps_have_the_student_shapes_and_unit_statistics(context_box):
    feats = features()
    maps = teacher(context_box=context_box)(feats, labels(), SIZE)
    assert list(maps) == list(feats)
    for level, x in feats.items():
        assert maps[level].shape == x.shape
        per_image = maps[level].flatten(1)
        assert torch.isfinite(per_image).all()
        if per_image.shape[1] > 1 and per_image[0].std() > 0:
            assert torch.allclose(per_image.mean(dim=1), torch.zeros(3), atol=1e-4)
            var = per_image[:2].var(dim=1, unbiased=False)
            assert torch.allclose(var, torch.ones(2), atol=1e-2)


def test_permuting_objects_within_an_image_leaves_the_maps_unchanged():
    model, feats, gt = teacher(), features(), labels()
    maps = model(feats, gt, SIZE)
    order = [2, 0, 1]
    permuted = [instances(gt[0].gt_boxes.tensor[order], gt[0].gt_classes[order])] + gt[1:]
    maps_p = model(feats, permuted, SIZE)
    for level in maps:
        assert torch.allclose(maps[level], maps_p[level], atol=1e-4)


def test_images_are_independent_at_a_fixed_padded_size():
    model, feats, gt = teacher(), features(), labels()
    maps = model(feats, gt, SIZE)
    other_feats = {k: v.clone() for k, v in feats.items()}
    for v in other_feats.values():
        v[1:] = torch.randn_like(v[1:])
    other_gt = [gt[0], instances([[0, 0, 50, 50], [5, 5, 9, 9]], [1, 2]), gt[2]]
    maps_o = model(other_feats, other_gt, SIZE)
    for level in maps:
        assert torch.allclose(maps[level][0], maps_o[level][0], atol=1e-5)
        assert not torch.allclose(maps[level][1], maps_o[level][1])


def test_labels_matter():
    model, feats, gt = teacher(), features(), labels()
    maps = model(feats, gt, SIZE)
    moved = [instances(gt[0].gt_boxes.tensor + 8, gt[0].gt_classes)] + gt[1:]
    assert not torch.allclose(model(feats, moved, SIZE)["p3"][0], maps["p3"][0])


@pytest.mark.parametrize("interaction", ["appearance_query", "label_query"])
def test_empty_and_single_object_batches_are_finite(interaction):
    model = teacher(interaction=interaction)
    empty, single = instances([], []), instances([[5, 5, 6, 70]], [1])
    for gt in ([empty, empty, empty], [single, empty, empty]):
        for x in model(features(), gt, SIZE).values():
            assert torch.isfinite(x).all()


@pytest.mark.parametrize("detach", [False, True])
def test_appearance_gradient_reaches_the_student_maps_unless_detached(detach):
    model = teacher(detach_appearance=detach).train()
    feats = {k: v.requires_grad_() for k, v in features().items()}
    maps = model(feats, labels(), SIZE)
    sum((m * torch.randn_like(m)).sum() for m in maps.values()).backward()
    reached = all(x.grad is not None and x.grad.abs().sum() > 0 for x in feats.values())
    assert reached == (not detach)
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_count_at_the_paper_size():
    model = ImplicitTeacher(256, num_classes=80, num_heads=8, context_box=True)
    assert sum(p.numel() for p in model.parameters()) == 8_304_336
    attention = model.relation.attention
    assert attention.num_heads == 8 and attention.head_dim == 32
    adapter = build_adapter("ConvStackAdapter", 256, 256, num_convs=3)  # LGD's default adapter
    assert sum(p.numel() for p in adapter.parameters()) == 1_770_240
