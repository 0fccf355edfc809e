#!/usr/bin/env python
"""Save the teacher's and the student's edge matrices of one image side by side.

    python projects/Dsig/tools/visualize_dsig.py --config-file CFG --weights CKPT \\
        [--dataset NAME] [--index 0] [--output dsig_edges.png] [KEY VALUE ...]

CKPT is a checkpoint of a Dsig run (or any student checkpoint of the config's student); the
teacher comes from the config's ``DISTILL.TEACHER``. The nodes are the image's ground-truth boxes;
the dataset defaults to the config's first test dataset.
"""

from __future__ import annotations

import argparse

from detectron2.data import MetadataCatalog
from dsig.visualize import edge_matrices, save_edge_matrices

from distill.data import annotated_input
from distill.errors import run_cli
from distill.export import load_distill_run
from distill.user_code import add_import_argument


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint of the student")
    parser.add_argument("--dataset", default="", help="default: the config's first test set")
    parser.add_argument("--index", type=int, default=0, help="annotated image index")
    parser.add_argument("--output", default="dsig_edges.png")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    cfg, model = load_distill_run(args.config_file, args.weights, args.opts, "Dsig", args.imports)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    matrices = edge_matrices(model, annotated_input(cfg, dataset, args.index))
    names = MetadataCatalog.get(dataset).get("thing_classes")
    save_edge_matrices(matrices, args.output, names)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main)
