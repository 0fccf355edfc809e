#!/usr/bin/env python
"""Benchmark what distillation costs, on one fixed batch, in one run.

Phases (the module docstring of distill/benchmark.py says how time and memory are measured):

* train step (forward + backward + SGD step) of the student alone (DISTILL.DISTILLERS=[]) and
  with the configured distillers and teacher, and their time / memory ratios;
* the teacher's forward alone (preprocess + backbone, no_grad), when there is a teacher;
* eval-mode inference of the plain detector (with the weights of the student-alone train steps),
  of the extracted student (the Distill model's student weights after its train steps, in the
  plain detector) and of the Distill model: the times should be equal. Both train phases start
  from the same weights and take the same number of steps: detectors with unrelated random
  weights differ in inference time (more or fewer boxes reach NMS).

The batch is the first B images of DATASETS.TRAIN[0] through detectron2's DatasetMapper
(resized to shortest edge S, no random flip) or, if that does not load (or ``--data
synthetic``), B random S x S images with random boxes. Without the teacher's trained weights,
``--random-teacher`` measures with a random-init (calibrated) teacher of the same architecture;
the compute does not depend on the weights; on a config whose distillers read no teacher (LGD)
the flag changes nothing and says so. Smoke usage on a CPU:

    OMP_NUM_THREADS=2 python tools/benchmark.py \\
        --config-file projects/Dsig/configs/embedded/faster_rcnn_R18_dsig.yaml \\
        --iters 2 --warmup 1 --batch-size 2 --image-size 128 --random-teacher --json /tmp/bench.json

Without distillers in the config only the student and inference phases run. Add
``MODEL.DEVICE cuda`` to measure on a GPU. The JSON (default ``OUTPUT_DIR/benchmark.json``)
holds the config, device, torch version, the batch, every phase's times and memory, the ratios
and the checks of the extracted student.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from distill.benchmark import run_benchmark
from distill.compiled_ops import check_device
from distill.errors import run_cli
from distill.random_teacher import no_teacher_reason, with_random_teacher
from distill.student import describe_student
from distill.user_code import add_import_argument, load_config

PHASES = {
    "train_student": "train step, student alone (DISTILL.DISTILLERS=[])",
    "train_distill": "train step, student + distillers + teacher",
    "teacher_forward": "teacher preprocess + backbone, no_grad",
    "infer_plain": "eval forward, plain detector, weights of train_student",
    "infer_extracted": "eval forward, plain detector, student of train_distill",
    "infer_distill": "eval forward, Distill model of train_distill",
}


def synthetic_batch(
    batch_size: int, image_size: int, num_classes: int, seed: int = 0
) -> list[dict[str, Any]]:
    """DatasetMapper-style inputs: uint8 images (3, S, S) with 1-3 random GT boxes each."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(batch_size):
        s = image_size
        image = torch.randint(0, 256, (3, s, s), generator=g, dtype=torch.uint8)
        n = 1 + i % 3
        xy = torch.rand(n, 2, generator=g) * s * 0.6
        wh = s * 0.1 + torch.rand(n, 2, generator=g) * s * 0.3
        inst = Instances((s, s))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": image, "instances": inst, "height": s, "width": s})
    return batch


def dataset_batch(cfg: CfgNode, batch_size: int, image_size: int) -> list[dict[str, Any]]:
    """The first ``batch_size`` images of ``DATASETS.TRAIN[0]`` through detectron2's
    ``DatasetMapper`` (train mode), resized to shortest edge ``image_size``, no random flip."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog, DatasetMapper

    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:batch_size]
    if len(dicts) < batch_size:
        raise ValueError(f"{cfg.DATASETS.TRAIN[0]} has fewer than {batch_size} images")
    kwargs = DatasetMapper.from_config(cfg, is_train=True)
    max_size = max(cfg.INPUT.MAX_SIZE_TRAIN, image_size)
    kwargs["augmentations"] = [T.ResizeShortestEdge((image_size,), max_size, "choice")]
    mapper = DatasetMapper(**kwargs)
    return [mapper(d) for d in dicts]


def load_batch(
    cfg: CfgNode, batch_size: int, image_size: int | None, data: str = "auto", seed: int = 0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The fixed batch and its description; ``data``: ``"auto"``, ``"real"`` or ``"synthetic"``.

    ``image_size`` defaults to ``max(cfg.INPUT.MIN_SIZE_TRAIN)``; with ``"auto"`` a dataset that
    fails to load falls back to synthetic images and the reason is recorded.
    """
    size = image_size or max(cfg.INPUT.MIN_SIZE_TRAIN)
    info: dict[str, Any] = {"source": "synthetic", "image_size": size}
    batch = None
    if data != "synthetic":
        try:
            batch = dataset_batch(cfg, batch_size, size)
            info["source"] = f"dataset:{cfg.DATASETS.TRAIN[0]}"
        except Exception as e:
            if data == "real":
                raise
            info["fallback_reason"] = f"{type(e).__name__}: {e}"
    if batch is None:
        batch = synthetic_batch(batch_size, size, describe_student(cfg).num_classes, seed)
    info["image_shapes"] = [list(x["image"].shape) for x in batch]
    return batch, info


