"""Dsig on a one-stage student (RetinaNet, FCOS): the graph over its own detections.

One-stage students have no sampled RoIs: the nodes are the student's detections at the current
iteration (score threshold 0, top 1000 per level, NMS 0.5, at most 100 per image), pooled 7x7
with ROIAlignV2 from both pyramids. Every node is a foreground node: there is no background
term and no mining. Logits KD runs on the dense predictions instead of RoI predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.poolers import ROIPooler

from distill.context import DistillContext
from distill.errors import ConfigValueError
from distill.modules import ObjectGroups, edge_loss, kl_div_with_temperature, node_loss
from dsig.nodes import HEAD, GraphSettings, detection_boxes


class DetectionGraph:
    """Node and edge losses over the student's detections, and dense logits KD (terms
    ``fg_node``, ``edge``, ``roi_cls``, ``roi_reg``).

    Args:
        settings: the graph's options.
        levels: the pyramid levels the detections are pooled from.
        poolers: the (student, teacher) RoI poolers of the nodes.
    """

    student_modules = (HEAD,)
    needs = frozenset({"images"})

    def __init__(self, settings: GraphSettings, levels: list[str], poolers: tuple[ROIPooler, ...]):
        self.settings = settings
        self.levels = list(levels)
        self.poolers = poolers

    def losses(self, context: DistillContext, dsig) -> dict[str, torch.Tensor]:
        """Unweighted losses of the terms ``dsig.computes``."""
        boxes = detection_boxes(context.student, context)
        counts = torch.tensor([len(b) for b in boxes], device=context.images.tensor.device)
        groups = ObjectGroups(
            torch.repeat_interleave(torch.arange(len(boxes), device=counts.device), counts),
            len(boxes),
        )
        s_pool, t_pool = self.poolers
        s_nodes = dsig.adapt(
            s_pool([context.student_features[f].float() for f in self.levels], boxes)
        )
        with torch.no_grad():
            t_nodes = t_pool([context.teacher_features[f] for f in self.levels], boxes)
        losses = {}
        if dsig.computes("fg_node"):
            losses["loss_dsig_fg_node"] = node_loss(s_nodes, t_nodes, groups)
        if dsig.computes("edge"):
            losses["loss_dsig_edge"] = edge_loss(s_nodes, t_nodes, groups, self.settings.similarity)
        if dsig.computes("roi_cls") or dsig.computes("roi_reg"):
            losses.update(self.dense_prediction_kd(context, dsig))
        return losses

    def dense_prediction_kd(self, context: DistillContext, dsig) -> dict[str, torch.Tensor]:
        """One-stage logits KD: KL between softmaxes over classes at the anchors the student's
        targets do not ignore (mean over anchor x class entries), and box-delta smooth-L1 at
        foreground anchors divided by their number."""
        student, teacher = context.student, context.teacher
        if not isinstance(teacher.model, DenseDetector):
            raise ConfigValueError(
                "DSIG logits KD on a one-stage student needs a one-stage teacher"
            )
        with teacher.inference():
            t_maps = [context.teacher_features[f] for f in teacher.model.head_in_features]
            t_pred = teacher.model.head(t_maps)
        s_pred = context.student_records[HEAD]
        num_classes = student.num_classes
        dims = [num_classes, 4] + [1] * (len(s_pred) - 2)
        s_logits, s_deltas = (torch.cat(x, dim=1) for x in
                              student._transpose_dense_predictions(s_pred, dims)[:2])  # fmt: skip
        t_logits, t_deltas = (torch.cat(x, dim=1).float() for x in
                              student._transpose_dense_predictions(t_pred, dims)[:2])  # fmt: skip
        if s_logits.shape != t_logits.shape or s_deltas.shape != t_deltas.shape:
            raise ConfigValueError(
                "DSIG logits KD: the teacher's dense predictions do not align with the "
                f"student's ({tuple(t_logits.shape)} vs {tuple(s_logits.shape)}); both need the "
                "same anchors, levels and classes"
            )
        labels = torch.stack(context.dense_targets[0])  # (N, R): -1 ignored, K background
        valid = labels >= 0
        fg = valid & (labels < num_classes)
        losses = {}
        if dsig.computes("roi_cls"):
            kl = kl_div_with_temperature(
                s_logits[valid].float(), t_logits[valid], self.settings.temperature,
                reduction="none",
            )  # fmt: skip
            entries = max(int(valid.sum()) * num_classes, 1)
            losses["loss_dsig_roi_cls"] = kl.sum() / entries
        if dsig.computes("roi_reg"):
            beta = getattr(student, "smooth_l1_beta", 0.0)
            reg = F.smooth_l1_loss(
                s_deltas[fg].float(), t_deltas[fg], beta=beta, reduction="sum"
            ) if beta > 0 else (s_deltas[fg].float() - t_deltas[fg]).abs().sum()  # fmt: skip
            losses["loss_dsig_roi_reg"] = reg / max(int(fg.sum()), 1)
        return losses
