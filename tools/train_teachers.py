#!/usr/bin/env python
"""``make teachers``: train the embedded-data teachers that teacher-based methods use.

    python tools/train_teachers.py [--families faster_rcnn,retinanet,fcos] [--force] [KEY VALUE ...]

Each teacher (``configs/embedded/<family>_R34_teacher.yaml``) is trained on CPU in
``<cache>/teachers/<family>_R34_run/`` and its final checkpoint copied to
``<cache>/teachers/<family>_R34.pth`` (cache: ``$DISTILL_CACHE``, default ``~/.cache/distill``),
where the ``*_feature_kd.yaml`` configs and the teacher-based methods look for it. A teacher
whose checkpoint exists is skipped, so the command is idempotent; an interrupted training resumes
from its last checkpoint. ``KEY VALUE`` pairs override the teacher configs. Tests never need
these teachers.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from detectron2.utils.logger import setup_logger

import distill
from distill.data import default_cache_root
from distill.engine import DistillTrainer

FAMILIES = ("faster_rcnn", "retinanet", "fcos")


def teacher_weights(family: str) -> Path:
    """Where the trained teacher of ``family`` is kept."""
    return default_cache_root() / "teachers" / f"{family}_R34.pth"


def train_teacher(family: str, force: bool, opts: list[str]) -> Path:
    weights = teacher_weights(family)
    if weights.is_file() and not force:
        print(f"{family}: teacher exists at {weights}")
        return weights
    cfg = distill.get_distill_cfg()
    cfg.merge_from_file(f"configs/embedded/{family}_R34_teacher.yaml")
    cfg.OUTPUT_DIR = str(default_cache_root() / "teachers" / f"{family}_R34_run")
    cfg.merge_from_list(opts)
    cfg.freeze()
    setup_logger(cfg.OUTPUT_DIR)
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=not force)
    trainer.train()
    shutil.copyfile(Path(cfg.OUTPUT_DIR) / "model_final.pth", weights)
    print(f"{family}: teacher written to {weights}")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma-separated, from {FAMILIES}"
    )
    parser.add_argument("--force", action="store_true", help="retrain existing teachers")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"error: --families: unknown {unknown}; choose from {FAMILIES}")
    for family in families:
        train_teacher(family, args.force, args.opts)


if __name__ == "__main__":
    main()
