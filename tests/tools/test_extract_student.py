"""tools/extract_student.py and distill.export.extract_student: the student as a plain model."""

from __future__ import annotations

import datetime
import importlib.util

import pytest
import torch
from conftest import FAMILIES, REPO, make_batch, save_random_teacher, tiny_cfg, train_step
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import distill
from distill.errors import ConfigValueError, MissingFileError
from distill.export import extract_student

PLAIN = {"faster_rcnn": "GeneralizedRCNN", "retinanet": "RetinaNet", "fcos": "FCOS"}


def load_tool(name: str):
    """A module of tools/ (not a package), imported from its file."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Factory, cached per family: ``trained(family)`` -> :func:`trained_checkpoint`."""
    cache = {}

    def get(family: str) -> tuple:
        if family not in cache:
            cache[family] = trained_checkpoint(tmp_path_factory.mktemp(family), family)
        return cache[family]

    return get


def trained_checkpoint(tmp_path, family: str) -> tuple:
    """(cfg, model, path): a FeatureKD model after one step, saved as a training checkpoint."""
    cfg = tiny_cfg(family, distillers=["FeatureKD"], teacher=save_random_teacher(tmp_path, family))
    torch.manual_seed(0)
    model = build_model(cfg)
    train_step(model, make_batch())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.step()  # momentum buffers: the optimizer state is not empty
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path), optimizer=optimizer)
    checkpointer.save("model_final", iteration=1)
    return cfg, model, tmp_path / "model_final.pth"


def predictions(model, batch) -> list[tuple[torch.Tensor, ...]]:
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    return [
        (o["instances"].pred_boxes.tensor, o["instances"].scores, o["instances"].pred_classes)
        for o in outputs
    ]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_extracted_student_is_the_plain_detector(family, tmp_path, trained):
    cfg, model, checkpoint = trained(family)
    output = tmp_path / "export" / "student.pth"
    stats = extract_student(str(checkpoint), str(output), cfg)
    assert stats["distiller_keys"] > 0 and stats["iteration"] == 1
    assert stats["dropped_entries"] == ["iteration", "optimizer"]
    assert stats["student_keys"] + stats["distiller_keys"] == stats["model_keys"]

    written = torch.load(output, weights_only=True)
    assert set(written) == {"model"}
    state = written["model"]
    assert len(state) == stats["student_keys"]
    assert not [k for k in state if k.startswith("distillers.")]
    assert all(type(v) is torch.Tensor for v in state.values())

    plain_cfg = distill.get_distill_cfg()
    plain_cfg.merge_from_file(stats["config"])
    assert plain_cfg.MODEL.WEIGHTS == str(output.resolve())
    assert plain_cfg.DISTILL.DISTILLERS == [] and plain_cfg.DISTILL.TEACHER.CONFIG_FILE == ""
    plain = build_model(plain_cfg)
    assert type(plain).__name__ == PLAIN[family]
    incompatible = plain.load_state_dict(state, strict=True)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []

    batch = make_batch(seed=3)
    for ours, theirs in zip(predictions(model, batch), predictions(plain, batch), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_cli_writes_student_and_refuses_a_wrong_config(tmp_path, trained, capsys):
    cfg, _, checkpoint = trained("retinanet")
    tool = load_tool("extract_student")
    teacher = cfg.DISTILL.TEACHER
    argv = ["--config-file", str(REPO / FAMILIES["retinanet"]), "--weights", str(checkpoint)]
    opts = [str(v) for v in tiny_cfg.__globals__["TINY_OPTS"]] + [
        "DISTILL.DISTILLERS", "['FeatureKD']",
        "DISTILL.TEACHER.CONFIG_FILE", teacher.CONFIG_FILE,
        "DISTILL.TEACHER.WEIGHTS", teacher.WEIGHTS,
    ]  # fmt: skip
    stats = tool.main([*argv, "--output", str(tmp_path / "s.pth"), *opts])
    out = capsys.readouterr().out
    assert f"kept {stats['student_keys']} student keys" in out
    assert f"dropped {stats['distiller_keys']} distiller keys" in out
    assert (tmp_path / "s.pth").is_file() and (tmp_path / "s.yaml").is_file()
    # the same checkpoint with a narrower FPN in the config: the check names the mismatch
    with pytest.raises(ConfigValueError, match="wrongly shaped keys"):
        tool.main(
            [*argv, "--output", str(tmp_path / "t.pth"), *opts, "MODEL.FPN.OUT_CHANNELS", "16"]
        )
    assert not (tmp_path / "t.pth").exists()


def test_clear_errors(tmp_path):
    cfg = tiny_cfg("faster_rcnn")
    missing = tmp_path / "nope.pth"
    with pytest.raises(MissingFileError, match=str(missing)):
        extract_student(str(missing), str(tmp_path / "s.pth"), cfg)
    bare = tmp_path / "bare.pth"
    torch.save({"backbone.w": torch.zeros(1)}, bare)
    with pytest.raises(ConfigValueError, match="no 'model' state_dict"):
        extract_student(str(bare), str(tmp_path / "s.pth"), cfg)
    assert not (tmp_path / "s.pth").exists()
    # an arbitrary pickled object is refused, naming its class
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"backbone.w": torch.zeros(1)}, "when": datetime.date(2024, 1, 1)}, odd)
    with pytest.raises(ConfigValueError, match="--weights: .*odd.pth.* datetime.date"):
        extract_student(str(odd), str(tmp_path / "s.pth"), cfg, verify=False)
    assert not (tmp_path / "s.pth").exists()
