"""The effective weight of every loss term of every shipped distillation config.

The table was computed with the loss-weight scheme this codebase had before one weight per term
(``<NODE>.LOSS_WEIGHT`` x each method's own term weight; a term that a student kind does not
compute counts as 0), so that moving to ``<NODE>.WEIGHTS.<TERM>`` provably kept every paper
config's numbers.
"""

from __future__ import annotations

import glob

import pytest
from conftest import REPO

from distill.distiller import loss_weights
from distill.registry import get_distiller_class
from distill.student import describe_student
from distill.user_code import load_config

COCO_DSIG, EMBEDDED_DSIG = "projects/Dsig/configs/coco/", "projects/Dsig/configs/embedded/"
LGD_DEFAULTS = {"LGD": {"distill": 1.0, "teacher": 1.0}}


def dsig(*weights: float) -> dict:
    terms = ("fg_node", "bg_node", "edge", "roi_cls", "roi_reg", "feature")
    return {"DSIG": dict(zip(terms, weights, strict=True))}


EFFECTIVE_WEIGHTS = {
    "configs/embedded/faster_rcnn_R18_feature_kd.yaml": {"FEATURE_KD": {"mse": 1.0}},
    "configs/embedded/fcos_R18_feature_kd.yaml": {"FEATURE_KD": {"mse": 1.0}},
    "configs/embedded/retinanet_R18_feature_kd.yaml": {"FEATURE_KD": {"mse": 1.0}},
    COCO_DSIG + "faster_rcnn_R101_from_R152_dsig_1x.yaml": dsig(0.5, 0.0, 1.0, 0.0, 0.0, 0.0),
    COCO_DSIG + "faster_rcnn_R18_from_R50_dsig_1x.yaml": dsig(0.5, 0.5, 2.0, 3.0, 1.0, 0.5),
    COCO_DSIG + "faster_rcnn_R50_from_R101_dsig_1x.yaml": dsig(0.5, 0.5, 1.0, 0.0, 0.0, 0.0),
    COCO_DSIG + "retinanet_R18_from_R50_dsig_1x.yaml": dsig(0.5, 0.0, 1.0, 1.0, 1.0, 0.5),
    EMBEDDED_DSIG + "faster_rcnn_R18_dsig.yaml": dsig(0.5, 0.5, 2.0, 3.0, 1.0, 0.5),
    EMBEDDED_DSIG + "fcos_R18_dsig.yaml": dsig(0.5, 0.0, 1.0, 1.0, 1.0, 0.5),
    EMBEDDED_DSIG + "retinanet_R18_dsig.yaml": dsig(0.5, 0.0, 1.0, 1.0, 1.0, 0.5),
    "projects/LGD/configs/coco/faster_rcnn_R_101_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/faster_rcnn_R_101_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/faster_rcnn_R_50_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/faster_rcnn_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/fcos_R_101_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/fcos_R_101_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/fcos_R_50_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/fcos_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/retinanet_R_101_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/retinanet_R_101_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/retinanet_R_50_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/coco/retinanet_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/embedded/faster_rcnn_R18_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/embedded/fcos_R18_lgd.yaml": LGD_DEFAULTS,
    "projects/LGD/configs/embedded/retinanet_R18_lgd.yaml": LGD_DEFAULTS,
}  # fmt: skip


def shipped_distillation_configs() -> list[str]:
    found = []
    for pattern in ("configs/**/*.yaml", "projects/*/configs/**/*.yaml"):
        for path in sorted(glob.glob(str(REPO / pattern), recursive=True)):
            text = open(path).read()
            if "DISTILLERS:" in text and "DISTILLERS: []" not in text:
                found.append(str(path.removeprefix(str(REPO) + "/")))
    return found


def test_every_distillation_config_is_pinned():
    assert sorted(shipped_distillation_configs()) == sorted(EFFECTIVE_WEIGHTS)


@pytest.mark.parametrize("config_file", sorted(EFFECTIVE_WEIGHTS))
def test_effective_loss_weights_are_unchanged(config_file):
    cfg = load_config(str(REPO / config_file))
    student = describe_student(cfg)
    effective = {}
    for name in cfg.DISTILL.DISTILLERS:
        cls = get_distiller_class(name)
        effective[cls.config_node] = loss_weights(cfg, cls, student)
    assert effective == EFFECTIVE_WEIGHTS[config_file]
