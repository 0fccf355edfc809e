"""Dsig on one-stage students: the student's detections are the nodes (at most 100 per image),
node and edge losses only, gradients into backbone/FPN but not the head; zero for a teacher
equal to the student."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from dsig.nodes import detection_boxes

import distill.context
from distill.export import plain_config


@pytest.mark.parametrize("family", ["retinanet", "fcos"])
def test_detection_nodes_losses_and_gradients(family, teacher_files):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(family, distillers=["Dsig"], teacher=teacher_files(family)))
    captured = {}
    original = distill.context.DistillContext.__init__

    def spy(self, **kwargs):
        original(self, **kwargs)
        captured["context"] = self

    distill.context.DistillContext.__init__ = spy
    try:
        model.zero_grad(set_to_none=True)
        with EventStorage(0):
            losses = model(make_batch(boxes_per_image=(0, 2)))
            graph = losses["loss_dsig_fg_node"] + losses["loss_dsig_edge"]
            graph.backward()
            boxes = detection_boxes(model, captured["context"])
    finally:
        distill.context.DistillContext.__init__ = original
    assert {k for k in losses if k.startswith("loss_dsig_")} == {
        "loss_dsig_fg_node", "loss_dsig_edge"}  # fmt: skip
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(0 < len(b) <= 100 for b in boxes)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert any(n.startswith("backbone.bottom_up.") for n in grads)
    assert any(n.startswith("distillers.Dsig.adapter.") for n in grads)
    assert not any(n.startswith("head.") for n in grads)  # nodes are taken before the head


def test_teacher_equal_to_the_student_gives_zero(tmp_path):
    frozen = ["MODEL.RESNETS.NORM", "FrozenBN"]
    torch.manual_seed(0)
    cfg = plain_config(tiny_cfg("retinanet", *frozen, distillers=[]))
    plain = build_model(cfg)
    (tmp_path / "t.yaml").write_text(cfg.dump())
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("t")
    model = build_model(tiny_cfg("retinanet", *frozen, "DSIG.WEIGHTS.FEATURE", 0.5,
                                 "DSIG.WEIGHTS.ROI_CLS", 1.0, "DSIG.WEIGHTS.ROI_REG", 1.0,
                                 distillers=["Dsig"],
                                 teacher=(tmp_path / "t.yaml", tmp_path / "t.pth")))  # fmt: skip
    model.load_state_dict(plain.state_dict(), strict=False)
    losses = train_step(model, make_batch())
    for key in ("fg_node", "edge", "feature", "roi_cls", "roi_reg"):
        assert losses[f"loss_dsig_{key}"].abs() < 1e-6, key


def test_logits_kd_reaches_the_head(teacher_files):
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(
            "retinanet",
            "DSIG.WEIGHTS.ROI_CLS",
            1.0,
            "DSIG.WEIGHTS.ROI_REG",
            1.0,
            distillers=["Dsig"],
            teacher=teacher_files("retinanet"),
        )
    )
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        losses = model(make_batch())
        (losses["loss_dsig_roi_cls"] + losses["loss_dsig_roi_reg"]).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert any(n.startswith("head.cls_score") for n in grads)
    assert any(n.startswith("head.bbox_pred") for n in grads)
