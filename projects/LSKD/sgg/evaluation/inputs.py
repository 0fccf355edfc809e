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

from distill.errors import ConfigKeyError, ConfigValueError, InvalidDataError
from sgg.evaluation.labels import check_object_labels, check_predicate_ids, range_text


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


def check_graph(
    labels: np.ndarray, relations: np.ndarray, num_classes: int, num_predicates: int, where: str
) -> None:
    """Check one image's annotated graph: classes 0..C-1, relation indices into its N objects,
    predicate ids 1..P; errors name ``where`` and the field."""
    check_object_labels(labels, num_classes, where, "annotations[*].category_id")
    n = len(labels)
    if len(relations) and (relations[:, :2].min() < 0 or relations[:, :2].max() >= n):
        raise InvalidDataError(
            f"{where}: relation object indices relations[:, :2] lie in "
            f"{range_text(relations[:, :2])}, expected 0..{n - 1} (its {n} annotations)"
        )
    check_predicate_ids(relations[:, 2], num_predicates, where, "relations[:, 2]")


def gt_from_dataset_dict(
    record: dict[str, Any], num_predicates: int, where: str, *, num_classes: int
) -> ImageGT:
    """Convert and check one dataset dict.

    Args:
        record: a dataset dict with ``"annotations"`` and ``"relations"``.
        num_predicates: P; predicate ids must lie in 1..P.
        where: the dataset name, for error messages.
        num_classes: C; object classes (``category_id``) must lie in 0..C-1.
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
    image = f"SceneGraphEvaluator: ground truth of '{where}', image {image_id}"
    check_graph(labels, rels, num_classes, num_predicates, image)
    return ImageGT(boxes, labels, rels)


def graph_from_dataset_dict(
    record: dict[str, Any],
    num_classes: int | None = None,
    num_predicates: int | None = None,
    where: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 object classes and (R, 3) int64 relations of a dataset dict.

    With ``num_classes`` and ``num_predicates``, checked as :func:`check_graph` (errors name
    ``where``, e.g. the training split, and the image id); without them, not checked.
    """
    labels = np.array([a["category_id"] for a in record.get("annotations", [])], np.int64)
    rels = np.asarray(record.get("relations", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    if num_classes is not None and num_predicates is not None:
        image = f"SceneGraphEvaluator: {where}, image {record.get('image_id')}"
        check_graph(labels, rels, num_classes, num_predicates, image)
    return labels, rels


def _array(value: Any, name: str, shape: tuple, image_id: Any, hint: str = "") -> np.ndarray:
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
            f"expected {want}{hint}"
        )
    return value


def prediction_from_output(
    output: dict[str, Any], num_predicates: int, image_id: Any, *, num_classes: int
) -> ImagePrediction:
    """Convert and check one model output (moves tensors to CPU numpy).

    Args:
        output: ``{"instances": Instances with pred_boxes (K, 4), scores (K,), pred_classes
            (K,) in 0..C-1; "rel_pair_idxs": (M, 2) long; "rel_scores": (M, P + 1), column 0
            the background, column p predicate id p}``.
        num_predicates: P.
        image_id: for error messages.
        num_classes: C.
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
        rel_scores=_array(
            output["rel_scores"],
            "rel_scores",
            (None, num_predicates + 1),
            image_id,
            f" (column 0 the background, then the {num_predicates} predicate classes)",
        ),  # fmt: skip
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
    where = f"SceneGraphEvaluator: prediction for image {image_id}"
    check_object_labels(pred.labels, num_classes, where, "instances.pred_classes")
    if not np.isfinite(pred.rel_scores).all() or not np.isfinite(pred.scores).all():
        raise ConfigValueError(
            f"SceneGraphEvaluator: image {image_id}: 'rel_scores' or 'instances.scores' is not "
            "finite"
        )
    return pred._replace(pair_idxs=pred.pair_idxs.astype(np.int64))
