"""tools/benchmark.py and distill.benchmark: one run of every phase on the tiny FasterRCNN."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FAMILIES, REPO, TINY_OPTS, make_batch, tiny_cfg
from test_extract_student import load_tool

from distill.benchmark import RATIOS, calibrate_frozen_batchnorm, run_benchmark
from distill.errors import ConfigValueError


def test_benchmark_feature_kd(tmp_path, teacher_files, capsys):
    """With ``--random-teacher`` the teacher's weights file is neither needed nor read."""
    teacher_config, _ = teacher_files("faster_rcnn")
    path = tmp_path / "bench.json"
    argv = [
        "--config-file", str(REPO / FAMILIES["faster_rcnn"]),
        "--iters", "1", "--rounds", "2", "--warmup", "0", "--batch-size", "2",
        "--image-size", "64",
        "--data", "real", "--json", str(path), "--random-teacher",
        *map(str, TINY_OPTS),
        "DISTILL.DISTILLERS", "['FeatureKD']",
        "DISTILL.TEACHER.CONFIG_FILE", str(teacher_config),
        "DISTILL.TEACHER.WEIGHTS", str(tmp_path / "absent.pth"),
    ]  # fmt: skip
    tool = load_tool("benchmark")
    result = tool.main(argv)

    assert set(result["phases"]) == set(tool.PHASES)
    assert result["rounds"] == 2  # each phase timed once per round, times pooled
    for name, phase in result["phases"].items():
        assert len(phase["times_s"]) == 2, name
        for key in ("median_s", "mean_s", "min_s"):
            assert math.isfinite(phase[key]) and phase[key] > 0, (name, key)
        for key in ("model_mib", "step_peak_mib", "total_mib"):  # measured on Linux and CUDA
            assert phase[key] is not None and math.isfinite(phase[key]), (name, key)
    assert set(result["ratios"]) == set(RATIOS)
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values()), result["ratios"]
    assert result["data"]["source"] == "dataset:embedded_coco_train"
    assert min(result["data"]["image_shapes"][0][1:]) == 64
    assert result["checks"]["extracted_outputs_equal_distill"] is True
    assert result["checks"]["dropped_distiller_keys"] > 0
    assert result["checks"]["inactive_distillers"] == []
    assert result["teacher_weights"] == "random"

    written = json.loads(path.read_text())
    assert written["phases"].keys() == result["phases"].keys()
    assert written["ratios"] == result["ratios"]
    assert written["torch"] and written["device"] == "cpu" and "FeatureKD" in written["config"]
    out = capsys.readouterr().out
    assert "train_distill" in out and "train_time_distill_vs_student" in out


def test_benchmark_without_distillers_on_synthetic_images():
    """The plain config (as ``make bench`` runs it): no teacher, no distill phases, no ratios."""
    cfg = tiny_cfg("retinanet")
    batch, info = load_tool("benchmark").load_batch(cfg, 1, 64, data="synthetic")
    assert info == {"source": "synthetic", "image_size": 64, "image_shapes": [[3, 64, 64]]}
    result = run_benchmark(cfg, batch, iters=1, warmup=0)
    assert set(result["phases"]) == {"train_student", "infer_plain", "infer_extracted",
                                     "infer_distill"}  # fmt: skip
    assert all(p["median_s"] > 0 for p in result["phases"].values())
    assert result["ratios"]["train_time_distill_vs_student"] is None
    assert result["ratios"]["infer_extracted_vs_plain"] > 0
    assert result["checks"]["dropped_distiller_keys"] == 0
    assert result["checks"]["extracted_outputs_equal_distill"] is True


def test_random_teacher_on_a_teacher_free_distiller_is_a_noted_no_op(tmp_path, capsys):
    """LGD builds its own (implicit) teacher: ``--random-teacher`` says it is not used and the
    run measures the student with LGD, never claiming that LGD needs a teacher."""
    lgd = "projects/LGD/configs/embedded/retinanet_R18_lgd.yaml"
    argv = [
        "--config-file", str(REPO / lgd), "--iters", "1", "--warmup", "0", "--batch-size", "1",
        "--image-size", "64", "--data", "synthetic", "--random-teacher",
        "--json", str(tmp_path / "bench.json"), *map(str, TINY_OPTS),
    ]  # fmt: skip
    tool = load_tool("benchmark")
    result = tool.main(argv)
    out = capsys.readouterr().out
    assert "--random-teacher not used: DISTILL.DISTILLERS=['LGD'] read no teacher" in out
    assert "need a teacher" not in out
    assert result["distillers"] == ["LGD"] and result["teacher"] is False
    assert result["teacher_weights"] is None
    assert "train_distill" in result["phases"] and "teacher_forward" not in result["phases"]
    with pytest.raises(ConfigValueError, match=r"--random-teacher: DISTILL.DISTILLERS=\['LGD'\]"):
        tool.with_random_teacher(tool.setup(tool.parse_args(argv)), [], str(tmp_path), 0)
    plain = tool.setup(tool.parse_args(["--config-file", str(REPO / FAMILIES["retinanet"])]))
    assert tool.no_teacher_reason(plain) == "the config has no DISTILL.DISTILLERS"


def test_calibrated_frozen_batchnorm_normalises_its_input():
    """After calibration every frozen-BN layer maps its input on the batch to per-channel mean
    0 and variance 1 (weight 1, bias 0 at random init); nothing else changes."""
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    from distill.export import plain_config

    cfg = plain_config(tiny_cfg("faster_rcnn", "MODEL.RESNETS.NORM", "FrozenBN"))
    torch.manual_seed(0)
    model = build_model(cfg)
    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = make_batch()
    assert calibrate_frozen_batchnorm(model.train(), batch) == len(layers) > 0
    assert model.training  # the mode is restored
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)

    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.clone())) for m in layers]
    with torch.no_grad():
        model.backbone(model.preprocess_image(batch).tensor)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(layers)
    for out in outputs:
        mean, var = out.mean(dim=(0, 2, 3)), out.var(dim=(0, 2, 3), unbiased=False)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(var, torch.ones_like(var), atol=1e-3, rtol=0)


def test_cuda_device_without_cuda_is_one_line(monkeypatch):
    """The COCO configs keep detectron2's MODEL.DEVICE cuda: on a machine without CUDA the
    tool stops before building anything, saying how to run on the CPU."""
    from distill.compiled_ops import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tiny_cfg("retinanet", "MODEL.DEVICE", "cuda:0")
    with pytest.raises(ConfigValueError, match="MODEL.DEVICE is 'cuda:0'.*MODEL.DEVICE cpu"):
        check_device(cfg)
    assert check_device(tiny_cfg("retinanet")) == torch.device("cpu")
