"""Distill meta-architectures: build, train step with a distiller, eval == plain detector."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_batch, tiny_cfg, train_step
from detectron2.modeling import build_model

from distill.export import plain_config

PLAIN = {"faster_rcnn": "GeneralizedRCNN", "retinanet": "RetinaNet", "fcos": "FCOS"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_step_and_gradients(family, teacher_files):
    cfg = tiny_cfg(family, distillers=["FeatureKD"], teacher=teacher_files(family))
    torch.manual_seed(0)
    model = build_model(cfg)
    losses = train_step(model, make_batch())
    assert "loss_feature_kd_mse" in losses
    assert all(torch.isfinite(v) for v in losses.values()), losses
    grads = {n: p.grad for n, p in model.named_parameters()}
    # the adapters and the student's FPN learn from the distiller; every parameter is reached
    assert all(g is not None for n, g in grads.items() if n.startswith("distillers.")), grads
    assert grads["backbone.fpn_output3.weight"].abs().sum() > 0
    teacher_params = list(model.teacher.model.parameters())
    assert teacher_params and all(p.grad is None and not p.requires_grad for p in teacher_params)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_distiller_loss_alone_reaches_only_student_features(family, teacher_files):
    """The distiller's loss moves the adapters and the backbone, never the detection head."""
    cfg = tiny_cfg(family, distillers=["FeatureKD"], teacher=teacher_files(family))
    model = build_model(cfg)
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage(0):
        losses = model(make_batch())
    losses["loss_feature_kd_mse"].backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert any(n.startswith("distillers.") for n in reached)
    assert any(n.startswith("backbone.") for n in reached)
    heads = ("roi_heads.", "proposal_generator.", "head.")
    assert not [n for n in reached if n.startswith(heads)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eval_is_plain_detector(family, teacher_files):
    cfg = tiny_cfg(family, distillers=["FeatureKD"], teacher=teacher_files(family))
    torch.manual_seed(0)
    model = build_model(cfg)
    train_step(model, make_batch())  # BN statistics and everything else move
    plain = build_model(plain_config(cfg))
    assert type(plain).__name__ == PLAIN[family]
    student_state = {k: v for k, v in model.state_dict().items() if not k.startswith("distillers.")}
    # same parameter names as the plain detector
    assert set(student_state) == set(plain.state_dict())
    plain.load_state_dict(student_state, strict=True)
    model.eval()
    plain.eval()
    batch = make_batch(seed=3)
    with torch.no_grad():
        ours, theirs = model(batch), plain(batch)
    for a, b in zip(ours, theirs):
        a, b = a["instances"], b["instances"]
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plain_student_without_distillers(family):
    """With DISTILL.DISTILLERS empty the Distill model is the plain detector, no teacher."""
    model = build_model(tiny_cfg(family))
    assert len(model.distillers) == 0 and model.teacher is None
    losses = train_step(model, make_batch())
    assert not [k for k in losses if "feature_kd" in k]
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_images_without_annotations(family, teacher_files):
    cfg = tiny_cfg(family, distillers=["FeatureKD"], teacher=teacher_files(family))
    model = build_model(cfg)
    losses = train_step(model, make_batch(boxes_per_image=(0, 2)))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses = train_step(model, make_batch(boxes_per_image=(0,)))
    assert all(torch.isfinite(v) for v in losses.values()), losses
