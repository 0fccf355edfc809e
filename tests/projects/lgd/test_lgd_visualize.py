"""The LGD heat-map picture: three maps of one level for one image, written as a PNG."""

from __future__ import annotations

import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from lgd.visualize import lgd_heatmaps, save_heatmaps


def test_heatmaps_of_one_level_are_written(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("retinanet", distillers=["LGD"]))
    maps = lgd_heatmaps(model, make_batch()[0], level="p4")
    assert model.training  # restored
    grid = maps["student"].shape
    assert maps["teacher"].shape == maps["adapted"].shape == grid == (96 // 16, 128 // 16)
    assert maps["image"].shape == (96, 128, 3) and maps["boxes"].shape == (3, 4)
    path = tmp_path / "maps.png"
    save_heatmaps(maps, str(path), "p4")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
