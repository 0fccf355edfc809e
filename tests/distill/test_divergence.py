"""A diverging run stops at the first non-finite loss or gradient, naming the iteration and the
losses or parameters, and never saves non-finite weights."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_cfg
from detectron2.utils.events import EventStorage

from distill.divergence import FiniteGradientCheck, FiniteWeightsCheck, check_finite_losses
from distill.engine import DistillTrainer
from distill.errors import DivergenceError


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
