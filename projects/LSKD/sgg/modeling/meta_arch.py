"""``SceneGraphRCNN``: a Faster R-CNN detector with a relation head, and its Distill variant.

The detector (backbone, RPN, box head) is trained first as a plain ``GeneralizedRCNN``; the
relation head then trains with it frozen (``MODEL.ROI_RELATION_HEAD.FREEZE_DETECTOR``), as the
benchmark does. The task (PredCls, SGCls, SGDet) decides where the objects come from: GT boxes
(with GT labels in PredCls) or the detector's detections. The relation head's object and union
MLPs have the box head's architecture; when a checkpoint carries the detector's box head but no
relation head (a detector checkpoint), they start as copies of it.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances, pairwise_iou

from distill.errors import ConfigKeyError
from distill.modeling.distill_arch import DistillMixin
from sgg.modeling.frequency_bias import predicate_statistics
from sgg.modeling.relation_head import RelationHead

logger = logging.getLogger(__name__)

DETECTOR_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")
_BOX_HEAD = "roi_heads.box_head."
_COPIES = ("relation_head.object_head.", "relation_head.union.head.")


def training_statistics(cfg):
    """Predicate counts of ``DATASETS.TRAIN[0]`` for the frequency bias, or None when unused."""
    rel = cfg.MODEL.ROI_RELATION_HEAD
    if not rel.USE_FREQ_BIAS or not cfg.DATASETS.TRAIN:
        return None
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    return predicate_statistics(dicts, rel.NUM_CLASSES, rel.NUM_PREDICATES)


@contextlib.contextmanager
def _eval_mode(*modules: torch.nn.Module):
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


@META_ARCH_REGISTRY.register()
class SceneGraphRCNN(GeneralizedRCNN):
    """Faster R-CNN + relation head. Eval output per image: ``instances`` (original image
    size: ``pred_boxes``, ``scores``, ``pred_classes``), ``rel_pair_idxs`` (M, 2) sorted by
    ``triplet_scores`` (M,), ``rel_scores`` (M, P + 1) (background column 0)."""

    @configurable
    def __init__(
        self,
        *,
        relation_head: RelationHead,
        freeze_detector: bool = True,
        max_detections: int = 80,
        add_gt_boxes_in_train: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.relation_head = relation_head
        self.freeze_detector = freeze_detector
        self.max_detections = max_detections
        self.add_gt_boxes_in_train = add_gt_boxes_in_train
        if freeze_detector:
            for name, param in self.named_parameters():
                if name.startswith(DETECTOR_PREFIXES):
                    param.requires_grad_(False)
        self._register_load_state_dict_pre_hook(_init_relation_mlps_from_box_head)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        rel = cfg.MODEL.ROI_RELATION_HEAD
        if rel.NUM_CLASSES != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigKeyError(
                f"MODEL.ROI_RELATION_HEAD.NUM_CLASSES ({rel.NUM_CLASSES}) differs from "
                f"MODEL.ROI_HEADS.NUM_CLASSES ({cfg.MODEL.ROI_HEADS.NUM_CLASSES})"
            )
        shapes = ret["backbone"].output_shape()
        ret["relation_head"] = RelationHead(cfg, shapes, statistics=training_statistics(cfg))
        ret["freeze_detector"] = rel.FREEZE_DETECTOR
        ret["max_detections"] = rel.MAX_PROPOSALS_PER_IMAGE
        ret["add_gt_boxes_in_train"] = rel.ADD_GTBOX_TO_PROPOSAL_IN_TRAIN
        return ret

    @property
    def mode(self) -> str:
        return self.relation_head.mode

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_detector:  # a frozen detector keeps its BN statistics and test behaviour
            for module in (self.backbone, self.proposal_generator, self.roi_heads):
                module.eval()
        return self

    def _detector_context(self):
        return torch.no_grad() if self.freeze_detector else contextlib.nullcontext()

    def box_logits(self, features: dict, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """The detector's (N_i, C + 1) class logits of given boxes, per image."""
        heads = self.roi_heads
        maps = [features[f] for f in heads.box_in_features]
        pooled = heads.box_pooler(maps, [Boxes(b) for b in boxes])
        scores, _ = heads.box_predictor(heads.box_head(pooled))
        return list(scores.split([len(b) for b in boxes]))

    def detect(self, images, features: dict) -> list[Instances]:
        """The detector's test-time detections, at most ``max_detections`` per image."""
        with torch.no_grad(), _eval_mode(self.proposal_generator, self.roi_heads):
            proposals, _ = self.proposal_generator(images, features, None)
            detections, _ = self.roi_heads(images, features, proposals, None)
        return [d[: self.max_detections] for d in detections]

    def relation_objects(self, images, features: dict, gt: list[Instances] | None):
        """Per image the objects of the relation head, and (SGDet training) their label-aware
        IoU with the GT objects, (N_i, G_i)."""
        training = self.training
        num_detected = None
        if self.mode == "sgdet":
            boxes = [d.pred_boxes.tensor for d in self.detect(images, features)]
            num_detected = [len(b) for b in boxes]
            if training and self.add_gt_boxes_in_train:
                boxes = [torch.cat([b, g.gt_boxes.tensor]) for b, g in zip(boxes, gt, strict=True)]
        else:
            boxes = [g.gt_boxes.tensor for g in gt]
        with self._detector_context():
            det_logits = self.box_logits(features, boxes)
        objects, matches = [], []
        for i, (b, logits) in enumerate(zip(boxes, det_logits, strict=True)):
            obj = Instances(images.image_sizes[i], boxes=b, det_logits=logits)
            num_classes = logits.shape[1] - 1
            if self.mode != "sgdet":
                if training or self.mode == "predcls":
                    obj.labels = gt[i].gt_classes
                    obj.targets = gt[i].gt_classes
            elif training:
                predicted = logits[:, :-1].argmax(dim=1)
                predicted[num_detected[i] :] = gt[i].gt_classes[: len(b) - num_detected[i]]
                same = predicted[:, None] == gt[i].gt_classes[None, :]
                iou = pairwise_iou(Boxes(b), gt[i].gt_boxes) * same
                best_iou, best = iou.max(dim=1) if iou.shape[1] else (iou.sum(1), iou.sum(1).long())
                matched = best_iou > self.relation_head.sampler.fg_iou_threshold
                gt_labels = gt[i].gt_classes[best] if iou.shape[1] else predicted
                obj.labels = torch.where(matched, gt_labels, predicted)
                obj.targets = torch.where(
                    matched, gt_labels, torch.full_like(predicted, num_classes)
                )
                matches.append(iou)
            objects.append(obj)
        return objects, (matches if self.mode == "sgdet" and training else None)

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        relations = [x["relations"].to(self.device) for x in batched_inputs]
        with self._detector_context():
            features = self.backbone(images.tensor)
        losses = {}
        if not self.freeze_detector:
            proposals, proposal_losses = self.proposal_generator(images, features, gt)
            _, detector_losses = self.roi_heads(images, features, proposals, gt)
            losses.update(proposal_losses)
            losses.update(detector_losses)
        objects, matches = self.relation_objects(images, features, gt)
        losses.update(self.relation_head.losses(features, objects, relations, matches))
        return losses

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True):
        images = self.preprocess_image(batched_inputs)
        gt = None
        if self.mode != "sgdet":
            missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
            if missing:
                raise KeyError(
                    f"{self.mode} needs the GT boxes at test time: inputs {missing} have no "
                    "'instances' (use sgg's SceneGraphDatasetMapper for the test loader)"
                )
            gt = [x["instances"].to(self.device) for x in batched_inputs]
        with torch.no_grad():
            features = self.backbone(images.tensor)
            objects, _ = self.relation_objects(images, features, gt)
            results = self.relation_head.inference(features, objects)
        outputs = []
        for x, obj, res, size in zip(batched_inputs, objects, results, images.image_sizes,
                                     strict=True):  # fmt: skip
            height, width = (
                (x.get("height", size[0]), x.get("width", size[1])) if do_postprocess else size
            )
            boxes = Boxes(obj.boxes.clone())
            boxes.scale(width / size[1], height / size[0])
            boxes.clip((height, width))
            instances = Instances((height, width), pred_boxes=boxes, scores=res["scores"],
                                  pred_classes=res["labels"])  # fmt: skip
            outputs.append({"instances": instances, **{k: res[k] for k in
                            ("rel_pair_idxs", "rel_scores", "triplet_scores")}})  # fmt: skip
        return outputs


def _init_relation_mlps_from_box_head(state_dict, prefix, *args) -> None:
    """Before loading: a checkpoint with the detector's box head and no relation MLPs gives
    each relation MLP a copy of the box head."""
    head = prefix + _BOX_HEAD
    box_head = {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}
    if not box_head:
        return
    for copy in _COPIES:
        if not any(k.startswith(prefix + copy) for k in state_dict):
            for name, value in box_head.items():
                state_dict[prefix + copy + name] = value.clone()
            logger.info("%s initialised from the detector's box head", copy.rstrip("."))


@META_ARCH_REGISTRY.register()
class DistillSceneGraphRCNN(DistillMixin, SceneGraphRCNN):
    """SceneGraphRCNN with distillers; eval is exactly ``SceneGraphRCNN``. Distillers record
    e.g. ``relation_head.predictor`` (RelationOutputs) and ``relation_head.sampler`` (sampled
    pairs and predicate labels)."""

    student_kind = "scene_graph"
    head_config_node = "ROI_HEADS"
    plain_architecture = "SceneGraphRCNN"
