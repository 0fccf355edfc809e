#!/usr/bin/env python
"""Save the LGD heat maps of one image: student FPN map, implicit teacher map, adapted map.

    python projects/LGD/tools/visualize_lgd.py --config-file CFG --weights CKPT \\
        [--dataset NAME] [--index 0] [--level p3] [--output lgd_heatmaps.png] [KEY VALUE ...]

CKPT is a training checkpoint of an LGD run (it holds the implicit teacher and the adapter,
``distillers.LGD.*``). The teacher is fed the image's ground truth; the dataset defaults to the
config's first test dataset.
"""

from __future__ import annotations

import argparse

from lgd.visualize import lgd_heatmaps, save_heatmaps

from distill.data import annotated_input
from distill.errors import run_cli
from distill.export import load_distill_run
from distill.user_code import add_import_argument


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint of an LGD training run")
    parser.add_argument("--dataset", default="", help="default: the config's first test set")
    parser.add_argument("--index", type=int, default=0, help="annotated image index")
    parser.add_argument("--level", default="p3")
    parser.add_argument("--output", default="lgd_heatmaps.png")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    cfg, model = load_distill_run(args.config_file, args.weights, args.opts, "LGD", args.imports)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    maps = lgd_heatmaps(model, annotated_input(cfg, dataset, args.index), args.level)
    save_heatmaps(maps, args.output, args.level)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
