#!/usr/bin/env python
"""Extract the student of a distillation training checkpoint as a plain detectron2 model.

    python tools/extract_student.py --config-file CFG --weights output/x/model_final.pth \\
        --output output/x/student.pth [KEY VALUE ...]

Writes ``student.pth`` (``{"model": state_dict}``: plain tensors, no ``distillers.*``, no
optimizer/scheduler; ``torch.load(weights_only=True)`` reads it) and ``student.yaml`` (the
plain detector's config, ``MODEL.WEIGHTS`` pointing to ``student.pth``). Evaluate the pair with

    python tools/train_net.py --config-file output/x/student.yaml --eval-only

``CFG`` and the ``KEY VALUE`` overrides must be those of the training run: the weights are
checked against the plain detector they describe (``--no-verify`` skips that check).
"""

from __future__ import annotations

import argparse
import sys

from distill.errors import run_cli
from distill.export import extract_student
from distill.user_code import add_import_argument, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="training config of the checkpoint")
    parser.add_argument("--weights", required=True, help="training checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="student weights to write (.pth)")
    parser.add_argument(
        "--no-verify", action="store_true", help="do not check the weights against the detector"
    )
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace):
    """Config as in tools/train_net.py: defaults + registered keys, the file, the overrides."""
    cfg = load_config(args.config_file, args.opts, args.imports)
    cfg.freeze()
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = setup(args)
    stats = extract_student(args.weights, args.output, cfg, verify=not args.no_verify)
    print(
        f"{stats['model_keys']} model keys in {stats['checkpoint']} "
        f"(iteration {stats['iteration']}): kept {stats['student_keys']} student keys "
        f"({stats['num_elements']:,} numbers), dropped {stats['distiller_keys']} distiller "
        f"keys and the entries {stats['dropped_entries']}"
    )
    print(f"wrote {stats['weights']} and {stats['config']}")
    return stats


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
