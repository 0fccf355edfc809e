"""The :class:`Distiller` base class: what every registered distillation method implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn

if TYPE_CHECKING:
    from distill.context import DistillContext

# What a distiller may declare in ``needs``. Student images, features and GT instances are always
# available; the other items cost work and are prepared only when some distiller declares them.
STUDENT_ITEMS = frozenset({"images", "student_features", "gt_instances", "sampled_proposals"})
TEACHER_ITEMS = frozenset({"teacher_features", "teacher"})
CONTEXT_ITEMS = STUDENT_ITEMS | TEACHER_ITEMS


class Distiller(nn.Module, metaclass=ABCMeta):
    """Base class of distillation methods, registered in ``DISTILLER_REGISTRY``.

    A subclass sets ``config_node`` (its config node, e.g. ``"LGD"``) and ``needs`` (a subset of
    ``CONTEXT_ITEMS``), may extend :meth:`add_config` and ``from_config``, and implements
    :meth:`forward`, which reads a :class:`~distill.context.DistillContext` and returns losses
    named ``loss_<config_node lower-case>_<term>``. The core applies the schedule: the distiller
    runs only for ``start_iter <= iteration < stop_iter`` and its losses are multiplied by
    ``loss_weight``. Its parameters train with the student, in their own parameter group when
    ``BASE_LR`` / ``WEIGHT_DECAY`` are set.

    Args:
        loss_weight: factor on every loss term.
        start_iter: first iteration at which the distiller runs.
        stop_iter: first iteration at which it no longer runs; -1 = never stops.
        base_lr: learning rate of its parameters; -1 = ``SOLVER.BASE_LR``.
        weight_decay: weight decay of its parameters; -1 = ``SOLVER.WEIGHT_DECAY``.
        student_modules: dotted module paths of the student whose outputs it reads.
        teacher_modules: dotted module paths inside the teacher's backbone whose outputs it reads.
    """

    config_node: str = ""
    needs: frozenset[str] = frozenset()

    @configurable
    def __init__(
        self,
        *,
        loss_weight: float = 1.0,
        start_iter: int = 0,
        stop_iter: int = -1,
        base_lr: float = -1.0,
        weight_decay: float = -1.0,
        student_modules: tuple[str, ...] = (),
        teacher_modules: tuple[str, ...] = (),
    ):
        super().__init__()
        unknown = set(self.needs) - CONTEXT_ITEMS
        if unknown:
            raise ValueError(f"{type(self).__name__}.needs: unknown items {sorted(unknown)}")
        if teacher_modules and not self.needs_teacher:
            raise ValueError(f"{type(self).__name__} reads teacher modules but needs no teacher")
        self.loss_weight = loss_weight
        self.start_iter = start_iter
        self.stop_iter = stop_iter
        self.base_lr = base_lr
        self.weight_decay = weight_decay
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

    @abstractmethod
    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """Return this distiller's unweighted losses (scalars), named with ``loss_prefix``."""
