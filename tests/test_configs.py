"""Every YAML config of the repository loads; the COCO configs build and fail early without data
or weights (nothing is downloaded at run time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("configs/**/*.yaml")) + sorted(REPO.glob("projects/*/configs/**/*.yaml"))
COCO_DIR = REPO / "configs" / "coco"
COCO_MODELS = sorted(p for p in COCO_DIR.glob("*.yaml") if not p.name.startswith("Base-"))
COCO_TEACHERS = {
    "faster_rcnn_R_101_FPN_3x.yaml": "GeneralizedRCNN",
    "retinanet_R_101_FPN_3x.yaml": "RetinaNet",
    "fcos_R_101_FPN_2x.yaml": "FCOS",
}
# detectron2's schedules at batch 16: (MAX_ITER, STEPS)
SCHEDULES = {
    "1x": (90000, (60000, 80000)),
    "2x": (180000, (120000, 160000)),
    "3x": (270000, (210000, 250000)),
}
RGB_MEAN, RGB_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def load(path: Path, *opts):
    from distill.user_code import load_config

    return load_config(str(path), opts)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_configs_found():
    names = {p.name for p in COCO_DIR.glob("*.yaml")}
    assert {"Base-RCNN-FPN.yaml", "Base-RetinaNet.yaml", "Base-FCOS.yaml"} <= names
    assert len(COCO_MODELS) == 8


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_loads(path):
    from detectron2.modeling import META_ARCH_REGISTRY

    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY
    assert not cfg.MODEL.WEIGHTS or "://" not in cfg.MODEL.WEIGHTS, "weights must be local files"


@pytest.mark.parametrize("path", COCO_MODELS, ids=rel)
def test_coco_config_values(path):
    cfg = load(path)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MAX_SIZE_TEST == 1333
    if path.name in COCO_TEACHERS:  # plain detector
        assert cfg.MODEL.META_ARCHITECTURE == COCO_TEACHERS[path.name]
    else:
        assert cfg.MODEL.META_ARCHITECTURE.startswith("Distill")
    schedule = SCHEDULES[path.stem.rsplit("_", 1)[1]]
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS) == schedule
    assert cfg.SOLVER.BASE_LR == (0.02 if path.name.startswith("faster_rcnn") else 0.01)
    assert cfg.MODEL.WEIGHTS.startswith("weights/ImageNetPretrained/")
    if "torchvision" in cfg.MODEL.WEIGHTS:  # converted torchvision ResNet: RGB, ImageNet std
        assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
        assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
        assert cfg.MODEL.PIXEL_MEAN == RGB_MEAN and cfg.MODEL.PIXEL_STD == RGB_STD
    else:  # MSRA Caffe2 ResNet: BGR, std 1
        assert (
            cfg.MODEL.WEIGHTS == f"weights/ImageNetPretrained/MSRA/R-{cfg.MODEL.RESNETS.DEPTH}.pkl"
        )
        assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.RESNETS.STRIDE_IN_1X1
        assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2


def bare_trainer(cfg, checkpointer, start_iter: int = 0):
    """A DistillTrainer with only what ``resume_or_load`` reads: no model, data or optimizer."""
    from distill.engine import DistillTrainer

    trainer = DistillTrainer.__new__(DistillTrainer)
    trainer.cfg, trainer.checkpointer, trainer.seed = cfg, checkpointer, 0
    trainer.iter, trainer.start_iter = start_iter - 1, start_iter
    return trainer


@pytest.mark.parametrize("path", COCO_MODELS, ids=rel)
def test_coco_missing_weights_fail_early(path, tmp_path, monkeypatch):
    """Without its ImageNet weights file a COCO config fails in resume_or_load, before loading,
    naming MODEL.WEIGHTS, the expected file and the README; nothing is downloaded."""
    from torch import nn

    from distill.checkpoint import SafeCheckpointer, check_local_weights

    monkeypatch.chdir(tmp_path)  # the relative weights/ path resolves to an empty folder
    cfg = load(path)
    expected = str(tmp_path / cfg.MODEL.WEIGHTS)
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS") as direct:
        check_local_weights(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
    assert expected in str(direct.value)

    checkpointer = SafeCheckpointer(nn.Linear(1, 1), save_dir=str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS") as err:
        bare_trainer(cfg, checkpointer).resume_or_load(resume=False)
    assert expected in str(err.value) and "configs/coco/README.md" in str(err.value)
    # resume=True without a checkpoint in OUTPUT_DIR falls back to MODEL.WEIGHTS: checked too.
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        bare_trainer(cfg, checkpointer).resume_or_load(resume=True)


def test_resume_and_empty_weights_skip_check(tmp_path):
    """Resuming from OUTPUT_DIR's checkpoint, or MODEL.WEIGHTS "", needs no weights file."""
    from torch import nn

    from distill.checkpoint import SafeCheckpointer

    cfg = load(COCO_DIR / "faster_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", "no/such/file.pkl")
    checkpointer = SafeCheckpointer(nn.Linear(1, 1), save_dir=str(tmp_path))
    checkpointer.save("model_0000000")
    bare_trainer(cfg, checkpointer).resume_or_load(resume=True)

    cfg.MODEL.WEIGHTS = ""
    empty = SafeCheckpointer(nn.Linear(1, 1), save_dir=str(tmp_path / "empty"))
    bare_trainer(cfg, empty).resume_or_load(resume=False)


@pytest.mark.parametrize("path", COCO_MODELS, ids=rel)
def test_coco_model_builds(path):
    """Each COCO model builds on CPU (random init, no weights): 0.5-2 s each."""
    import torch
    from detectron2.modeling import build_model

    cfg = load(path, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert model.pixel_mean.flatten().tolist() == pytest.approx(cfg.MODEL.PIXEL_MEAN)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("backbone.bottom_up.stem.") for n in frozen)  # FREEZE_AT 2
    assert not any(".res3." in n for n in frozen)
    depth = cfg.MODEL.RESNETS.DEPTH
    res5 = model.backbone.bottom_up.res5[0]
    assert res5.out_channels == (512 if depth == 18 else 2048)
    assert len(model.backbone.bottom_up.res4) == {18: 2, 50: 6, 101: 23}[depth]
    shapes = model.backbone.output_shape()
    assert all(s.channels == 256 for s in shapes.values())
    if "FCOS" in cfg.MODEL.META_ARCHITECTURE:
        assert model.backbone.top_block.in_feature == "p5"  # P6/P7 from P5
        assert isinstance(model.head.cls_subnet[1], torch.nn.GroupNorm)
    if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE:
        assert model.backbone.top_block.in_feature == "res5"  # P6/P7 from C5
        assert model.anchor_generator.num_cell_anchors == [9] * 5
    assert list(shapes) == (
        ["p2", "p3", "p4", "p5", "p6"] if "RCNN" in cfg.MODEL.META_ARCHITECTURE else
        ["p3", "p4", "p5", "p6", "p7"]
    )  # fmt: skip


def test_missing_coco_dataset_names_expected_path(tmp_path):
    """coco_2017_train with DETECTRON2_DATASETS at an empty folder fails naming the expected files.

    detectron2 resolves the builtin dataset paths when first imported, so this runs in a fresh
    interpreter (about 3 s).
    """
    code = (
        "from distill.data.register import check_builtin_dataset_root\n"
        "try:\n"
        "    check_builtin_dataset_root('coco_2017_train')\n"
        "except FileNotFoundError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert str(tmp_path / "coco" / "annotations" / "instances_train2017.json") in out.stdout
    assert str(tmp_path / "coco" / "train2017") in out.stdout
    assert "DETECTRON2_DATASETS" in out.stdout
