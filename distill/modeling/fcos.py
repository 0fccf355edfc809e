"""FCOS buildable from a yacs config, with detectron2 v0.6's FCOS problems handled.

detectron2 v0.6 builds FCOS only from a LazyConfig. :class:`FCOS` here is the same model (same
module tree and parameter names) with a ``from_config`` reading ``MODEL.FCOS.*``, registered in
``META_ARCH_REGISTRY`` as ``"FCOS"``. Two v0.6 problems are handled here so that they stay fixed
on any detectron2 build, patched or not:

* GroupNorm probe: ``RetinaNetHead`` probes its norm with 1 channel, which ``GroupNorm(32, 1)``
  rejects on torch >= 1.13. The head gets a norm factory returning ``GroupNorm(gcd(32, c), c)``,
  which builds exactly ``GroupNorm(32, c)`` for the real tower widths.
* Images without boxes: v0.6's anchor matching takes a max over zero boxes and raises. Such
  images get all anchors labelled background here.
"""

from __future__ import annotations

import math

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, Instances
from torch import nn


def group_norm_32(channels: int) -> nn.GroupNorm:
    """``GroupNorm(32, C)``; for C not divisible by 32 (the 1-channel probe), gcd(32, C) groups."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def head_norm(norm: str):
    """A norm spec for ``RetinaNetHead``/``FCOSHead`` that survives the 1-channel probe."""
    return group_norm_32 if norm == "GN" else norm


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-FPN with P6/P7 computed from P5 (FCOS), not from C5 (RetinaNet)."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@META_ARCH_REGISTRY.register()
class FCOS(D2FCOS):
    """detectron2's FCOS, configurable from ``MODEL.FCOS.*``; handles images without boxes.

    Args:
        input_format: channel order of the input images (``INPUT.FORMAT``), kept like the
            other meta-architectures do.
        **kwargs: the arguments of detectron2's FCOS.
    """

    @configurable
    def __init__(self, *, input_format: str = "BGR", **kwargs):
        super().__init__(**kwargs)
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.FCOS.IN_FEATURES)
        feature_shapes = [shapes[f] for f in in_features]
        head = FCOSHead(
            input_shape=feature_shapes,
            conv_dims=[feature_shapes[0].channels] * cfg.MODEL.FCOS.NUM_CONVS,
            num_classes=cfg.MODEL.FCOS.NUM_CLASSES,
            prior_prob=cfg.MODEL.FCOS.PRIOR_PROB,
            norm=head_norm(cfg.MODEL.FCOS.NORM),
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": in_features,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "center_sampling_radius": cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA,
            "test_score_thresh": cfg.MODEL.FCOS.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.FCOS.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @torch.no_grad()
    def label_anchors(self, anchors: list[Boxes], gt_instances: list[Instances]):
        """As detectron2's, but an image without boxes gets background everywhere.

        Returns:
            (list[Tensor], list[Boxes]): per image, labels (R,) in [0, num_classes] and matched
            boxes (R, 4), R = anchors over all levels.
        """
        if all(len(gt) > 0 for gt in gt_instances):
            return super().label_anchors(anchors, gt_instances)
        num_anchors = sum(len(a) for a in anchors)
        labels, boxes = [], []
        for gt in gt_instances:
            if len(gt) > 0:
                label, box = super().label_anchors(anchors, [gt])
                labels.append(label[0])
                boxes.append(box[0])
            else:
                device = gt.gt_boxes.tensor.device
                labels.append(torch.full((num_anchors,), self.num_classes, device=device))
                boxes.append(Boxes(torch.zeros(num_anchors, 4, device=device)))
        return labels, boxes
