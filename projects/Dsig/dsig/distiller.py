"""Dsig: structured instance graphs over the student's RoIs (R-CNN) or detections (one-stage).

The graph depends on the student: :class:`~dsig.roi_graph.RoIGraph` for an R-CNN (nodes are the
sampled RoIs, with background mining) and :class:`~dsig.detection_graph.DetectionGraph` for
RetinaNet / FCOS (nodes are the student's detections). The distiller owns the config, the
student-to-teacher width adapter and the full FPN imitation term.

Losses (sums over images of per-image means, see :mod:`distill.modules.relation_graph`), each
weighted by ``DSIG.WEIGHTS.<TERM>``: ``loss_dsig_fg_node``; ``loss_dsig_bg_node`` (R-CNN only)
over *all* sampled background RoIs, with the per-image weight ``BG_WEIGHT_ALPHA * N_fg / N_bg``
when ``ADAPTIVE_BG_WEIGHT``; ``loss_dsig_edge`` (0.5 x mean squared edge difference); optionally
``loss_dsig_roi_cls`` (classification KD), ``loss_dsig_roi_reg`` (box-regression KD) and
``loss_dsig_feature`` (full FPN imitation: sum over levels of the MSE).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from distill.context import DistillContext
from distill.distiller import Distiller
from distill.errors import ConfigValueError
from distill.modules import build_adapter
from distill.registry import DISTILLER_REGISTRY
from dsig.detection_graph import DetectionGraph
from dsig.nodes import GraphSettings
from dsig.roi_graph import RoIGraph

logger = logging.getLogger(__name__)

# Keys that only the R-CNN graph reads (background nodes and mining).
RCNN_ONLY_KEYS = ("MINE_BACKGROUND", "MINING_THRESHOLD", "ADAPTIVE_BG_WEIGHT", "BG_WEIGHT_ALPHA")


@DISTILLER_REGISTRY.register()
class Dsig(Distiller):
    """Deep structured instance graph distillation.

    Args:
        graph: the student's graph (:class:`RoIGraph` or :class:`DetectionGraph`).
        adapter: student-width -> teacher-width module applied to student maps and nodes, or
            None when the widths are equal.
    """

    config_node = "DSIG"
    terms = {
        "fg_node": 0.5,  # foreground node MSE (official FEATURE_ROIPOOL_FG_LOSS_WEIGHT)
        "bg_node": 0.5,  # background node MSE (R-CNN only)
        "edge": 1.0,  # edge loss lambda_E (official REGION_CORRELATION_LOSS_WEIGHT_POOL)
        "roi_cls": 0.0,  # RoI classification KD (KL with DSIG.TEMPERATURE)
        "roi_reg": 0.0,  # RoI box-regression KD
        "feature": 0.0,  # full FPN imitation
    }
    student_kinds = ("two_stage", "dense")

    @configurable
    def __init__(self, *, graph: RoIGraph | DetectionGraph, adapter: nn.Module | None, **kwargs):
        super().__init__(student_modules=graph.student_modules, **kwargs)
        self.graph = graph
        self.adapter = adapter

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        super().add_config(cfg)
        node = cfg[cls.config_node]
        if "SIMILARITY" in node:
            return
        node.SIMILARITY = "instance"  # edge similarity: "instance" (cosine) or "channel"
        # R-CNN: background RoIs join the graph when the teacher's CE against background is at
        # least MINING_THRESHOLD; MINE_BACKGROUND False keeps the edges to foreground nodes.
        node.MINE_BACKGROUND = True
        node.MINING_THRESHOLD = 0.6
        # R-CNN: per-image background node weight BG_WEIGHT_ALPHA * N_fg / N_bg (else 1).
        node.ADAPTIVE_BG_WEIGHT = True
        node.BG_WEIGHT_ALPHA = 7.5
        node.TEMPERATURE = 1.0  # temperature of the classification KD
        node.ADAPTER = "Conv1x1Adapter"  # student->teacher width adapter when the widths differ

    @classmethod
    def needs_for(cls, cfg, student):
        base = {"student_features", "teacher_features", "teacher", "gt_instances"}
        if not student.is_dense:
            return frozenset(base | RoIGraph.needs)
        weights = cfg[cls.config_node].WEIGHTS
        dense_kd = {"dense_targets"} if weights.ROI_CLS or weights.ROI_REG else set()
        return frozenset(base | DetectionGraph.needs | dense_kd)

    @classmethod
    def terms_for(cls, cfg, student):
        return tuple(t for t in cls.terms if not (student.is_dense and t == "bg_node"))

    @classmethod
    def from_config(cls, cfg, student, teacher_shapes):
        ret = super().from_config(cfg, student, teacher_shapes)
        node = cfg[cls.config_node]
        if node.SIMILARITY not in ("instance", "channel"):
            raise ConfigValueError(f"DSIG.SIMILARITY: {node.SIMILARITY!r} is not instance/channel")
        if student.is_dense:
            warn_rcnn_only_keys(cfg, cls)
        levels = list(student.head_in_features)
        missing = [lvl for lvl in levels if lvl not in teacher_shapes]
        if missing:
            raise ConfigValueError(
                f"DSIG: the teacher backbone has no {missing} (it has {sorted(teacher_shapes)}); "
                f"the student's MODEL.{student.head_node}.IN_FEATURES must exist in both pyramids"
            )
        s_width = {student.feature_shapes[lvl].channels for lvl in levels}
        t_width = {teacher_shapes[lvl].channels for lvl in levels}
        if len(s_width) != 1 or len(t_width) != 1:
            raise ConfigValueError("DSIG: the pooled levels must share one width on each side")
        s_width, t_width = s_width.pop(), t_width.pop()
        settings = GraphSettings(
            similarity=node.SIMILARITY,
            mine_background=node.MINE_BACKGROUND,
            mining_threshold=node.MINING_THRESHOLD,
            adaptive_bg_weight=node.ADAPTIVE_BG_WEIGHT,
            bg_weight_alpha=node.BG_WEIGHT_ALPHA,
            temperature=node.TEMPERATURE,
        )
        if student.is_dense:
            poolers = tuple(
                ROIPooler(
                    output_size=7,
                    scales=[1.0 / shapes[lvl].stride for lvl in levels],
                    sampling_ratio=0,
                    pooler_type="ROIAlignV2",
                )
                for shapes in (student.feature_shapes, teacher_shapes)
            )
            graph = DetectionGraph(settings, levels, poolers)
        else:
            graph = RoIGraph(settings)
        adapter = build_adapter(node.ADAPTER, s_width, t_width) if s_width != t_width else None
        return {**ret, "graph": graph, "adapter": adapter}

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.adapter is None else self.adapter(x)

    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        losses = self.graph.losses(context, self)
        if self.computes("feature"):
            s_feats, t_feats = context.student_features, context.teacher_features
            levels = [lvl for lvl in s_feats if lvl in t_feats]
            mse = [F.mse_loss(self.adapt(s_feats[lvl].float()), t_feats[lvl]) for lvl in levels]
            losses["loss_dsig_feature"] = torch.stack(mse).sum()
        return losses


def warn_rcnn_only_keys(cfg, cls: type[Dsig]) -> None:
    """Warn about R-CNN-only keys set away from their defaults on a one-stage student."""
    defaults = CN()
    cls.add_config(defaults)
    node, default = cfg[cls.config_node], defaults[cls.config_node]
    changed = [k for k in RCNN_ONLY_KEYS if node[k] != default[k]]
    if changed:
        logger.warning(
            "DSIG.%s: no effect on a one-stage student (it has no background RoIs)",
            ", DSIG.".join(changed),
        )
