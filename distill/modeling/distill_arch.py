"""Training-time distillation added to a detectron2 meta-architecture.

:class:`DistillMixin` goes before a detectron2 meta-architecture in the bases of a class. The
student's modules and parameter names stay those of the plain detector; distillers live under
``distillers.*`` and the teacher outside the module tree. In eval mode, or with no distiller,
``forward`` is the plain detector's.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from torch import nn

from distill.compiled_ops import check_compiled_ops
from distill.context import DistillContext
from distill.distiller import TEACHER_ITEMS, Distiller
from distill.errors import ConfigValueError
from distill.hooks import FeatureRecorder, Record, tap_method
from distill.registry import get_distiller_class
from distill.student import StudentSpec, describe_student
from distill.teacher import Teacher, build_teacher

logger = logging.getLogger(__name__)

BACKBONE = "backbone"


def build_distillation(cfg, student: StudentSpec) -> dict:
    """The ``distillers`` and ``teacher`` kwargs of a Distill meta-architecture.

    Each distiller's ``needs`` is decided here, once, by its :meth:`Distiller.needs_for`; the
    teacher is built only when one of them needs it.
    """
    names = list(cfg.DISTILL.DISTILLERS)
    if len(set(names)) != len(names):
        raise ConfigValueError(f"DISTILL.DISTILLERS lists a distiller twice: {names}")
    classes = {name: get_distiller_class(name) for name in names}
    needs = {name: cls.needs_for(cfg, student) for name, cls in classes.items()}
    for name, items in needs.items():
        check_available(name, items, student)
    teacher = None
    if any(items & TEACHER_ITEMS for items in needs.values()):
        teacher = build_teacher(cfg, cfg.INPUT.FORMAT)
    elif cfg.DISTILL.TEACHER.CONFIG_FILE:
        logger.info("DISTILL.TEACHER is set but no configured distiller needs it: not built")
    teacher_shapes = teacher.model.backbone.output_shape() if teacher else None
    distillers = {
        name: cls(cfg, student, teacher_shapes, needs=needs[name]) for name, cls in classes.items()
    }
    return {"distillers": distillers, "teacher": teacher}


def distillers_reading_teacher(cfg) -> list[str]:
    """The names in ``DISTILL.DISTILLERS`` whose distiller reads a teacher (features or model),
    by the same ``needs_for`` decision :func:`build_distillation` makes; an empty list means
    the Distill model builds no teacher (e.g. LGD's implicit one)."""
    names = list(cfg.DISTILL.DISTILLERS)
    if not names:
        return []
    student = describe_student(cfg)
    return [n for n in names if get_distiller_class(n).needs_for(cfg, student) & TEACHER_ITEMS]


def check_available(name: str, needs: frozenset[str], student: StudentSpec) -> None:
    """Refuse items that this kind of student does not produce."""
    if "sampled_proposals" in needs and not student.has_roi_heads:
        raise ConfigValueError(
            f"{name} needs 'sampled_proposals', which only R-CNN students have; "
            f"{student.architecture} is a {student.kind} student"
        )
    if "dense_targets" in needs and not student.is_dense:
        raise ConfigValueError(
            f"{name} needs 'dense_targets', which only one-stage students (RetinaNet, FCOS) "
            f"have; {student.architecture} is a {student.kind} student"
        )


class DistillMixin:
    """Adds distillers (and a frozen teacher) to a detectron2 meta-architecture's training.

    A subclass describes its student with ``student_kind`` (:data:`distill.student.STUDENT_KINDS`),
    ``head_config_node`` (the ``MODEL.*`` node with the head's NUM_CLASSES and IN_FEATURES) and
    ``plain_architecture`` (the detector that loads the extracted student).

    Args:
        distillers: name -> Distiller (``from_config`` builds them from the config and the
            student backbone that detectron2's ``from_config`` returns).
        teacher: the frozen teacher, or None when no distiller needs one.
        **kwargs: the arguments of the plain detector.
    """

    # Subclasses describe the student (see distill.student.StudentSpec).
    student_kind: str = ""
    head_config_node: str = ""
    plain_architecture: str = ""

    @configurable
    def __init__(
        self,
        *,
        distillers: dict[str, Distiller] | None = None,
        teacher: Teacher | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.distillers = nn.ModuleDict(distillers or {})
        object.__setattr__(self, "_teacher", teacher)  # not a submodule, on purpose
        wanted = [d for d in self.distillers.values() if d.needs_teacher]
        if wanted and teacher is None:
            raise ConfigValueError(
                f"{[type(d).__name__ for d in wanted]} need a teacher; none given"
            )
        needs = set().union(*(d.needs for d in self.distillers.values()))
        self._tap_proposals = "sampled_proposals" in needs
        self._tap_dense_targets = "dense_targets" in needs
        student_paths = [BACKBONE] + [
            p for d in self.distillers.values() for p in d.student_modules
        ]
        self._student_recorder = FeatureRecorder(self, student_paths, owner="student")
        teacher_paths = [p for d in self.distillers.values() for p in d.teacher_modules]
        self._teacher_recorder = None
        if teacher_paths:
            paths = [Record.parse(p).path for p in teacher_paths]
            outside = [p for p in paths if not p.startswith(BACKBONE + ".")]
            if outside:
                raise ConfigValueError(
                    f"teacher module paths {outside} are outside the teacher backbone; the core "
                    "runs only the teacher backbone, run other teacher parts in the distiller"
                )
            self._teacher_recorder = FeatureRecorder(teacher.model, teacher_paths, owner="teacher")

    @classmethod
    def from_config(cls, cfg):
        check_compiled_ops(cfg, "the student")  # before anything is built
        ret = super().from_config(cfg)
        student = describe_student(cfg, ret["backbone"].output_shape())
        return {**ret, **build_distillation(cfg, student)}

    @property
    def teacher(self) -> Teacher | None:
        """The frozen teacher (not a submodule: never in state_dict, optimizer or DDP)."""
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        # Keep the teacher on the student's device and dtype (.to(), .cuda(), .half(), ...).
        super()._apply(fn, *args, **kwargs)
        if self.__dict__.get("_teacher") is not None:
            self._teacher.model._apply(fn, *args, **kwargs)
        return self

    def forward(self, batched_inputs):
        if not self.training or len(self.distillers) == 0:
            return super().forward(batched_inputs)
        iteration = get_event_storage().iter
        active = {n: d for n, d in self.distillers.items() if d.is_active(iteration)}
        if not active:
            return super().forward(batched_inputs)

        captured: dict = {}
        with contextlib.ExitStack() as stack:
            student_records = stack.enter_context(self._student_recorder.recording())
            stack.enter_context(tap_method(self, "preprocess_image", captured, "images"))
            if self._tap_proposals:
                stack.enter_context(
                    tap_method(
                        self.roi_heads, "label_and_sample_proposals", captured, "sampled_proposals"
                    )
                )
            if self._tap_dense_targets:
                stack.enter_context(tap_method(self, "label_anchors", captured, "dense_targets"))
            losses = super().forward(batched_inputs)

        context = DistillContext(
            student=self,
            batched_inputs=batched_inputs,
            iteration=iteration,
            images=captured["images"],
            student_features=student_records.pop(BACKBONE),
            sampled_proposals=captured.get("sampled_proposals"),
            dense_targets=captured.get("dense_targets"),
            student_records=student_records,
            teacher=self._teacher,
            teacher_recorder=self._teacher_recorder,
            input_format=self.input_format,
        )
        # Distillation losses are computed in fp32 even when the student runs under autocast.
        with torch.autocast(self.device.type, enabled=False):
            for name, distiller in active.items():
                for key, value in distiller.weighted_losses(context).items():
                    if key in losses:
                        raise KeyError(f"distiller {name!r} returned loss {key!r} twice")
                    losses[key] = value
        return losses
