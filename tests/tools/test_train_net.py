"""tools/train_net.py end to end: a 2-process CPU run under torchrun, --eval-only, a distiller
from a user's file (--import), --random-teacher, and the refusals that keep runs safe (bad
weights, overwriting a run, resuming another model, names that nothing registered)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_OPTS, tiny_cfg, write_user_distiller

from distill.checkpoint import WeightsMismatchError
from distill.engine import DistillTrainer, check_output_dir

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
    assert "Run seed: " in log  # the codebase's own loggers reach the console, not only d2's
    assert "Run seed: " in (out / "log.txt").read_text()
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
        (["DATASETS.TEST", "('embedded_coco_vall',)"], "DATASETS.TEST: 'embedded_coco_vall'"),
        pytest.param(
            ["MODEL.DEVICE", "cuda"],
            "MODEL.DEVICE is 'cuda' but torch finds no CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA"),
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, opts, message):
    config = str(REPO / "configs/embedded/retinanet_R18_small.yaml")
    stderr = run_failing(["--config-file", config, *OPTS, *opts], tmp_path,
                         {"DETECTRON2_DATASETS": str(tmp_path / "datasets")})  # fmt: skip
    assert message in stderr.splitlines()[-1], stderr[-2000:]


@pytest.mark.parametrize(
    "weights, message",
    [
        ("retinanet", r"MODEL.WEIGHTS: '.*retinanet.pth' does not fit .* missing keys"),
        ("truncated", r"MODEL.WEIGHTS: '.*truncated.pth' is not a readable checkpoint"),
        ("", "--eval-only needs the weights to evaluate"),
    ],
)
def test_eval_only_refuses_weights_that_do_not_fit(tmp_path, weights, message):
    if weights == "retinanet":
        weights = random_weights(tmp_path, "retinanet")
    elif weights == "truncated":
        whole = random_weights(tmp_path, "faster_rcnn")
        weights = str(tmp_path / "truncated.pth")
        with open(whole, "rb") as f, open(weights, "wb") as out:
            out.write(f.read()[: os.path.getsize(whole) // 2])
    config = str(REPO / "configs/embedded/faster_rcnn_R18_small.yaml")
    stderr = run_failing(["--eval-only", "--config-file", config, *OPTS, "MODEL.WEIGHTS", weights],
                         tmp_path)  # fmt: skip
    assert re.search(message, stderr.splitlines()[-1]), stderr[-2000:]


def test_a_finished_run_is_not_overwritten_unasked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"finished run")
    (out / "last_checkpoint").write_text("model_final.pth")
    config = str(REPO / "configs/embedded/retinanet_R18_small.yaml")
    stderr = run_failing(["--config-file", config, *OPTS], tmp_path)
    assert "already holds checkpoints of a run (last_checkpoint, model_final.pth): pass --resume" \
        in stderr.splitlines()[-1] and "--overwrite" in stderr.splitlines()[-1]  # fmt: skip
    assert (out / "model_final.pth").read_bytes() == b"finished run"
    assert not (out / "config.yaml").exists()  # refused before anything was written


def test_check_output_dir_overwrite_deletes_only_checkpoints(tmp_path):
    for name in ("model_0000009.pth", "model_final.pth", "last_checkpoint", "metrics.json"):
        (tmp_path / name).write_text("x")
    check_output_dir(str(tmp_path), resume=True, overwrite=False)  # resuming continues them
    check_output_dir(str(tmp_path), resume=False, overwrite=True)
    assert os.listdir(tmp_path) == ["metrics.json"]
    check_output_dir(str(tmp_path), resume=False, overwrite=False)  # nothing left to protect


def test_resume_into_another_architecture_names_the_mismatch(tmp_path):
    opts = ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", ()]
    DistillTrainer(tiny_cfg("retinanet", *opts)).checkpointer.save("model_0000004")
    trainer = DistillTrainer(tiny_cfg("faster_rcnn", *opts))
    expected = r"^--resume .*model_0000004.pth' does not fit this config's DistillGeneralizedRCNN"
    with pytest.raises(WeightsMismatchError, match=expected):
        trainer.resume_or_load(resume=True)


@pytest.mark.parametrize(
    "yaml, opts, name",
    [
        ("NOT_A_NODE:\n  X: 1\n", [], "unknown config key NOT_A_NODE"),
        ("", ["DISTILL.DISTILLERS", "['NoSuchKD']"], "unknown distiller 'NoSuchKD'"),
        ("", ["MODEL.META_ARCHITECTURE", "NoSuchArch"], "unknown meta-architecture 'NoSuchArch'"),
    ],
)
def test_a_name_nothing_registered_is_one_line(tmp_path, yaml, opts, name):
    config = tmp_path / "user.yaml"
    config.write_text(f'_BASE_: "{REPO / "configs/embedded/faster_rcnn_R18_small.yaml"}"\n{yaml}')
    last = run_failing(["--config-file", str(config), *OPTS, *opts], tmp_path).splitlines()[-1]
    assert last.startswith("error: ") and name in last, last
    assert "--import MODULE_OR_FILE" in last and "DISTILL.IMPORTS" in last


@pytest.mark.timeout(600)
def test_a_distiller_in_a_file_outside_the_repository_trains_through_import(tmp_path):
    kd = write_user_distiller(tmp_path / "elsewhere" / "norm_kd.py")
    out = tmp_path / "out"
    cmd = [
        sys.executable, TRAIN_NET, "--import", str(kd),
        "--config-file", str(REPO / "configs/embedded/faster_rcnn_R18_small.yaml"),
        *OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
        "DISTILL.DISTILLERS", "['UserNormKD']", "USER_NORM_KD.LEVEL", "p4",
    ]  # fmt: skip
    run(cmd, tmp_path)
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    assert metrics[-1]["iteration"] == 1 and math.isfinite(metrics[-1]["loss_user_norm_kd_l2"])
    assert "UserNormKD reads p4" in (out / "log.txt").read_text()  # the user's logger is set up
    assert f"- {kd}" in (out / "config.yaml").read_text()  # DISTILL.IMPORTS: the run reloads


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-only", "--config-file", "configs/embedded/faster_rcnn_R18_feature_kd.yaml"],
         "--random-teacher trains with a random teacher; --eval-only builds no teacher"),
        (["--config-file", "configs/embedded/faster_rcnn_R18_small.yaml"],
         "--random-teacher: the config has no DISTILL.DISTILLERS; there is no teacher to replace"),
    ],
)  # fmt: skip
def test_random_teacher_refusals_are_one_line(tmp_path, args, message):
    args = [str(REPO / a) if a.endswith(".yaml") else a for a in args]
    last = run_failing(["--random-teacher", *args, *OPTS], tmp_path).splitlines()[-1]
    assert last.startswith(f"error: {message}"), last


@pytest.mark.timeout(600)
def test_random_teacher_run_says_so_in_its_log(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, TRAIN_NET, "--random-teacher",
        "--config-file", str(REPO / "configs/embedded/faster_rcnn_R18_feature_kd.yaml"),
        *OPTS, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
        "DISTILL.TEACHER.CONFIG_FILE", str(REPO / "configs/embedded/faster_rcnn_R34_teacher.yaml"),
        "DISTILL.TEACHER.WEIGHTS", str(tmp_path / "absent.pth"),
    ]  # fmt: skip
    log = run(cmd, tmp_path)
    notice = "RANDOM TEACHER: losses are meaningless; for wiring checks only"
    assert log.count(notice) == 2  # when training starts and at the logging period (the end)
    assert (out / "log.txt").read_text().count(notice) == 2
    weights = out / "random_teacher" / "random_teacher.pth"
    assert f"{notice} (DISTILL.TEACHER.WEIGHTS {weights})" in log and weights.is_file()
    assert "loss_feature_kd_mse" in (out / "metrics.json").read_text()
