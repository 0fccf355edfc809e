"""A diverging run stops at the first non-finite loss or gradient, naming the iteration and the
losses or parameters, and never saves non-finite weights."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_cfg
from detectron2.utils.events import EventStorage

import distill
from distill.divergence import (
    FiniteGradientCheck,
    FiniteWeightsCheck,
    LossRatioStop,
    build_loss_ratio_stop,
    check_finite_losses,
)
from distill.engine import DistillTrainer
from distill.errors import BrokenTeacherError, ConfigValueError, DivergenceError


def test_non_finite_losses_are_named():
    losses = {"loss_cls": torch.tensor(1.0), "loss_box_reg": torch.tensor(math.inf),
              "loss_kd": torch.tensor(math.nan)}  # fmt: skip
    with pytest.raises(DivergenceError, match="iteration 7: non-finite loss_box_reg=inf, loss_kd"):
        check_finite_losses(losses, 7)
    check_finite_losses({"loss_cls": torch.tensor(1e30)}, 7)  # huge but finite


def test_gradient_check_names_parameters_before_the_step():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.register_step_pre_hook(FiniteGradientCheck(model))
    before = model[1].weight.detach().clone()
    with EventStorage(4) as storage:
        storage.put_scalar("loss_cls", 3e38)
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        storage.iter = 5
        for p in model.parameters():
            p.grad.fill_(1e30)
        optimizer.step()  # 1e30-sized finite gradients pass (their 2-norm would overflow)
        storage.iter = 6
        model[1].weight.grad[0, 0] = math.nan
        before = model[1].weight.detach().clone()
        with pytest.raises(DivergenceError, match=r"iteration 6: .*gradients of 1\.weight "
                                                  r"\(losses loss_cls=3e\+38\)"):  # fmt: skip
            optimizer.step()
    assert torch.equal(model[1].weight, before)  # no step taken


class FakeTrainer:
    iter = 9


def test_weights_check_runs_before_checkpoints_only():
    model = torch.nn.Linear(2, 1)
    hook = FiniteWeightsCheck(model, period=5, max_iter=20)
    hook.trainer = FakeTrainer()
    with torch.no_grad():
        model.bias.fill_(math.inf)
    with pytest.raises(DivergenceError, match="after iteration 9 the weights bias are non-finite"):
        hook.after_step()  # iteration 9 ends period 5: a checkpoint follows
    hook.trainer.iter = 10
    hook.after_step()  # no checkpoint after iteration 10: nothing to check


def test_huge_learning_rate_stops_at_once_and_saves_nothing(tmp_path):
    cfg = tiny_cfg("retinanet", "SOLVER.BASE_LR", 1e30, "SOLVER.WARMUP_ITERS", 0,
                   "SOLVER.CLIP_GRADIENTS.ENABLED", False, "SOLVER.MAX_ITER", 30,
                   "SOLVER.CHECKPOINT_PERIOD", 1000, "DATASETS.TEST", (),
                   "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(DivergenceError, match=r"diverged at iteration [12]: non-finite"):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()


def test_loss_ratio_splits_own_and_distillation_losses_by_prefix():
    stop = LossRatioStop(("loss_dsig_", "loss_feature_kd_"), 1000.0, 3, "no teacher")
    values = {"loss_cls": 1.5, "loss_rpn_cls": 0.5, "loss_dsig_box": 3.0,
              "loss_feature_kd_mse": 1.0, "loss_dsigma": 2.0}  # fmt: skip
    assert stop.update(values, 0) == pytest.approx(4.0 / 4.0)  # loss_dsigma is the student's


def test_loss_ratio_stop_counts_consecutive_exceeding_iterations():
    stop = LossRatioStop(("loss_kd_",), factor=10.0, patience=3, describe_teacher="no teacher")
    broken, healthy = {"loss_cls": 1.0, "loss_kd_a": 11.0}, {"loss_cls": 1.0, "loss_kd_a": 9.0}
    assert stop.update(broken, 0) == 11.0
    stop.update(broken, 1)
    stop.update(healthy, 2)  # resets the count
    stop.update(broken, 3)
    stop.update(broken, 4)
    with pytest.raises(BrokenTeacherError, match="at iteration 5, "):
        stop.update(broken, 5)
    assert issubclass(BrokenTeacherError, DivergenceError)


def test_loss_ratio_stop_compares_each_term_not_the_sum():
    stop = LossRatioStop(("loss_kd_",), factor=10.0, patience=1, describe_teacher="no teacher")
    assert stop.update({"loss_cls": 1.0, "loss_kd_a": 6.0, "loss_kd_b": 6.0}, 0) == 12.0


def test_loss_ratio_stop_with_degenerate_own_losses():
    stop = LossRatioStop(("loss_kd_",), factor=10.0, patience=1, describe_teacher="no teacher")
    assert stop.update({"loss_cls": 0.0, "loss_kd_a": 0.0}, 0) == 0.0  # nothing exceeds
    with pytest.raises(BrokenTeacherError, match=r"loss_kd_a=1e-06 exceeded .*\(sum 0\)"):
        stop.update({"loss_cls": 0.0, "loss_kd_a": 1e-6}, 1)
    assert stop.ratio == math.inf


def test_broken_teacher_message_names_losses_keys_teacher_and_advice():
    stop = LossRatioStop(("loss_dsig_",), 1000.0, 2, "teacher card: 0.3 AP (gate FAILED)")
    values = {"loss_cls": 0.75, "loss_box_reg": 0.5, "loss_dsig_cls": 5e3,
              "loss_dsig_reg": 1.3e5, "loss_dsig_ok": 12.0}  # fmt: skip
    stop.update(values, 399)
    with pytest.raises(BrokenTeacherError) as info:
        stop.update(values, 400)
    message = str(info.value)
    for part in ("iteration 400,", "loss_dsig_cls=5e+03, loss_dsig_reg=1.3e+05 exceeded",
                 "(sum 1.25)", "DISTILL.LOSS_RATIO_STOP.FACTOR 1000 ",
                 "DISTILL.LOSS_RATIO_STOP.PATIENCE 2 ", "teacher card: 0.3 AP (gate FAILED)",
                 "`make teachers`", "DISTILL.LOSS_RATIO_STOP.ENABLED False"):  # fmt: skip
        assert part in message, part
    assert "loss_dsig_ok" not in message and "\n" not in message


@pytest.mark.parametrize("key, value", [("FACTOR", 0.0), ("PATIENCE", 0)])
def test_loss_ratio_stop_refuses_bad_settings(key, value):
    kwargs = {"factor": 1000.0, "patience": 10, key.lower(): value}
    with pytest.raises(ConfigValueError, match=f"DISTILL.LOSS_RATIO_STOP.{key} must be"):
        LossRatioStop(("loss_kd_",), describe_teacher="no teacher", **kwargs)


class FakeCard:
    def summary(self) -> str:
        return "41.0 AP on coco"


@pytest.mark.parametrize("teacher, expected", [
    (None, "no teacher"),
    (SimpleNamespace(card=None), "unverified teacher (no card)"),
    (SimpleNamespace(card=FakeCard()), "teacher card: 41.0 AP on coco"),
])  # fmt: skip
def test_loss_ratio_stop_is_built_for_distilled_students(teacher, expected):
    cfg = distill.get_distill_cfg()
    distillers = {
        "a": SimpleNamespace(loss_prefix="loss_a_"),
        "b": SimpleNamespace(loss_prefix="loss_b_"),
    }
    stop = build_loss_ratio_stop(cfg, SimpleNamespace(distillers=distillers, teacher=teacher))
    assert (stop.distill_prefixes, stop.describe_teacher) == (("loss_a_", "loss_b_"), expected)
    assert (stop.factor, stop.patience) == (1000.0, 10)
    assert build_loss_ratio_stop(cfg, SimpleNamespace(distillers={}, teacher=None)) is None
    cfg.DISTILL.LOSS_RATIO_STOP.ENABLED = False
    assert (
        build_loss_ratio_stop(cfg, SimpleNamespace(distillers=distillers, teacher=teacher)) is None
    )


def feature_kd_trainer(tmp_path, teacher, max_iter: int) -> DistillTrainer:
    cfg = tiny_cfg("faster_rcnn", "DISTILL.TEACHER.REQUIRE_CARD", False, "DATASETS.TEST", (),
                   "SOLVER.MAX_ITER", max_iter, "SOLVER.CHECKPOINT_PERIOD", 1000,
                   "DISTILL.LOSS_RATIO_STOP.PATIENCE", 3, "OUTPUT_DIR", str(tmp_path / "out"),
                   distillers=["FeatureKD"], teacher=teacher)  # fmt: skip
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def test_teacher_with_exploded_features_stops_the_run(tmp_path, teacher_files):
    config_file, weights = teacher_files("faster_rcnn")
    checkpoint = torch.load(weights, weights_only=True)
    # FPN outputs x1e3: FeatureKD's MSE ~1e6 x the detection losses (scaling every weight
    # overflows to NaN, which the finite-loss check stops instead)
    for key, value in checkpoint["model"].items():
        if "fpn_output" in key:
            value.mul_(1e3)
    torch.save(checkpoint, weights)
    trainer = feature_kd_trainer(tmp_path, (config_file, weights), max_iter=8)
    with pytest.raises(BrokenTeacherError, match=r"at iteration 2, loss_feature_kd_\w+=.*"
                                                 r"unverified teacher \(no card\)"):  # fmt: skip
        trainer.train()
    logged = trainer.storage.history("distill_loss_ratio").values()
    assert [i for _, i in logged] == [0, 1, 2] and all(r > 1e3 for r, _ in logged), logged
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_healthy_random_teacher_trains_and_logs_the_ratio(tmp_path, teacher_files):
    trainer = feature_kd_trainer(tmp_path, teacher_files("faster_rcnn"), max_iter=4)
    trainer.train()
    ratios = [r for r, _ in trainer.storage.history("distill_loss_ratio").values()]
    assert len(ratios) == 4 and all(0 < r < 100 for r in ratios), ratios  # observed 1.6-2.3
    assert (tmp_path / "out" / "model_final.pth").exists()
