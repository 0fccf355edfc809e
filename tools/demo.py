#!/usr/bin/env python
"""``make demo``: generate the embedded data, train the small student on CPU, print its AP.

    python tools/demo.py [--config-file CFG] [KEY VALUE ...]

Trains ``configs/embedded/faster_rcnn_R18_small.yaml`` from scratch (about 7 minutes on 2 cores),
evaluates it with COCOEvaluator on the embedded validation split and prints the AP table.
Checkpoints, logs and the evaluation go to ``output/demo``.
"""

from __future__ import annotations

import argparse
import time

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

import distill
from distill.data import ensure_embedded_dataset
from distill.engine import DistillTrainer
from distill.errors import run_cli

DEFAULT_CONFIG = "configs/embedded/faster_rcnn_R18_small.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    start = time.perf_counter()
    paths = ensure_embedded_dataset()
    print(f"embedded data: {paths['dataset_dir']}")
    cfg = distill.get_distill_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.OUTPUT_DIR = "output/demo"
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    setup_logger(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, name="distill")
    seed_all_rng(cfg.SEED)

    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # set by the evaluation after the last iteration
    if len(cfg.DATASETS.TEST) == 1:  # detectron2 unwraps the results of a single dataset
        results = {cfg.DATASETS.TEST[0]: results}
    minutes = (time.perf_counter() - start) / 60
    for dataset, metrics in results.items():
        bbox = metrics["bbox"]
        overall = {k: v for k, v in bbox.items() if not k.startswith("AP-")}
        per_class = {k[3:]: v for k, v in bbox.items() if k.startswith("AP-")}
        arch, iters = cfg.MODEL.META_ARCHITECTURE, cfg.SOLVER.MAX_ITER
        print(f"\n{arch} on {dataset} after {iters} iterations: box AP (COCO, %)")
        for table in (overall, per_class):
            print(tabulate([list(table.values())], headers=list(table), floatfmt=".1f"))
    print(f"\ndemo finished in {minutes:.1f} min; outputs in {cfg.OUTPUT_DIR}/")


if __name__ == "__main__":
    run_cli(main)
