#!/usr/bin/env python
"""``make demo``: generate the embedded data, train the small student on CPU, print its AP.

    python tools/demo.py [--config-file CFG] [KEY VALUE ...]

Trains the small RetinaNet with LGD (``projects/LGD/configs/embedded/retinanet_R18_lgd.yaml``,
no pretrained teacher needed) from scratch, evaluates it with COCOEvaluator on the embedded
validation split and prints the AP table. For an LGD run it also writes the heat maps of one
validation image (student P3, implicit teacher P3, adapted student P3) to
``output/demo/lgd_heatmaps_p3.png``. Checkpoints, logs and the evaluation go to ``output/demo``.
"""

from __future__ import annotations

import argparse
import os
import time

from tabulate import tabulate

from distill.data import annotated_input, ensure_embedded_dataset
from distill.engine import train_and_evaluate
from distill.errors import run_cli
from distill.launch import setup_run_logging
from distill.user_code import add_import_argument, load_config

DEFAULT_CONFIG = "projects/LGD/configs/embedded/retinanet_R18_lgd.yaml"


def save_lgd_heatmaps(cfg, level: str = "p3") -> str:
    """Heat maps of the trained LGD model on the first annotated validation image."""
    from detectron2.modeling import build_model
    from lgd.visualize import lgd_heatmaps, save_heatmaps

    from distill.checkpoint import SafeCheckpointer

    model = build_model(cfg)
    SafeCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    maps = lgd_heatmaps(model, annotated_input(cfg, cfg.DATASETS.TEST[0]), level)
    path = os.path.join(cfg.OUTPUT_DIR, f"lgd_heatmaps_{level}.png")
    save_heatmaps(maps, path, level)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    start = time.perf_counter()
    paths = ensure_embedded_dataset()
    print(f"embedded data: {paths['dataset_dir']}")
    cfg = load_config(args.config_file, ["OUTPUT_DIR", "output/demo", *args.opts], args.imports)
    cfg.freeze()
    setup_run_logging(cfg.OUTPUT_DIR)
    results = train_and_evaluate(cfg)
    minutes = (time.perf_counter() - start) / 60
    for dataset, metrics in results.items():
        bbox = metrics["bbox"]
        overall = {k: v for k, v in bbox.items() if not k.startswith("AP-")}
        per_class = {k[3:]: v for k, v in bbox.items() if k.startswith("AP-")}
        arch, iters = cfg.MODEL.META_ARCHITECTURE, cfg.SOLVER.MAX_ITER
        print(f"\n{arch} on {dataset} after {iters} iterations: box AP (COCO, %)")
        for table in (overall, per_class):
            print(tabulate([list(table.values())], headers=list(table), floatfmt=".1f"))
    if "LGD" in cfg.DISTILL.DISTILLERS:
        print(f"\nheat maps: {save_lgd_heatmaps(cfg)}")
    print(f"\ndemo finished in {minutes:.1f} min; outputs in {cfg.OUTPUT_DIR}/")


if __name__ == "__main__":
    run_cli(main)
