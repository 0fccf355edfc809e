#!/usr/bin/env python
"""Train several configs with several seeds each and print their box AP side by side.

    python tools/compare_runs.py --configs A.yaml B.yaml --seeds 0 1 \\
        [--output-dir output/compare] [KEY VALUE ...]

Each (config, seed) run trains from scratch with ``SEED`` set to the seed and writes to
``<output-dir>/<config stem>/seed<seed>``; its final evaluation is kept in ``results.json``
there. A run whose ``results.json`` exists is not trained again, so an interrupted comparison
continues where it stopped. The table (markdown) lists AP, AP50 and AP75 per run and the mean
per config, and is also written to ``<output-dir>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from detectron2.utils.logger import setup_logger

import distill
from distill.engine import train_and_evaluate
from distill.errors import run_cli

METRICS = ("AP", "AP50", "AP75")


def run_one(config_file: str, seed: int, output_dir: str, opts: list[str]) -> dict:
    """The bbox metrics of one (config, seed) run, trained now or read from its results."""
    results_file = os.path.join(output_dir, "results.json")
    if os.path.isfile(results_file):
        with open(results_file) as f:
            return json.load(f)
    cfg = distill.get_distill_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.SEED, cfg.OUTPUT_DIR = seed, output_dir
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir)
    start = time.perf_counter()
    results = train_and_evaluate(cfg)
    (dataset,) = results  # one test dataset
    record = {**{k: results[dataset]["bbox"][k] for k in METRICS}, "dataset": dataset}
    record["minutes"] = (time.perf_counter() - start) / 60
    with open(results_file, "w") as f:
        json.dump(record, f, indent=1)
    return record


def table(records: dict[str, dict[int, dict]]) -> str:
    """Markdown table: one row per run, then the mean of each config."""
    lines = ["| config | seed | " + " | ".join(METRICS) + " | minutes |", "|---" * 6 + "|"]
    for config, runs in records.items():
        for seed, r in runs.items():
            values = " | ".join(f"{r[m]:.1f}" for m in METRICS)
            lines.append(f"| {config} | {seed} | {values} | {r['minutes']:.1f} |")
    for config, runs in records.items():
        means = " | ".join(f"{statistics.mean(r[m] for r in runs.values()):.1f}" for m in METRICS)
        lines.append(f"| {config} | mean | {means} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output-dir", default="output/compare")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    records: dict[str, dict[int, dict]] = {}
    for config_file in args.configs:
        stem = os.path.splitext(os.path.basename(config_file))[0]
        for seed in args.seeds:
            out = os.path.join(args.output_dir, stem, f"seed{seed}")
            records.setdefault(stem, {})[seed] = run_one(config_file, seed, out, args.opts)
    text = table(records)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    run_cli(main)
