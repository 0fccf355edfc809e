"""The student's and the teacher's edge matrices of one image, side by side.

The nodes are the image's ground-truth boxes (sorted by class), pooled 7x7 from the student's
pyramid (through the Dsig adapter, if any) and from the teacher's, with the poolers Dsig uses in
training: the R-CNN box pooler, or the one-stage node poolers.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from distill.modules import cosine_edge_matrix  # noqa: E402
from dsig.detection_graph import DetectionGraph  # noqa: E402


@torch.no_grad()
def edge_matrices(model, batched_input: dict) -> dict[str, np.ndarray]:
    """``student`` and ``teacher`` (M, M) edge matrices over the image's M ground-truth boxes,
    and their ``classes`` (M,), boxes sorted by class.

    Args:
        model: a Distill meta-architecture with a ``Dsig`` distiller and its teacher.
        batched_input: one dataset-mapper dict with ``image`` and ``instances``.
    """
    distiller = model.distillers["Dsig"]
    teacher = model.teacher
    was_training = model.training
    model.eval()
    try:
        images = model.preprocess_image([batched_input])
        s_feats = model.backbone(images.tensor)
        with teacher.inference():
            t_feats = teacher.features(teacher.preprocess([batched_input], model.input_format))
        gt = batched_input["instances"].to(images.tensor.device)
        order = torch.argsort(gt.gt_classes, stable=True)
        boxes = [Boxes(gt.gt_boxes.tensor[order])]
        graph = distiller.graph
        if isinstance(graph, DetectionGraph):
            s_pool, t_pool = graph.poolers
            s_nodes = s_pool([s_feats[f] for f in graph.levels], boxes)
            t_nodes = t_pool([t_feats[f] for f in graph.levels], boxes)
        else:
            heads = model.roi_heads
            s_nodes = heads.box_pooler([s_feats[f] for f in heads.box_in_features], boxes)
            t_heads = teacher.model.roi_heads
            t_nodes = t_heads.box_pooler([t_feats[f] for f in t_heads.box_in_features], boxes)
        s_nodes = distiller.adapt(s_nodes.float())
    finally:
        model.train(was_training)
    return {
        "student": cosine_edge_matrix(s_nodes).cpu().numpy(),
        "teacher": cosine_edge_matrix(t_nodes.float()).cpu().numpy(),
        "classes": gt.gt_classes[order].cpu().numpy(),
    }


def save_edge_matrices(matrices: dict[str, np.ndarray], path: str, names=None) -> None:
    """Write teacher, student and |teacher - student| as a PNG; ``names`` label the classes."""
    labels = [names[c] if names else str(c) for c in matrices["classes"]]
    panels = {
        "teacher edges": matrices["teacher"],
        "student edges": matrices["student"],
        "|teacher - student|": np.abs(matrices["teacher"] - matrices["student"]),
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (title, values) in zip(axes, panels.items()):
        low = 0.0 if title.startswith("|") else -1.0
        shown = ax.imshow(values, cmap="coolwarm" if low < 0 else "viridis", vmin=low, vmax=1.0)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title)
        fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle("cosine edge matrices over the ground-truth boxes of one image")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