def format_report(result: dict[str, Any]) -> str:
    """Plain-text tables: the phases (ms, MiB), then the ratios."""
    from tabulate import tabulate

    def num(value: float | None, scale: float = 1.0) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{scale * value:.1f}"

    rows = [
        [name, PHASES[name], num(p["median_s"], 1e3), num(p["mean_s"], 1e3),
         num(p["model_mib"]), num(p["step_peak_mib"]), num(p["total_mib"])]
        for name, p in result["phases"].items()
    ]  # fmt: skip
    headers = ["phase", "what", "median ms", "mean ms", "model MiB", "step peak MiB", "total MiB"]
    ratios = [[k, "-" if v is None else f"{v:.3f}"] for k, v in result["ratios"].items()]
    return (
        f"{tabulate(rows, headers, disable_numparse=True)}\n\n"
        f"{tabulate(ratios, ['ratio', 'value'], disable_numparse=True)}\n"
        f"memory: {result['memory_method']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="training config (Distill* model)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the timed passes of all phases, in turn (for CPUs whose speed drifts)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch")
    parser.add_argument(
        "--image-size", type=int, default=None, help="shortest edge (default: the config's max)"
    )
    parser.add_argument(
        "--data",
        choices=("auto", "real", "synthetic"),
        default="auto",
        help="first images of DATASETS.TRAIN[0], random images, or real if it loads (default)",
    )
    parser.add_argument(
        "--random-teacher",
        action="store_true",
        help="a random-init teacher from DISTILL.TEACHER.CONFIG_FILE instead of its WEIGHTS "
        "(ignored, with a note, when no configured distiller reads a teacher)",
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="SGD learning rate of train steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="result file (OUTPUT_DIR/benchmark.json)")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace) -> CfgNode:
    """Config as in tools/train_net.py: defaults + registered keys, the file, the overrides."""
    cfg = load_config(args.config_file, args.opts, args.imports)
    cfg.freeze()
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    cfg = setup(args)
    check_device(cfg)
    batch, data = load_batch(cfg, args.batch_size, args.image_size, args.data, args.seed)
    no_teacher = no_teacher_reason(cfg)
    random_teacher = args.random_teacher and no_teacher is None
    if args.random_teacher and not random_teacher:
        print(f"--random-teacher not used: {no_teacher}")
    with tempfile.TemporaryDirectory() as directory:
        if random_teacher:
            cfg = with_random_teacher(cfg, batch, directory, args.seed)
        result = run_benchmark(
            cfg,
            batch,
            iters=args.iters,
            warmup=args.warmup,
            lr=args.lr,
            seed=args.seed,
            rounds=args.rounds,
        )
    result = {"config_file": args.config_file, "opts": list(args.opts), "data": data, **result}
    weights = "random" if random_teacher else cfg.DISTILL.TEACHER.WEIGHTS
    result["teacher_weights"] = weights if no_teacher is None else None
    print(
        f"{result['arch']} {result['distillers']} on {result['device']} "
        f"({result['num_threads']} threads, torch {result['torch']}); {args.rounds} x "
        f"{args.iters} iters after {args.warmup} warmup; batch from {data['source']}, "
        f"shapes {data['image_shapes']}"
    )
    if "fallback_reason" in data:
        print(f"dataset not used: {data['fallback_reason']}")
    print(format_report(result))
    print(f"checks: {result['checks']}")
    path = args.json or os.path.join(cfg.OUTPUT_DIR, "benchmark.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({**result, "config": cfg.dump()}, f, indent=2)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
