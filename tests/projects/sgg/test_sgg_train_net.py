"""tools/train_net.py end to end on the generated VG-format data (vgsynth): the detector (step
1), then each predictor in each mode (step 2) trains a few iterations and is evaluated with the
scene-graph evaluator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TRAIN_NET = str(REPO / "tools/train_net.py")
EMBEDDED = REPO / "projects/LSKD/configs/embedded"
TINY = [
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip
RELATION = [
    "MODEL.ROI_RELATION_HEAD.CONTEXT_POOLING_DIM", "64", "MODEL.ROI_RELATION_HEAD.EMBED_DIM", "16",
    "MODEL.ROI_RELATION_HEAD.CONTEXT_HIDDEN_DIM", "16",
    "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_RELATION_HEAD.TRANSFORMER.INNER_DIM", "32",
]  # fmt: skip


def run(args, cwd, timeout=600) -> str:
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A detector trained for 4 iterations through tools/train_net.py (box AP evaluated)."""
    out = tmp_path_factory.mktemp("detector")
    log = run(["--config-file", str(EMBEDDED / "detector_R18_vgsynth.yaml"), *TINY,
               "SOLVER.MAX_ITER", "4", "OUTPUT_DIR", str(out)], out)  # fmt: skip
    assert "copypaste: AP,AP50,AP75" in log  # COCO box AP of the plain detector
    return out / "model_final.pth"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("predictor", ["motifs", "vctree", "transformer"])
@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_predictor_trains_and_evaluates(detector, tmp_path, predictor, mode):
    out = tmp_path / "out"
    run(["--config-file", str(EMBEDDED / f"{predictor}_{mode}.yaml"), *TINY, *RELATION,
         "MODEL.WEIGHTS", str(detector), "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)],
        tmp_path)  # fmt: skip
    results = json.loads((out / "inference" / "sgg_evaluation.json").read_text())
    metrics = results["metrics"]
    assert results["settings"]["dataset"] == "vgsynth_test"
    for key in ("R@20", "R@50", "R@100", "mR@50", "mR@100", "ngR@50"):
        assert 0.0 <= metrics[key] <= 100.0, (key, metrics[key])


@pytest.mark.parametrize("config", ["motifs_sgdet.yaml", "detector_X101_FPN.yaml"])
def test_vg150_config_without_files_stops_naming_them(tmp_path, config):
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, TRAIN_NET, "--config-file",
           str(REPO / "projects/LSKD/configs/vg150" / config), "MODEL.DEVICE", "cpu",
           "OUTPUT_DIR", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "VG-SGG" in last or "X-101-32x8d.pkl" in last, last
