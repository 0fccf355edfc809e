"""The student's detection losses computed on other feature maps with the student's own head.

Teacher-free methods (LGD) build feature maps shaped like the student's FPN and train them
through the student's head: the head's weights are shared, not copied, so its parameters get
gradients from both passes.
"""

from __future__ import annotations

import contextlib

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.utils.events import get_event_storage

from distill.context import DistillContext
from distill.hooks import replay_method


def head_losses_on(
    context: DistillContext, features: dict[str, torch.Tensor], scope: str
) -> dict[str, torch.Tensor]:
    """Detection losses of ``context.student``'s head run on ``features``.

    * R-CNN: the RPN proposes boxes on ``features`` (ground truth appended as usual) and the RoI
      heads sample and classify them: RPN and box (and mask) losses.
    * RetinaNet / FCOS: the dense head runs on ``features``; when the distiller declared
      ``dense_targets``, the student's anchor targets of this batch are reused instead of being
      matched again. The student's loss normaliser (an EMA of the positive count) is left as the
      student's own pass set it.

    Scalars the detector logs during this pass go under the event-storage scope ``scope``.

    Args:
        context: the batch's distillation context (images, ground truth, student).
        features: name -> (N, C, Hi, Wi), the same keys and shapes as the student's backbone.
        scope: event-storage name scope, e.g. ``"lgd_teacher"``.

    Returns:
        the detector's loss dict, keys as the student's (``loss_cls``, ``loss_rpn_cls``, ...).
    """
    student = context.student
    with get_event_storage().name_scope(scope):
        if isinstance(student, GeneralizedRCNN):
            return _rcnn_losses(context, features)
        if isinstance(student, DenseDetector):
            return _dense_losses(context, features)
    raise TypeError(f"head_losses_on: unsupported detector {type(student).__name__}")


def _rcnn_losses(context: DistillContext, features: dict[str, torch.Tensor]) -> dict:
    student = context.student
    if student.proposal_generator is None:
        raise TypeError("head_losses_on needs an R-CNN with a proposal generator (an RPN)")
    gt = context.gt_instances
    proposals, losses = student.proposal_generator(context.images, features, gt)
    _, detector_losses = student.roi_heads(context.images, features, proposals, gt)
    return {**losses, **detector_losses}


def _dense_losses(context: DistillContext, features: dict[str, torch.Tensor]) -> dict:
    student = context.student
    maps = [features[name] for name in student.head_in_features]
    predictions = student.head(maps)
    saved_normalizer = getattr(student, "loss_normalizer", None)
    with contextlib.ExitStack() as stack:
        if context.dense_targets is not None:
            stack.enter_context(replay_method(student, "label_anchors", context.dense_targets))
        losses = student.forward_training(context.images, maps, predictions, context.gt_instances)
    if saved_normalizer is not None:
        student.loss_normalizer = saved_normalizer
    return losses
