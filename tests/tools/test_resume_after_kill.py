"""Exact resume: a training process killed with SIGKILL and resumed with ``--resume`` ends with
the weights of the uninterrupted run, on shipped embedded configs with their augmentations
(multi-scale resize, flips, aspect-ratio grouping, a loader worker); tools/check_resume.py."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

# smaller images and FPN than shipped; the shipped augmentations and loader
SHORT_RUN = [
    "INPUT.MIN_SIZE_TRAIN", "(64,80,96)", "INPUT.MAX_SIZE_TRAIN", "160", "MODEL.FPN.OUT_CHANNELS",
    "32", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "9", "SOLVER.CHECKPOINT_PERIOD", "3",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(6,)", "DATASETS.TEST", "()", "SEED", "5",
]  # fmt: skip


def check_resume_tool():
    spec = importlib.util.spec_from_file_location("check_resume", REPO / "tools/check_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "config",
    ["configs/embedded/retinanet_R18_small.yaml", "configs/embedded/faster_rcnn_R18_small.yaml"],
)
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(
    tmp_path, config, capsys, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two trainings share the cores
    tool = check_resume_tool()
    code = tool.main(["--config-file", str(REPO / config), "--output-dir", str(tmp_path),
                      *SHORT_RUN])  # fmt: skip
    report = capsys.readouterr().out
    assert code == 0, report
    assert "differ by at most 0;" in report and " 0 of " in report
    result = tool.compare_final_weights(tmp_path / "full", tmp_path / "cut")
    assert result["iterations"] == (8, 8)


def test_compare_reports_the_largest_difference(tmp_path):
    import torch

    tool = check_resume_tool()
    for name, bias in (("a", 0.0), ("b", 0.25)):
        (tmp_path / name).mkdir()
        state = {"w": torch.ones(2), "b": torch.tensor([bias]), "n": torch.tensor([3])}
        torch.save({"model": state, "iteration": 4}, tmp_path / name / "model_final.pth")
    result = tool.compare_final_weights(tmp_path / "a", tmp_path / "b")
    assert result["max_abs_diff"] == 0.25 and result["worst_tensor"] == "b"
    assert (result["tensors_differ"], result["tensors"]) == (1, 2)
