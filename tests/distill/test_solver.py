"""The distillation optimizer: one SGD, or several optimizers seen as one; frozen prefixes."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.utils.events import EventStorage

from distill.engine import DistillTrainer
from distill.errors import ConfigValueError
from distill.solver import CompositeOptimizer


def built(*opts):
    cfg = tiny_cfg("retinanet", "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (3,),
                   "SOLVER.MAX_ITER", 5, *opts, distillers=["LGD"])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model, DistillTrainer.build_optimizer(cfg, model)


def test_all_sgd_is_one_torch_sgd():
    _, model, optimizer = built()
    assert isinstance(optimizer, torch.optim.SGD)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}


def test_composite_steps_schedules_and_checkpoints_every_child():
    cfg, model, optimizer = built("LGD.OPTIMIZER", "AdamW", "LGD.BASE_LR", 1e-3)
    assert isinstance(optimizer, CompositeOptimizer)
    assert set(optimizer.optimizers) == {"SGD", "AdamW"}
    scheduler = build_lr_scheduler(cfg, optimizer)
    batch = make_batch()
    for iteration in range(4):
        optimizer.zero_grad()
        train_step(model, batch, iteration)
        with EventStorage(iteration) as storage:
            storage.iter = iteration
            optimizer.step()
        scheduler.step()
    adamw = optimizer.optimizers["AdamW"]
    assert all(g["lr"] == pytest.approx(1e-4) for g in adamw.param_groups)  # x0.1 after step 3
    state = optimizer.state_dict()
    assert set(state) == {"SGD", "AdamW"} and state["AdamW"]["state"]
    _, _, fresh = built("LGD.OPTIMIZER", "AdamW", "LGD.BASE_LR", 1e-3)
    fresh.load_state_dict(state)
    assert len(fresh.optimizers["AdamW"].state) == len(adamw.state)
    children = [g for opt in fresh.optimizers.values() for g in opt.param_groups]
    assert all(a is b for a, b in zip(fresh.param_groups, children, strict=True))  # LR reaches them
    _, _, sgd_only = built()
    with pytest.raises(ValueError, match="OPTIMIZER"):
        CompositeOptimizer({"SGD": sgd_only}).load_state_dict(state)


def test_unknown_optimizer_and_missing_frozen_prefix_are_named():
    with pytest.raises(ConfigValueError, match="LGD.OPTIMIZER"):
        built("LGD.OPTIMIZER", "Adam")
    cfg, model, optimizer = built("LGD.PRE_FREEZE_STUDENT_BACKBONE_ITERS", 5)
    model.distillers["LGD"].frozen_student_prefixes = lambda it: ("backbone.nothing.",)
    train_step(model, make_batch())
    with EventStorage(0), pytest.raises(ConfigValueError, match="backbone.nothing"):
        optimizer.step()
