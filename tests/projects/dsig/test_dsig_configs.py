"""The Dsig configs (projects/Dsig/configs): the COCO pair configs load with the official solver and
the DSIG switches of each released config (Dsig spec 1.9, 2.5), their teacher configs are plain
detectors that fit the student, and the embedded configs reuse the FeatureKD embedded teachers."""

from __future__ import annotations

import pytest
from conftest import REPO

COCO_DIR = REPO / "projects" / "Dsig" / "configs" / "coco"
EMBEDDED_DIR = REPO / "projects" / "Dsig" / "configs" / "embedded"
ZOO = "weights/COCO-Detection/"

# DSIG switches of the released configs (spec 1.9). One-stage students have no bg/mining keys: they
# keep the defaults (BG 0.5, alpha 7.5, T 0.6), which their distiller does not read.
KEYS = (
    "WEIGHTS.FG_NODE", "WEIGHTS.BG_NODE", "BG_WEIGHT_ALPHA", "WEIGHTS.EDGE", "MINING_THRESHOLD",
    "WEIGHTS.ROI_CLS", "WEIGHTS.ROI_REG", "WEIGHTS.FEATURE",
)  # fmt: skip
RCNN_R18_R50 = (0.5, 0.5, 7.5, 2.0, 0.6, 3.0, 1.0, 0.5)
RCNN_R50_R101 = (0.5, 0.5, 7.5, 1.0, 0.6, 0.0, 0.0, 0.0)
RCNN_R101_R152 = (0.5, 0.0, 7.5, 1.0, 0.6, 0.0, 0.0, 0.0)
RETINANET_R18_R50 = (0.5, 0.5, 7.5, 1.0, 0.6, 1.0, 1.0, 0.5)

# file -> (student base in configs/coco, student depth, teacher config, teacher weights,
#          teacher depth, DSIG values, official README box AP, student baseline or None)
COCO = {
    "faster_rcnn_R18_from_R50_dsig_1x.yaml": (
        "faster_rcnn_R_18_FPN_1x.yaml", 18,
        "projects/Dsig/configs/coco/faster_rcnn_R_50_FPN_3x_teacher.yaml",
        ZOO + "faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl", 50,
        RCNN_R18_R50, 37.25, 33.06,
    ),
    "faster_rcnn_R50_from_R101_dsig_1x.yaml": (
        "faster_rcnn_R_50_FPN_1x.yaml", 50,
        "configs/coco/faster_rcnn_R_101_FPN_3x.yaml",
        ZOO + "faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl", 101,
        RCNN_R50_R101, 40.57, 38.03,
    ),
    "faster_rcnn_R101_from_R152_dsig_1x.yaml": (
        "faster_rcnn_R_101_FPN_3x.yaml", 101,
        "projects/Dsig/configs/coco/faster_rcnn_R_152_FPN_teacher.yaml",
        "weights/teachers/faster_rcnn_R_152_FPN.pth", 152,
        RCNN_R101_R152, 41.65, None,
    ),
    "retinanet_R18_from_R50_dsig_1x.yaml": (
        "retinanet_R_18_FPN_1x.yaml", 18,
        "projects/Dsig/configs/coco/retinanet_R_50_FPN_3x_teacher.yaml",
        ZOO + "retinanet_R_50_FPN_3x/190397829/model_final_5bd44e.pkl", 50,
        RETINANET_R18_R50, 34.72, 31.60,
    ),
}  # fmt: skip
TEACHER_FILES = sorted(
    {v[2].rsplit("/", 1)[1] for v in COCO.values() if v[2].startswith("projects/Dsig/")}
)
# embedded file -> DSIG values (Faster R-CNN as the official R18-R50 row, one-stage as RetinaNet's)
EMBEDDED = {
    "faster_rcnn_R18_dsig.yaml": RCNN_R18_R50,
    "retinanet_R18_dsig.yaml": RETINANET_R18_R50,
    "fcos_R18_dsig.yaml": RETINANET_R18_R50,
}
PLAIN = {
    "DistillGeneralizedRCNN": "GeneralizedRCNN",
    "DistillRetinaNet": "RetinaNet",
    "DistillFCOS": "FCOS",
}
HEAD_NODE = {"GeneralizedRCNN": "ROI_HEADS", "RetinaNet": "RETINANET", "FCOS": "FCOS"}


