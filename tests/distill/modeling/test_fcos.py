"""FCOS from a YAML config, and detectron2 v0.6's FCOS problems handled in our code."""

from __future__ import annotations

import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import retinanet
from torch import nn

from distill.modeling.fcos import FCOS, group_norm_32


def test_group_norm_factory_survives_the_probe():
    assert group_norm_32(1).num_groups == 1  # the 1-channel probe of RetinaNetHead
    norm = group_norm_32(64)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 32


def test_fcos_head_has_group_norm_32_even_with_an_unfixed_probe(monkeypatch):
    """With detectron2 v0.6's original ``get_norm(norm, 1)`` probe the head still builds."""
    original = retinanet.get_norm

    def unfixed_probe(norm, channels):
        if channels == 32:  # what the patched install probes with; v0.6 probed with 1
            channels = 1
        return original(norm, channels)

    monkeypatch.setattr(retinanet, "get_norm", unfixed_probe)
    cfg = tiny_cfg(
        "fcos", "MODEL.FCOS.NUM_CONVS", 2, "MODEL.FCOS.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", 64
    )
    model = build_model(cfg)
    norms = [m for m in model.head.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4 and all(m.num_groups == 32 and m.num_channels == 64 for m in norms)


def test_fcos_selectable_from_yaml():
    cfg = tiny_cfg("fcos")
    assert cfg.MODEL.META_ARCHITECTURE == "DistillFCOS"
    model = build_model(cfg)
    assert isinstance(model, FCOS)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    # P6/P7 come from P5 (FCOS), not from C5 (RetinaNet)
    assert model.backbone.top_block.p6.in_channels == cfg.MODEL.FPN.OUT_CHANNELS


def test_fcos_images_without_boxes_are_background():
    model = build_model(tiny_cfg("fcos"))
    torch.manual_seed(0)
    losses = train_step(model, make_batch(boxes_per_image=(0, 3)))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    batch = make_batch(boxes_per_image=(0,))
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    labels, boxes = model.label_anchors(anchors, [batch[0]["instances"]])
    assert torch.all(labels[0] == model.num_classes)
    assert boxes[0].tensor.shape == (sum(len(a) for a in anchors), 4)
