"""Ground truth from dataset dicts and predictions from model outputs, as checked numpy arrays.

Dataset dicts are the ``sgg`` loaders' (detectron2 standard plus ``"relations"`` (R, 3) rows
(subject index, object index, predicate id 1..P)); model outputs are the relation model's eval
outputs (``"instances"``, ``"rel_pair_idxs"``, ``"rel_scores"``). Both are checked here, early,
with errors that name the image and the field.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from detectron2.structures import BoxMode

from distill.errors import ConfigKeyError, ConfigValueError


class ImageGT(NamedTuple):
    """One image's ground-truth scene graph.

    Attributes:
        boxes: (N, 4) float64 XYXY boxes, original image pixels.
        labels: (N,) int64 classes 0..C-1.
        relations: (R, 3) int64 (subject index, object index, predicate id 1..P), all kept.
    """

    boxes: np.ndarray
    labels: np.ndarray
    relations: np.ndarray


class ImagePrediction(NamedTuple):
    """One image's predicted scene graph (see :func:`sgg.evaluation.matching.match_image`)."""

    boxes: np.ndarray  # (K, 4) XYXY, original pixels
    labels: np.ndarray  # (K,) 0..C-1
    scores: np.ndarray  # (K,)
    pair_idxs: np.ndarray  # (M, 2) indices into the K objects
    rel_scores: np.ndarray  # (M, P + 1), column 0 = background


def gt_from_dataset_dict(record: dict[str, Any], num_predicates: int, where: str) -> ImageGT:
    """Convert and check one dataset dict.

    Args:
        record: a dataset dict with ``"annotations"`` and ``"relations"``.
        num_predicates: P; predicate ids must lie in 1..P.
        where: the dataset name, for error messages.
    """
    image_id = record.get("image_id")
    if "relations" not in record:
        raise ConfigKeyError(
            f"{where}: image {image_id} has no 'relations' (an (R, 3) array of subject index, "
            "object index, predicate id); is this a scene-graph dataset?"
        )
    anns = record.get("annotations", [])
    boxes = np.zeros((len(anns), 4), dtype=np.float64)
    for i, ann in enumerate(anns):
        mode = ann.get("bbox_mode", BoxMode.XYXY_ABS)
        boxes[i] = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYXY_ABS)
    labels = np.array([ann["category_id"] for ann in anns], dtype=np.int64)
    rels = np.asarray(record["relations"], dtype=np.int64).reshape(-1, 3)
    if len(rels) and (rels[:, :2].min() < 0 or rels[:, :2].max() >= len(anns)):
        raise ConfigValueError(
            f"{where}: image {image_id} has relation indices outside 0..{len(anns) - 1}"
        )
    if len(rels) and (rels[:, 2].min() < 1 or rels[:, 2].max() > num_predicates):
        raise ConfigValueError(
            f"{where}: image {image_id} has predicate ids outside 1..{num_predicates}"
        )
    return ImageGT(boxes, labels, rels)


def graph_from_dataset_dict(record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 object classes and (R, 3) int64 relations of a dataset dict (no checks)."""
    labels = np.array([a["category_id"] for a in record.get("annotations", [])], np.int64)
    rels = np.asarray(record.get("relations", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    return labels, rels


def _array(value: Any, name: str, shape: tuple, image_id: Any) -> np.ndarray:
    """``value`` as numpy, checking its rank and the sizes given in ``shape`` (None = any)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    else:
        value = np.asarray(value)
    ok = value.ndim == len(shape) and all(
        s is None or s == v for s, v in zip(shape, value.shape, strict=False)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ConfigValueError(
            f"SceneGraphEvaluator: image {image_id}: '{name}' has shape {tuple(value.shape)}, "
            f"expected {want}"
        )
    return value


def prediction_from_output(
    output: dict[str, Any], num_predicates: int, image_id: Any
) -> ImagePrediction:
    """Convert and check one model output (moves tensors to CPU numpy).

    Args:
        output: ``{"instances": Instances with pred_boxes (K, 4), scores (K,), pred_classes
            (K,); "rel_pair_idxs": (M, 2) long; "rel_scores": (M, P + 1)}``.
        num_predicates: P.
        image_id: for error messages.
    """
    for key, what in (
        ("instances", "Instances with pred_boxes, scores, pred_classes"),
        ("rel_pair_idxs", "LongTensor (M, 2)"),
        ("rel_scores", f"FloatTensor (M, {num_predicates + 1})"),
    ):
        if key not in output:
            raise ConfigKeyError(
                f"SceneGraphEvaluator: the output of image {image_id} lacks '{key}' ({what}); "
                f"it has {sorted(output)}"
            )
    inst = output["instances"]
    for field in ("pred_boxes", "scores", "pred_classes"):
        if not inst.has(field):
            raise ConfigKeyError(
                f"SceneGraphEvaluator: the instances of image {image_id} lack '{field}'; "
                f"they have {sorted(inst.get_fields())}"
            )
    boxes = inst.pred_boxes
    boxes = boxes.tensor if hasattr(boxes, "tensor") else boxes
    n = len(inst)
    pred = ImagePrediction(
        boxes=_array(boxes, "instances.pred_boxes", (n, 4), image_id),
        labels=_array(inst.pred_classes, "instances.pred_classes", (n,), image_id).astype(np.int64),
        scores=_array(inst.scores, "instances.scores", (n,), image_id).astype(np.float64),
        pair_idxs=_array(output["rel_pair_idxs"], "rel_pair_idxs", (None, 2), image_id),
        rel_scores=_array(output["rel_scores"], "rel_scores", (None, num_predicates + 1), image_id),
    )
    m = len(pred.pair_idxs)
    if len(pred.rel_scores) != m:
        raise ConfigValueError(
            f"SceneGraphEvaluator: image {image_id}: 'rel_scores' has {len(pred.rel_scores)} "
            f"rows but 'rel_pair_idxs' has {m} pairs; expected ({m}, {num_predicates + 1})"
        )
    if m and (pred.pair_idxs.min() < 0 or pred.pair_idxs.max() >= n):
        raise ConfigValueError(
            f"SceneGraphEvaluator: image {image_id}: 'rel_pair_idxs' must index the {n} instances"
        )
    if not np.isfinite(pred.rel_scores).all() or not np.isfinite(pred.scores).all():
        raise ConfigValueError(
            f"SceneGraphEvaluator: image {image_id}: 'rel_scores' or 'instances.scores' is not "
            "finite"
        )
    return pred._replace(pair_idxs=pred.pair_idxs.astype(np.int64))
