"""The per-batch context from which distillers read what they declared they need."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
from detectron2.structures import ImageList, Instances
from torch import nn

from distill.hooks import FeatureRecorder
from distill.teacher import Teacher


class DistillContext:
    """Everything distillers may read for one training batch, each item computed at most once.

    Student items are captured during the student's own forward; teacher items are computed
    lazily on first access, once, and shared by every distiller of the stack.

    Attributes:
        student: the student meta-architecture (e.g. to run its head again).
        batched_inputs: the batch as given to the model (list of dataset-mapper dicts).
        iteration: the current training iteration.
        images: the student's preprocessed ImageList, tensor (N, C, H, W).
        student_features: the student backbone outputs, name -> (N, C, Hi, Wi).
        sampled_proposals: R-CNN only, when declared: per image, the RoIs sampled for the box
            head, with ``proposal_boxes``, ``gt_classes`` (num_classes = background) and
            ``gt_boxes``.
        dense_targets: RetinaNet/FCOS only, when declared: the student's anchor targets, the
            ``(gt_labels, gt_boxes)`` returned by its ``label_anchors`` (per image, one entry per
            anchor of all levels).
        student_records: outputs of the declared student module paths.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        batched_inputs: list[dict],
        iteration: int,
        images: ImageList,
        student_features: dict[str, torch.Tensor],
        sampled_proposals: list[Instances] | None,
        dense_targets: tuple[list[torch.Tensor], list[torch.Tensor]] | None,
        student_records: dict[str, Any],
        teacher: Teacher | None,
        teacher_recorder: FeatureRecorder | None,
        input_format: str,
    ):
        self.student = student
        self.batched_inputs = batched_inputs
        self.iteration = iteration
        self.images = images
        self.student_features = student_features
        self.sampled_proposals = sampled_proposals
        self.dense_targets = dense_targets
        self.student_records = student_records
        self._teacher = teacher
        self._teacher_recorder = teacher_recorder
        self._input_format = input_format
        self._teacher_records: dict[str, Any] = {}

    @cached_property
    def gt_instances(self) -> list[Instances]:
        """Per image, the ground truth on the model's device (``gt_boxes``, ``gt_classes``)."""
        device = self.images.tensor.device
        return [x["instances"].to(device) for x in self.batched_inputs]

    @property
    def teacher(self) -> Teacher:
        """The frozen teacher; run its parts inside ``teacher.inference()``."""
        if self._teacher is None:
            raise RuntimeError("no teacher: declare 'teacher' or 'teacher_features' in needs")
        return self._teacher

    @cached_property
    def teacher_images(self) -> ImageList:
        """The student's batch preprocessed for the teacher (its format, mean, std)."""
        return self.teacher.preprocess(self.batched_inputs, self._input_format)

    @cached_property
    def teacher_features(self) -> dict[str, torch.Tensor]:
        """Teacher backbone outputs on the same images, fp32, detached: name -> (N, C, Hi, Wi)."""
        if self._teacher_recorder is None:
            return self.teacher.features(self.teacher_images)
        with self._teacher_recorder.recording() as records:
            features = self.teacher.features(self.teacher_images)
        self._teacher_records = {k: _detach(v) for k, v in records.items()}
        return features

    @property
    def teacher_records(self) -> dict[str, Any]:
        """Outputs of the declared teacher backbone paths (runs the teacher backbone once)."""
        _ = self.teacher_features
        return self._teacher_records


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().float()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value