def load(path, *opts):
    from distill.user_code import load_config

    return load_config(str(path), opts)


def family(name: str) -> str:
    return name.split("_R")[0]


def dsig_value(cfg, key: str):
    node = cfg.DSIG
    for part in key.split("."):
        node = node[part]
    return node


def check_dsig(cfg, values):
    assert tuple(dsig_value(cfg, k) for k in KEYS) == values
    dsig = cfg.DSIG
    assert (dsig.SIMILARITY, dsig.TEMPERATURE, dsig.ADAPTER) == ("instance", 1.0, "Conv1x1Adapter")
    assert (dsig.START_ITER, dsig.STOP_ITER) == (0, None)
    assert dsig.MINE_BACKGROUND and dsig.ADAPTIVE_BG_WEIGHT
    assert list(cfg.DISTILL.DISTILLERS) == ["Dsig"]


def test_one_config_per_buildable_official_pair():
    """FRCNN R18-R50, R50-R101, R101-R152 and RetinaNet R18-R50 (no MobileNetV2/EfficientNet
    backbone here), plus the plain teachers that configs/coco lacks."""
    names = sorted(p.name for p in COCO_DIR.glob("*.yaml"))
    assert names == sorted([*COCO, *TEACHER_FILES])
    assert TEACHER_FILES == [
        "faster_rcnn_R_152_FPN_teacher.yaml",
        "faster_rcnn_R_50_FPN_3x_teacher.yaml",
        "retinanet_R_50_FPN_3x_teacher.yaml",
    ]
    assert sorted(p.name for p in EMBEDDED_DIR.glob("*.yaml")) == sorted(EMBEDDED)


@pytest.mark.parametrize("name", sorted(COCO))
def test_coco_config_values(name):
    base, depth, teacher_file, teacher_weights, _, values, readme_ap, baseline = COCO[name]
    text = (COCO_DIR / name).read_text()
    header = text.split("_BASE_")[0]
    assert f'_BASE_: "../../../../configs/coco/{base}"' in text
    assert f"box AP {readme_ap}" in header  # the official README result
    assert (f"baseline {baseline:.2f}" if baseline else "UNCONFIRMED") in header
    cfg = load(COCO_DIR / name)

    assert cfg.MODEL.META_ARCHITECTURE in PLAIN  # a Distill* student
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.WEIGHTS.startswith("weights/ImageNetPretrained/")
    assert cfg.DISTILL.TEACHER.CONFIG_FILE == teacher_file
    assert cfg.DISTILL.TEACHER.WEIGHTS == teacher_weights  # a separate local file, not merged
    assert list(cfg.DISTILL.TEACHER.OPTS) == []
    check_dsig(cfg, values)
    assert cfg.OUTPUT_DIR == f"output/dsig/{name.removesuffix('.yaml')}"

    solver = cfg.SOLVER  # spec 2.5: 4 GPUs x 2 images, 180k iters, steps 120k/160k
    assert solver.IMS_PER_BATCH == 8 and solver.REFERENCE_WORLD_SIZE == 0
    assert solver.BASE_LR == (0.01 if name.startswith("faster_rcnn") else 0.005)
    assert (solver.MAX_ITER, solver.STEPS, solver.GAMMA) == (180000, (120000, 160000), 0.1)
    assert (solver.WARMUP_ITERS, solver.WARMUP_FACTOR, solver.WARMUP_METHOD) == (
        1000, 0.001, "linear")  # fmt: skip
    assert (solver.MOMENTUM, solver.WEIGHT_DECAY) == (0.9, 1e-4)
    assert solver.CHECKPOINT_PERIOD == 5000 and cfg.TEST.EVAL_PERIOD == 0
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    if depth == 18:  # torchvision ResNet-18: RGB input with the ImageNet std (spec 2.3)
        assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    else:
        assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(COCO))
