"""The README's distiller example runs as written."""

from __future__ import annotations

import re

import torch
from conftest import REPO, make_batch, tiny_cfg, train_step
from detectron2.modeling import build_model

from distill import DISTILLER_REGISTRY


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### Adding a distiller", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_distiller_example_trains(teacher_files):
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    try:
        cfg = tiny_cfg("faster_rcnn", distillers=["BoxFeatureKD"],
                       teacher=teacher_files("faster_rcnn"))  # fmt: skip
        assert cfg.BOX_FEATURE_KD.LEVEL == "p4"
        model = build_model(cfg)
        losses = train_step(model, make_batch())
        assert torch.isfinite(losses["loss_box_feature_kd_mse"])
        assert losses["loss_box_feature_kd_mse"] > 0
        assert model.distillers["BoxFeatureKD"].adapter.weight.grad is not None
    finally:
        DISTILLER_REGISTRY._obj_map.pop("BoxFeatureKD", None)
