#!/usr/bin/env python
"""Train several configs with several seeds each and print their box AP side by side.

    python tools/compare_runs.py --configs A.yaml B.yaml --seeds 0 1 \\
        [--output-dir output/compare] [KEY VALUE ...]

Each (config, seed) run trains from scratch with ``SEED`` set to the seed and writes to
``<output-dir>/<config stem>/seed<seed>``; its final evaluation is kept in ``results.json``
there, with the AP of its teacher (from the teacher card of ``DISTILL.TEACHER.WEIGHTS``, null
without a teacher or card) as it was when the run trained. A run whose ``results.json`` exists
is not trained again, so an interrupted comparison continues where it stopped. The table
(markdown) lists AP, AP50, AP75, the teacher AP and the largest ratio of distillation to the
student's own losses (``distill_loss_ratio``) per run, and the mean ± sample standard deviation
over the seeds per config; it is also written to ``<output-dir>/table.md``.

A run FAILS when its final evaluation has no bbox result or a NaN AP (the model predicted
nothing: detectron2 logs "No predictions from the model!"), or when its training stopped on a
divergence (a non-finite loss, or a broken teacher: :mod:`distill.divergence`). A failed run
is named on one line with its folder (its log is kept there), gets no ``results.json`` (a NaN
one written by an older version is moved to ``results.json.failed``), so a rerun trains it
again, and is left out of the table and the means. The other runs still train; the tool then
exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

from distill.checkpoint import expand_path
from distill.engine import train_and_evaluate
from distill.errors import DivergenceError, run_cli
from distill.launch import setup_run_logging
from distill.modeling.distill_arch import distillers_reading_teacher
from distill.teacher_card import TeacherCardError, read_card
from distill.user_code import add_import_argument, load_config

METRICS = ("AP", "AP50", "AP75")


class RunFailed(Exception):
    """A run whose final evaluation cannot be compared; the message says what was seen."""


def check_bbox(bbox: dict | None) -> None:
    """Raise :class:`RunFailed` unless ``bbox`` holds every metric and a finite AP."""
    if not bbox:
        raise RunFailed("no bbox result in the final evaluation")
    missing = [m for m in METRICS if m not in bbox]
    if missing:
        raise RunFailed(f"the bbox result lacks {', '.join(missing)}")
    if math.isnan(bbox["AP"]):
        raise RunFailed("no predictions: AP is NaN")


def teacher_ap(cfg) -> float | None:
    """The card AP of the teacher ``cfg`` distills from; None without a used teacher or card."""
    weights = cfg.DISTILL.TEACHER.WEIGHTS
    if not weights or not distillers_reading_teacher(cfg):
        return None
    try:
        ap = read_card(expand_path(weights)).ap
    except TeacherCardError:
        return None
    return ap if math.isfinite(ap) else None  # results.json stays valid JSON


def max_loss_ratio(output_dir: str) -> float | None:
    """The largest ``distill_loss_ratio`` (distillation / own losses) a run logged in its
    ``metrics.json``; None for a run without distillers."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        ratios = [json.loads(line).get("distill_loss_ratio") for line in f if line.strip()]
    ratios = [r for r in ratios if r is not None]
    return max(ratios) if ratios else None


def read_results(results_file: str) -> dict:
    """A finished run's record; a NaN one (older versions wrote those) is moved aside."""
    with open(results_file) as f:
        record = json.load(f)
    try:
        check_bbox(record)
    except RunFailed as e:
        os.replace(results_file, results_file + ".failed")
        raise RunFailed(f"{e} (in {results_file}, moved to results.json.failed)") from None
    return record


def run_one(
    config_file: str, seed: int, output_dir: str, opts: list[str], imports: list[str] = ()
) -> dict:
    """The bbox metrics of one (config, seed) run, trained now or read from its results.

    Raises:
        RunFailed: no bbox result or a NaN AP; no ``results.json`` is left behind.
    """
    results_file = os.path.join(output_dir, "results.json")
    if os.path.isfile(results_file):
        return read_results(results_file)
    cfg = load_config(config_file, opts, imports)
    cfg.SEED, cfg.OUTPUT_DIR = seed, output_dir
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    setup_run_logging(output_dir)
    start = time.perf_counter()
    record = {"teacher_ap": teacher_ap(cfg)}
    results = train_and_evaluate(cfg)
    (dataset,) = results  # one test dataset
    check_bbox(results[dataset].get("bbox"))
    record.update({k: results[dataset]["bbox"][k] for k in METRICS}, dataset=dataset)
    record["minutes"] = (time.perf_counter() - start) / 60
    record["max_loss_ratio"] = max_loss_ratio(output_dir)
    with open(results_file, "w") as f:
        json.dump(record, f, indent=1)
    return record


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def mean_and_spread(values: list[float]) -> str:
    """``mean ± sample standard deviation`` to one decimal; the mean alone for one value."""
    mean = f"{statistics.mean(values):.1f}"
    return mean if len(values) < 2 else f"{mean} ± {statistics.stdev(values):.1f}"


def table(records: dict[str, dict[int, dict]]) -> str:
    """Markdown table: one row per run, then the mean ± sample standard deviation over the
    seeds of each config.

    ``records``: config -> seed -> record (``results.json``); a record without ``teacher_ap``
    (older versions) shows "-" like one without a teacher.
    """
    header = (
        "| config | seed | " + " | ".join(METRICS) + " | teacher AP | max loss ratio | minutes |"
    )
    lines = [header, "|---" * 8 + "|"]
    for config, runs in records.items():
        for seed, r in runs.items():
            values = " | ".join(f"{r[m]:.1f}" for m in METRICS)
            teacher = _ap(r.get("teacher_ap"))
            ratio = "-" if r.get("max_loss_ratio") is None else f"{r['max_loss_ratio']:.3g}"
            lines.append(
                f"| {config} | {seed} | {values} | {teacher} | {ratio} | {r['minutes']:.1f} |"
            )
    for config, runs in records.items():
        if not runs:
            continue
        means = " | ".join(mean_and_spread([r[m] for r in runs.values()]) for m in METRICS)
        teachers = [r["teacher_ap"] for r in runs.values() if r.get("teacher_ap") is not None]
        teacher = _ap(statistics.mean(teachers) if teachers else None)
        lines.append(f"| {config} | mean | {means} | {teacher} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--output-dir", default="output/compare")
    add_import_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    records: dict[str, dict[int, dict]] = {}
    failed: list[str] = []
    for config_file in args.configs:
        stem = os.path.splitext(os.path.basename(config_file))[0]
        for seed in args.seeds:
            out = os.path.join(args.output_dir, stem, f"seed{seed}")
            try:
                record = run_one(config_file, seed, out, args.opts, args.imports)
                records.setdefault(stem, {})[seed] = record
            except (RunFailed, DivergenceError) as e:
                failed.append(f"{stem} seed {seed}")
                print(f"FAILED: {stem} seed {seed} ({out}, log kept): {e}", flush=True)
    text = table(records)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    if failed:
        total = len(args.configs) * len(args.seeds)
        raise SystemExit(
            f"{len(failed)} of {total} runs failed: {', '.join(failed)} "
            "(see the FAILED lines above; a rerun trains them again)"
        )


if __name__ == "__main__":
    run_cli(main)
