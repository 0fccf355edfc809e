"""tools/benchmark.py and distill.benchmark: one run of every phase on the tiny FasterRCNN."""

from __future__ import annotations

import json
import math

from conftest import FAMILIES, REPO, TINY_OPTS
from test_extract_student import load_tool

from distill.benchmark import PHASES, RATIOS


def test_benchmark_feature_kd(tmp_path, teacher_files, capsys):
    teacher_config, teacher_weights = teacher_files("faster_rcnn")
    path = tmp_path / "bench.json"
    argv = [
        "--config-file", str(REPO / FAMILIES["faster_rcnn"]),
        "--iters", "2", "--warmup", "0", "--batch-size", "2", "--image-size", "64",
        "--data", "real", "--json", str(path),
        *map(str, TINY_OPTS),
        "DISTILL.DISTILLERS", "['FeatureKD']",
        "DISTILL.TEACHER.CONFIG_FILE", str(teacher_config),
        "DISTILL.TEACHER.WEIGHTS", str(teacher_weights),
    ]  # fmt: skip
    result = load_tool("benchmark").main(argv)

    assert set(result["phases"]) == set(PHASES)
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

    written = json.loads(path.read_text())
    assert written["phases"].keys() == result["phases"].keys()
    assert written["ratios"] == result["ratios"]
    assert written["torch"] and written["device"] == "cpu" and "FeatureKD" in written["config"]
    out = capsys.readouterr().out
    assert "train_distill" in out and "train_time_distill_vs_student" in out
