"""tools/train_teachers.py: train, gate, card and install; refuse a teacher that fails its gate."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO, TINY_OPTS

from distill.teacher_card import file_sha256, read_card

OPTS = [str(x) if not isinstance(x, tuple) else str(x).replace(" ", "") for x in TINY_OPTS]
GATE = ["SOLVER.MAX_ITER", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "20", "TEACHER_GATE.IMAGES", "2"]  # fmt: skip


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "train_teachers", REPO / "tools/train_teachers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def datasets(names) -> list[str]:
    return ["DATASETS.TRAIN", f"('{names[0]}',)", "DATASETS.TEST", f"('{names[1]}',)"]


def run_tool(monkeypatch, root, names, *args):
    argv = ["train_teachers.py", "--families", "faster_rcnn", "--seed", "3",
            "--output-root", str(root), *args, *OPTS, *GATE, *datasets(names)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    load_tool().main()


@pytest.mark.timeout(900)
def test_train_gate_card_install_and_refusals(small_embedded, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the teacher configs are named relative to the repository
    installed = tmp_path / "faster_rcnn_R34.pth"
    run_dir = tmp_path / "runs" / "faster_rcnn_R34_seed3"

    run_tool(monkeypatch, tmp_path, small_embedded, "TEACHER_GATE.MIN_AP", "0.0")
    card = read_card(str(installed))
    assert card.passed and card.seed == 3 and card.iterations == 2
    assert card.weights_sha256 == file_sha256(str(installed))
    assert card.weights_sha256 == file_sha256(str(run_dir / "model_final.pth"))
    assert card.config_file == "configs/embedded/faster_rcnn_R34_teacher.yaml"
    assert "NORM: GN" in card.config and card.dataset == small_embedded[1]
    assert "teacher installed" in capsys.readouterr().out

    mtime = installed.stat().st_mtime_ns
    run_tool(monkeypatch, tmp_path, small_embedded, "TEACHER_GATE.MIN_AP", "0.0")  # idempotent
    assert "teacher exists" in capsys.readouterr().out
    assert installed.stat().st_mtime_ns == mtime

    with pytest.raises(SystemExit, match="NOT installed: AP .* is below TEACHER_GATE.MIN_AP 90"):
        run_tool(monkeypatch, tmp_path, small_embedded, "--force", "TEACHER_GATE.MIN_AP", "90.0")
    assert (run_dir / "model_final.pth").is_file()  # kept for inspection
    assert not read_card(str(run_dir / "model_final.pth")).passed
    assert read_card(str(installed)).passed  # the previous, passing teacher stays

    (tmp_path / "faster_rcnn_R34.card.json").unlink()  # a teacher from before cards
    with pytest.raises(SystemExit, match="installed teacher .* fails its gate"):
        run_tool(monkeypatch, tmp_path, small_embedded, "TEACHER_GATE.MIN_AP", "90.0")
    assert not read_card(str(installed)).passed


def test_card_teacher_cards_external_weights(small_embedded, tmp_path, monkeypatch):
    import torch
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

    spec = importlib.util.spec_from_file_location("card_teacher", REPO / "tools/card_teacher.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    torch.manual_seed(0)
    weights = tmp_path / "external.pth"
    torch.save({"model": build_model(tiny_cfg("faster_rcnn")).state_dict()}, weights)
    argv = ["--config-file", str(REPO / "configs/embedded/faster_rcnn_R18_small.yaml"),
            "--weights", str(weights), *OPTS, *GATE, *datasets(small_embedded)]  # fmt: skip
    tool.main([*argv, "TEACHER_GATE.MIN_AP", "0.0"])
    card = read_card(str(weights))
    assert card.passed and card.seed is None and card.iterations is None
    assert card.source == "tools/card_teacher.py" and "external weights" in card.summary()
    with pytest.raises(SystemExit, match="fails the teacher gate: AP .* below TEACHER_GATE.MIN_AP"):
        tool.main([*argv, "TEACHER_GATE.MIN_AP", "90.0"])
    assert not read_card(str(weights)).passed
