#!/usr/bin/env python
"""Time the scene-graph evaluator on a seeded synthetic VG150-sized test set.

    OMP_NUM_THREADS=1 python projects/LSKD/tools/benchmark_sgg_eval.py \\
        [--num-images 26446] [--num-train-images 10000] [--seed 0] [--json out.json]

Ground truth: 10-25 objects and 5-20 relations per image (some pairs with two predicates),
C = 150 classes, P = 50 predicates; predictions: 100 ranked pairs per image with full 51-way
score rows (see ``sgg/evaluation/synthetic.py``). The synthetic outputs are made batch by batch
outside the timed region; timed are ``SceneGraphEvaluator.process`` (matching) and
``evaluate`` (gathering, metrics, zR / group statistics from the synthetic training split,
tables, JSON). Loading the ground truth (the evaluator's constructor) is timed separately.
The reported metrics are the evaluator's, in percent (0-100).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from sgg.evaluation import SceneGraphEvaluator
from sgg.evaluation.synthetic import synthetic_dataset, synthetic_output

from distill.errors import ConfigValueError, run_cli

TEST, TRAIN = "sgg_benchmark_synthetic_test", "sgg_benchmark_synthetic_train"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=26446, help="test images (VG150 test)")
    parser.add_argument(
        "--num-train-images", type=int, default=10000, help="synthetic training split (zR, groups)"
    )
    parser.add_argument("--pairs", type=int, default=100, help="predicted pairs per image")
    parser.add_argument("--batch-size", type=int, default=8, help="images per process() call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the result here too")
    return parser.parse_args(argv)


def run_benchmark(args: argparse.Namespace) -> dict:
    """Register the synthetic splits, run the evaluator, return the timings and metrics."""
    if args.num_images < 1 or args.batch_size < 1 or args.pairs < 1:
        raise ConfigValueError("--num-images, --batch-size and --pairs must be positive")
    test = synthetic_dataset(args.num_images, seed=args.seed)
    train = synthetic_dataset(args.num_train_images, seed=args.seed + 1)
    for name in (TEST, TRAIN):
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)
    DatasetCatalog.register(TEST, lambda: test)
    DatasetCatalog.register(TRAIN, lambda: train)
    MetadataCatalog.get(TEST).set(
        thing_classes=[f"class_{i}" for i in range(150)],
        predicate_classes=[f"predicate_{i}" for i in range(1, 51)],
        sgg_train_dataset=TRAIN,
    )

    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        evaluator = SceneGraphEvaluator(TEST, output_dir=out_dir, distributed=False)
        load_s = time.perf_counter() - start

        rng = np.random.default_rng(args.seed)
        process_s = 0.0
        for i in range(0, len(test), args.batch_size):
            batch = test[i : i + args.batch_size]
            outputs = [synthetic_output(r, rng, num_pairs=args.pairs) for r in batch]
            start = time.perf_counter()
            evaluator.process(batch, outputs)
            process_s += time.perf_counter() - start
        start = time.perf_counter()
        metrics = evaluator.evaluate()["sgg"]
        evaluate_s = time.perf_counter() - start
    total = process_s + evaluate_s
    return {
        "num_images": args.num_images,
        "num_train_images": args.num_train_images,
        "pairs_per_image": args.pairs,
        "seed": args.seed,
        "gt_load_s": round(load_s, 3),
        "process_s": round(process_s, 3),
        "evaluate_s": round(evaluate_s, 3),
        "process_plus_evaluate_s": round(total, 3),
        "images_per_s": round(args.num_images / total, 1),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "numpy": np.__version__,
        "metrics_unit": "percent",
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run_benchmark(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    run_cli(main)
