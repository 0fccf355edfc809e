"""Reduce the learning rate when a validation metric stops improving.

``WarmupReduceLROnPlateau`` (the scene-graph benchmark's schedule): linear warm-up, then a
constant LR that is multiplied by ``SOLVER.PLATEAU.FACTOR`` whenever ``SOLVER.PLATEAU.METRIC`` (a
key of the periodic evaluation's flattened results, ``TEST.EVAL_PERIOD``; ``bbox/AP`` by default)
has not improved by a relative ``SOLVER.PLATEAU.THRESHOLD`` for more than ``PATIENCE``
evaluations, at most ``MAX_DECAYS`` times. Select it with
``SOLVER.LR_SCHEDULER_NAME: "WarmupReduceLROnPlateau"``.
"""

from __future__ import annotations

import logging

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler

logger = logging.getLogger(__name__)

SCHEDULER_NAME = "WarmupReduceLROnPlateau"


class PlateauScale(ParamScheduler):
    """A constant LR multiplier that :class:`ReduceLROnPlateau` lowers."""

    def __init__(self) -> None:
        self.scale = 1.0

    def __call__(self, where: float) -> float:
        return self.scale


def build_plateau_scheduler(cfg: CfgNode, optimizer) -> LRMultiplier:
    """The warm-up + plateau LR schedule; its :class:`PlateauScale` is ``.plateau``."""
    scale = PlateauScale()
    warmup = WarmupParamScheduler(
        scale,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    scheduler = LRMultiplier(optimizer, multiplier=warmup, max_iter=cfg.SOLVER.MAX_ITER)
    scheduler.plateau = scale
    return scheduler


class ReduceLROnPlateau(HookBase):
    """After each evaluation, lower the LR when ``metric`` has stopped improving.

    Must come after detectron2's ``EvalHook``, which puts the flattened results (``bbox/AP`` for
    ``{"bbox": {"AP": ...}}``) into the event storage at the evaluation's iteration.

    Args:
        scale: the schedule's :class:`PlateauScale`.
        metric: storage key of the validation metric (higher is better).
        patience: evaluations without improvement tolerated before a decay.
        factor: LR multiplier of a decay.
        threshold: relative improvement needed to count as better.
        max_decays: no decay after this many.
    """

    def __init__(
        self,
        scale: PlateauScale,
        metric: str,
        patience: int = 2,
        factor: float = 0.1,
        threshold: float = 1e-3,
        max_decays: int = 3,
    ):
        self.scale = scale
        self.metric = metric
        self.patience = patience
        self.factor = factor
        self.threshold = threshold
        self.max_decays = max_decays
        self.best: float | None = None
        self.bad_evaluations = 0
        self.decays = 0
        self._last_seen = -1

    def after_step(self) -> None:
        latest = self.trainer.storage.latest()
        if self.metric not in latest:
            return
        value, iteration = latest[self.metric]
        if iteration != self.trainer.iter or iteration == self._last_seen:
            return
        self._last_seen = iteration
        self.observe(float(value))

    def observe(self, value: float) -> None:
        """Account for one evaluation's metric value."""
        if self.best is None or value > self.best * (1.0 + self.threshold):
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations > self.patience and self.decays < self.max_decays:
            self.scale.scale *= self.factor
            self.decays += 1
            self.bad_evaluations = 0
            logger.info(
                f"{self.metric} has not improved on {self.best:.4f}: LR x{self.factor} "
                f"(decay {self.decays} of {self.max_decays})"
            )

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations,
                "decays": self.decays, "scale": self.scale.scale}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.bad_evaluations = state["bad_evaluations"]
        self.decays = state["decays"]
        self.scale.scale = state["scale"]
