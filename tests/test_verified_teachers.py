"""The shipped teacher-based embedded configs with their verified teachers (installed and carded
by ``make teachers``): the broken-teacher stop's defaults leave them alone.

Skipped where ``make teachers`` has not installed the teacher (CI never trains teachers); run
it after ``make teachers`` with ``pytest tests/test_verified_teachers.py``.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import REPO

from distill.checkpoint import expand_path
from distill.teacher_card import TeacherCardError, read_card

CONFIGS = [
    "configs/embedded/faster_rcnn_R18_feature_kd.yaml",
    "configs/embedded/retinanet_R18_feature_kd.yaml",
    "configs/embedded/fcos_R18_feature_kd.yaml",
    "projects/Dsig/configs/embedded/faster_rcnn_R18_dsig.yaml",
    "projects/Dsig/configs/embedded/retinanet_R18_dsig.yaml",
    "projects/Dsig/configs/embedded/fcos_R18_dsig.yaml",
]
ITERATIONS = 30


def verified_teacher_or_skip(cfg) -> None:
    weights = expand_path(cfg.DISTILL.TEACHER.WEIGHTS)
    try:
        card = read_card(weights)
    except TeacherCardError:
        pytest.skip(f"no carded teacher at {weights} (run `make teachers`)")
    if not card.passed:
        pytest.skip(f"the teacher at {weights} failed its gate: {card.verdict}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", CONFIGS)
def test_default_loss_ratio_stop_leaves_verified_teachers_alone(path, tmp_path, monkeypatch):
    from distill.engine import DistillTrainer
    from distill.user_code import load_config

    monkeypatch.chdir(REPO)
    cfg = load_config(path)
    verified_teacher_or_skip(cfg)
    cfg.merge_from_list(["SOLVER.MAX_ITER", ITERATIONS, "DATASETS.TEST", (),
                         "OUTPUT_DIR", str(tmp_path)])  # fmt: skip
    cfg.freeze()
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # raises BrokenTeacherError if the default stop triggers
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        ratios = [json.loads(line).get("distill_loss_ratio") for line in f if line.strip()]
    ratios = [r for r in ratios if r is not None]
    assert ratios and max(ratios) < cfg.DISTILL.LOSS_RATIO_STOP.FACTOR
    print(f"{path}: largest distillation / own loss ratio {max(ratios):.3g}")
