"""The :class:`Distiller` base class: what every registered distillation method implements."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn

from distill.errors import ConfigValueError
from distill.student import STUDENT_KINDS, StudentSpec

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

    A subclass sets:

    * ``config_node``: its config node, e.g. ``"LGD"``; its losses are named
      ``loss_<config_node lower-case>_<term>`` (or ``..._<term>_<detail>``);
    * ``terms``: loss term -> default weight. The core owns ``<NODE>.WEIGHTS.<TERM>``, multiplies
      each returned loss by its term's weight, and a term whose weight is 0 must not be computed
      (:meth:`computes`);
    * ``needs``: a subset of ``CONTEXT_ITEMS``, or :meth:`needs_for` when they depend on the
      config or the student;
    * ``student_kinds``: the :data:`~distill.student.STUDENT_KINDS` it supports;

    may extend :meth:`add_config`, ``from_config`` and :meth:`terms_for`, and implements
    :meth:`forward`, which reads a :class:`~distill.context.DistillContext`. The core applies the
    schedule: the distiller runs only for ``start_iter <= iteration < stop_iter``. Its parameters
    train with the student, in their own parameter groups (``LR_FACTOR`` x ``SOLVER.BASE_LR``,
    ``WEIGHT_DECAY_FACTOR`` x ``SOLVER.WEIGHT_DECAY``, ``OPTIMIZER``), except the children named
    in ``student_solver_children``, which follow the student's solver. A distiller may also keep
    student parameters from being updated at some iterations (``frozen_student_prefixes``).

    Args:
        student: the student it distils into.
        needs: the context items it reads (decided by :meth:`needs_for`).
        weights: term -> weight, every term of ``terms``.
        start_iter: first iteration at which the distiller runs.
        stop_iter: first iteration at which it no longer runs; None = runs to the end.
        lr_factor: its parameters' learning rate is ``SOLVER.BASE_LR`` times this.
        weight_decay_factor: its parameters' weight decay is ``SOLVER.WEIGHT_DECAY`` times this.
        optimizer: optimizer of its parameters, "SGD" (as the student) or "AdamW".
        student_modules: dotted module paths of the student whose outputs it reads.
        teacher_modules: dotted module paths inside the teacher's backbone whose outputs it reads.
    """

    config_node: str = ""
    terms: Mapping[str, float] = {}
    needs: frozenset[str] = frozenset()
    student_kinds: tuple[str, ...] = STUDENT_KINDS
    # Names of child modules whose parameters train with the student's solver, not the
    # distiller's own LR_FACTOR / WEIGHT_DECAY_FACTOR / OPTIMIZER.
    student_solver_children: tuple[str, ...] = ()

    @configurable
    def __init__(
        self,
        *,
        student: StudentSpec,
        needs: frozenset[str],
        weights: Mapping[str, float],
        start_iter: int = 0,
        stop_iter: int | None = None,
        lr_factor: float = 1.0,
        weight_decay_factor: float = 1.0,
        optimizer: str = "SGD",
        student_modules: tuple[str, ...] = (),
        teacher_modules: tuple[str, ...] = (),
    ):
        super().__init__()
        name = self.config_node or type(self).__name__
        unknown = set(needs) - CONTEXT_ITEMS
        if unknown:
            raise ValueError(f"{type(self).__name__}.needs: unknown items {sorted(unknown)}")
        if set(weights) != set(self.terms):
            raise ValueError(
                f"{type(self).__name__}: weights for {sorted(weights)}, terms {sorted(self.terms)}"
            )
        if teacher_modules and not needs & TEACHER_ITEMS:
            raise ValueError(f"{type(self).__name__} reads teacher modules but needs no teacher")
        if optimizer not in OPTIMIZER_NAMES:
            raise ConfigValueError(
                f"{name}.OPTIMIZER: {optimizer!r} is not one of {list(OPTIMIZER_NAMES)}"
            )
        self.student = student
        self.needs = frozenset(needs)
        self.weights = dict(weights)
        self.start_iter = start_iter
        self.stop_iter = stop_iter
        self.lr_factor = lr_factor
        self.weight_decay_factor = weight_decay_factor
        self.optimizer = optimizer
        self.student_modules = tuple(student_modules)
        self.teacher_modules = tuple(teacher_modules)

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        """Add this distiller's node with the keys every distiller has. Idempotent."""
        if not cls.config_node:
            raise ValueError(f"{cls.__name__} must set config_node")
        if cls.config_node in cfg:
            return
        node = CN()
        # One weight per loss term (loss_<node>_<term>); 0 = the term is not computed.
        node.WEIGHTS = CN({term.upper(): float(w) for term, w in cls.terms.items()})
        node.START_ITER = 0  # first iteration at which the distiller runs
        node.STOP_ITER = None  # first iteration at which it stops running; None = runs to the end
        node.LR_FACTOR = 1.0  # its own parameters' learning rate: SOLVER.BASE_LR x this
        node.WEIGHT_DECAY_FACTOR = 1.0  # their weight decay: SOLVER.WEIGHT_DECAY x this
        node.OPTIMIZER = "SGD"  # optimizer of its own parameters: "SGD" (as the student), "AdamW"
        cfg[cls.config_node] = node

    @classmethod
    def needs_for(cls, cfg, student: StudentSpec) -> frozenset[str]:
        """The context items this distiller reads with this config and student (decided once,
        when the model is built). Default: the class's ``needs``."""
        return frozenset(cls.needs)

    @classmethod
    def terms_for(cls, cfg, student: StudentSpec) -> tuple[str, ...]:
        """The loss terms that exist for this student; the others get weight 0, and a weight
        set on them is refused when the model is built. Default: all of ``terms``."""
        return tuple(cls.terms)

    @classmethod
    def from_config(cls, cfg, student: StudentSpec, teacher_shapes=None):
        """Subclasses extend the returned kwargs. ``needs`` is not among them: the model's
        builder decides it once with :meth:`needs_for` and passes it
        (``cls(cfg, student, teacher_shapes, needs=...)``).

        Args:
            student: the student (its backbone output shapes size adapters).
            teacher_shapes: dict name -> ShapeSpec of the teacher backbone outputs, or None
                without a teacher.
        """
        node = cfg[cls.config_node]
        if student.kind not in cls.student_kinds:
            raise ConfigValueError(
                f"{cls.config_node}: MODEL.META_ARCHITECTURE {student.architecture!r} is a "
                f"{student.kind} student; {cls.__name__} supports {list(cls.student_kinds)}"
            )
        return {
            "student": student,
            "weights": loss_weights(cfg, cls, student),
            "start_iter": node.START_ITER,
            "stop_iter": node.STOP_ITER,
            "lr_factor": node.LR_FACTOR,
            "weight_decay_factor": node.WEIGHT_DECAY_FACTOR,
            "optimizer": node.OPTIMIZER,
        }

    @property
    def needs_teacher(self) -> bool:
        return bool(self.needs & TEACHER_ITEMS)

    @property
    def loss_prefix(self) -> str:
        return f"loss_{self.config_node.lower()}_"

    def computes(self, term: str) -> bool:
        """Whether ``term`` has a non-zero weight (a term with weight 0 is not computed)."""
        return self.weights[term] != 0

    def term_of(self, key: str) -> str:
        """The term a returned loss name belongs to (the longest declared term it names)."""
        rest = key.removeprefix(self.loss_prefix) if key.startswith(self.loss_prefix) else None
        matches = [
            t for t in self.terms if rest is not None and (rest == t or rest.startswith(t + "_"))
        ]
        if not matches:
            raise KeyError(
                f"{type(self).__name__} returned loss {key!r}: names are "
                f"{self.loss_prefix}<term>[_<detail>] with a term of {sorted(self.terms)}"
            )
        return max(matches, key=len)

    def is_active(self, iteration: int) -> bool:
        """Whether the schedule runs this distiller at ``iteration``."""
        return iteration >= self.start_iter and (
            self.stop_iter is None or iteration < self.stop_iter
        )

    def frozen_student_prefixes(self, iteration: int) -> tuple[str, ...]:
        """Student parameter-name prefixes (e.g. ``"backbone.bottom_up."``) that the optimizer
        must leave untouched at ``iteration``: their gradients are dropped before the step, so
        neither momentum nor weight decay moves them. Default: none."""
        return ()

    def weighted_losses(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """:meth:`forward`'s losses, each times its term's weight."""
        losses = {}
        for key, value in self(context).items():
            weight = self.weights[self.term_of(key)]
            if weight == 0:
                raise RuntimeError(
                    f"{type(self).__name__} computed {key!r}, whose term has weight 0: check "
                    "self.computes(term) before computing a term"
                )
            losses[key] = value * weight
        return losses

    @abstractmethod
    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """Return this distiller's unweighted losses (scalars), named with ``loss_prefix``."""


def loss_weights(cfg, cls: type[Distiller], student: StudentSpec) -> dict[str, float]:
    """``<NODE>.WEIGHTS`` as term -> weight. A term that does not exist for this student is
    not computed (weight 0); setting its weight away from the default is refused, naming the
    key."""
    node = cfg[cls.config_node].WEIGHTS
    unknown = sorted(set(node) - {t.upper() for t in cls.terms})
    if unknown:
        raise ConfigValueError(
            f"{cls.config_node}.WEIGHTS: {unknown} are not terms of {cls.__name__} "
            f"(its terms: {sorted(t.upper() for t in cls.terms)})"
        )
    weights = {term: float(node[term.upper()]) for term in cls.terms}
    present = set(cls.terms_for(cfg, student))
    idle = [t for t, w in weights.items() if t not in present and w != cls.terms[t]]
    if idle:
        keys = ", ".join(f"{cls.config_node}.WEIGHTS.{t.upper()} = {weights[t]:g}" for t in idle)
        raise ConfigValueError(
            f"{keys}: {cls.__name__} has no such loss on a {student.kind} student "
            f"({student.architecture}); remove the key"
        )
    return {t: (w if t in present else 0.0) for t, w in weights.items()}
