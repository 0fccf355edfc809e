"""The relation head: object and pair features, a predicate predictor, the frequency bias, the
losses in training and ranked scene graphs at test.

Objects come from the meta-architecture (GT boxes in PredCls / SGCls, detections in SGDet) as
per-image ``Instances`` with ``boxes`` (N_i, 4), ``det_logits`` (N_i, C + 1) and, when known,
``labels`` (N_i,) 0 .. C-1 and ``targets`` (N_i,) refinement targets (C = background).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import build_box_head
from detectron2.structures import Boxes, Instances
from torch import nn

from distill.errors import ConfigValueError
from sgg.modeling.frequency_bias import FrequencyBias
from sgg.modeling.inference import rank_relations, refine_labels_with_nms
from sgg.modeling.predictors import build_predictor
from sgg.modeling.sampling import PairSampler, all_ordered_pairs
from sgg.modeling.structures import RelationInputs, RelationOutputs
from sgg.modeling.union_features import UnionFeatures


class RelationHead(nn.Module):
    """Predicts predicates for object pairs.

    Args:
        in_features: FPN levels pooled for object and union boxes.
        pooler: the RoI pooler (the box head's settings).
        object_head / union: object-box MLP and :class:`UnionFeatures` (their MLP starts as a
            copy of the detector's box head, see ``SceneGraphRCNN``).
        predictor: a registered predicate predictor.
        freq_bias: :class:`FrequencyBias` or None.
        sampler: training pairs.
        mode: ``predcls``, ``sgcls`` or ``sgdet``.
        require_overlap: test pairs only between intersecting boxes.
        later_nms_threshold: SGDet test, per-class NMS over refined labels.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        pooler: ROIPooler,
        object_head: nn.Module,
        union: UnionFeatures,
        predictor: nn.Module,
        freq_bias: FrequencyBias | None,
        sampler: PairSampler,
        mode: str,
        require_overlap: bool = False,
        later_nms_threshold: float = 0.5,
    ):
        super().__init__()
        self.in_features = in_features
        self.pooler = pooler
        self.object_head = object_head
        self.union = union
        self.predictor = predictor
        self.freq_bias = freq_bias
        self.sampler = sampler
        self.mode = mode
        self.require_overlap = require_overlap
        self.later_nms_threshold = later_nms_threshold

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec], statistics=None):
        rel = cfg.MODEL.ROI_RELATION_HEAD
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ConfigValueError("ROI_RELATION_HEAD: the pooled FPN levels must share a width")
        channels = channels.pop()
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        shape = ShapeSpec(channels=channels, height=resolution, width=resolution)
        object_head = build_box_head(cfg, shape)
        union = UnionFeatures(pooler, channels, resolution, build_box_head(cfg, shape))
        feature_dim = object_head.output_shape.channels
        freq_bias = None
        if rel.USE_FREQ_BIAS:
            freq_bias = FrequencyBias(rel.NUM_CLASSES, rel.NUM_PREDICATES, statistics)
        return {
            "in_features": in_features,
            "pooler": pooler,
            "object_head": object_head,
            "union": union,
            "predictor": build_predictor(cfg, feature_dim),
            "freq_bias": freq_bias,
            "sampler": PairSampler(
                rel.BATCH_SIZE_PER_IMAGE,
                rel.POSITIVE_FRACTION,
                rel.NUM_SAMPLE_PER_GT_REL,
                cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[-1],
            ),
            "mode": mode_of(cfg),
            "require_overlap": cfg.TEST.RELATION.REQUIRE_OVERLAP,
            "later_nms_threshold": rel.LATER_NMS_PREDICTION_THRES,
        }

    def predict(
        self,
        features: dict[str, torch.Tensor],
        objects: list[Instances],
        pairs: list[torch.Tensor],
        rel_binary: list[torch.Tensor] | None = None,
    ) -> tuple[RelationInputs, RelationOutputs, torch.Tensor]:
        """Run features, predictor and bias; returns the predictor's inputs and outputs and the
        (M, P + 1) predicate logits with the frequency bias added."""
        maps = [features[f] for f in self.in_features]
        boxes = [o.boxes for o in objects]
        obj_features = self.object_head(self.pooler(maps, [Boxes(b) for b in boxes]))
        inputs = RelationInputs(
            obj_features=obj_features,
            union_features=self.union(maps, boxes, pairs),
            boxes=boxes,
            image_sizes=[o.image_size for o in objects],
            pair_idxs=pairs,
            obj_det_logits=torch.cat([o.det_logits for o in objects]),
            obj_labels=torch.cat([o.labels for o in objects]) if objects[0].has("labels") else None,
            mode=self.mode,
            rel_binary=rel_binary,
        )
        outputs = self.predictor(inputs)
        rel_logits = outputs.rel_logits
        if self.freq_bias is not None:
            flat = inputs.global_pair_idxs()
            preds = outputs.obj_preds
            rel_logits = rel_logits + self.freq_bias(preds[flat[:, 0]], preds[flat[:, 1]])
        return inputs, outputs, rel_logits

    def losses(
        self,
        features: dict[str, torch.Tensor],
        objects: list[Instances],
        relations: list[torch.Tensor],
        matches: list[torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses: ``loss_rel`` (CE over sampled pairs), ``loss_refine_obj`` (SGCls /
        SGDet: CE of the refined object logits) and the predictor's own losses."""
        pairs, labels = self.sampler([len(o) for o in objects], relations, matches)
        # VCTree's tree target: every GT relation on GT boxes, the foreground pairs on detections
        related = [r[:, :2] for r in relations] if matches is None else [
            p[lab > 0] for p, lab in zip(pairs, labels, strict=True)
        ]  # fmt: skip
        rel_binary = [binary_relation_matrix(len(o), r) for o, r in
                      zip(objects, related, strict=True)]  # fmt: skip
        _, outputs, rel_logits = self.predict(features, objects, pairs, rel_binary)
        losses = {"loss_rel": F.cross_entropy(rel_logits.float(), torch.cat(labels))}
        if self.mode != "predcls":
            targets = torch.cat([o.targets for o in objects])
            losses["loss_refine_obj"] = F.cross_entropy(outputs.obj_logits.float(), targets)
        losses.update(outputs.losses)
        return losses

    def inference(
        self, features: dict[str, torch.Tensor], objects: list[Instances]
    ) -> list[dict[str, torch.Tensor]]:
        """Per image: refined object labels and scores, and every candidate pair ranked by
        triplet score (``rel_pair_idxs`` (M, 2), ``rel_scores`` (M, P + 1),
        ``triplet_scores`` (M,)); boxes stay in input-image pixels."""
        device = objects[0].boxes.device
        pairs = [all_ordered_pairs(len(o), device, o.boxes if self.require_overlap else None)
                 for o in objects]  # fmt: skip
        inputs, outputs, rel_logits = self.predict(features, objects, pairs)
        obj_logits = outputs.obj_logits.split(inputs.num_objs)
        obj_preds = outputs.obj_preds.split(inputs.num_objs)
        results = []
        per_image = zip(objects, pairs, obj_logits, obj_preds,
                        rel_logits.split(inputs.num_pairs), strict=True)  # fmt: skip
        for o, p, logits, preds, rel in per_image:
            if self.mode == "predcls":
                labels, scores = preds, torch.ones(len(o), device=device)
            elif self.mode == "sgdet":
                labels, scores = refine_labels_with_nms(o.boxes, logits, self.later_nms_threshold)
            else:
                labels = preds
                scores = logits.float().softmax(dim=1).gather(1, preds[:, None]).squeeze(1)
            ranked_pairs, rel_scores, triplet = rank_relations(p, rel, scores)
            results.append({
                "labels": labels, "scores": scores, "rel_pair_idxs": ranked_pairs,
                "rel_scores": rel_scores, "triplet_scores": triplet,
            })  # fmt: skip
        return results


def binary_relation_matrix(num_objects: int, fg_pairs: torch.Tensor) -> torch.Tensor:
    """(N, N) float, 1 where a foreground pair goes from i to j."""
    matrix = torch.zeros(num_objects, num_objects, device=fg_pairs.device)
    matrix[fg_pairs[:, 0], fg_pairs[:, 1]] = 1.0
    return matrix


def mode_of(cfg) -> str:
    """``predcls``, ``sgcls`` or ``sgdet`` from USE_GT_BOX / USE_GT_OBJECT_LABEL."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    if rel.USE_GT_OBJECT_LABEL and not rel.USE_GT_BOX:
        raise ConfigValueError(
            "MODEL.ROI_RELATION_HEAD: USE_GT_OBJECT_LABEL needs USE_GT_BOX (GT labels of "
            "detected boxes are not defined)"
        )
    if rel.USE_GT_BOX:
        return "predcls" if rel.USE_GT_OBJECT_LABEL else "sgcls"
    return "sgdet"
