"""Teacher cards (distill/teacher_card.py) and the quality gate (distill/teacher_gate.py):
round trip, refusals of uncarded, replaced and failed teachers, constant outputs, low AP."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from conftest import tiny_cfg

from distill.teacher import build_teacher
from distill.teacher_card import (
    TeacherCard,
    TeacherCardError,
    card_path,
    check_teacher_card,
    file_sha256,
    read_card,
    write_card,
)
from distill.teacher_gate import constant_outputs, load_for_gate, run_gate


def make_card(weights, **changes) -> TeacherCard:
    fields = dict(
        weights_sha256=file_sha256(str(weights)), config_file="t.yaml", config="SEED: 0\n",
        seed=0, iterations=1600, dataset="embedded_coco_val", ap=33.6, ap50=52.7, min_ap=30.0,
        passed=True, verdict="AP 33.6 >= TEACHER_GATE.MIN_AP 30", source="test",
        commit="0123456789abcdef", date="2026-12-07T20:00:00+00:00", threads=2,
    )  # fmt: skip
    fields.update(changes)
    return TeacherCard(**fields)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "teacher.pth"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    return path


def test_card_round_trip_next_to_the_weights(weights):
    card = make_card(weights)
    path = write_card(card, str(weights))
    assert path == str(weights.with_name("teacher.card.json")) == card_path(str(weights))
    assert read_card(str(weights)) == card
    assert json.loads(weights.with_name("teacher.card.json").read_text())["ap"] == 33.6
    assert "33.6 AP / 52.7 AP50" in card.summary() and "seed 0, 1600 iterations" in card.summary()
    nan_card = make_card(weights, ap=math.nan, passed=False)
    write_card(nan_card, str(weights))
    assert math.isnan(read_card(str(weights)).ap)


def test_check_accepts_and_logs_a_passing_card(weights, caplog):
    write_card(make_card(weights), str(weights))
    with caplog.at_level(logging.INFO, logger="distill.teacher_card"):
        card = check_teacher_card(str(weights), require=True)
    assert card.ap == 33.6
    assert "teacher card" in caplog.text and "33.6 AP" in caplog.text


@pytest.mark.parametrize(
    "fault, message",
    [
        ("missing", "no teacher card at .*teacher.card.json"),
        ("replaced", "describes another file .*sha256 differs"),
        ("failed", "failed its quality gate: outputs do not depend"),
        ("garbage", "teacher.card.json is not a teacher card"),
    ],
)
def test_check_refuses_unusable_cards(weights, caplog, fault, message):
    if fault == "replaced":
        write_card(make_card(weights), str(weights))
        torch.save({"model": {"w": torch.zeros(3)}}, weights)
    elif fault == "failed":
        write_card(make_card(weights, passed=False, verdict="outputs do not depend"), str(weights))
    elif fault == "garbage":
        weights.with_name("teacher.card.json").write_text('{"ap": 1}')
    with pytest.raises(
        TeacherCardError, match=f"^DISTILL.TEACHER.WEIGHTS: .*{message}.*REQUIRE_CARD"
    ):
        check_teacher_card(str(weights), require=True)
    with caplog.at_level(logging.WARNING, logger="distill.teacher_card"):
        assert check_teacher_card(str(weights), require=False) is None
    assert "UNVERIFIED TEACHER" in caplog.text


def test_teacher_based_config_refuses_a_teacher_without_card(teacher_files):
    teacher = teacher_files("faster_rcnn")
    cfg = tiny_cfg("faster_rcnn", "DISTILL.TEACHER.REQUIRE_CARD", True, distillers=["FeatureKD"],
                   teacher=teacher)  # fmt: skip
    with pytest.raises(TeacherCardError, match="no teacher card"):
        build_teacher(cfg, "BGR")
    write_card(make_card(teacher[1]), str(teacher[1]))
    assert build_teacher(cfg, "BGR").card.ap == 33.6


def test_constant_outputs_on_hand_built_scores():
    varied = [torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.1, 0.05])]
    assert constant_outputs(varied) is None
    same = [torch.full((100,), 0.0102), torch.full((100,), 0.0102), torch.full((98,), 0.0102)]
    assert "do not depend on the input" in constant_outputs(same)
    assert "0.0102" in constant_outputs(same)
    assert "no detections" in constant_outputs([torch.zeros(0), torch.zeros(0)])
    assert constant_outputs([torch.zeros(0), torch.tensor([0.3])]) is None


def gate_cfg(datasets, *opts):
    return tiny_cfg(
        "faster_rcnn", "DATASETS.TEST", (datasets[1],), "TEACHER_GATE.IMAGES", 3,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 20, *opts,
    )  # fmt: skip


def random_model_file(cfg, tmp_path, scale_predictor=None):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(cfg)
    if scale_predictor is not None:
        with torch.no_grad():  # the collapse: scores no longer depend on the input
            predictor = model.roi_heads.box_predictor
            predictor.cls_score.weight.zero_()
            predictor.cls_score.bias.fill_(scale_predictor)
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def test_gate_refuses_a_collapsed_detector(small_embedded, tmp_path):
    cfg = gate_cfg(small_embedded)
    model = load_for_gate(cfg, random_model_file(cfg, tmp_path, scale_predictor=-2.0), "w")
    result = run_gate(cfg, model)
    assert not result.passed
    assert "outputs do not depend on the input" in result.verdict


def test_gate_refuses_a_low_ap_and_passes_at_the_floor(small_embedded, tmp_path):
    cfg = gate_cfg(small_embedded, "TEACHER_GATE.MIN_AP", 50.0)
    model = load_for_gate(cfg, random_model_file(cfg, tmp_path), "w")
    result = run_gate(cfg, model)
    assert not result.passed and result.ap < 50.0
    assert "is below TEACHER_GATE.MIN_AP 50" in result.verdict
    cfg = gate_cfg(small_embedded, "TEACHER_GATE.MIN_AP", float(math.floor(result.ap)))
    again = run_gate(cfg, model)
    assert again.passed and again.ap == result.ap and ">= TEACHER_GATE.MIN_AP" in again.verdict
