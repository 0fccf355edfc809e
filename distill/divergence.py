"""Stopping a diverged run at once: non-finite losses, gradients and weights.

detectron2 stops when the *sum* of the losses is non-finite, after the step that produced it was
logged; a loss of 1e30 is finite, so a run can go on for tens of iterations with exploding
weights, and a short one can finish and save them. Here a run stops

* at the first non-finite loss, naming it (every rank checks its own losses);
* at the first non-finite gradient, before the optimizer step, naming the parameters;
* before a checkpoint is written, if any weight is non-finite — so ``model_final.pth`` of a run
  that exits normally holds finite weights only;
* when a distillation loss stays far above the student's own losses (a broken teacher:
  :class:`LossRatioStop`, ``DISTILL.LOSS_RATIO_STOP``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from distill.errors import BrokenTeacherError, ConfigValueError, DivergenceError

_ADVICE = "lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS"


def _names(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> dict[str, float]:
    """Raise :class:`DivergenceError` naming every non-finite loss of ``loss_dict``; return the
    losses as Python floats (for :class:`LossRatioStop`)."""
    if not loss_dict:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
    values = dict(zip(loss_dict, stacked.tolist()))  # one device sync per iteration, not per loss
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise DivergenceError(
            f"training diverged at iteration {iteration}: non-finite {_names(bad)}; {_ADVICE}"
        )
    return values


class LossRatioStop:
    """Stops a run whose distillation losses dwarf the student's own losses: a broken teacher.

    Each iteration's losses (as they enter the total loss, distiller weights applied) split into
    distillation terms (name starting with one of ``distill_prefixes``) and the student's own
    losses (all others). An iteration *exceeds* when any single distillation term is greater
    than ``factor`` x the sum of the own losses; when that sum is <= 0 (degenerate), when any
    distillation term is > 0. ``patience`` exceeding iterations in a row raise
    :class:`BrokenTeacherError`; an iteration that does not exceed resets the count.

    Args:
        distill_prefixes: loss-name prefixes of the distillers (``Distiller.loss_prefix``).
        factor: ``DISTILL.LOSS_RATIO_STOP.FACTOR``, > 0.
        patience: ``DISTILL.LOSS_RATIO_STOP.PATIENCE``, >= 1.
        describe_teacher: one line on the teacher for the error (e.g. its card's summary).
    """

    def __init__(
        self, distill_prefixes: tuple[str, ...], factor: float, patience: int, describe_teacher: str
    ):
        if not factor > 0:
            raise ConfigValueError(f"DISTILL.LOSS_RATIO_STOP.FACTOR must be > 0, got {factor}")
        if patience < 1:
            raise ConfigValueError(f"DISTILL.LOSS_RATIO_STOP.PATIENCE must be >= 1, got {patience}")
        self.distill_prefixes = tuple(distill_prefixes)
        self.factor, self.patience = float(factor), int(patience)
        self.describe_teacher = describe_teacher
        self.count = 0  # exceeding iterations in a row
        self.ratio = 0.0  # of the last update, also when it raised

    def update(self, values: Mapping[str, float], iteration: int) -> float:
        """Count iteration ``iteration`` with losses ``values`` (name -> finite float); return
        (sum of distillation terms) / (sum of own losses), inf when the own sum is <= 0 and
        the distillation sum > 0, 0 when both are <= 0.

        Raises:
            BrokenTeacherError: this is the ``patience``-th exceeding iteration in a row.
        """
        distill = {k: v for k, v in values.items() if k.startswith(self.distill_prefixes)}
        own = sum(v for k, v in values.items() if k not in distill)
        total = sum(distill.values())
        self.ratio = total / own if own > 0 else (math.inf if total > 0 else 0.0)
        limit = self.factor * own if own > 0 else 0.0
        over = [f"{k}={v:.3g}" for k, v in distill.items() if v > limit]
        self.count = self.count + 1 if over else 0
        if self.count >= self.patience:
            raise BrokenTeacherError(
                f"broken teacher? at iteration {iteration}, {', '.join(over)} exceeded "
                f"DISTILL.LOSS_RATIO_STOP.FACTOR {self.factor:g} x the student's own losses "
                f"(sum {own:.3g}) for DISTILL.LOSS_RATIO_STOP.PATIENCE {self.patience} "
                f"iterations in a row; {self.describe_teacher}; check the teacher (its card, "
                "`make teachers`), or raise DISTILL.LOSS_RATIO_STOP.FACTOR or set "
                "DISTILL.LOSS_RATIO_STOP.ENABLED False"
            )
        return self.ratio


def build_loss_ratio_stop(cfg, model: nn.Module) -> LossRatioStop | None:
    """The :class:`LossRatioStop` of the (unwrapped) student ``model`` under
    ``cfg.DISTILL.LOSS_RATIO_STOP``; None without distillers or when not ENABLED."""
    node = cfg.DISTILL.LOSS_RATIO_STOP
    distillers = getattr(model, "distillers", None)
    if not distillers or not node.ENABLED:
        return None
    teacher = getattr(model, "teacher", None)
    if teacher is None:
        describe = "no teacher"
    elif getattr(teacher, "card", None) is None:
        describe = "unverified teacher (no card)"
    else:
        describe = f"teacher card: {teacher.card.summary()}"
    prefixes = tuple(d.loss_prefix for d in distillers.values())
    return LossRatioStop(prefixes, node.FACTOR, node.PATIENCE, describe)


class FiniteGradientCheck:
    """Optimizer step pre-hook: raises :class:`DivergenceError` before a step with any
    non-finite gradient, naming the parameters and the iteration's losses. Checks once per
    iteration of the event storage.

    Args:
        model: the module whose parameters the optimizer steps (for their names).
    """

    def __init__(self, model: nn.Module):
        self._names = {id(p): name for name, p in model.named_parameters()}
        self._checked_iter = None

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        storage = get_event_storage()
        # detectron2's clipping optimizer steps through its parent class's hooked step too
        if storage.iter == self._checked_iter:
            return
        self._checked_iter = storage.iter
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # the max-norm is finite iff every entry is (a 2-norm overflows for finite huge values)
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads, math.inf)):
            return
        bad = [
            self._names.get(id(p), "?")
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        losses = {k: v for k, (v, _) in storage.latest().items() if k.startswith("loss")}
        shown = ", ".join(f"{k}={v:.3g}" for k, v in sorted(losses.items()))
        raise DivergenceError(
            f"training diverged at iteration {storage.iter}: non-finite gradients of "
            f"{_names(bad)} (losses {shown or 'not logged on this rank'}); {_ADVICE}"
        )


def non_finite_weights(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``model`` holding NaN or inf."""
    return [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]


class FiniteWeightsCheck(HookBase):
    """Before each periodic and the final checkpoint, raise :class:`DivergenceError` if a weight
    is non-finite; register it before detectron2's ``PeriodicCheckpointer``."""

    def __init__(self, model: nn.Module, period: int, max_iter: int):
        self._model, self._period, self._max_iter = model, period, max_iter

    def after_step(self) -> None:
        step = self.trainer.iter + 1
        if step % self._period == 0 or step >= self._max_iter:
            bad = non_finite_weights(self._model)
            if bad:
                raise DivergenceError(
                    f"training diverged: after iteration {self.trainer.iter} the weights "
                    f"{_names(bad)} are non-finite, so they are not saved; {_ADVICE}"
                )


class _FiniteLossesMixin:
    """Check every rank's losses before detectron2 logs them (it checks the sum on rank 0);
    with a ``loss_ratio_stop``, feed it every rank's own losses too, and log the main process's
    ratio as ``distill_loss_ratio`` next to detectron2's (rank-averaged) losses."""

    loss_ratio_stop: LossRatioStop | None = None

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        storage = get_event_storage()
        values = check_finite_losses(loss_dict, storage.iter)
        super()._write_metrics(loss_dict, data_time, prefix)
        stop = self.loss_ratio_stop
        if stop is None or not values:
            return
        try:
            stop.update(values, storage.iter)
        finally:  # the stopping iteration's ratio is logged too
            if comm.is_main_process():  # where detectron2 puts the losses and writers read them
                storage.put_scalar(f"{prefix}distill_loss_ratio", stop.ratio)


class CheckedSimpleTrainer(_FiniteLossesMixin, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` stopping at the first non-finite loss."""


class CheckedAMPTrainer(_FiniteLossesMixin, AMPTrainer):
    """detectron2's ``AMPTrainer`` stopping at the first non-finite loss."""
