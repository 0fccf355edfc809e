"""Dsig: structured instance graphs over the student's RoIs (R-CNN) or detections (one-stage).

Nodes are the RoI-pooled FPN features (before the box head) of the RoIs the student's RoI heads
sampled in this iteration, pooled with the same boxes from the student's and the teacher's
pyramid, so node i covers the same region on both sides. Per image:

* foreground nodes: RoIs matched to an object; background nodes: the others;
* the teacher's box head scores every sampled RoI once; a background RoI joins the graph when the
  teacher's cross-entropy against background is at least ``MINING_THRESHOLD``;
* edges: cosine similarities among foreground + mined background nodes.

One-stage students (RetinaNet, FCOS) have no sampled RoIs: their nodes are the student's own
detections at the current iteration (score threshold 0, top 1000 per level, NMS 0.5, at most 100
per image), pooled 7x7 with ROIAlignV2 from both pyramids; every node is a foreground node, and
there is no background term or mining.

Losses (sums over images of per-image means, see :mod:`distill.modules.relation_graph`):
``loss_dsig_fg_node`` (weight ``FG_NODE_WEIGHT``), ``loss_dsig_bg_node`` over *all* sampled
background RoIs with the per-image weight ``BG_WEIGHT_ALPHA * N_fg / N_bg`` (``BG_NODE_WEIGHT``),
``loss_dsig_edge`` (0.5 x mean squared edge difference, ``EDGE_WEIGHT``), and optionally RoI
classification KD, RoI box-regression KD and full FPN imitation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from distill.context import DistillContext
from distill.distiller import Distiller
from distill.errors import ConfigValueError
from distill.modeling import HEAD_CONFIG_NODES
from distill.modules import (
    ObjectGroups,
    adaptive_background_weight,
    build_adapter,
    edge_loss,
    kl_div_with_temperature,
    mine_background,
    node_errors,
    node_loss,
    per_image_sum_of_means,
)
from distill.registry import DISTILLER_REGISTRY
from dsig.nodes import HEAD, detection_boxes, roi_reg_kd

POOLER, PREDICTOR = "roi_heads.box_pooler", "roi_heads.box_predictor"


@DISTILLER_REGISTRY.register()
class Dsig(Distiller):
    """Deep structured instance graph distillation of a Faster R-CNN student.

    Args:
        fg_node_weight, bg_node_weight, edge_weight: loss weights (0 switches a term off).
        bg_weight_alpha: alpha of the adaptive background weight; <= 0 gives every image
            weight 1.
        mining_threshold: T of the background mining; a negative value keeps no background node
            in the graph.
        similarity: edge similarity, ``"instance"`` or ``"channel"``.
        roi_cls_weight, temperature: RoI classification KD (KL with temperature, mean over all
            RoI x class entries as in the official code); on a one-stage student, the same over
            the softmax of the class logits at non-ignored anchors.
        roi_reg_weight: RoI box-regression KD (L1 at the ground-truth class columns of
            foreground RoIs, summed and divided by the number of RoIs); on a one-stage student,
            smooth-L1 of the box deltas at foreground anchors over their number.
        feature_weight: full FPN imitation: weight x sum over levels of the MSE.
        adapter: student-width -> teacher-width module applied to student maps and nodes, or
            None when the widths are equal.
        dense_student: the student is a RetinaNet/FCOS: detections are the nodes.
        node_poolers: one-stage only, the (student, teacher) RoI poolers of the nodes.
    """

    config_node = "DSIG"
    # the R-CNN set; a one-stage student's instance swaps sampled_proposals for images
    needs = frozenset(
        {"student_features", "teacher_features", "teacher", "sampled_proposals", "gt_instances"}
    )

    @configurable
    def __init__(
        self,
        *,
        fg_node_weight: float = 0.5,
        bg_node_weight: float = 0.5,
        edge_weight: float = 1.0,
        bg_weight_alpha: float = 7.5,
        mining_threshold: float = 0.6,
        similarity: str = "instance",
        roi_cls_weight: float = 0.0,
        temperature: float = 1.0,
        roi_reg_weight: float = 0.0,
        feature_weight: float = 0.0,
        adapter: nn.Module | None = None,
        dense_student: bool = False,
        levels: list[str] | None = None,
        node_poolers: tuple[ROIPooler, ROIPooler] | None = None,
        **kwargs,
    ):
        base = {"student_features", "teacher_features", "teacher", "gt_instances"}
        dense_items = {"images"} | (
            {"dense_targets"} if roi_cls_weight or roi_reg_weight else set()
        )
        self.needs = frozenset(base | (dense_items if dense_student else {"sampled_proposals"}))
        modules = (HEAD,) if dense_student else (POOLER, PREDICTOR)
        super().__init__(student_modules=modules, **kwargs)
        self.dense_student = dense_student
        self.levels = list(levels or [])
        self.node_poolers = node_poolers
        self.fg_node_weight = fg_node_weight
        self.bg_node_weight = bg_node_weight
        self.edge_weight = edge_weight
        self.bg_weight_alpha = bg_weight_alpha
        self.mining_threshold = mining_threshold
        self.similarity = similarity
        self.roi_cls_weight = roi_cls_weight
        self.temperature = temperature
        self.roi_reg_weight = roi_reg_weight
        self.feature_weight = feature_weight
        self.adapter = adapter

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        super().add_config(cfg)
        node = cfg[cls.config_node]
        if "FG_NODE_WEIGHT" in node:
            return
        node.FG_NODE_WEIGHT = 0.5  # foreground node MSE (official FEATURE_ROIPOOL_FG_LOSS_WEIGHT)
        node.BG_NODE_WEIGHT = 0.5  # background node MSE; 0 = off (official R101<-R152 config)
        node.BG_WEIGHT_ALPHA = 7.5  # per-image background weight alpha * N_fg / N_bg; <= 0: 1
        node.EDGE_WEIGHT = 1.0  # edge loss lambda_E (official REGION_CORRELATION_LOSS_WEIGHT_POOL)
        # Background RoIs join the graph when the teacher's CE against background >= this;
        # negative = no background node in the graph (foreground-only edges).
        node.MINING_THRESHOLD = 0.6
        node.SIMILARITY = "instance"  # edge similarity: "instance" (cosine) or "channel"
        node.ROI_CLS_WEIGHT = 0.0  # RoI classification KD (KL, temperature below); 0 = off
        node.TEMPERATURE = 1.0  # temperature of the RoI classification KD
        node.ROI_REG_WEIGHT = 0.0  # RoI box-regression KD (L1 at GT-class columns); 0 = off
        node.FEATURE_WEIGHT = 0.0  # full FPN imitation, weight x sum of per-level MSE; 0 = off
        node.ADAPTER = "Conv1x1Adapter"  # student->teacher width adapter when the widths differ

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cfg[cls.config_node]
        if node.SIMILARITY not in ("instance", "channel"):
            raise ConfigValueError(f"DSIG.SIMILARITY: {node.SIMILARITY!r} is not instance/channel")
        dense = issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), DenseDetector)
        arch = cfg.MODEL.META_ARCHITECTURE
        head_node = HEAD_CONFIG_NODES.get(arch)
        if head_node is None or not arch.startswith("Distill"):
            raise ConfigValueError(
                f"DSIG: MODEL.META_ARCHITECTURE {arch!r} is not supported; use one of "
                f"{sorted(a for a in HEAD_CONFIG_NODES if a.startswith('Distill'))}"
            )
        levels = list(cfg.MODEL[head_node].IN_FEATURES)
        missing = [lvl for lvl in levels if lvl not in teacher_shapes]
        if missing:
            raise ConfigValueError(
                f"DSIG: the teacher backbone has no {missing} (it has {sorted(teacher_shapes)}); "
                f"the student's MODEL.{head_node}.IN_FEATURES must exist in both pyramids"
            )
        s_width = {student_shapes[lvl].channels for lvl in levels}
        t_width = {teacher_shapes[lvl].channels for lvl in levels}
        if len(s_width) != 1 or len(t_width) != 1:
            raise ConfigValueError("DSIG: the pooled levels must share one width on each side")
        s_width, t_width = s_width.pop(), t_width.pop()
        adapter = build_adapter(node.ADAPTER, s_width, t_width) if s_width != t_width else None
        poolers = None
        if dense:
            poolers = tuple(
                ROIPooler(
                    output_size=7,
                    scales=[1.0 / shapes[lvl].stride for lvl in levels],
                    sampling_ratio=0,
                    pooler_type="ROIAlignV2",
                )
                for shapes in (student_shapes, teacher_shapes)
            )
        return {
            **super().from_config(cfg, student_shapes, teacher_shapes),
            "fg_node_weight": node.FG_NODE_WEIGHT,
            "bg_node_weight": node.BG_NODE_WEIGHT,
            "edge_weight": node.EDGE_WEIGHT,
            "bg_weight_alpha": node.BG_WEIGHT_ALPHA,
            "mining_threshold": node.MINING_THRESHOLD,
            "similarity": node.SIMILARITY,
            "roi_cls_weight": node.ROI_CLS_WEIGHT,
            "temperature": node.TEMPERATURE,
            "roi_reg_weight": node.ROI_REG_WEIGHT,
            "feature_weight": node.FEATURE_WEIGHT,
            "adapter": adapter,
            "dense_student": dense,
            "node_poolers": poolers,
            "levels": levels,
        }

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.adapter is None else self.adapter(x)

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

    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        if self.dense_student:
            losses = self.detection_graph_losses(context)
        else:
            losses = self.roi_graph_losses(context)
        if self.feature_weight:
            s_feats, t_feats = context.student_features, context.teacher_features
            levels = [lvl for lvl in s_feats if lvl in t_feats]
            mse = [F.mse_loss(self.adapt(s_feats[lvl].float()), t_feats[lvl]) for lvl in levels]
            losses["loss_dsig_feature"] = self.feature_weight * torch.stack(mse).sum()
        return losses

    def detection_graph_losses(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """One-stage student: node and edge losses over its current detections."""
        student = context.student
        boxes = detection_boxes(student, context)
        counts = torch.tensor([len(b) for b in boxes], device=context.images.tensor.device)
        groups = ObjectGroups(
            torch.repeat_interleave(torch.arange(len(boxes), device=counts.device), counts),
            len(boxes),
        )
        s_pool, t_pool = self.node_poolers
        s_nodes = self.adapt(
            s_pool([context.student_features[f].float() for f in self.levels], boxes)
        )
        with torch.no_grad():
            t_nodes = t_pool([context.teacher_features[f] for f in self.levels], boxes)
        losses = {}
        if self.fg_node_weight:
            losses["loss_dsig_fg_node"] = self.fg_node_weight * node_loss(s_nodes, t_nodes, groups)
        if self.edge_weight:
            losses["loss_dsig_edge"] = self.edge_weight * edge_loss(
                s_nodes, t_nodes, groups, self.similarity
            )
        if self.roi_cls_weight or self.roi_reg_weight:
            losses.update(self.dense_prediction_kd(context))
        return losses

    def dense_prediction_kd(self, context: DistillContext) -> dict[str, torch.Tensor]:
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
        if self.roi_cls_weight:
            kl = kl_div_with_temperature(
                s_logits[valid].float(), t_logits[valid], self.temperature, reduction="none"
            )
            entries = max(int(valid.sum()) * num_classes, 1)
            losses["loss_dsig_roi_cls"] = self.roi_cls_weight * kl.sum() / entries
        if self.roi_reg_weight:
            beta = getattr(student, "smooth_l1_beta", 0.0)
            reg = F.smooth_l1_loss(
                s_deltas[fg].float(), t_deltas[fg], beta=beta, reduction="sum"
            ) if beta > 0 else (s_deltas[fg].float() - t_deltas[fg]).abs().sum()  # fmt: skip
            losses["loss_dsig_roi_reg"] = self.roi_reg_weight * reg / max(int(fg.sum()), 1)
        return losses

    def roi_graph_losses(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """R-CNN student: node, edge and RoI KD losses over its sampled RoIs."""
        proposals = context.sampled_proposals
        boxes = [p.proposal_boxes for p in proposals]
        num_classes = context.student.roi_heads.num_classes
        classes = torch.cat([p.gt_classes for p in proposals])
        image_index = torch.repeat_interleave(
            torch.arange(len(proposals), device=classes.device),
            torch.tensor([len(p) for p in proposals], device=classes.device),
        )
        student = self.adapt(context.student_records[POOLER].float())  # (R, C, 7, 7)
        fg = (classes >= 0) & (classes < num_classes)
        bg = ~fg
        mining = bool(self.edge_weight) and self.mining_threshold >= 0
        # the teacher's box head scores every RoI for the RoI KD, only background ones to mine
        scored = bg if mining else None
        if self.roi_cls_weight or self.roi_reg_weight:
            scored = torch.ones_like(fg)
        teacher, t_scores, t_deltas = self.teacher_rois(context, boxes, scored)
        node_terms = self.fg_node_weight or self.bg_node_weight
        errors = node_errors(student, teacher) if node_terms else None
        per_node = student[0].numel() if len(student) else 1
        losses = {}
        if self.fg_node_weight:
            groups = ObjectGroups(image_index[fg], len(proposals))
            losses["loss_dsig_fg_node"] = self.fg_node_weight * per_image_sum_of_means(
                errors[fg], groups, per_node
            )
        if self.bg_node_weight:
            groups = ObjectGroups(image_index[bg], len(proposals))
            weights = None
            if self.bg_weight_alpha > 0:
                n_fg = torch.bincount(image_index[fg], minlength=len(proposals))
                weights = adaptive_background_weight(n_fg, groups.counts, self.bg_weight_alpha)
            losses["loss_dsig_bg_node"] = self.bg_node_weight * per_image_sum_of_means(
                errors[bg], groups, per_node, weights
            )
        if self.edge_weight:
            in_graph = fg.clone()
            if mining:
                in_graph[scored] |= bg[scored] & mine_background(t_scores, self.mining_threshold)
            groups = ObjectGroups(image_index[in_graph], len(proposals))
            losses["loss_dsig_edge"] = self.edge_weight * edge_loss(
                student[in_graph], teacher[in_graph], groups, self.similarity
            )
        if self.roi_cls_weight or self.roi_reg_weight:
            s_scores, s_deltas = context.student_records[PREDICTOR]
            if self.roi_cls_weight:
                kl = kl_div_with_temperature(
                    s_scores, t_scores, self.temperature, reduction="none"
                )  # (R,): sum over classes; the official mean runs over R x (K + 1) entries
                losses["loss_dsig_roi_cls"] = self.roi_cls_weight * kl.sum() / s_scores.numel()
            if self.roi_reg_weight:
                losses["loss_dsig_roi_reg"] = self.roi_reg_weight * roi_reg_kd(
                    s_deltas, t_deltas, classes, fg
                )
        return losses
