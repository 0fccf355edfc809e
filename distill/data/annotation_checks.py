"""Validation of COCO-format annotations: a pure function from a parsed json to its problems.

detectron2 neither refuses nor reports a bad box: ``load_coco_json`` keeps it, and the dataset
mapper turns a negative width into another box (its corners are re-sorted after the transform)
and silently drops an empty or out-of-image one. Here each annotation is checked once, right
after the json is parsed, and the caller refuses the file or drops the listed annotations
(:mod:`distill.data.checked_coco`); a box is never rewritten.

Rules, and why they accept real COCO 2017:

* ``bbox`` must be 4 finite numbers ``[x, y, width, height]``.
* ``width > 0`` and ``height > 0``: tiny boxes are accepted (real COCO has many boxes of a few
  pixels or less). Zero or negative sizes are refused, except the two zero-height annotations
  of the official COCO 2017 train json (``KNOWN_COCO_ZERO_SIZE``: image 200365 / annotation
  918 and image 550395 / annotation 2206849, reported in cocoapi issue 355; measured: 2 of
  860,001 train2017 annotations have a size <= 0, none negative), which detectron2's mapper
  drops as empty boxes, as before.
* The box lies inside its image up to ``BOUNDARY_TOLERANCE_PX`` = 1 pixel on every side. COCO
  boxes are the extent of the object's polygon, stored with 2 decimals, so ``x + width`` may
  exceed the image width by a rounding step; 1 pixel also accepts VOC-converted boxes (1-based
  ``xmax == width``). A box in the coordinates of another image size (e.g. COCO 2014's
  ``valminusminival`` json, with boxes exceeding 500x332 images by 139 pixels) is refused.
  Annotations whose image is not in ``images`` are not bounds-checked (detectron2 ignores
  them, with a warning).
* ``category_id`` must be an ``id`` of ``categories``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BOUNDARY_TOLERANCE_PX = 1.0
# (image_id, annotation id) of the zero-height boxes of the official COCO 2017 train json.
KNOWN_COCO_ZERO_SIZE = frozenset({(200365, 918), (550395, 2206849)})


@dataclass(frozen=True)
class AnnotationProblem:
    """One invalid annotation: its position in ``annotations``, its ids and what is wrong."""

    index: int
    image_id: Any
    annotation_id: Any
    reason: str

    def __str__(self) -> str:
        return f"image_id {self.image_id}, annotation id {self.annotation_id}: {self.reason}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _box_problem(bbox: Any, size: tuple[float, float] | None, zero_size_ok: bool) -> str | None:
    """What is wrong with one ``[x, y, w, h]`` box in an image of ``size`` (W, H), or None."""
    if not (isinstance(bbox, Sequence) and len(bbox) == 4 and all(map(_is_number, bbox))):
        return f"bbox {bbox!r} is not [x, y, width, height] (4 numbers)"
    if not all(map(math.isfinite, bbox)):
        return f"bbox {bbox} is not finite"
    x, y, w, h = bbox
    if (w <= 0 or h <= 0) and not (zero_size_ok and w >= 0 and h >= 0):
        return f"bbox {bbox} has width {w} and height {h}; both must be > 0"
    if size is not None:
        width, height = size
        tol = BOUNDARY_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return (
                f"bbox {bbox} (x2 = {x + w:g}, y2 = {y + h:g}) lies outside its "
                f"{width}x{height} image by more than {tol:g} pixel"
            )
    return None


def _image_sizes(images: Sequence[Mapping]) -> dict[Any, tuple[float, float]]:
    """image id -> (width, height) for the images that give both as positive numbers."""
    sizes = {}
    for image in images:
        width, height = image.get("width"), image.get("height")
        if _is_number(width) and _is_number(height) and width > 0 and height > 0:
            sizes[image.get("id")] = (width, height)
    return sizes


def _suspects(anns: Sequence[Mapping], sizes: dict, category_ids: set) -> np.ndarray:
    """Indices of the annotations that may break a rule, found with numpy (COCO train has 860k
    annotations); a superset of the invalid ones, which :func:`_box_problem` then confirms."""
    check_each = np.arange(len(anns))  # where some box is malformed
    try:
        boxes = np.array([a.get("bbox") for a in anns] or np.zeros((0, 4)))
    except (TypeError, ValueError):  # ragged
        return check_each
    if boxes.shape != (len(anns), 4) or boxes.dtype.kind not in "fi":
        return check_each
    x, y, w, h = boxes.astype(np.float64).T
    unknown = (math.nan, math.nan)
    width, height = np.array([sizes.get(a.get("image_id"), unknown) for a in anns]).reshape(-1, 2).T
    tol = BOUNDARY_TOLERANCE_PX
    with np.errstate(invalid="ignore"):  # NaN boxes and unknown image sizes compare False
        outside = (x < -tol) | (y < -tol) | (x + w > width + tol) | (y + h > height + tol)
    bad = ~np.isfinite(boxes).all(1) | (w <= 0) | (h <= 0) | outside
    bad |= np.array([a.get("category_id") not in category_ids for a in anns], dtype=bool)
    return np.flatnonzero(bad)


def find_invalid_annotations(coco: Mapping[str, Any]) -> list[AnnotationProblem]:
    """The annotations of a parsed COCO json that cannot be used as they are (rules: module doc).

    Args:
        coco: The parsed json: ``images`` (``id``, ``width``, ``height``), ``annotations``
            (``id``, ``image_id``, ``bbox`` XYWH pixels, ``category_id``), ``categories``
            (``id``). Not modified.

    Returns:
        One :class:`AnnotationProblem` per invalid annotation, in file order (reasons of one
        annotation joined by "; "); empty when all are valid.
    """
    sizes = _image_sizes(coco.get("images", []))
    category_ids = {c.get("id") for c in coco.get("categories", [])}
    anns = coco.get("annotations", [])
    problems = []
    for index in _suspects(anns, sizes, category_ids).tolist():
        ann = anns[index]
        image_id, ann_id = ann.get("image_id"), ann.get("id")
        reasons = []
        zero_size_ok = (image_id, ann_id) in KNOWN_COCO_ZERO_SIZE
        box = _box_problem(ann.get("bbox"), sizes.get(image_id), zero_size_ok)
        if box is not None:
            reasons.append(box)
        category = ann.get("category_id")
        if category not in category_ids:
            reasons.append(f"category_id {category!r} is not an id of 'categories'")
        if reasons:
            problems.append(AnnotationProblem(index, image_id, ann_id, "; ".join(reasons)))
    return problems


def without_annotations(
    coco: Mapping[str, Any], problems: Sequence[AnnotationProblem]
) -> dict[str, Any]:
    """A shallow copy of ``coco`` whose ``annotations`` lack those of ``problems``."""
    drop = {p.index for p in problems}
    kept = [a for i, a in enumerate(coco.get("annotations", [])) if i not in drop]
    return {**coco, "annotations": kept}


def describe_problems(problems: Sequence[AnnotationProblem], first: int = 5) -> str:
    """The first ``first`` problems joined by "; ", then "... and N more" if any."""
    listed = "; ".join(str(p) for p in problems[:first])
    more = f"; ... and {len(problems) - first} more" if len(problems) > first else ""
    return listed + more
