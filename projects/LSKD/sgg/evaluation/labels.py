"""Label-range checks of the scene-graph evaluation inputs.

The evaluation's conventions: object classes are detectron2's contiguous 0-based ids 0..C-1 (no
background class); predicate ids are 1..P, 0 being the background (no relation), as the columns
of ``rel_scores`` (M, P + 1). Ground truth and predictions in another convention (1-based object
classes, 0-based predicates) would match nothing and give R@K = 0 without a word; these checks
refuse them (:class:`~distill.errors.InvalidDataError`, a ``ConfigValueError``) with the input,
the field, the range found and the range expected.
"""

from __future__ import annotations

import numpy as np

from distill.errors import InvalidDataError


def range_text(values: np.ndarray) -> str:
    """``"min..max"`` of a non-empty integer array, for error messages."""
    return f"{int(values.min())}..{int(values.max())}"


def check_object_labels(labels: np.ndarray, num_classes: int, where: str, field: str) -> None:
    """Refuse object classes outside 0..C-1 (detectron2's contiguous 0-based ids, no background).

    Args:
        labels: (N,) integer object classes.
        num_classes: C, the dataset's object classes.
        where: which input, e.g. ``"SceneGraphEvaluator: ground truth of 'vg150_test', image 7"``.
        field: the field the labels come from, e.g. ``"annotations[*].category_id"``.
    """
    if labels.size == 0 or (labels.min() >= 0 and labels.max() < num_classes):
        return
    hint = ""
    if labels.min() >= 1 and labels.max() == num_classes:
        hint = "; 1-based labels? object classes are 0-based here, with no background class"
    raise InvalidDataError(
        f"{where}: object classes {field} lie in {range_text(labels)}, "
        f"expected 0..{num_classes - 1} ({num_classes} object classes){hint}"
    )


def check_predicate_ids(
    predicates: np.ndarray, num_predicates: int, where: str, field: str
) -> None:
    """Refuse predicate ids outside 1..P (0 is the background, never a relation).

    Args:
        predicates: (R,) integer predicate ids.
        num_predicates: P, the dataset's predicate classes.
        where: which input, e.g. ``"SceneGraphEvaluator: ground truth of 'vg150_test', image 7"``.
        field: the field the ids come from, e.g. ``"relations[:, 2]"``.
    """
    if predicates.size == 0 or (predicates.min() >= 1 and predicates.max() <= num_predicates):
        return
    hint = ""
    if predicates.min() == 0:
        hint = "; 0-based ids? predicate id 0 is the background, relations use 1..P"
    raise InvalidDataError(
        f"{where}: predicate ids {field} lie in {range_text(predicates)}, "
        f"expected 1..{num_predicates} ({num_predicates} predicate classes){hint}"
    )
