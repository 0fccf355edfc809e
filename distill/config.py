"""Config keys of the distillation core (``DISTILL.*``), the yacs FCOS (``MODEL.FCOS.*``), the
nodes of every registered distiller and those of registered config extensions."""

from __future__ import annotations

from collections.abc import Callable

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# Functions adding the keys of non-distiller components that projects bring (e.g. a scene-graph
# meta-architecture); each is called with the config by add_distill_config and must be idempotent.
CONFIG_EXTENSIONS: list[Callable[[CN], None]] = []


def register_config_extension(add_config: Callable[[CN], None]) -> Callable[[CN], None]:
    """Have :func:`add_distill_config` call ``add_config(cfg)``; usable as a decorator."""
    if add_config not in CONFIG_EXTENSIONS:
        CONFIG_EXTENSIONS.append(add_config)
    return add_config


def add_fcos_config(cfg: CN) -> None:
    """``MODEL.FCOS.*``: FCOS from a YAML file, defaults as detectron2's FCOS model-zoo config."""
    if "FCOS" in cfg.MODEL:
        return
    _C = cfg.MODEL
    _C.FCOS = CN()
    _C.FCOS.NUM_CLASSES = 80  # number of foreground classes
    _C.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]  # backbone features the head reads
    _C.FCOS.NUM_CONVS = 4  # convs in each of the classification and regression towers
    _C.FCOS.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
    _C.FCOS.NORM = "GN"  # norm in the towers: "GN" (GroupNorm(32), as the paper), "BN", "" ...
    _C.FCOS.CENTER_SAMPLING_RADIUS = 1.5  # positives lie within radius * stride of a box center
    _C.FCOS.FOCAL_LOSS_ALPHA = 0.25  # focal loss alpha of the classifier
    _C.FCOS.FOCAL_LOSS_GAMMA = 2.0  # focal loss gamma of the classifier
    _C.FCOS.SCORE_THRESH_TEST = 0.2  # test score threshold on sqrt(cls score * centerness)
    _C.FCOS.TOPK_CANDIDATES_TEST = 1000  # candidates per level kept before NMS at test time
    _C.FCOS.NMS_THRESH_TEST = 0.6  # NMS IoU threshold at test time


def add_distill_config(cfg: CN) -> None:
    """Add ``DISTILL.*``, ``MODEL.FCOS.*`` and the config node of every registered distiller.

    Call it after importing the modules that register distillers and extensions, so that their
    keys exist before a YAML file is merged: :func:`distill.user_code.load_config` does. Idempotent.
    """
    from distill.registry import DISTILLER_REGISTRY

    add_fcos_config(cfg)
    if "DISTILL" not in cfg:
        _C = cfg
        _C.DISTILL = CN()
        # Registered distiller names (DISTILLER_REGISTRY), applied together; [] = plain student.
        _C.DISTILL.DISTILLERS = []
        # Modules or .py files (from the current directory) to import before the config is built.
        _C.DISTILL.IMPORTS = []
        _C.DISTILL.TEACHER = CN()
        # The teacher's own detectron2 config file (YAML). Needed when a distiller needs a teacher.
        # In both paths "~" and $VARS are expanded; $DISTILL_CACHE defaults to ~/.cache/distill.
        _C.DISTILL.TEACHER.CONFIG_FILE = ""
        # The teacher's checkpoint (a detectron2 .pth/.pkl). Needed whenever CONFIG_FILE is used.
        _C.DISTILL.TEACHER.WEIGHTS = ""
        # KEY VALUE overrides applied to the teacher config after CONFIG_FILE, e.g. a test size.
        _C.DISTILL.TEACHER.OPTS = []
        # Run the teacher under autocast (fp16 on CUDA, bf16 on CPU); its outputs are cast to fp32.
        _C.DISTILL.TEACHER.AUTOCAST = False
        # Load teacher weights even when keys are missing/unexpected or shapes differ (only warn).
        _C.DISTILL.TEACHER.ALLOW_MISMATCHED_WEIGHTS = False
        # Refuse a teacher without a passing card (WEIGHTS with ".card.json" for the extension:
        # distill/teacher_card.py). False lets an unverified teacher teach, with a warning.
        _C.DISTILL.TEACHER.REQUIRE_CARD = True
        # Stop the run when a distillation loss exceeds FACTOR x the student's own (detection)
        # losses for PATIENCE consecutive iterations: the sign of a broken teacher.
        _C.DISTILL.LOSS_RATIO_STOP = CN()
        _C.DISTILL.LOSS_RATIO_STOP.ENABLED = True
        _C.DISTILL.LOSS_RATIO_STOP.FACTOR = 1000.0
        _C.DISTILL.LOSS_RATIO_STOP.PATIENCE = 10
        # DDP: find parameters without gradient (a distiller switched off by its schedule).
        _C.DISTILL.FIND_UNUSED_PARAMETERS = True
    if "TEACHER_GATE" not in cfg:
        # What a trained teacher must show before tools/train_teachers.py installs it (and
        # tools/card_teacher.py cards it): box AP (percent) on DATASETS.TEST[0] of at least
        # MIN_AP, and outputs that differ between the first IMAGES test images.
        cfg.TEACHER_GATE = CN()
        cfg.TEACHER_GATE.MIN_AP = 0.0
        cfg.TEACHER_GATE.IMAGES = 8
    if "PLATEAU" not in cfg.SOLVER:
        # SOLVER.LR_SCHEDULER_NAME "WarmupReduceLROnPlateau" (distill/plateau.py): after each
        # periodic evaluation, LR x FACTOR when METRIC (a flattened result key, higher is
        # better) has not improved by a relative THRESHOLD for more than PATIENCE evaluations.
        _P = cfg.SOLVER.PLATEAU = CN()
        _P.METRIC = "bbox/AP"  # COCOEvaluator's box AP; another evaluator names its own key
        _P.PATIENCE = 2
        _P.FACTOR = 0.1
        _P.THRESHOLD = 0.001
        _P.MAX_DECAYS = 3  # no decay after this many
    if "INVALID_ANNOTATIONS" not in cfg.DATASETS:
        # COCO annotations with a bad box or category id (distill/data/annotation_checks), VG150
        # boxes outside their image: "error" refuses the dataset naming them, "drop" leaves them
        # out with a counted warning (boxes are never rewritten).
        cfg.DATASETS.INVALID_ANNOTATIONS = "error"
    for add_config in CONFIG_EXTENSIONS:
        add_config(cfg)
    for _name, distiller_class in DISTILLER_REGISTRY:
        distiller_class.add_config(cfg)


def get_distill_cfg() -> CN:
    """detectron2's default config plus every key of :func:`add_distill_config`, for the
    distillers and extensions registered so far (it imports no project)."""
    cfg = get_cfg()
    add_distill_config(cfg)
    return cfg
