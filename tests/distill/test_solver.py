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
    cfg, model, optimizer = built("LGD.OPTIMIZER", "AdamW", "LGD.LR_FACTOR", 0.1)
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
    lr = 0.1 * cfg.SOLVER.BASE_LR * 0.1  # LR_FACTOR, then x0.1 after step 3
    assert all(g["lr"] == pytest.approx(lr) for g in adamw.param_groups)
    state = optimizer.state_dict()
    assert set(state) == {"SGD", "AdamW"} and state["AdamW"]["state"]
    _, _, fresh = built("LGD.OPTIMIZER", "AdamW", "LGD.LR_FACTOR", 0.1)
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


def clipped_step(clip_type: str, clip_value: float, *opts):
    """One LGD train step at iteration 0 with the student's bottom-up backbone frozen and
    clipping on; returns the model, its parameters before the step and the optimizer."""
    cfg, model, optimizer = built(
        "LGD.PRE_FREEZE_STUDENT_BACKBONE_ITERS", 5, "SOLVER.CLIP_GRADIENTS.ENABLED", True,
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type,
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value, *opts,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, make_batch(), 0)
    with EventStorage(0):
        optimizer.step()
    return model, before, optimizer


@pytest.mark.parametrize("clip_type", ["value", "norm", "full_model"])
def test_clipping_skips_parameters_the_freeze_left_without_gradients(clip_type):
    """The frozen backbone has no gradients when the clipper runs (torch's clip_grad_value_
    raised on the empty list); the rest is clipped as the type says and stepped."""
    limit = 2.0**-10  # exact in float32
    model, before, _ = clipped_step(clip_type, limit)
    named = dict(model.named_parameters())
    frozen = [n for n in named if n.startswith("backbone.bottom_up.")]
    assert frozen and all(named[n].grad is None for n in frozen)
    assert all(torch.equal(named[n], before[n]) for n in frozen)
    stepped = [n for n, p in named.items() if p.grad is not None]
    assert any(not torch.equal(named[n], before[n]) for n in stepped)
    grads = [named[n].grad for n in stepped]
    if clip_type == "value":
        assert max(g.abs().max().item() for g in grads) == limit  # reached, not exceeded
    elif clip_type == "norm":  # each parameter on its own
        assert max(g.norm().item() for g in grads) <= limit * (1 + 1e-4)
        assert sum(g.norm() ** 2 for g in grads).sqrt() > 2 * limit
    else:  # all together
        assert sum(g.norm() ** 2 for g in grads).sqrt() <= limit * (1 + 1e-4)


def test_full_model_clipping_spans_every_child_of_a_composite():
    _, _, optimizer = clipped_step("full_model", 1e-3, "LGD.OPTIMIZER", "AdamW")
    assert isinstance(optimizer, CompositeOptimizer)
    assert not any("Clip" in type(o).__name__ for o in optimizer.optimizers.values())
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    assert len(grads) > len([p for p in optimizer.optimizers["AdamW"].param_groups[0]["params"]])
    assert sum(g.norm() ** 2 for g in grads).sqrt() <= 1e-3 * (1 + 1e-4)


def test_unknown_clip_type_is_named():
    with pytest.raises(ConfigValueError, match="SOLVER.CLIP_GRADIENTS.CLIP_TYPE: 'l1'"):
        built("SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "l1")
