"""What Dsig's two graphs share: their settings, the one-stage student's
detections as node boxes, and the RoI box-regression KD."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes

from distill.context import DistillContext
from distill.errors import ConfigValueError

HEAD = "head"  # the one-stage student's head, recorded for its predictions
# How a one-stage student's detections become graph nodes (official RetinaNet settings).
NODE_DETECTION_SETTINGS = {
    "test_score_thresh": 0.0,
    "test_topk_candidates": 1000,
    "test_nms_thresh": 0.5,
    "max_detections_per_image": 100,
}


@dataclass(frozen=True)
class GraphSettings:
    """Dsig's options besides the term weights (``DSIG.*``, see ``Dsig.add_config``)."""

    similarity: str = "instance"
    mine_background: bool = True
    mining_threshold: float = 0.6
    adaptive_bg_weight: bool = True
    bg_weight_alpha: float = 7.5
    temperature: float = 1.0


def roi_reg_kd(
    student: torch.Tensor, teacher: torch.Tensor, classes: torch.Tensor, fg: torch.Tensor
) -> torch.Tensor:
    """L1 between student and teacher box deltas at each foreground RoI's ground-truth class
    columns (or the 4 class-agnostic columns), summed and divided by the number of RoIs."""
    if student.shape != teacher.shape:
        raise ConfigValueError(
            f"DSIG.WEIGHTS.ROI_REG: student and teacher box deltas differ in shape "
            f"({tuple(student.shape)} vs {tuple(teacher.shape)}); both need the same class count "
            "and class-specific/agnostic regression"
        )
    rows = torch.nonzero(fg).flatten()
    if student.shape[1] == 4:
        cols = torch.arange(4, device=student.device).expand(len(rows), 4)
    else:
        cols = classes[rows, None] * 4 + torch.arange(4, device=student.device)
    diff = student[rows[:, None], cols] - teacher.detach()[rows[:, None], cols].float()
    return diff.abs().sum() / max(len(student), 1)


@contextlib.contextmanager
def _settings(obj, values: dict) -> Iterator[None]:
    saved = {k: getattr(obj, k) for k in values}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


@torch.no_grad()
def detection_boxes(student: DenseDetector, context: DistillContext) -> list[Boxes]:
    """The student's detections on this batch, from the head outputs of its training forward,
    post-processed with :data:`NODE_DETECTION_SETTINGS`: per image, at most 100 boxes."""
    predictions = context.student_records[HEAD]
    predictions = [[t.detach().float().clone() for t in per_level] for per_level in predictions]
    maps = [context.student_features[f] for f in student.head_in_features]
    with _settings(student, NODE_DETECTION_SETTINGS):
        results = student.forward_inference(context.images, maps, predictions)
    return [r.pred_boxes for r in results]
