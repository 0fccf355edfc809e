#!/usr/bin/env python
"""Train or evaluate any model of this codebase: plain or distilled students, every project.

    python tools/train_net.py --config-file configs/embedded/retinanet_R18_small.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/x/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8                 # one machine, 8 GPUs
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG         # CPU processes (gloo)

    python tools/train_net.py --config-file CFG --import my_kd.py DISTILL.DISTILLERS "['MyKD']"
    python tools/train_net.py --config-file CFG --random-teacher SOLVER.MAX_ITER 20  # wiring check

Trailing ``KEY VALUE`` pairs override the config. ``--import MODULE_OR_FILE`` (repeatable, as
``DISTILL.IMPORTS``) imports user code, e.g. a distiller, before the config is built; installed
projects are found without it. ``--eval-only`` evaluates the student alone (the plain detector;
distiller weights in the checkpoint are ignored, no teacher is built); its weights must fit that
detector exactly. ``--random-teacher`` trains with a random-init teacher of the teacher config's
architecture instead of ``DISTILL.TEACHER.WEIGHTS``, to check a teacher-based distiller's wiring
without a trained teacher; the log says so every 20 iterations. A new run refuses an
``OUTPUT_DIR`` that holds checkpoints unless ``--resume`` (continue them) or ``--overwrite``
(delete them) is given.
"""

from __future__ import annotations

import logging
import os

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results

from distill.checkpoint import RESUME_SOURCE, StudentCheckpointer
from distill.engine import DistillTrainer, check_output_dir
from distill.errors import ConfigValueError, run_cli
from distill.export import plain_config
from distill.launch import run, setup_run_logging
from distill.random_teacher import RandomTeacherNotice, calibration_batch, with_random_teacher
from distill.user_code import add_import_argument, load_config

logger = logging.getLogger("distill")


def parse_args(argv: list[str] | None = None):
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that holds checkpoints, deleting them",
    )
    parser.add_argument(
        "--random-teacher",
        action="store_true",
        help="train with a random-init teacher of DISTILL.TEACHER.CONFIG_FILE's architecture "
        "instead of its WEIGHTS (saved in OUTPUT_DIR/random_teacher): a wiring check, the "
        "losses mean nothing",
    )
    add_import_argument(parser)
    return parser.parse_args(argv)


def setup(args):
    """Config = detectron2 defaults + every registered key, the file, then the overrides
    (:func:`distill.user_code.load_config`). A training run first checks that it would not
    overwrite another run's checkpoints; with ``--random-teacher`` its teacher weights are
    replaced by a random teacher."""
    if args.random_teacher and args.eval_only:
        raise ConfigValueError(
            "--random-teacher trains with a random teacher; --eval-only builds no teacher: "
            "pass one or the other"
        )
    cfg = load_config(args.config_file, args.opts, args.imports)
    cfg.freeze()
    if not args.eval_only:
        check_output_dir(cfg.OUTPUT_DIR, args.resume, args.overwrite)
    if args.random_teacher:
        directory = os.path.join(cfg.OUTPUT_DIR, "random_teacher")
        seed = max(cfg.SEED, 0)
        cfg = with_random_teacher(cfg, calibration_batch(cfg), directory, seed)
    default_setup(cfg, args)
    setup_run_logging(cfg.OUTPUT_DIR)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = DistillTrainer.build_model(plain_config(cfg))
        checkpointer = StudentCheckpointer(model, cfg.OUTPUT_DIR, exact=True)
        if args.resume and checkpointer.has_checkpoint():
            checkpointer.source = RESUME_SOURCE
        elif not cfg.MODEL.WEIGHTS:
            raise ConfigValueError(
                "--eval-only needs the weights to evaluate: set MODEL.WEIGHTS (or pass --resume "
                "with a checkpoint in OUTPUT_DIR)"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = DistillTrainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = DistillTrainer(cfg)
    if args.random_teacher:
        trainer.register_hooks([RandomTeacherNotice(cfg.DISTILL.TEACHER.WEIGHTS)])
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    run_cli(run, main, parse_args())
