"""The Dsig edge-matrix picture: student and teacher matrices over one image's boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_batch, tiny_cfg
from detectron2.modeling import build_model
from dsig.visualize import edge_matrices, save_edge_matrices


@pytest.mark.parametrize("family", ["faster_rcnn", "retinanet"])
def test_edge_matrices_of_one_image(family, teacher_files, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(family, distillers=["Dsig"], teacher=teacher_files(family)))
    sample = make_batch()[0]  # 3 objects
    matrices = edge_matrices(model, sample)
    assert model.training
    for side in ("student", "teacher"):
        e = matrices[side]
        assert e.shape == (3, 3) and np.allclose(e, e.T, atol=1e-6)
        assert np.allclose(np.diag(e), 1, atol=1e-5)
    assert list(matrices["classes"]) == sorted(sample["instances"].gt_classes.tolist())
    path = tmp_path / "edges.png"
    save_edge_matrices(matrices, str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
