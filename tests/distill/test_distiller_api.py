"""Registering a new distiller, schedules, loss weights, loss names and bad names."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.config import configurable
from detectron2.modeling import build_model
from torch import nn

import distill
from distill import DISTILLER_REGISTRY, Distiller


class ToyKD(Distiller):
    """Pulls the mean of the student's P3 map towards a learnable scalar (no teacher)."""

    config_node = "TOY_KD"
    terms = {"mean": 1.0}
    needs = frozenset({"student_features"})

    @configurable
    def __init__(self, *, target: float, **kwargs):
        super().__init__(**kwargs)
        self.target = nn.Parameter(torch.tensor(target))
        self.seen = []

    @classmethod
    def add_config(cls, cfg):
        super().add_config(cfg)
        cfg[cls.config_node].TARGET = 0.5  # the starting target value

    @classmethod
    def from_config(cls, cfg, student, teacher_shapes):
        ret = super().from_config(cfg, student, teacher_shapes)
        return {**ret, "target": cfg[cls.config_node].TARGET}

    def forward(self, context):
        self.seen.append(context.iteration)
        if not self.computes("mean"):
            return {}
        p3 = context.student_features["p3"]
        return {"loss_toy_kd_mean": (p3.mean() - self.target) ** 2}


@pytest.fixture(scope="module", autouse=True)
def registered():
    DISTILLER_REGISTRY.register(ToyKD)
    yield
    DISTILLER_REGISTRY._obj_map.pop("ToyKD")


def toy_cfg(*opts):
    return tiny_cfg("retinanet", *opts, distillers=["ToyKD"])


def test_new_distiller_is_one_class_and_one_config_line():
    cfg = toy_cfg()
    assert cfg.TOY_KD.TARGET == 0.5 and cfg.TOY_KD.WEIGHTS.MEAN == 1.0
    model = build_model(cfg)
    student = model.distillers["ToyKD"].student
    assert (student.kind, student.head_node, student.plain_architecture) == (
        "dense", "RETINANET", "RetinaNet"
    )  # fmt: skip
    assert student.feature_shapes["p3"].channels == model.backbone.output_shape()["p3"].channels
    losses = train_step(model, make_batch())
    assert torch.isfinite(losses["loss_toy_kd_mean"])
    assert model.distillers["ToyKD"].target.grad is not None


def test_schedule_and_loss_weight():
    model = build_model(toy_cfg("TOY_KD.START_ITER", 2, "TOY_KD.STOP_ITER", 4))
    toy = model.distillers["ToyKD"]
    present = [("loss_toy_kd_mean" in train_step(model, make_batch(), it)) for it in range(6)]
    assert present == [False, False, True, True, False, False]
    assert toy.seen == [2, 3]
    torch.manual_seed(0)
    one = build_model(toy_cfg())
    torch.manual_seed(0)
    three = build_model(toy_cfg("TOY_KD.WEIGHTS.MEAN", 3.0))
    batch = make_batch()
    a = train_step(one, batch)["loss_toy_kd_mean"]
    b = train_step(three, batch)["loss_toy_kd_mean"]
    assert b.item() == pytest.approx(3 * a.item(), rel=1e-5)


def test_a_term_with_weight_zero_is_not_computed(monkeypatch):
    model = build_model(toy_cfg("TOY_KD.WEIGHTS.MEAN", 0.0))
    assert "loss_toy_kd_mean" not in train_step(model, make_batch())
    monkeypatch.setattr(ToyKD, "forward", lambda self, ctx: {"loss_toy_kd_mean": torch.ones(())})
    with pytest.raises(RuntimeError, match="'loss_toy_kd_mean', whose term has weight 0"):
        train_step(model, make_batch())


