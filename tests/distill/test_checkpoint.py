"""Weights files: no code runs when any path loads one, clear errors for broken files, the
detectron2 model-zoo .pkl layout still loads, checkpoints are written atomically."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from distill.checkpoint import (
    SafeCheckpointer,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    WeightsMismatchError,
    read_weights_file,
)
from distill.engine import DistillTrainer
from distill.export import extract_student
from distill.teacher import build_teacher


class Payload:
    """Unpickling it creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture
def crafted(tmp_path):
    """(marker, {suffix: file}) of weights files whose unpickling would create ``marker``."""
    marker = tmp_path / "code_ran"
    files = {".pkl": tmp_path / "crafted.pkl", ".pth": tmp_path / "crafted.pth"}
    content = {"model": {"w": Payload(marker)}, "__author__": "someone"}
    with open(files[".pkl"], "wb") as f:
        pickle.dump(content, f)
    torch.save(content, files[".pth"])
    return marker, files


def test_crafted_files_run_no_code_on_any_path(tmp_path, crafted, teacher_files):
    marker, files = crafted
    for suffix, path in files.items():
        opts = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", str(path)]
        trainer = DistillTrainer(tiny_cfg("retinanet", *opts))
        with pytest.raises(UnsafeCheckpointError, match=f"MODEL.WEIGHTS: .*crafted{suffix}"):
            trainer.resume_or_load(resume=False)  # training from MODEL.WEIGHTS
        (tmp_path / "out" / "last_checkpoint").write_text(path.name)
        os.replace(path, tmp_path / "out" / path.name)
        with pytest.raises(UnsafeCheckpointError, match=r"--resume .*os.mkdir|--resume .*posix"):
            trainer.resume_or_load(resume=True)  # resuming from OUTPUT_DIR
        os.replace(tmp_path / "out" / path.name, path)

        config_file, _ = teacher_files("retinanet")
        cfg = tiny_cfg("retinanet", distillers=["FeatureKD"], teacher=(config_file, path))
        with pytest.raises(UnsafeCheckpointError, match="DISTILL.TEACHER.WEIGHTS"):
            build_teacher(cfg, "BGR")
        with pytest.raises(UnsafeCheckpointError, match="--weights"):
            extract_student(str(path), str(tmp_path / "s.pth"), tiny_cfg("retinanet"))
    assert not marker.exists()


def test_model_zoo_pkl_loads(tmp_path):
    """A detectron2 model-zoo file: numpy arrays under "model", "__author__" and
    "matching_heuristics", pickled as the zoo's files are (protocol 2)."""
    cfg = tiny_cfg("faster_rcnn")
    torch.manual_seed(3)
    source = build_model(cfg).state_dict()
    zoo = {
        "model": {k: v.numpy() for k, v in source.items()},
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
    }
    path = tmp_path / "model_final_abc.pkl"
    with open(path, "wb") as f:
        pickle.dump(zoo, f, protocol=2)
    torch.manual_seed(4)
    model = build_model(cfg)
    SafeCheckpointer(model, exact=True).load(str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_caffe2_style_pkl_blobs_load(tmp_path):
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.ones((2, 3), np.float32), "conv1_w_momentum": np.zeros((2, 3))}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)
    data = SafeCheckpointer(torch.nn.Linear(1, 1))._load_file(str(path))
    assert list(data["model"]) == ["conv1_w"] and data["matching_heuristics"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("truncated.pth", None, "not a readable checkpoint .*central directory"),
        ("empty.pth", b"", "not a readable checkpoint .*EOFError"),
        ("notes.pth", b"not a checkpoint", "not a readable checkpoint"),
        ("truncated.pkl", None, "not a readable checkpoint .*truncated"),
    ],
)
def test_broken_files_name_key_and_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # the first half of a valid file
        whole = tmp_path / f"whole{path.suffix}"
        state = {"model": {"w": np.ones(1000, np.float32)}}
        if path.suffix == ".pkl":
            whole.write_bytes(pickle.dumps(state))
        else:
            torch.save(state, whole)
        content = whole.read_bytes()[: whole.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(UnreadableCheckpointError, match=f"^DISTILL.TEACHER.WEIGHTS: .*{name}"):
        read_weights_file(str(path), "DISTILL.TEACHER.WEIGHTS")
    with pytest.raises(UnreadableCheckpointError, match=message):
        SafeCheckpointer(torch.nn.Linear(1, 1)).load(str(path))


def test_exact_checkpointer_names_the_mismatch(tmp_path):
    path = tmp_path / "retinanet.pth"
    torch.save({"model": build_model(tiny_cfg("retinanet")).state_dict()}, path)
    checkpointer = SafeCheckpointer(build_model(tiny_cfg("faster_rcnn")), exact=True)
    with pytest.raises(WeightsMismatchError, match="retinanet.pth.* missing keys .*unexpected"):
        checkpointer.load(str(path))


def test_saves_atomically(tmp_path):
    checkpointer = SafeCheckpointer(torch.nn.Linear(2, 1), str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert torch.load(tmp_path / "model_0000009.pth", weights_only=True)["iteration"] == 9
