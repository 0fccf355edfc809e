"""Dsig on a Faster R-CNN student: losses, zero for a teacher equal to the student, gradient
routing (nodes and edges reach backbone/FPN, not the box head; RoI KD reaches the box head)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from distill.export import plain_config

ALL_TERMS = ["DSIG.WEIGHTS.ROI_CLS", 3.0, "DSIG.WEIGHTS.ROI_REG", 1.0, "DSIG.WEIGHTS.FEATURE", 0.5,
             "DSIG.MINING_THRESHOLD", 0.0]  # fmt: skip


def dsig_model(teacher, *opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg("faster_rcnn", *ALL_TERMS, *opts, distillers=["Dsig"],
                                teacher=teacher))  # fmt: skip


@pytest.fixture
def teacher(teacher_files):
    return teacher_files("faster_rcnn")


def test_losses_finite_with_zero_and_one_object_and_adapter(teacher):
    model = dsig_model(teacher)
    assert model.distillers["Dsig"].adapter is not None  # student FPN 32, teacher FPN 48
    for boxes in ((3, 1), (0, 1), (0, 0)):
        losses = train_step(model, make_batch(boxes_per_image=boxes))
        dsig = {k: v for k, v in losses.items() if k.startswith("loss_dsig_")}
        terms = {k.removeprefix("loss_dsig_") for k in dsig}
        assert terms == {"fg_node", "bg_node", "edge", "roi_cls", "roi_reg", "feature"}
        assert all(torch.isfinite(v) for v in dsig.values()), dsig


def test_all_losses_vanish_when_the_teacher_is_the_student(tmp_path):
    frozen = ["MODEL.RESNETS.NORM", "FrozenBN"]  # no batch statistics: identical features
    torch.manual_seed(0)
    cfg = plain_config(tiny_cfg("faster_rcnn", *frozen, distillers=[]))
    plain = build_model(cfg)
    (tmp_path / "t.yaml").write_text(cfg.dump())
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("t")
    model = dsig_model((tmp_path / "t.yaml", tmp_path / "t.pth"), *frozen)
    model.load_state_dict(plain.state_dict(), strict=False)
    assert model.distillers["Dsig"].adapter is None
    losses = train_step(model, make_batch())
    for key, value in losses.items():
        if key.startswith("loss_dsig_"):
            assert value.abs() < 1e-6, key


def grad_parts(model, names, batch):
    model.zero_grad(set_to_none=True)
    with EventStorage(0) as storage:
        storage.iter = 0
        losses = model(batch)
        sum(losses[n] for n in names).backward()
    parts = set()
    for name, p in model.named_parameters():
        if p.grad is None or not p.grad.any():
            continue
        if name.startswith("roi_heads.box_head") or name.startswith("roi_heads.box_predictor"):
            parts.add("box_head")
        elif name.startswith("backbone."):
            parts.add("backbone")
        elif name.startswith("distillers."):
            parts.add("adapter")
        else:
            parts.add(name.split(".")[0])
    return parts


def test_gradient_routing(teacher):
    model = dsig_model(teacher).train()
    batch = make_batch()
    graph = ["loss_dsig_fg_node", "loss_dsig_bg_node", "loss_dsig_edge"]
    assert grad_parts(model, graph, batch) == {"backbone", "adapter"}
    assert grad_parts(model, ["loss_dsig_roi_cls"], batch) == {"box_head", "backbone"}
    teacher_params = list(model.teacher.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)


def test_switched_off_terms_are_absent(teacher):
    model = dsig_model(teacher, "DSIG.WEIGHTS.BG_NODE", 0.0, "DSIG.WEIGHTS.ROI_CLS", 0.0,
                       "DSIG.WEIGHTS.ROI_REG", 0.0, "DSIG.WEIGHTS.FEATURE", 0.0,
                       "DSIG.MINE_BACKGROUND", False)  # fmt: skip
    losses = train_step(model, make_batch())
    assert {k for k in losses if k.startswith("loss_dsig_")} == {"loss_dsig_fg_node",
                                                                 "loss_dsig_edge"}  # fmt: skip


def test_nothing_mined_and_nothing_in_foreground_stay_finite(teacher):
    model = dsig_model(teacher, "DSIG.MINING_THRESHOLD", 1e6)  # no background passes
    losses = train_step(model, make_batch(boxes_per_image=(0, 0)))  # and no foreground
    assert losses["loss_dsig_edge"] == 0 and losses["loss_dsig_fg_node"] == 0
    assert all(torch.isfinite(v) for v in losses.values())