def test_coco_teacher_is_a_plain_detector_fitting_the_student(name):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import META_ARCH_REGISTRY
    from dsig.detection_graph import DetectionGraph
    from dsig.distiller import Dsig

    from distill.student import describe_student

    _, _, teacher_file, _, teacher_depth, values, _, _ = COCO[name]
    assert (REPO / teacher_file).is_file()
    student = load(COCO_DIR / name)
    teacher = load(REPO / teacher_file)
    arch = teacher.MODEL.META_ARCHITECTURE
    assert arch == PLAIN[student.MODEL.META_ARCHITECTURE] and arch in META_ARCH_REGISTRY
    assert list(teacher.DISTILL.DISTILLERS) == []
    assert teacher.MODEL.RESNETS.DEPTH == teacher_depth
    assert teacher.INPUT.FORMAT == "BGR" and teacher.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]  # MSRA
    assert not teacher.MODEL.WEIGHTS or "://" not in teacher.MODEL.WEIGHTS
    assert teacher.MODEL.FPN.OUT_CHANNELS == student.MODEL.FPN.OUT_CHANNELS == 256  # no adapter
    node = HEAD_NODE[arch]
    assert teacher.MODEL[node].NUM_CLASSES == student.MODEL[node].NUM_CLASSES == 80
    assert teacher.MODEL[node].IN_FEATURES == student.MODEL[node].IN_FEATURES
    if arch == "GeneralizedRCNN":  # the teacher's box head scores the student's RoIs
        assert teacher.MODEL.ROI_HEADS.NAME == student.MODEL.ROI_HEADS.NAME
        assert teacher.MODEL.ROI_BOX_HEAD.NAME == student.MODEL.ROI_BOX_HEAD.NAME
        assert teacher.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 7
        assert (teacher.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
                == student.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)  # fmt: skip
    else:  # dense logits KD: same anchors per location
        assert teacher.MODEL.ANCHOR_GENERATOR.SIZES == student.MODEL.ANCHOR_GENERATOR.SIZES

    # the distiller accepts the pair: the pooled levels exist on both sides, one shared width
    levels = range(2, 7) if arch == "GeneralizedRCNN" else range(3, 8)
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in levels}
    kwargs = Dsig.from_config(student, describe_student(student, shapes), shapes)
    dense = arch != "GeneralizedRCNN"
    assert kwargs["adapter"] is None and isinstance(kwargs["graph"], DetectionGraph) is dense
    if dense:
        assert kwargs["graph"].levels == list(student.MODEL[node].IN_FEATURES)
    assert (kwargs["weights"]["fg_node"], kwargs["weights"]["edge"]) == (values[0], values[3])


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_config_values(name):
    fam = family(name)
    text = (EMBEDDED_DIR / name).read_text()
    assert f'_BASE_: "../../../../configs/embedded/{fam}_R18_small.yaml"' in text
    cfg = load(EMBEDDED_DIR / name)
    small = load(REPO / "configs" / "embedded" / f"{fam}_R18_small.yaml")
    feature_kd = load(REPO / "configs" / "embedded" / f"{fam}_R18_feature_kd.yaml")

    check_dsig(cfg, EMBEDDED[name])
    assert cfg.MODEL == small.MODEL and cfg.SOLVER == small.SOLVER  # same student and schedule
    assert cfg.DISTILL.TEACHER == feature_kd.DISTILL.TEACHER  # the FeatureKD teacher
    assert cfg.DISTILL.TEACHER.CONFIG_FILE == f"configs/embedded/{fam}_R34_teacher.yaml"
    assert cfg.DISTILL.TEACHER.WEIGHTS == f"$DISTILL_CACHE/teachers/{fam}_R34.pth"
    assert cfg.OUTPUT_DIR == f"output/dsig/{name.removesuffix('.yaml')}"
    teacher = load(REPO / cfg.DISTILL.TEACHER.CONFIG_FILE)
    assert teacher.MODEL.META_ARCHITECTURE == PLAIN[cfg.MODEL.META_ARCHITECTURE]
    assert (cfg.MODEL.FPN.OUT_CHANNELS, teacher.MODEL.FPN.OUT_CHANNELS) == (64, 128)  # adapter
