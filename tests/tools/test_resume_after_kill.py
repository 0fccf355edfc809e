"""Exact resume: a training process killed with SIGKILL and resumed with ``--resume`` ends with
the weights of the uninterrupted run, on shipped embedded configs with their augmentations
(multi-scale resize, flips, aspect-ratio grouping, a loader worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

TRAIN_NET = str(REPO / "tools/train_net.py")
# smaller images and FPN than shipped, the shipped augmentations and loader
SHORT_RUN = [
    "INPUT.MIN_SIZE_TRAIN", "(64,80,96)", "INPUT.MAX_SIZE_TRAIN", "160", "MODEL.FPN.OUT_CHANNELS",
    "32", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "9", "SOLVER.CHECKPOINT_PERIOD", "3",
    "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(6,)", "DATASETS.TEST", "()", "SEED", "5",
]  # fmt: skip


def train(config: str, out, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, TRAIN_NET, "--config-file", str(REPO / config), *extra, *SHORT_RUN,
           "OUTPUT_DIR", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> None:
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]


def kill_after_checkpoint(proc: subprocess.Popen, out, name: str) -> None:
    """SIGKILL the whole process group once ``name`` is the last checkpoint."""
    tag = out / "last_checkpoint"
    deadline = time.time() + 600
    while not (tag.exists() and tag.read_text() == name):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "config",
    ["configs/embedded/retinanet_R18_small.yaml", "configs/embedded/faster_rcnn_R18_small.yaml"],
)
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, config):
    full, cut = tmp_path / "full", tmp_path / "cut"
    uninterrupted = train(config, full)
    interrupted = train(config, cut)
    kill_after_checkpoint(interrupted, cut, "model_0000002.pth")
    finish(uninterrupted)
    assert not (cut / "model_final.pth").exists()
    finish(train(config, cut, "--resume"))

    expected = torch.load(full / "model_final.pth", weights_only=True)
    resumed = torch.load(cut / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == expected["iteration"] == 8
    assert resumed["model"].keys() == expected["model"].keys()
    diffs = {
        k: (resumed["model"][k].double() - v.double()).abs().max().item()
        for k, v in expected["model"].items()
        if v.is_floating_point()
    }
    worst = max(diffs, key=diffs.get)
    print(f"max |diff| {diffs[worst]:.3g} at {worst}; {sum(d > 0 for d in diffs.values())} "
          f"of {len(diffs)} tensors differ")  # fmt: skip
    assert diffs[worst] <= 1e-5, worst
