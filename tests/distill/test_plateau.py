"""The plateau LR schedule: decays after PATIENCE evaluations without relative improvement, at
most MAX_DECAYS; warm-up first; its state survives a checkpoint; the trainer wires it after
evaluation and refuses it without periodic evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_cfg
from detectron2.engine.hooks import EvalHook
from detectron2.utils.events import EventStorage

from distill.engine import DistillTrainer
from distill.errors import ConfigValueError
from distill.plateau import PlateauScale, ReduceLROnPlateau

PLATEAU = ["SOLVER.LR_SCHEDULER_NAME", "WarmupReduceLROnPlateau"]


def test_decays_after_patience_and_at_most_max_decays():
    scale = PlateauScale()
    hook = ReduceLROnPlateau(scale, "m", patience=2, factor=0.1, threshold=0.01, max_decays=2)
    scales = []
    # 10.05 is not an improvement on 10 (needs > 10.1); 10.2 is
    for value in [10, 10.05, 10.2, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]:
        hook.observe(value)
        scales.append(round(scale.scale, 6))
    assert scales == [1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01]
    assert hook.decays == 2 and hook.best == 10.2

    restored = ReduceLROnPlateau(PlateauScale(), "m", patience=2, max_decays=2)
    restored.load_state_dict(hook.state_dict())
    assert restored.scale.scale == pytest.approx(0.01) and restored.best == 10.2
    assert restored.decays == 2


def test_reads_the_evaluation_of_the_current_iteration_once():
    """The default metric is the key detectron2's EvalHook stores for COCOEvaluator's results."""
    results = iter([{"bbox": {"AP": 5.0, "AP50": 9.0}}, {"bbox": {"AP": 4.0, "AP50": 9.0}}])
    evaluation = EvalHook(2, lambda: next(results))
    scale = PlateauScale()
    hook = ReduceLROnPlateau(scale, tiny_cfg("faster_rcnn").SOLVER.PLATEAU.METRIC, patience=0,
                             factor=0.5)  # fmt: skip
    with EventStorage(0) as storage:
        evaluation.trainer = hook.trainer = trainer = SimpleNamespace(storage=storage, max_iter=9)
        for it in range(1, 4):  # evaluations after iterations 1 and 3
            storage.iter = trainer.iter = it
            evaluation.after_step()
            hook.after_step()
            hook.after_step()  # the same evaluation again: ignored
            if it == 1:
                assert hook.best == 5.0 and scale.scale == 1.0
    assert hook.best == 5.0 and scale.scale == 0.5 and hook.decays == 1


def test_trainer_schedule_and_hook_order(tmp_path):
    cfg = tiny_cfg("faster_rcnn", *PLATEAU, "TEST.EVAL_PERIOD", 10, "SOLVER.MAX_ITER", 100,
                   "SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 0.1,
                   "SOLVER.BASE_LR", 0.02, "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    trainer = DistillTrainer(cfg)
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("ReduceLROnPlateau") == names.index(EvalHook.__name__) + 1
    scheduler, optimizer = trainer.scheduler, trainer.optimizer
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[0] == pytest.approx(0.002) and lrs[11] == pytest.approx(0.02)
    scheduler.plateau.scale = 0.1
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002)


def test_refused_without_periodic_evaluation():
    cfg = tiny_cfg("faster_rcnn", *PLATEAU, "TEST.EVAL_PERIOD", 0)
    with pytest.raises(ConfigValueError, match="TEST.EVAL_PERIOD"):
        DistillTrainer.build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1)], lr=0.1))
