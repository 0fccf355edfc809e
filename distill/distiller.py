"""The :class:`Distiller` base class: what every registered distillation method implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn

from distill.errors import ConfigValueError

if TYPE_CHECKING:
    from distill.context import DistillContext

# What a distiller may declare in ``needs``. Student images, features and GT instances are always
# available; the other items cost work and are prepared only when some distiller declares them.
# "sampled_proposals" exist for R-CNN students, "dense_targets" for RetinaNet/FCOS students.
STUDENT_ITEMS = frozenset(
    {"images", "student_features", "gt_instances", "sampled_proposals", "dense_targets"}
)
TEACHER_ITEMS = frozenset({"teacher_features", "teacher"})
CONTEXT_ITEMS = STUDENT_ITEMS | TEACHER_ITEMS
# Optimizers a distiller's own parameters may use (see distill.solver).
OPTIMIZER_NAMES = ("SGD", "AdamW")


class Distiller(nn.Module, metaclass=ABCMeta):
    """Base class of distillation methods, registered in ``DISTILLER_REGISTRY``.

    A subclass sets ``config_node`` (its config node, e.g. ``"LGD"``) and ``needs`` (a subset of
    ``CONTEXT_ITEMS``; an instance may set its own before calling ``super().__init__``, e.g.
    depending on the student's kind), may extend :meth:`add_config` and ``from_config``, and
    implements :meth:`forward`, which reads a :class:`~distill.context.DistillContext` and returns
    losses named ``loss_<config_node lower-case>_<term>``. The core applies the schedule: the
    distiller runs only for ``start_iter <= iteration < stop_iter`` and its losses are multiplied by
    ``loss_weight``. Its parameters train with the student, in their own parameter groups
    (``BASE_LR``, ``WEIGHT_DECAY``, ``OPTIMIZER``), except the children named in
    ``student_solver_children``, which follow the student's solver. A distiller may also keep
    student parameters from being updated at some iterations (``frozen_student_prefixes``).

    Args:
        loss_weight: factor on every loss term.
        start_iter: first iteration at which the distiller runs.
        stop_iter: first iteration at which it no longer runs; -1 = never stops.
        base_lr: learning rate of its parameters; -1 = ``SOLVER.BASE_LR``.
        weight_decay: weight decay of its parameters; -1 = ``SOLVER.WEIGHT_DECAY``.
        optimizer: optimizer of its parameters, "SGD" (as the student) or "AdamW".
        student_modules: dotted module paths of the student whose outputs it reads.
        teacher_modules: dotted module paths inside the teacher's backbone whose outputs it reads.
    """

    config_node: str = ""
    needs: frozenset[str] = frozenset()
    # Names of child modules whose parameters train with the student's solver, not the
    # distiller's own BASE_LR / WEIGHT_DECAY / OPTIMIZER.
    student_solver_children: tuple[str, ...] = ()

    @configurable
    def __init__(
        self,
        *,
        loss_weight: float = 1.0,
        start_iter: int = 0,
        stop_iter: int = -1,
        base_lr: float = -1.0,
        weight_decay: float = -1.0,
        optimizer: str = "SGD",
        student_modules: tuple[str, ...] = (),
        teacher_modules: tuple[str, ...] = (),
    ):
        super().__init__()
        unknown = set(self.needs) - CONTEXT_ITEMS
        if unknown:
            raise ValueError(f"{type(self).__name__}.needs: unknown items {sorted(unknown)}")
        if teacher_modules and not self.needs_teacher:
            raise ValueError(f"{type(self).__name__} reads teacher modules but needs no teacher")
        if optimizer not in OPTIMIZER_NAMES:
            raise ConfigValueError(
                f"{self.config_node or type(self).__name__}.OPTIMIZER: {optimizer!r} is not one "
                f"of {list(OPTIMIZER_NAMES)}"
            )
        self.loss_weight = loss_weight
        self.start_iter = start_iter
        self.stop_iter = stop_iter
        self.base_lr = base_lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.student_modules = tuple(student_modules)
        self.teacher_modules = tuple(teacher_modules)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        """Add this distiller's node with the schedule keys every distiller has. Idempotent."""
        if not cls.config_node:
            raise ValueError(f"{cls.__name__} must set config_node")
        if cls.config_node in cfg:
            return
        node = CN()
        node.LOSS_WEIGHT = 1.0  # factor on every loss term of this distiller
        node.START_ITER = 0  # first iteration at which the distiller runs
        node.STOP_ITER = -1  # first iteration at which it stops running; -1 = never
        node.BASE_LR = -1.0  # learning rate of its own parameters; -1 = SOLVER.BASE_LR
        node.WEIGHT_DECAY = -1.0  # weight decay of its own parameters; -1 = SOLVER.WEIGHT_DECAY
        node.OPTIMIZER = "SGD"  # optimizer of its own parameters: "SGD" (as the student), "AdamW"
        cfg[cls.config_node] = node

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        """Subclasses extend the returned kwargs; the shapes size adapters.

        Args:
            student_shapes: dict name -> ShapeSpec of the student backbone outputs.
            teacher_shapes: the same for the teacher, or None without a teacher.
        """
        node = cfg[cls.config_node]
        return {
            "loss_weight": node.LOSS_WEIGHT,
            "start_iter": node.START_ITER,
            "stop_iter": node.STOP_ITER,
            "base_lr": node.BASE_LR,
            "weight_decay": node.WEIGHT_DECAY,
            "optimizer": node.OPTIMIZER,
        }

    @property
    def needs_teacher(self) -> bool:
        return bool(self.needs & TEACHER_ITEMS)

    @property
    def loss_prefix(self) -> str:
        return f"loss_{self.config_node.lower()}_"

    def is_active(self, iteration: int) -> bool:
        """Whether the schedule runs this distiller at ``iteration``."""
        return iteration >= self.start_iter and (self.stop_iter < 0 or iteration < self.stop_iter)

    def frozen_student_prefixes(self, iteration: int) -> tuple[str, ...]:
        """Student parameter-name prefixes (e.g. ``"backbone.bottom_up."``) that the optimizer
        must leave untouched at ``iteration``: their gradients are dropped before the step, so
        neither momentum nor weight decay moves them. Default: none."""
        return ()

    @abstractmethod
    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """Return this distiller's unweighted losses (scalars), named with ``loss_prefix``."""
