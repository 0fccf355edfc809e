"""The LGD COCO configs (projects/LGD/configs/coco): each loads with the official 2x multi-scale
recipe and its LGD keys, the non-DCN R-50 configs build on CPU with the LGD distiller, and the DCN
configs stop early on a detectron2 without compiled ops."""

from __future__ import annotations

import pytest
from conftest import REPO

CONFIG_DIR = REPO / "projects" / "LGD" / "configs" / "coco"
BASES = {
    "retinanet": ("Base-RetinaNet.yaml", "DistillRetinaNet", 0.01),
    "fcos": ("Base-FCOS.yaml", "DistillFCOS", 0.01),
    "faster_rcnn": ("Base-RCNN-FPN.yaml", "DistillGeneralizedRCNN", 0.02),
}
# file -> (CONTEXT_BOX, DETACH_APPEARANCE, POST_NONDISTILL_ITERS, official README box AP), from the
# official configs and README (LGD spec sections 2.5 and 4.2).
EXPECTED = {
    "retinanet_R_50_FPN_2xMS_lgd.yaml": (True, False, 0, 40.4),
    "retinanet_R_101_FPN_2xMS_lgd.yaml": (True, False, 0, 42.1),
    "retinanet_R_101_DCNv2_FPN_2xMS_lgd.yaml": (True, False, 0, 44.5),
    "retinanet_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": (True, False, 50000, 45.9),
    "fcos_R_50_FPN_2xMS_lgd.yaml": (False, False, 0, 42.4),
    "fcos_R_101_FPN_2xMS_lgd.yaml": (True, False, 0, 44.0),
    "fcos_R_101_DCNv2_FPN_2xMS_lgd.yaml": (True, False, 50000, 46.3),
    "fcos_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": (True, False, 50000, 47.9),
    "faster_rcnn_R_50_FPN_2xMS_lgd.yaml": (False, True, 0, 40.5),
    "faster_rcnn_R_101_FPN_2xMS_lgd.yaml": (False, True, 0, 42.2),
    "faster_rcnn_R_101_DCNv2_FPN_2xMS_lgd.yaml": (False, True, 0, 44.8),
    "faster_rcnn_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml": (False, True, 50000, 46.2),
}
R50 = sorted(name for name in EXPECTED if "_R_50_" in name)
DCN = sorted(name for name in EXPECTED if "DCNv2" in name)
FAIR_STD = [57.375, 57.120, 58.395]


def family(name: str) -> str:
    return next(f for f in BASES if name.startswith(f + "_"))


def load(name: str, *opts):
    from distill.user_code import load_config

    return load_config(str(CONFIG_DIR / name), opts)


