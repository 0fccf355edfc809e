"""FitNets-style FPN feature imitation: the reference distiller of the core.

Each student FPN level goes through an adapter to the teacher's width and is pulled towards the
teacher's map of the same level with an MSE, optionally only inside ground-truth boxes. It is
small on purpose: the README walks through it as the example of adding a distiller.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn

from distill.context import DistillContext
from distill.distiller import Distiller
from distill.errors import ConfigKeyError, ConfigValueError
from distill.modules import build_adapter, gt_box_mask, masked_mse
from distill.registry import DISTILLER_REGISTRY


@DISTILLER_REGISTRY.register()
class FeatureKD(Distiller):
    """MSE between adapted student FPN maps and teacher FPN maps, per level.

    Args:
        in_features: FPN levels to distill (present in both backbones, same strides).
        adapters: level -> adapter module mapping student to teacher channels.
        gt_mask: restrict the loss to pixels inside ground-truth boxes.
    """

    config_node = "FEATURE_KD"
    terms = {"mse": 1.0}
    needs = frozenset({"student_features", "teacher_features", "gt_instances"})

    @configurable
    def __init__(self, *, in_features: list[str], adapters: dict[str, nn.Module],
                 gt_mask: bool = False, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.in_features = list(in_features)
        self.adapters = nn.ModuleDict(adapters)
        self.gt_mask = gt_mask

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        super().add_config(cfg)
        node = cfg[cls.config_node]
        if "IN_FEATURES" in node:
            return
        node.IN_FEATURES = ["p3", "p4", "p5"]  # FPN levels to distill
        node.ADAPTER = "Conv1x1Adapter"  # ADAPTER_REGISTRY name mapping student->teacher width
        node.GT_MASK = False  # only pixels inside ground-truth boxes count

    @classmethod
    def from_config(cls, cfg, student, teacher_shapes):
        node = cfg[cls.config_node]
        student_shapes = student.feature_shapes
        levels = list(node.IN_FEATURES)
        for level in levels:
            for side, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
                if level not in shapes:
                    raise ConfigKeyError(
                        f"FEATURE_KD.IN_FEATURES: {level!r} is not a {side} backbone output "
                        f"(it has {sorted(shapes)})"
                    )
            if student_shapes[level].stride != teacher_shapes[level].stride:
                raise ConfigValueError(f"FEATURE_KD: level {level!r} has different strides")
        adapters = {
            level: build_adapter(
                node.ADAPTER, student_shapes[level].channels, teacher_shapes[level].channels
            )
            for level in levels
        }
        return {
            **super().from_config(cfg, student, teacher_shapes),
            "in_features": levels,
            "adapters": adapters,
            "gt_mask": node.GT_MASK,
        }

    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        teacher = context.teacher_features
        losses = []
        for level in self.in_features:
            student = self.adapters[level](context.student_features[level])
            mask = None
            if self.gt_mask:
                boxes = [gt.gt_boxes.tensor for gt in context.gt_instances]
                image_size = tuple(context.images.tensor.shape[-2:])
                mask = gt_box_mask(boxes, image_size, tuple(student.shape[-2:]))
            losses.append(masked_mse(student, teacher[level], mask))
        return {"loss_feature_kd_mse": torch.stack(losses).mean()}