def test_weights_of_unknown_or_absent_terms_are_refused():
    cfg = toy_cfg()
    cfg.defrost()
    cfg.TOY_KD.WEIGHTS.MEDIAN = 1.0
    with pytest.raises(ValueError, match=r"TOY_KD.WEIGHTS: \['MEDIAN'\] are not terms"):
        build_model(cfg)

    class DenseOnlyTerm(ToyKD):
        config_node = "DENSE_ONLY_KD"
        terms = {"mean": 1.0, "anchors": 0.0}

        @classmethod
        def terms_for(cls, cfg, student):
            return ("mean", "anchors") if student.is_dense else ("mean",)

    DISTILLER_REGISTRY.register(DenseOnlyTerm)
    try:
        build_model(tiny_cfg("faster_rcnn", distillers=["DenseOnlyTerm"]))  # default: fine
        with pytest.raises(
            ValueError, match="DENSE_ONLY_KD.WEIGHTS.ANCHORS = 2: .* two_stage student"
        ):
            build_model(
                tiny_cfg(
                    "faster_rcnn",
                    "DENSE_ONLY_KD.WEIGHTS.ANCHORS",
                    2.0,
                    distillers=["DenseOnlyTerm"],
                )
            )
    finally:
        DISTILLER_REGISTRY._obj_map.pop("DenseOnlyTerm")


def test_needs_are_decided_once_from_the_student(monkeypatch):
    calls = []

    def needs_for(cls, cfg, student):
        calls.append(student.kind)
        return frozenset({"student_features", "images"})

    monkeypatch.setattr(ToyKD, "needs_for", classmethod(needs_for))
    model = build_model(toy_cfg())
    assert calls == ["dense"]
    assert model.distillers["ToyKD"].needs == {"student_features", "images"}


def test_distiller_param_group_lr_and_weight_decay():
    from distill.engine import DistillTrainer

    cfg = toy_cfg("TOY_KD.LR_FACTOR", 0.5, "TOY_KD.WEIGHT_DECAY_FACTOR", 0.0)
    model = build_model(cfg)
    optimizer = DistillTrainer.build_optimizer(cfg, model)
    target = model.distillers["ToyKD"].target
    group = next(g for g in optimizer.param_groups if any(p is target for p in g["params"]))
    assert group["lr"] == 0.5 * cfg.SOLVER.BASE_LR and group["weight_decay"] == 0.0
    others = [g for g in optimizer.param_groups if g is not group]
    assert {g["lr"] for g in others} == {cfg.SOLVER.BASE_LR}


def test_loss_name_must_carry_prefix(monkeypatch):
    model = build_model(toy_cfg())
    monkeypatch.setattr(ToyKD, "forward", lambda self, ctx: {"loss_cls": torch.tensor(0.0)})
    with pytest.raises(KeyError, match="loss_toy_kd_"):
        train_step(model, make_batch())


def test_unknown_distiller_name():
    with pytest.raises(KeyError, match="unknown distiller 'Nope'.*FeatureKD"):
        build_model(tiny_cfg("retinanet", distillers=["Nope"]))


def test_sampled_proposals_only_for_rcnn():
    class NeedsRois(ToyKD):
        config_node = "TOY_KD"
        needs = frozenset({"sampled_proposals"})

    DISTILLER_REGISTRY.register(NeedsRois)
    try:
        with pytest.raises(ValueError, match="sampled_proposals"):
            build_model(tiny_cfg("retinanet", distillers=["NeedsRois"]))
        model = build_model(tiny_cfg("faster_rcnn", distillers=["NeedsRois"]))
        seen = {}
        original = NeedsRois.forward

        def spy(self, ctx):
            seen["proposals"] = ctx.sampled_proposals
            return original(self, ctx)

        NeedsRois.forward = spy
        train_step(model, make_batch())
        proposals = seen["proposals"]
        assert len(proposals) == 2 and proposals[0].has("gt_classes")
        assert len(proposals[0]) <= 32  # ROI_HEADS.BATCH_SIZE_PER_IMAGE of the tiny config
    finally:
        DISTILLER_REGISTRY._obj_map.pop("NeedsRois")


def test_distill_package_exports():
    assert "FeatureKD" in DISTILLER_REGISTRY
    assert distill.CONTEXT_ITEMS >= {"teacher_features", "sampled_proposals"}