def test_one_config_per_official_experiment():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)
    assert len(R50) == 3 and len(DCN) == 6


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lgd_config_values(name):
    ctx, detach, post, readme_ap = EXPECTED[name]
    base, arch, lr = BASES[family(name)]
    text = (CONFIG_DIR / name).read_text()
    assert f'_BASE_: "../../../../configs/coco/{base}"' in text
    assert f"box AP {readme_ap}" in text.split("_BASE_")[0]  # header names the README result
    cfg = load(name)

    assert cfg.MODEL.META_ARCHITECTURE == arch
    assert list(cfg.DISTILL.DISTILLERS) == ["LGD"] and cfg.DISTILL.TEACHER.CONFIG_FILE == ""
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)  # multi-scale
    assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MAX_SIZE_TEST == 1333
    assert cfg.INPUT.MIN_SIZE_TEST == 800
    assert cfg.OUTPUT_DIR == f"output/lgd/{name.removesuffix('.yaml')}"

    solver = cfg.SOLVER  # 2x multi-scale at batch 16; the teacher solver equals the student's
    assert (solver.MAX_ITER, solver.STEPS, solver.GAMMA) == (180000, (120000, 160000), 0.1)
    assert solver.IMS_PER_BATCH == 16 and solver.BASE_LR == lr
    assert solver.WEIGHT_DECAY == solver.WEIGHT_DECAY_NORM == 1e-4
    assert solver.WEIGHT_DECAY_BIAS is None and solver.BIAS_LR_FACTOR == 1.0
    assert (solver.MOMENTUM, solver.WARMUP_ITERS, solver.WARMUP_FACTOR) == (0.9, 1000, 0.001)
    assert solver.CHECKPOINT_PERIOD == cfg.TEST.EVAL_PERIOD == 10000
    clip = solver.CLIP_GRADIENTS
    assert (clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE) == (True, "value", 1.0)

    lgd = cfg.LGD
    assert (lgd.CONTEXT_BOX, lgd.DETACH_APPEARANCE) == (ctx, detach)
    assert lgd.POST_NONDISTILL_ITERS == post
    assert lgd.PRE_NONDISTILL_ITERS == 30000 and lgd.PRE_FREEZE_STUDENT_BACKBONE_ITERS == 20000
    assert (lgd.LR_FACTOR, lgd.WEIGHT_DECAY_FACTOR, lgd.OPTIMIZER) == (1.0, 1.0, "SGD")
    assert (lgd.START_ITER, lgd.STOP_ITER) == (0, None)
    assert lgd.WEIGHTS == {"DISTILL": 1.0, "TEACHER": 1.0} and lgd.NUM_HEADS == 8
    assert lgd.INTERACTION == "appearance_query"

    resnets = cfg.MODEL.RESNETS
    assert resnets.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.INPUT.FORMAT == "BGR"
    if "_X_101_32x8d_" in name:  # FAIR ResNeXt-101 32x8d
        assert cfg.MODEL.WEIGHTS == "weights/ImageNetPretrained/FAIR/X-101-32x8d.pkl"
        assert (resnets.DEPTH, resnets.NUM_GROUPS, resnets.WIDTH_PER_GROUP) == (101, 32, 8)
        assert not resnets.STRIDE_IN_1X1 and cfg.MODEL.PIXEL_STD == FAIR_STD
    else:  # MSRA ResNet
        depth = 50 if "_R_50_" in name else 101
        assert cfg.MODEL.WEIGHTS == f"weights/ImageNetPretrained/MSRA/R-{depth}.pkl"
        assert (resnets.DEPTH, resnets.NUM_GROUPS, resnets.WIDTH_PER_GROUP) == (depth, 1, 64)
        assert resnets.STRIDE_IN_1X1 and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    if "DCNv2" in name:
        assert resnets.DEFORM_ON_PER_STAGE == [False, True, True, True]
        assert resnets.DEFORM_MODULATED
    else:
        assert not any(resnets.DEFORM_ON_PER_STAGE)

    if family(name) == "fcos":  # official test settings; P6/P7 from C5 as in the official configs
        fcos = cfg.MODEL.FCOS
        assert (fcos.SCORE_THRESH_TEST, fcos.NMS_THRESH_TEST) == (0.05, 0.6)
        assert fcos.TOPK_CANDIDATES_TEST == 1000 and fcos.NORM == "GN"
        assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_resnet_fpn_backbone"


@pytest.mark.parametrize("name", R50)
def test_r50_config_builds_with_lgd(name):
    """The R-50 student builds on CPU (random init, no weights) with its LGD distiller."""
    from detectron2.modeling import build_model

    ctx, detach, post, _ = EXPECTED[name]
    cfg = load(name, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert list(model.distillers) == ["LGD"] and model.teacher is None
    lgd = model.distillers["LGD"]
    assert lgd.distill_window == (30000, 180000 - post)
    assert lgd.freeze_backbone_iters == 20000
    assert lgd.teacher.context_box is ctx and lgd.teacher.detach_appearance is detach
    assert (lgd.teacher.context_proj is not None) is ctx
    assert len(model.backbone.bottom_up.res4) == 6  # ResNet-50
    if family(name) == "faster_rcnn":
        assert list(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    else:
        assert list(model.backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
        assert model.backbone.top_block.in_feature == "res5"  # P6/P7 from C5


def test_x101_keys_give_resnext_32x8d():
    """The X-101 keys build a ResNeXt-101 32x8d bottom-up (DCN switched off to build here)."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = load(
        "retinanet_X_101_32x8d_DCNv2_FPN_2xMS_lgd.yaml",
        "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 4, "MODEL.DEVICE", "cpu",
    )  # fmt: skip
    bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert len(bottom_up.res4) == 23
    first = bottom_up.res2[0]
    assert first.conv2.groups == 32 and first.conv2.out_channels == 256  # 32 groups x 8 channels
    assert first.conv1.stride == (1, 1) and bottom_up.res3[0].conv2.stride == (2, 2)


@pytest.mark.parametrize("name", DCN)
def test_dcn_config_fails_early_without_compiled_ops(name):
    """Deformable convolution needs detectron2's compiled ops: without them build_model stops
    with a ConfigValueError naming the key, before any training."""
    from detectron2.modeling import build_model

    from distill.compiled_ops import has_compiled_ops
    from distill.errors import ConfigValueError

    if has_compiled_ops():
        pytest.skip("this detectron2 has its compiled ops: DCN configs build")
    cfg = load(name, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu")
    with pytest.raises(ConfigValueError, match="DEFORM_ON_PER_STAGE"):
        build_model(cfg)
