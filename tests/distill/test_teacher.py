"""The frozen teacher: isolation from the student, loading, and bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_cfg, train_step
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from distill.engine import DistillTrainer
from distill.teacher import TeacherWeightsError


def test_teacher_frozen_and_outside_student(teacher_files, tmp_path):
    cfg = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=teacher_files("retinanet"))
    model = build_model(cfg)
    teacher = model.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = DistillTrainer.build_optimizer(cfg, model)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    for it in range(3):
        optimizer.zero_grad()
        train_step(model, make_batch(seed=it), iteration=it)
        optimizer.step()
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # bit-identical, BN statistics included
    assert not [k for k in model.state_dict() if k.startswith("teacher")]
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("ckpt")
    saved = torch.load(tmp_path / "ckpt.pth", weights_only=True)["model"]
    assert set(saved) == set(model.state_dict())


def test_teacher_follows_device_and_dtype(teacher_files):
    cfg = tiny_cfg("faster_rcnn", distillers=["FeatureKD"], teacher=teacher_files("faster_rcnn"))
    model = build_model(cfg)
    model.double()
    assert next(model.teacher.model.parameters()).dtype == torch.float64
    model.float()
    model.train()
    assert not model.teacher.model.training


def test_teacher_runs_only_when_needed(teacher_files, monkeypatch):
    cfg = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=teacher_files("retinanet"),
                   freeze=False)  # fmt: skip
    cfg.FEATURE_KD.START_ITER = 5
    cfg.freeze()
    model = build_model(cfg)
    calls = []
    monkeypatch.setattr(model.teacher, "features", lambda images: calls.append(1))
    losses = train_step(model, make_batch(), iteration=0)
    assert not calls and "loss_feature_kd_mse" not in losses


def test_teacher_input_format_and_normalisation(teacher_files):
    cfg = tiny_cfg("retinanet", distillers=["FeatureKD"],
                   teacher=teacher_files("retinanet", "INPUT.FORMAT", "RGB",
                                         "MODEL.PIXEL_MEAN", [1.0, 2.0, 3.0],
                                         "MODEL.PIXEL_STD", [2.0, 2.0, 2.0]))  # fmt: skip
    model = build_model(cfg)
    batch = make_batch(num_images=1)
    images = model.teacher.preprocess(batch, student_format="BGR")
    rgb = batch[0]["image"].flip(0)
    expected = (rgb - torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)) / 2.0
    h, w = rgb.shape[1:]
    assert torch.allclose(images.tensor[0, :, :h, :w], expected)


def test_missing_teacher_config_or_weights(teacher_files, tmp_path):
    config_file, weights = teacher_files("retinanet")
    with pytest.raises(ValueError, match="DISTILL.TEACHER.CONFIG_FILE is empty"):
        build_model(tiny_cfg("retinanet", distillers=["FeatureKD"]))
    with pytest.raises(FileNotFoundError, match="DISTILL.TEACHER.CONFIG_FILE"):
        build_model(tiny_cfg("retinanet", distillers=["FeatureKD"],
                             teacher=(tmp_path / "nope.yaml", weights)))  # fmt: skip
    with pytest.raises(ValueError, match="DISTILL.TEACHER.WEIGHTS is empty"):
        build_model(tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=(config_file, "")))
    with pytest.raises(FileNotFoundError, match="DISTILL.TEACHER.WEIGHTS.*nope.pth"):
        build_model(tiny_cfg("retinanet", distillers=["FeatureKD"],
                             teacher=(config_file, tmp_path / "nope.pth")))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="URL"):
        build_model(tiny_cfg("retinanet", distillers=["FeatureKD"],
                             teacher=(config_file, "detectron2://x/model.pkl")))  # fmt: skip


def test_teacher_weights_of_another_architecture(teacher_files):
    config_file, _ = teacher_files("retinanet")
    _, rcnn_weights = teacher_files("faster_rcnn")
    cfg = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=(config_file, rcnn_weights))
    with pytest.raises(TeacherWeightsError, match="missing keys.*unexpected keys"):
        build_model(cfg)
    cfg = tiny_cfg("retinanet", "DISTILL.TEACHER.ALLOW_MISMATCHED_WEIGHTS", True,
                   distillers=["FeatureKD"], teacher=(config_file, rcnn_weights))  # fmt: skip
    assert build_model(cfg).teacher is not None


def test_teacher_weights_with_wrong_shapes(teacher_files):
    config_file, weights = teacher_files("retinanet")
    cfg = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=(config_file, weights),
                   freeze=False)  # fmt: skip
    cfg.DISTILL.TEACHER.OPTS = ["MODEL.FPN.OUT_CHANNELS", 40]
    cfg.freeze()
    with pytest.raises(TeacherWeightsError, match="wrong shapes"):
        build_model(cfg)


def test_teacher_autocast_outputs_fp32(teacher_files):
    cfg = tiny_cfg("retinanet", "DISTILL.TEACHER.AUTOCAST", True, distillers=["FeatureKD"],
                   teacher=teacher_files("retinanet"))  # fmt: skip
    model = build_model(cfg)
    teacher = model.teacher
    images = teacher.preprocess(make_batch(), student_format=cfg.INPUT.FORMAT)
    seen = []
    hook = teacher.model.backbone.bottom_up.stem.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    features = teacher.features(images)
    hook.remove()
    assert seen == [torch.bfloat16]  # CPU autocast
    assert all(f.dtype == torch.float32 and not f.requires_grad for f in features.values())
    losses = train_step(model, make_batch())
    assert torch.isfinite(losses["loss_feature_kd_mse"])
