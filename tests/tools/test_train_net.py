"""tools/train_net.py end to end: a 2-process CPU run under torchrun, and --eval-only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_OPTS, tiny_cfg

TRAIN_NET = str(REPO / "tools/train_net.py")
OPTS = [str(x) if not isinstance(x, tuple) else str(x).replace(" ", "") for x in TINY_OPTS]


def run(cmd, tmp_path, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.timeout(600)
def test_two_cpu_processes_under_torchrun(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", "29517", TRAIN_NET,
        "--config-file", str(REPO / "configs/embedded/retinanet_R18_small.yaml"),
        *OPTS, "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    log = run(cmd, tmp_path)
    assert "iter: 2" in log
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 2


def random_weights(tmp_path, family: str) -> str:
    """A checkpoint of a random-init tiny ``family`` detector."""
    from detectron2.modeling import build_model

    path = tmp_path / f"{family}.pth"
    torch.save({"model": build_model(tiny_cfg(family)).state_dict()}, path)
    return str(path)


@pytest.mark.timeout(600)
def test_eval_only_reports_ap(tmp_path):
    cmd = [
        sys.executable, TRAIN_NET, "--eval-only",
        "--config-file", str(REPO / "configs/embedded/faster_rcnn_R18_small.yaml"),
        *OPTS, "OUTPUT_DIR", str(tmp_path / "out"),
        "MODEL.WEIGHTS", random_weights(tmp_path, "faster_rcnn"),
    ]  # fmt: skip
    log = run(cmd, tmp_path)
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log


def run_failing(args, tmp_path, env_extra=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env_extra or {}))
    cmd = [sys.executable, TRAIN_NET, *args, "OUTPUT_DIR", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.parametrize(
    "opts, message",
    [
        (["DISTILL.DISTILLERS", "['Nope']"], "unknown distiller 'Nope'"),
        (["DISTILL.DISTILLERS", "['FeatureKD']"], "DISTILL.TEACHER.CONFIG_FILE is empty"),
        (["MODEL.WEIGHTS", "weights/none.pkl"], "MODEL.WEIGHTS: expected the weights file"),
        (["DATASETS.TRAIN", "('coco_2017_train',)"], "coco_2017_train"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, opts, message):
    config = str(REPO / "configs/embedded/retinanet_R18_small.yaml")
    stderr = run_failing(["--config-file", config, *OPTS, *opts], tmp_path,
                         {"DETECTRON2_DATASETS": str(tmp_path / "datasets")})  # fmt: skip
    assert message in stderr.splitlines()[-1], stderr[-2000:]
