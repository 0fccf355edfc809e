"""tools/compare_runs.py: several configs x seeds, a markdown AP table, finished runs reused,
failed runs (NaN AP) named and left out, the teacher's card AP recorded."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import sys

import pytest
from conftest import REPO, TINY_OPTS, tiny_cfg

OPTS = [str(x) if not isinstance(x, tuple) else str(x).replace(" ", "") for x in TINY_OPTS]
SMALL = str(REPO / "configs/embedded/retinanet_R18_small.yaml")
LGD = str(REPO / "projects/LGD/configs/embedded/retinanet_R18_lgd.yaml")
NAN = re.compile(r"\bnan\b", re.IGNORECASE)


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "tools/compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_configs_table_and_resume(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    # after 1 iteration RetinaNet's scores are about its prior (0.01), under the default
    # threshold 0.05: without threshold 0 the model predicts nothing and both runs fail
    argv = ["compare_runs.py", "--configs", SMALL, LGD, "--seeds", "3",
            "--output-dir", str(tmp_path), *OPTS, "SOLVER.MAX_ITER", "1",
            "TEST.DETECTIONS_PER_IMAGE", "10",
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    tool.main()
    table = (tmp_path / "table.md").read_text()
    assert table.count("| retinanet_R18_small |") == 2  # the run and the mean
    assert table.count("| retinanet_R18_lgd |") == 2
    assert not NAN.search(table)
    record = json.loads((tmp_path / "retinanet_R18_lgd/seed3/results.json").read_text())
    assert set(record) >= {"AP", "AP50", "AP75", "minutes", "teacher_ap"}
    assert record["teacher_ap"] is None  # LGD's teacher is implicit: no weights, no card
    record["AP"] = 99.0  # a finished run is read back, not trained again
    (tmp_path / "retinanet_R18_lgd/seed3/results.json").write_text(json.dumps(record))
    capsys.readouterr()
    tool.main()
    assert "| retinanet_R18_lgd | 3 | 99.0 |" in capsys.readouterr().out


def fake_training(nan_for: str, calls: list[str]):
    """A stand-in for train_and_evaluate: NaN metrics (what detectron2 returns when the model
    predicted nothing) for output folders containing ``nan_for``, fixed metrics otherwise."""

    def train_and_evaluate(cfg):
        calls.append(cfg.OUTPUT_DIR)
        value = math.nan if nan_for and nan_for in cfg.OUTPUT_DIR else 20.0
        return {"embedded_coco_val": {"bbox": {"AP": value, "AP50": value, "AP75": value}}}

    return train_and_evaluate


def test_failed_run_named_not_recorded_and_exit_nonzero(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    calls = []
    monkeypatch.setattr(tool, "train_and_evaluate", fake_training("retinanet_R18_lgd", calls))
    argv = ["compare_runs.py", "--configs", SMALL, LGD, "--seeds", "0", "1",
            "--output-dir", str(tmp_path), *OPTS]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        tool.main()
    message = str(exit_info.value.code)
    assert message.startswith("2 of 4 runs failed:")
    assert "retinanet_R18_lgd seed 0" in message and "retinanet_R18_lgd seed 1" in message
    out = capsys.readouterr().out
    lgd_dir = tmp_path / "retinanet_R18_lgd/seed1"
    assert (
        f"FAILED: retinanet_R18_lgd seed 1 ({lgd_dir}, log kept): no predictions: AP is NaN" in out
    )
    assert lgd_dir.is_dir() and not (lgd_dir / "results.json").exists()
    assert (lgd_dir / "log.txt").is_file()
    table = (tmp_path / "table.md").read_text()
    assert not NAN.search(table) and "retinanet_R18_lgd" not in table
    assert "| retinanet_R18_small | 1 | 20.0 | 20.0 | 20.0 | - |" in table
    assert "| retinanet_R18_small | mean | 20.0 ± 0.0 | 20.0 ± 0.0 | 20.0 ± 0.0 | - | |" in table

    # a rerun trains the failed runs again; a NaN results.json of an older version also fails
    old = tmp_path / "retinanet_R18_small/seed0/results.json"
    old.write_text(json.dumps({**json.loads(old.read_text()), "AP": math.nan}))
    calls.clear()
    monkeypatch.setattr(tool, "train_and_evaluate", fake_training("", calls))
    with pytest.raises(SystemExit, match=r"^1 of 4 runs failed: retinanet_R18_small seed 0 "):
        tool.main()
    assert sorted(calls) == [str(tmp_path / f"retinanet_R18_lgd/seed{s}") for s in (0, 1)]
    assert "no predictions: AP is NaN (in " in capsys.readouterr().out
    assert not old.exists() and old.with_name("results.json.failed").is_file()
    assert "| retinanet_R18_lgd | mean | 20.0 ± 0.0 |" in (tmp_path / "table.md").read_text()


def test_missing_bbox_result_fails(tmp_path):
    tool = load_tool()
    with pytest.raises(tool.RunFailed, match="no bbox result"):
        tool.check_bbox(None)
    with pytest.raises(tool.RunFailed, match="lacks AP75"):
        tool.check_bbox({"AP": 1.0, "AP50": 2.0})
    tool.check_bbox({"AP": 1.0, "AP50": 2.0, "AP75": 0.5})


def test_table_teacher_ap_column():
    tool = load_tool()
    run = {"AP": 10.0, "AP50": 20.0, "AP75": 8.0, "minutes": 2.0}
    kd = {**run, "teacher_ap": 30.25, "max_loss_ratio": 3.14159}
    records = {
        "student": {0: {**run, "teacher_ap": None}, 1: {**run, "AP": 12.0}},  # 1: older record
        "kd": {0: kd, 1: kd},
    }
    lines = tool.table(records).splitlines()
    assert lines[0] == (
        "| config | seed | AP | AP50 | AP75 | teacher AP | max loss ratio | minutes |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert "| student | 0 | 10.0 | 20.0 | 8.0 | - | - | 2.0 |" in lines
    assert "| student | 1 | 12.0 | 20.0 | 8.0 | - | - | 2.0 |" in lines
    assert "| kd | 1 | 10.0 | 20.0 | 8.0 | 30.2 | 3.14 | 2.0 |" in lines
    assert "| student | mean | 11.0 ± 1.4 | 20.0 ± 0.0 | 8.0 ± 0.0 | - | | |" in lines
    assert "| kd | mean | 10.0 ± 0.0 | 20.0 ± 0.0 | 8.0 ± 0.0 | 30.2 | | |" in lines
    one_seed = tool.table({"kd": {0: kd}}).splitlines()
    assert "| kd | mean | 10.0 | 20.0 | 8.0 | 30.2 | | |" in one_seed


def test_max_loss_ratio_from_metrics(tmp_path):
    tool = load_tool()
    assert tool.max_loss_ratio(str(tmp_path)) is None
    lines = [{"iteration": 0, "distill_loss_ratio": 2.5}, {"iteration": 1, "total_loss": 1.0},
             {"iteration": 2, "distill_loss_ratio": 7.0}]  # fmt: skip
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert tool.max_loss_ratio(str(tmp_path)) == 7.0


def write_teacher(tmp_path, ap: float) -> None:
    from distill.teacher_card import TeacherCard, file_sha256, write_card

    weights = tmp_path / "teacher.pth"
    weights.write_bytes(b"weights")
    fields = {f.name: None for f in dataclasses.fields(TeacherCard)}
    fields.update(weights_sha256=file_sha256(str(weights)), ap=ap, ap50=2 * ap, passed=True)
    write_card(TeacherCard(**fields), str(weights))


def test_teacher_ap_from_card_of_used_teacher(tmp_path, monkeypatch):
    tool = load_tool()
    monkeypatch.setenv("TEACHERS", str(tmp_path))
    teacher = (REPO / "configs/embedded/retinanet_R18_small.yaml", "$TEACHERS/teacher.pth")
    kd = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=teacher)
    assert tool.teacher_ap(kd) is None  # no card yet
    write_teacher(tmp_path, 31.5)
    assert tool.teacher_ap(kd) == 31.5
    unused = tiny_cfg("retinanet", teacher=teacher)  # no distiller needs the teacher
    assert tool.teacher_ap(unused) is None
    assert tool.teacher_ap(tiny_cfg("retinanet", distillers=["FeatureKD"])) is None  # no weights
    write_teacher(tmp_path, math.nan)  # a teacher that predicted nothing: null, valid JSON
    assert tool.teacher_ap(kd) is None


def test_a_run_stopped_by_a_broken_teacher_fails_alone(tmp_path, monkeypatch, capsys):
    from distill.errors import BrokenTeacherError

    tool = load_tool()
    healthy = fake_training("", [])

    def train_and_evaluate(cfg):
        if "seed0" in cfg.OUTPUT_DIR:
            raise BrokenTeacherError("broken teacher? at iteration 3, loss_x=5e4 exceeded ...")
        return healthy(cfg)

    monkeypatch.setattr(tool, "train_and_evaluate", train_and_evaluate)
    config = str(REPO / "configs/embedded/retinanet_R18_small.yaml")
    argv = ["compare_runs.py", "--configs", config, "--seeds", "0", "1",
            "--output-dir", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="^1 of 2 runs failed: retinanet_R18_small seed 0"):
        tool.main()
    out = capsys.readouterr().out
    assert "FAILED: retinanet_R18_small seed 0" in out and "broken teacher? at iteration 3" in out
    assert "| retinanet_R18_small | 1 | 20.0 |" in out
    assert not (tmp_path / "retinanet_R18_small/seed0/results.json").exists()
