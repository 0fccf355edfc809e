"""Stopping a diverged run at once: non-finite losses, gradients and weights.

detectron2 stops when the *sum* of the losses is non-finite, after the step that produced it was
logged; a loss of 1e30 is finite, so a run can go on for tens of iterations with exploding
weights, and a short one can finish and save them. Here a run stops

* at the first non-finite loss, naming it (every rank checks its own losses);
* at the first non-finite gradient, before the optimizer step, naming the parameters;
* before a checkpoint is written, if any weight is non-finite — so ``model_final.pth`` of a run
  that exits normally holds finite weights only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from detectron2.engine import AMPTrainer, HookBase, SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from distill.errors import DivergenceError

_ADVICE = "lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS"


def _names(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_finite_losses(loss_dict: Mapping[str, torch.Tensor], iteration: int) -> None:
    """Raise :class:`DivergenceError` naming every non-finite loss of ``loss_dict``."""
    if not loss_dict:
        return
    stacked = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
    if torch.isfinite(stacked).all():  # one device sync per iteration, not one per loss
        return
    bad = [f"{k}={v}" for k, v in zip(loss_dict, stacked.tolist()) if not math.isfinite(v)]
    raise DivergenceError(
        f"training diverged at iteration {iteration}: non-finite {_names(bad)}; {_ADVICE}"
    )


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
    """Check every rank's losses before detectron2 logs them (it checks the sum on rank 0)."""

    def _write_metrics(self, loss_dict, data_time: float, prefix: str = "") -> None:
        check_finite_losses(loss_dict, get_event_storage().iter)
        super()._write_metrics(loss_dict, data_time, prefix)


class CheckedSimpleTrainer(_FiniteLossesMixin, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` stopping at the first non-finite loss."""


class CheckedAMPTrainer(_FiniteLossesMixin, AMPTrainer):
    """detectron2's ``AMPTrainer`` stopping at the first non-finite loss."""
