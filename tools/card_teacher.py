#!/usr/bin/env python
"""Gate and card teacher weights that ``make teachers`` did not train (e.g. converted official
checkpoints), so that a student may distil from them.

    python tools/card_teacher.py --config-file TEACHER.yaml --weights W.pth [KEY VALUE ...]

The weights must fit the config's detector exactly. They are evaluated on the config's first
test dataset and pass when their box AP is at least ``TEACHER_GATE.MIN_AP`` (e.g.
``TEACHER_GATE.MIN_AP 35`` on the command line) and their outputs depend on the image
(:mod:`distill.teacher_gate`). The card (``W.card.json``) is written either way, saying what the
gate saw; the command exits non-zero when the gate fails.
"""

from __future__ import annotations

import argparse
import tempfile

from distill.checkpoint import expand_path
from distill.errors import run_cli
from distill.launch import setup_run_logging
from distill.teacher_card import card_path
from distill.teacher_gate import card_teacher, load_for_gate
from distill.user_code import add_import_argument, load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the teacher's config")
    parser.add_argument("--weights", required=True, help="the teacher's checkpoint")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts, args.imports)
    setup_run_logging(None)
    weights = expand_path(args.weights)
    with tempfile.TemporaryDirectory() as scratch:
        cfg.OUTPUT_DIR = scratch  # the evaluator's files; only the card is kept
        cfg.freeze()
        model = load_for_gate(cfg, weights, source="--weights")
        card = card_teacher(
            cfg, model, weights, config_file=args.config_file, source="tools/card_teacher.py"
        )
    print(f"{card_path(weights)}: {card.summary()}")
    if not card.passed:
        raise SystemExit(f"{weights} fails the teacher gate: {card.verdict}")


if __name__ == "__main__":
    run_cli(main)
