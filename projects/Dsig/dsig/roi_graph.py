"""Dsig on an R-CNN student: the graph over the RoIs its RoI heads sampled this iteration.

Nodes are the RoI-pooled FPN features (before the box head), pooled with the same boxes from the
student's and the teacher's pyramid, so node i covers the same region on both sides. Per image:
foreground nodes are RoIs matched to an object, background nodes the others; the teacher's box
head scores the RoIs once, and a background RoI joins the graph (the edges) when the teacher's
cross-entropy against background is at least ``MINING_THRESHOLD``.
"""

from __future__ import annotations

import torch
from detectron2.modeling import GeneralizedRCNN

from distill.context import DistillContext
from distill.errors import ConfigValueError
from distill.modules import (
    ObjectGroups,
    adaptive_background_weight,
    edge_loss,
    kl_div_with_temperature,
    mine_background,
    node_errors,
    per_image_sum_of_means,
)
from dsig.nodes import GraphSettings, roi_reg_kd

POOLER, PREDICTOR = "roi_heads.box_pooler", "roi_heads.box_predictor"


class RoIGraph:
    """Node, edge and RoI-prediction losses over the sampled RoIs (terms ``fg_node``,
    ``bg_node``, ``edge``, ``roi_cls``, ``roi_reg``)."""

    student_modules = (POOLER, PREDICTOR)
    needs = frozenset({"sampled_proposals"})

    def __init__(self, settings: GraphSettings):
        self.settings = settings

    def teacher_rois(
        self, context: DistillContext, boxes: list, scored: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The teacher's pooled nodes of the student's RoIs, (R, C, 7, 7), and its box head's
        (scores, deltas) for the RoIs selected by the bool mask ``scored`` (None: no RoI)."""
        teacher = context.teacher
        model = teacher.model
        if not isinstance(model, GeneralizedRCNN) or model.roi_heads is None:
            raise ConfigValueError("DSIG with a Faster R-CNN student needs an R-CNN teacher")
        features = context.teacher_features
        scores = deltas = None
        with teacher.inference():
            maps = [features[f] for f in model.roi_heads.box_in_features]
            pooled = model.roi_heads.box_pooler(maps, boxes)
            if scored is not None:
                head_input = pooled if bool(scored.all()) else pooled[scored]
                scores, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(head_input))
        return pooled.float(), scores, deltas

    def losses(self, context: DistillContext, dsig) -> dict[str, torch.Tensor]:
        """Unweighted losses of the terms ``dsig.computes``; ``dsig.adapt`` maps student nodes
        to the teacher's width."""
        proposals = context.sampled_proposals
        boxes = [p.proposal_boxes for p in proposals]
        num_classes = context.student.roi_heads.num_classes
        classes = torch.cat([p.gt_classes for p in proposals])
        image_index = torch.repeat_interleave(
            torch.arange(len(proposals), device=classes.device),
            torch.tensor([len(p) for p in proposals], device=classes.device),
        )
        student = dsig.adapt(context.student_records[POOLER].float())  # (R, C, 7, 7)
        fg = (classes >= 0) & (classes < num_classes)
        bg = ~fg
        predictions_kd = dsig.computes("roi_cls") or dsig.computes("roi_reg")
        mining = dsig.computes("edge") and self.settings.mine_background
        # the teacher's box head scores every RoI for the RoI KD, only background ones to mine
        scored = torch.ones_like(fg) if predictions_kd else (bg if mining else None)
        teacher, t_scores, t_deltas = self.teacher_rois(context, boxes, scored)
        node_terms = dsig.computes("fg_node") or dsig.computes("bg_node")
        errors = node_errors(student, teacher) if node_terms else None
        per_node = student[0].numel() if len(student) else 1
        losses = {}
        if dsig.computes("fg_node"):
            groups = ObjectGroups(image_index[fg], len(proposals))
            losses["loss_dsig_fg_node"] = per_image_sum_of_means(errors[fg], groups, per_node)
        if dsig.computes("bg_node"):
            groups = ObjectGroups(image_index[bg], len(proposals))
            weights = None
            if self.settings.adaptive_bg_weight:
                n_fg = torch.bincount(image_index[fg], minlength=len(proposals))
                weights = adaptive_background_weight(
                    n_fg, groups.counts, self.settings.bg_weight_alpha
                )
            losses["loss_dsig_bg_node"] = per_image_sum_of_means(
                errors[bg], groups, per_node, weights
            )
        if dsig.computes("edge"):
            in_graph = fg.clone()
            if mining:
                mined = mine_background(t_scores, self.settings.mining_threshold)
                in_graph[scored] |= bg[scored] & mined
            groups = ObjectGroups(image_index[in_graph], len(proposals))
            losses["loss_dsig_edge"] = edge_loss(
                student[in_graph], teacher[in_graph], groups, self.settings.similarity
            )
        if predictions_kd:
            s_scores, s_deltas = context.student_records[PREDICTOR]
            if dsig.computes("roi_cls"):
                kl = kl_div_with_temperature(
                    s_scores, t_scores, self.settings.temperature, reduction="none"
                )  # (R,): sum over classes; the official mean runs over R x (K + 1) entries
                losses["loss_dsig_roi_cls"] = kl.sum() / s_scores.numel()
            if dsig.computes("roi_reg"):
                losses["loss_dsig_roi_reg"] = roi_reg_kd(s_deltas, t_deltas, classes, fg)
        return losses
