"""The optimizer of a distillation run: the student's SGD plus each distiller's own solver.

The student's parameters use detectron2's SGD (``SOLVER.*``). Each distiller's parameters form
their own groups with its ``LR_FACTOR`` / ``WEIGHT_DECAY_FACTOR`` (times the student's
``SOLVER.BASE_LR`` / ``SOLVER.WEIGHT_DECAY``) and ``OPTIMIZER``, except the children it
lists in ``student_solver_children``. When every group uses SGD the result is one
``torch.optim.SGD``; otherwise a :class:`CompositeOptimizer` steps one optimizer per type and is
seen by the LR scheduler, gradient clipping and checkpoints as a single optimizer.

Distillers may keep student parameters frozen at some iterations
(:meth:`Distiller.frozen_student_prefixes`); a step pre-hook drops their gradients, so the
optimizer skips them entirely (no momentum, no weight decay).

Gradient clipping (``SOLVER.CLIP_GRADIENTS``) is detectron2's, with two extensions: parameters
without a gradient (frozen by that hook, or unused by this iteration's forward) are not passed
to the clipper (torch's ``clip_grad_value_`` fails on an empty gradient list), and
``CLIP_TYPE: full_model`` clips the norm of all gradients together, as DETR-style detectors do,
across every child of a :class:`CompositeOptimizer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from detectron2.solver.build import (
    GradientClipType,
    _create_gradient_clipper,
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
)
from detectron2.utils.events import get_event_storage
from torch import nn

from distill.errors import ConfigValueError


class CompositeOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped, zeroed and saved together.

    ``param_groups`` is the concatenation of the children's groups (the same dicts), so an LR
    scheduler that rescales ``group["lr"]`` drives every child.

    Args:
        optimizers: name -> optimizer; the names key the saved state.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        params = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
        super().__init__(params, defaults={})
        self.optimizers = dict(optimizers)
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("CompositeOptimizer.step does not take a closure")
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.optimizers):
            raise ValueError(
                f"optimizer state holds {sorted(state_dict)}, this run uses "
                f"{sorted(self.optimizers)}: was a distiller's OPTIMIZER changed?"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])
        # loading gives the children new group dicts: share them again with the scheduler
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]


FULL_MODEL_CLIP = "full_model"
CLIP_TYPES = (*(t.value for t in GradientClipType), FULL_MODEL_CLIP)


def skip_missing_gradients(clipper: Callable) -> Callable:
    """A detectron2 gradient clipper (called with one parameter or an iterable of them) that
    passes on only the parameters holding a gradient, and does nothing when none does."""

    def clip(parameters: torch.Tensor | Iterable[torch.Tensor]) -> None:
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        with_gradient = [p for p in parameters if p.grad is not None]
        if with_gradient:
            clipper(with_gradient)

    return clip


def clips_full_model(cfg) -> bool:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    return bool(clip.ENABLED) and clip.CLIP_TYPE == FULL_MODEL_CLIP


def clipped_optimizer_class(cfg, base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``base``, or with ``SOLVER.CLIP_GRADIENTS`` enabled, detectron2's subclass of it that
    clips before each step: every parameter on its own (``value``, ``norm``) or all together
    (``full_model``: their total norm), skipping parameters without a gradient."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return base
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ConfigValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: {clip.CLIP_TYPE!r} is not one of {list(CLIP_TYPES)}"
        )
    if clip.CLIP_TYPE != FULL_MODEL_CLIP:
        per_parameter = skip_missing_gradients(_create_gradient_clipper(clip))
        return _generate_optimizer_class_with_gradient_clipping(
            base, per_param_clipper=per_parameter
        )
    norm = clip.clone()
    norm.defrost()
    norm.CLIP_TYPE = GradientClipType.NORM.value
    whole = skip_missing_gradients(_create_gradient_clipper(norm))
    return _generate_optimizer_class_with_gradient_clipping(base, global_clipper=whole)


def _make(cfg, name: str, groups: list[dict], clip: bool) -> torch.optim.Optimizer:
    base = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}[name]
    cls = clipped_optimizer_class(cfg, base) if clip else base
    if name == "SGD":
        return cls(
            groups,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
    return cls(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def build_distill_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``model`` (a plain or Distill meta-architecture, not DDP-wrapped)."""
    defaults = dict(
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    distillers = getattr(model, "distillers", nn.ModuleDict())
    student = nn.ModuleList(m for m in model.children() if m is not distillers)
    own_solver = {}
    for distiller in distillers.values():
        for child in distiller.student_solver_children:
            student.append(getattr(distiller, child))
        own = nn.ModuleList(
            m for n, m in distiller.named_children() if n not in distiller.student_solver_children
        )
        own_solver[distiller] = own
    groups = {
        "SGD": get_default_optimizer_params(
            student, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **defaults
        )
    }
    for distiller, modules in own_solver.items():
        lr = cfg.SOLVER.BASE_LR * distiller.lr_factor
        wd = cfg.SOLVER.WEIGHT_DECAY * distiller.weight_decay_factor
        own_params = get_default_optimizer_params(modules, base_lr=lr, weight_decay=wd, **defaults)
        direct = [p for p in distiller.parameters(recurse=False) if p.requires_grad]
        if direct:
            own_params.append({"params": direct, "lr": lr, "weight_decay": wd})
        groups.setdefault(distiller.optimizer, []).extend(own_params)
    groups = {name: g for name, g in groups.items() if g}
    single = list(groups) == ["SGD"]
    # full-model clipping sees every child's gradients at once: the composite clips, not a child
    clip_children = single or not clips_full_model(cfg)
    optimizers = {name: _make(cfg, name, g, clip_children) for name, g in groups.items()}
    if single:
        optimizer = optimizers["SGD"]
    else:
        composite = (
            CompositeOptimizer
            if clip_children
            else clipped_optimizer_class(cfg, CompositeOptimizer)
        )
        optimizer = composite(optimizers)
    if len(distillers):
        optimizer.register_step_pre_hook(FrozenStudentParameters(model))
    return optimizer


class FrozenStudentParameters:
    """Optimizer step pre-hook: drops the gradients of the student parameters that the
    distillers freeze at the current iteration (read from the event storage)."""

    def __init__(self, model: nn.Module):
        self.distillers = list(model.distillers.values())
        self.named = [
            (n, p) for n, p in model.named_parameters() if not n.startswith("distillers.")
        ]

    def __call__(self, optimizer, args, kwargs) -> None:
        try:
            iteration = get_event_storage().iter
        except AssertionError:  # no training loop around this step
            return
        for distiller in self.distillers:
            for prefix in distiller.frozen_student_prefixes(iteration):
                matched = [p for n, p in self.named if n.startswith(prefix)]
                if not matched:
                    raise ConfigValueError(
                        f"{distiller.config_node}: the student has no parameters under "
                        f"{prefix!r} to freeze"
                    )
                for parameter in matched:
                    parameter.grad = None
