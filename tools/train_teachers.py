#!/usr/bin/env python
"""``make teachers``: train the embedded-data teachers that teacher-based methods use.

    python tools/train_teachers.py [--families faster_rcnn retinanet fcos] [--force]

Each teacher (``configs/embedded/<family>_R34_teacher.yaml``) is trained on CPU and its final
checkpoint copied to ``<cache>/teachers/<family>_R34.pth`` (cache: ``$DISTILL_CACHE`` or
``~/.cache/distill``), next to the config it was trained with. A teacher whose checkpoint exists
is skipped, so the command is idempotent; an interrupted training resumes from its last
checkpoint. Tests never need these teachers.
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


def teacher_paths(family: str) -> tuple[Path, Path]:
    """(checkpoint, config) of the trained teacher of ``family`` in the cache."""
    folder = default_cache_root() / "teachers"
    return folder / f"{family}_R34.pth", folder / f"{family}_R34.yaml"


def train_teacher(family: str, force: bool) -> Path:
    weights, config = teacher_paths(family)
    if weights.is_file() and not force:
        print(f"{family}: teacher exists at {weights}")
        return weights
    cfg = distill.get_distill_cfg()
    cfg.merge_from_file(f"configs/embedded/{family}_R34_teacher.yaml")
    cfg.OUTPUT_DIR = str(default_cache_root() / "teachers" / f"{family}_R34_run")
    cfg.freeze()
    setup_logger(cfg.OUTPUT_DIR)
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=not force)
    trainer.train()
    weights.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(cfg.dump())
    shutil.copyfile(Path(cfg.OUTPUT_DIR) / "model_final.pth", weights)
    print(f"{family}: teacher written to {weights} (config {config})")
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--force", action="store_true", help="retrain existing teachers")
    args = parser.parse_args()
    for family in args.families:
        train_teacher(family, args.force)


if __name__ == "__main__":
    main()
