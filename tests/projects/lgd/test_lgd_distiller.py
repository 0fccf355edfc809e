"""The LGD distiller in the Distill meta-architectures: losses, gradient routing per schedule
phase, frozen backbone, reuse of the student's targets, inference unchanged (spec section 6)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from lgd.distiller import LGD, instance_norm
from torch import nn

from distill.engine import DistillTrainer
from distill.export import plain_config

NO_SCHEDULE = ["LGD.PRE_NONDISTILL_ITERS", 0, "LGD.PRE_FREEZE_STUDENT_BACKBONE_ITERS", 0]


def lgd_model(family="retinanet", *opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(family, *NO_SCHEDULE, *opts, distillers=["LGD"]))


def grads_of(model, loss_names, batch, iteration=0):
    model.zero_grad(set_to_none=True)
    model.train()
    with EventStorage(iteration) as storage:
        storage.iter = iteration
        losses = model(batch)
        sum(losses[k] for k in loss_names).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}


def groups(names):
    """Which parts of the model got gradients."""
    parts = set()
    for name in names:
        if name.startswith("distillers.LGD.teacher."):
            parts.add("teacher")
        elif name.startswith("distillers.LGD.adapter."):
            parts.add("adapter")
        elif name.startswith("backbone.bottom_up."):
            parts.add("bottom_up")
        elif name.startswith("backbone."):
            parts.add("fpn")
        else:
            parts.add("head")
    return parts


@pytest.mark.parametrize("family", ["retinanet", "fcos", "faster_rcnn"])
def test_losses_are_finite_with_zero_and_one_object(family):
    model = lgd_model(family)
    for boxes in ((0, 1), (0, 0), (3, 1)):
        losses = train_step(model, make_batch(boxes_per_image=boxes))
        assert all(torch.isfinite(v) for v in losses.values()), losses
        teacher_terms = [k for k in losses if k.startswith("loss_lgd_teacher_")]
        student_terms = [k for k in losses if not k.startswith("loss_lgd_")]
        assert len(teacher_terms) == len(student_terms) and "loss_lgd_distill" in losses


def test_distill_loss_is_zero_for_identical_maps_and_affine_invariant():
    distiller = LGD.__new__(LGD)
    nn.Module.__init__(distiller)
    distiller.adapter = nn.Identity()
    g = torch.Generator().manual_seed(0)
    maps = {"p3": torch.randn(2, 8, 6, 5, generator=g), "p4": torch.randn(2, 8, 3, 3, generator=g)}
    assert distiller.distill_loss(maps, maps) < 1e-10
    scale = torch.rand(2, 8, 1, 1, generator=g) + 0.5
    shift = torch.randn(2, 8, 1, 1, generator=g)
    affine = {k: v * scale + shift for k, v in maps.items()}
    assert distiller.distill_loss(affine, maps) < 1e-8
    other = {k: torch.randn(v.shape, generator=g) for k, v in maps.items()}
    loss = distiller.distill_loss(other, maps)
    # one mean over all elements of all levels (not a mean of per-level means)
    diffs = [(instance_norm(other[k]) - instance_norm(maps[k])).pow(2) for k in maps]
    assert torch.allclose(loss, torch.cat([d.flatten() for d in diffs]).mean())
    assert 1.5 < loss < 2.5  # ~2 lambda for independent maps


def test_one_by_one_maps_normalise_to_zero():
    assert instance_norm(torch.randn(2, 3, 1, 1)).abs().max() == 0


@pytest.mark.parametrize("iteration,distilled", [(5, False), (10, True), (90, True), (91, False)])
def test_distillation_gradient_routing_per_phase(iteration, distilled):
    model = lgd_model("retinanet", "LGD.PRE_NONDISTILL_ITERS", 10,
                      "LGD.POST_NONDISTILL_ITERS", 10, "SOLVER.MAX_ITER", 100)  # fmt: skip
    assert model.distillers["LGD"].distills_student(iteration) == distilled
    parts = groups(grads_of(model, ["loss_lgd_distill"], make_batch(), iteration))
    expected = {"adapter", "fpn", "bottom_up"} if distilled else {"adapter"}
    assert parts == expected  # never the head, never the teacher


@pytest.mark.parametrize("family,detach", [("retinanet", False), ("faster_rcnn", True),
                                           ("fcos", False)])  # fmt: skip
def test_teacher_loss_gradient_routing(family, detach):
    model = lgd_model(family, "LGD.DETACH_APPEARANCE", detach)
    batch = make_batch()
    train_step(model, batch)  # first step sets the loss normaliser
    with EventStorage(0):
        names = [k for k in model(batch) if k.startswith("loss_lgd_teacher_")]
    parts = groups(grads_of(model, names, batch))
    expected = {"teacher", "head"} | (set() if detach else {"fpn", "bottom_up"})
    assert parts == expected
    teacher_params = dict(model.distillers["LGD"].teacher.named_parameters())
    grads = grads_of(model, names, batch)
    assert all(f"distillers.LGD.teacher.{n}" in grads for n in teacher_params)


def test_dense_student_targets_are_reused_and_normaliser_is_the_students():
    model = lgd_model("retinanet")
    plain = build_model(plain_config(model_cfg := tiny_cfg("retinanet", distillers=[])))
    del model_cfg
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("distillers.")}
    )
    calls = []
    original = type(model).label_anchors

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    type(model).label_anchors = counting
    try:
        batch = make_batch()
        train_step(model, batch)
    finally:
        type(model).label_anchors = original
    assert len(calls) == 1  # the teacher pass reused the student's anchor targets
    train_step(plain, batch)
    assert model.loss_normalizer == plain.loss_normalizer


def test_bottom_up_backbone_frozen_during_the_first_iterations(tmp_path):
    cfg = tiny_cfg("retinanet", "LGD.PRE_FREEZE_STUDENT_BACKBONE_ITERS", 2,
                   "LGD.PRE_NONDISTILL_ITERS", 0, distillers=["LGD"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = DistillTrainer.build_optimizer(cfg, model)
    batch = make_batch()

    def step(iteration):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer.zero_grad()
        train_step(model, batch, iteration)
        with EventStorage(iteration) as storage:
            storage.iter = iteration
            optimizer.step()
        return groups(n for n, p in model.named_parameters() if not torch.equal(p, before[n]))

    assert step(0) == {"fpn", "head", "teacher", "adapter"}
    assert step(1) == {"fpn", "head", "teacher", "adapter"}
    assert step(2) == {"bottom_up", "fpn", "head", "teacher", "adapter"}


@pytest.mark.parametrize("family", ["retinanet", "faster_rcnn"])
def test_inference_is_the_plain_detector(family):
    model = lgd_model(family)
    train_step(model, make_batch())  # give the teacher and adapter some state
    plain = build_model(plain_config(tiny_cfg(family, distillers=[])))
    student = {k: v for k, v in model.state_dict().items() if not k.startswith("distillers.")}
    plain.load_state_dict(student)
    batch = [{"image": x["image"], "height": 96, "width": 128} for x in make_batch()]
    model.eval(), plain.eval()
    with torch.no_grad():
        ours, theirs = model(batch), plain(batch)
    for a, b in zip(ours, theirs):
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)
        assert torch.equal(a["instances"].scores, b["instances"].scores)


def test_teacher_and_adapter_solvers():
    cfg = tiny_cfg("retinanet", "LGD.OPTIMIZER", "AdamW", "LGD.LR_FACTOR", 0.01,
                   "LGD.WEIGHT_DECAY_FACTOR", 500.0, distillers=["LGD"])  # fmt: skip
    model = build_model(cfg)
    optimizer = DistillTrainer.build_optimizer(cfg, model)
    adamw, sgd = optimizer.optimizers["AdamW"], optimizer.optimizers["SGD"]
    teacher = {id(p) for p in model.distillers["LGD"].teacher.parameters()}
    adapter = {id(p) for p in model.distillers["LGD"].adapter.parameters()}
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert in_adamw == teacher and adapter <= in_sgd and not in_adamw & in_sgd
    assert {g["lr"] for g in adamw.param_groups} == {0.01 * cfg.SOLVER.BASE_LR}
    assert {g["weight_decay"] for g in adamw.param_groups} == {500.0 * cfg.SOLVER.WEIGHT_DECAY}


def test_unsupported_student_is_refused():
    from distill.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match="does not run distillers"):
        DistillTrainer.build_model(tiny_cfg("retinanet", "MODEL.META_ARCHITECTURE", "RetinaNet",
                                            distillers=["LGD"]))  # fmt: skip
