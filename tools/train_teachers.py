#!/usr/bin/env python
"""``make teachers``: train, check and install the embedded-data teachers.

    python tools/train_teachers.py [--families faster_rcnn,retinanet,fcos] [--seed N]
        [--output-root DIR] [--force] [KEY VALUE ...]

Each teacher (``configs/embedded/<family>_R34_teacher.yaml``) trains on CPU in
``<root>/runs/<family>_R34_seed<N>/`` (root: ``--output-root``, default
``$DISTILL_CACHE/teachers``, ``$DISTILL_CACHE`` defaulting to ``~/.cache/distill``); ``SEED`` is
``--seed`` (default: the config's). The final checkpoint then passes the quality gate
(:mod:`distill.teacher_gate`: box AP on the validation split of at least ``TEACHER_GATE.MIN_AP``,
outputs that depend on the image) and gets a teacher card (JSON: config, seed, iterations,
AP / AP50, commit, date, sha256 of the weights). Only a teacher that passed is installed, as
``<root>/<family>_R34.pth`` with its ``.card.json``, where the ``*_feature_kd.yaml`` configs and
the teacher-based methods look for it. A teacher that fails is not installed: the command says
what the gate saw, keeps the run folder, goes on with the other families and exits non-zero.

Idempotent: an installed teacher with a passing card is kept (``--force`` retrains it), an
installed teacher without a card is gated and carded in place, and an interrupted training
resumes from its last checkpoint. ``KEY VALUE`` pairs override the teacher configs. Tests never
need these teachers.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from distill.data import default_cache_root
from distill.engine import DistillTrainer, check_output_dir
from distill.errors import run_cli
from distill.launch import setup_run_logging
from distill.teacher_card import TeacherCard, TeacherCardError, card_path, write_card
from distill.teacher_card import read_card as read_teacher_card
from distill.teacher_gate import card_teacher, load_for_gate
from distill.user_code import add_import_argument, import_user_code, load_config

FAMILIES = ("faster_rcnn", "retinanet", "fcos")
SOURCE = "tools/train_teachers.py"


def teacher_config_file(family: str) -> str:
    return f"configs/embedded/{family}_R34_teacher.yaml"


def installed_weights(root: Path, family: str) -> Path:
    """Where the installed teacher of ``family`` is kept (its card next to it)."""
    return root / f"{family}_R34.pth"


def teacher_cfg(family: str, seed: int | None, output_dir: Path | None, opts: list[str]):
    cfg = load_config(teacher_config_file(family), opts)
    if seed is not None:
        cfg.SEED = seed
    if output_dir is not None:
        cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg


def train(cfg, force: bool) -> Path:
    """Train ``cfg`` into its OUTPUT_DIR: resuming its last checkpoint, or from scratch with
    ``force`` (its checkpoints deleted); a finished run (``model_final.pth``) is kept unless
    ``force``."""
    final = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    if final.is_file() and not force:
        return final
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    check_output_dir(cfg.OUTPUT_DIR, resume=not force, overwrite=force)
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=not force)
    trainer.train()
    return final


def install(weights: Path, card: TeacherCard, target: Path) -> None:
    """Copy ``weights`` to ``target`` (atomically) and write ``card`` next to it."""
    tmp = target.with_suffix(".pth.tmp")
    shutil.copyfile(weights, tmp)
    os.replace(tmp, target)
    write_card(card, str(target))


class TeacherRefused(Exception):
    """A teacher that failed its gate; the message says what the gate saw."""


def refuse(family: str, card: TeacherCard, where: Path) -> None:
    raise TeacherRefused(
        f"{family}: teacher NOT installed: {card.verdict}. Its run is kept in {where} "
        f"(card {card_path(str(where / 'model_final.pth'))})."
    )


def existing_teacher(family: str, target: Path, opts: list[str]) -> bool:
    """True when ``target`` holds a teacher with a passing card; one without a card (trained
    before cards existed) is gated and carded in place, and refused if it fails."""
    if not target.is_file():
        return False
    try:
        card = read_teacher_card(str(target))
    except TeacherCardError:
        print(f"{family}: {target} has no teacher card: checking it now")
        gate_dir = target.parent / "runs" / f"{family}_R34_installed"
        card = gate_file(family, target, opts, seed=None, iterations=None, output_dir=gate_dir)
    if not card.passed:
        raise TeacherRefused(
            f"{family}: the installed teacher {target} fails its gate: {card.verdict}. "
            "Retrain it with --force."
        )
    print(f"{family}: teacher exists at {target} ({card.summary()})")
    return True


def gate_file(family, weights: Path, opts, seed, iterations, output_dir: Path) -> TeacherCard:
    """Gate and card ``weights``; the evaluation's files go to ``output_dir/inference``."""
    cfg = teacher_cfg(family, seed, output_dir, opts)
    model = load_for_gate(cfg, str(weights), source=str(weights))
    return card_teacher(
        cfg,
        model,
        str(weights),
        config_file=teacher_config_file(family),
        source=SOURCE,
        seed=seed,
        iterations=iterations,
    )


def train_teacher(family: str, root: Path, seed: int | None, force: bool, opts: list[str]):
    """Train, gate and install the teacher of ``family``; returns its card."""
    target = installed_weights(root, family)
    if not force and existing_teacher(family, target, opts):
        return read_teacher_card(str(target))
    seed = teacher_cfg(family, seed, None, opts).SEED if seed is None else seed
    run_dir = root / "runs" / f"{family}_R34_seed{seed}"
    cfg = teacher_cfg(family, seed, run_dir, opts)
    setup_run_logging(cfg.OUTPUT_DIR)
    final = train(cfg, force)
    card = gate_file(family, final, opts, seed, cfg.SOLVER.MAX_ITER, output_dir=run_dir)
    if not card.passed:
        refuse(family, card, run_dir)
    install(final, card, target)
    print(f"{family}: teacher installed at {target} ({card.summary()})")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma-separated, from {FAMILIES}"
    )
    parser.add_argument("--seed", type=int, default=None, help="SEED (default: the config's)")
    parser.add_argument(
        "--output-root", type=Path, default=None, help="default: $DISTILL_CACHE/teachers"
    )
    parser.add_argument("--force", action="store_true", help="retrain installed teachers")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"error: --families: unknown {unknown}; choose from {FAMILIES}")
    for spec in args.imports:  # before the teacher configs are built
        import_user_code(spec)
    root = args.output_root or default_cache_root() / "teachers"
    refused = []
    for family in families:  # a refused teacher does not keep the others from training
        try:
            train_teacher(family, root, args.seed, args.force, args.opts)
        except TeacherRefused as e:
            print(e, flush=True)
            refused.append(str(e))
    if refused:
        raise SystemExit("\n".join(refused))


if __name__ == "__main__":
    run_cli(main)
