#!/usr/bin/env python
"""Check that a run killed and resumed ends with the weights of the same run uninterrupted.

    python tools/check_resume.py --config-file CFG --output-dir output/resume_check \\
        SOLVER.MAX_ITER 9 SOLVER.CHECKPOINT_PERIOD 3 DATASETS.TEST "()"

Trains ``CFG`` (+ overrides) twice with ``tools/train_net.py``, at the same time: in
``<output-dir>/full`` without interruption, and in ``<output-dir>/cut``, which is killed with
SIGKILL (with its loader workers) once ``model_<kill-at>.pth`` is its last checkpoint and then
resumed with ``--resume``. Prints the largest absolute difference between the two
``model_final.pth`` and the number of tensors that differ; exits 1 when it exceeds
``--tolerance`` (default 0: bit-identical). ``--kill-at`` must be a checkpoint iteration
(``SOLVER.CHECKPOINT_PERIOD`` - 1 by default) before the last one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TRAIN_NET = str(Path(__file__).resolve().parent / "train_net.py")


def start_run(config: str, output_dir: Path, opts: list[str], *flags: str) -> subprocess.Popen:
    """``tools/train_net.py`` in its own process group, stderr kept for the error report."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, TRAIN_NET, "--config-file", config, *flags, *opts,
           "OUTPUT_DIR", str(output_dir)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def finish(run: subprocess.Popen, timeout: float = 3600) -> None:
    """Wait for ``run``; raise with the end of its stderr if it failed."""
    _, stderr = run.communicate(timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"training failed (exit {run.returncode}):\n{stderr[-3000:]}")


def kill_after_checkpoint(run: subprocess.Popen, output_dir: Path, iteration: int,
                          timeout: float = 3600) -> None:  # fmt: skip
    """SIGKILL ``run`` and its loader workers once ``model_<iteration>.pth`` is its last
    checkpoint."""
    tag, name = output_dir / "last_checkpoint", f"model_{iteration:07d}.pth"
    deadline = time.time() + timeout
    while not (tag.exists() and tag.read_text() == name):
        if run.poll() is not None:
            raise RuntimeError(f"training ended before {name}:\n{run.stderr.read()[-3000:]}")
        if time.time() > deadline:
            raise TimeoutError(f"no {name} in {output_dir} after {timeout} s")
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def compare_final_weights(first: Path, second: Path) -> dict:
    """``max_abs_diff`` (and the tensor holding it), ``tensors_differ``, ``tensors`` and
    ``iterations`` of two runs' ``model_final.pth``."""
    a, b = (torch.load(d / "model_final.pth", weights_only=True) for d in (first, second))
    if a["model"].keys() != b["model"].keys():
        raise ValueError(f"{first} and {second} hold different tensors")
    diffs = {
        k: (a["model"][k].double() - v.double()).abs().max().item() if v.numel() else 0.0
        for k, v in b["model"].items()
        if v.is_floating_point()
    }
    worst = max(diffs, key=diffs.get)
    return {
        "max_abs_diff": diffs[worst],
        "worst_tensor": worst,
        "tensors_differ": sum(d > 0 for d in diffs.values()),
        "tensors": len(diffs),
        "iterations": (a.get("iteration"), b.get("iteration")),
    }


def check_resume(config: str, output_dir: Path, opts: list[str], kill_at: int,
                 overwrite: bool = False) -> dict:  # fmt: skip
    """Run both trainings (module doc) and compare their final weights."""
    flags = ["--overwrite"] if overwrite else []
    full, cut = output_dir / "full", output_dir / "cut"
    uninterrupted = start_run(config, full, opts, *flags)
    interrupted = start_run(config, cut, opts, *flags)
    try:
        kill_after_checkpoint(interrupted, cut, kill_at)
    finally:
        finish(uninterrupted)
    finish(start_run(config, cut, opts, "--resume"))
    return compare_final_weights(full, cut)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output-dir", default="output/resume_check", type=Path)
    parser.add_argument("--kill-at", type=int, default=2, help="iteration of the checkpoint")
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier check")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    result = check_resume(args.config_file, args.output_dir, args.opts, args.kill_at,
                          args.overwrite)  # fmt: skip
    where = f" ({result['worst_tensor']})" if result["max_abs_diff"] > 0 else ""
    print(
        f"{args.config_file}: killed after iteration {args.kill_at} and resumed; final weights "
        f"differ by at most {result['max_abs_diff']:.3g}{where}; "
        f"{result['tensors_differ']} of {result['tensors']} tensors differ"
    )
    return int(result["max_abs_diff"] > args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
