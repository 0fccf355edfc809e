"""Consistency checks of a VG150 h5 file, vectorised over all images, boxes and relations; each
failure raises :class:`InvalidDataError` (a ``ConfigValueError``) naming the file, the image id
and the field."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from distill.data.checked_coco import check_mode
from distill.errors import ConfigValueError, InvalidDataError

logger = logging.getLogger(__name__)

PER_IMAGE_KEYS = ("split", "img_to_first_box", "img_to_last_box", "img_to_first_rel",
                  "img_to_last_rel")  # fmt: skip
_PLURAL = {"box": "boxes", "rel": "relations"}
_LISTED = 5  # boxes described in a drop warning


def ranges_to_indices(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(first[i], last[i] + 1)`` over i, vectorised."""
    counts = last - first + 1
    offsets = np.repeat(first - np.cumsum(counts) + counts, counts)
    return offsets + np.arange(counts.sum())


def _owner(index: int, first: np.ndarray, last: np.ndarray) -> int:
    """Image whose inclusive range [first, last] holds ``index`` (-1 if none)."""
    hits = np.flatnonzero((first >= 0) & (first <= index) & (index <= last))
    return int(hits[0]) if len(hits) else -1


class _Checker:
    """Raises InvalidDataError naming the h5 file, the image id and the field."""

    def __init__(self, path: Path, image_ids: np.ndarray):
        self.path, self.image_ids = path, image_ids

    def image(self, image: int, field: str, problem: str) -> None:
        where = f"image_id {self.image_ids[image]}" if image >= 0 else "no image"
        raise InvalidDataError(f"{self.path}: {where}, field {field!r}: {problem}")

    def ranges(self, h5: dict, kind: str, total: int) -> None:
        first, last = h5[f"img_to_first_{kind}"], h5[f"img_to_last_{kind}"]
        field = f"img_to_first_{kind}/img_to_last_{kind}"
        bad = np.flatnonzero((first < 0) != (last < 0))
        if len(bad):
            self.image(bad[0], field, f"{first[bad[0]]}/{last[bad[0]]}: one of them is -1")
        has = first >= 0
        bad = np.flatnonzero(has & ((first > last) | (last >= total)))
        if len(bad):
            i = bad[0]
            self.image(i, field, f"range {first[i]}..{last[i]} invalid for {total} {_PLURAL[kind]}")
        # Sorted by start, each range must end before the next one starts.
        order = np.flatnonzero(has)[np.argsort(first[has], kind="stable")]
        clash = np.flatnonzero(first[order[1:]] <= last[order[:-1]])
        if len(clash):
            a, b = order[clash[0]], order[clash[0] + 1]
            self.image(
                b,
                field,
                f"range {first[b]}..{last[b]} overlaps range {first[a]}..{last[a]} of image_id "
                f"{self.image_ids[a]} (each image needs its own {_PLURAL[kind]})",
            )

    def values(
        self, values: np.ndarray, ok: np.ndarray, h5: dict, kind: str, field: str, expected: str
    ) -> None:
        bad = np.flatnonzero(~ok)
        if len(bad):
            j = int(bad[0])
            owner = _owner(j, h5[f"img_to_first_{kind}"], h5[f"img_to_last_{kind}"])
            self.image(owner, field, f"row {j} = {values[j].tolist()}, expected {expected}")


def _boxes_outside(
    h5: dict, image_sizes: np.ndarray, box_scale: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The boxes that start right of or below their image, which clipping would turn into zero
    width or height (an infinite box-regression loss in training).

    Returns:
        Their rows in ``boxes``, the h5 index of their images, a description of the first few.
    """
    with_boxes = np.flatnonzero(h5["img_to_first_box"] >= 0)
    first, last = h5["img_to_first_box"][with_boxes], h5["img_to_last_box"][with_boxes]
    rows = ranges_to_indices(first, last)
    sizes = np.repeat(image_sizes[with_boxes].astype(np.float64), last - first + 1, axis=0)
    boxes = h5["boxes"][rows].astype(np.float64)
    top_left = boxes[:, :2] - boxes[:, 2:] / 2  # at box_scale = the image's longer side
    pixels = top_left * sizes.max(1, keepdims=True) / box_scale
    bad = np.flatnonzero((pixels >= sizes).any(1))
    owners = with_boxes[np.searchsorted(np.cumsum(last - first + 1), bad, side="right")]
    described = [
        f"row {rows[k]} = {boxes[k].astype(int).tolist()} (cx, cy, w, h) starts at x1, y1 = "
        f"{pixels[k, 0]:.1f}, {pixels[k, 1]:.1f} pixels, outside the "
        f"{sizes[k, 0]:.0f}x{sizes[k, 1]:.0f} image (size from image_data.json)"
        for k in bad[:_LISTED]
    ]
    return rows[bad], owners, described


def drop_boxes(h5: dict[str, np.ndarray], drop: np.ndarray) -> dict[str, np.ndarray]:
    """A copy of checked arrays without the boxes ``drop`` (N_box,) bool and the relations that
    use them; the per-image ranges and relation indices are renumbered (an image left without
    boxes gets -1, as one that never had any)."""
    keep_box = ~drop
    keep_rel = keep_box[h5["relationships"]].all(1)
    new_row = np.cumsum(keep_box) - 1
    out = dict(h5)
    out["boxes"], out["labels"] = h5["boxes"][keep_box], h5["labels"][keep_box]
    out["relationships"] = new_row[h5["relationships"][keep_rel]].astype(h5["relationships"].dtype)
    out["predicates"] = h5["predicates"][keep_rel]
    for kind, kept in (("box", keep_box), ("rel", keep_rel)):
        first, last = h5[f"img_to_first_{kind}"], h5[f"img_to_last_{kind}"]
        kept_before = np.concatenate([[0], np.cumsum(kept)])  # kept rows before row i
        start = kept_before[np.maximum(first, 0)]
        count = np.where(first >= 0, kept_before[last + 1] - start, 0)
        out[f"img_to_first_{kind}"] = np.where(count > 0, start, -1).astype(first.dtype)
        out[f"img_to_last_{kind}"] = np.where(count > 0, start + count - 1, -1).astype(last.dtype)
    return out


def check_vg150_arrays(
    h5: dict[str, np.ndarray],
    path: Path,
    image_ids: np.ndarray,
    num_classes: int,
    num_preds: int,
    image_sizes: np.ndarray,
    box_scale: int,
    invalid_annotations: str = "error",
) -> np.ndarray:
    """Checks shapes, index ranges (valid, not shared by two images), box validity (inside the
    image), labels, predicates and relation indices.

    Args:
        h5: The file's arrays, with ``boxes`` (N_box, 4) at the chosen scale, ``labels`` and
            ``predicates`` flattened and ``relationships`` (N_rel, 2).
        path: The h5 file, for the messages.
        image_ids: (N_img,) VG image ids, aligned with the h5 image axis.
        num_classes: C, object labels must be in 1..C.
        num_preds: P, predicates must be in 1..P.
        image_sizes: (N_img, 2) width, height in pixels (image_data.json).
        box_scale: The scale of ``boxes`` (the longer image side), e.g. 1024.
        invalid_annotations: DATASETS.INVALID_ANNOTATIONS: ``"error"`` refuses a box outside
            its image; ``"drop"`` returns them (with a warning that counts them) instead.
            Every other problem is refused either way.

    Returns:
        (N_box,) bool, the boxes to drop (:func:`drop_boxes`); all False in ``"error"`` mode.
    """
    check = _Checker(path, image_ids)
    for key in PER_IMAGE_KEYS:
        if h5[key].shape != (len(image_ids),):
            raise ConfigValueError(
                f"{path}: field {key!r} has shape {h5[key].shape}, expected "
                f"({len(image_ids)},) (one per image)"
            )
    num_boxes, num_rels = len(h5["boxes"]), len(h5["relationships"])
    for key, n in (("labels", num_boxes), ("predicates", num_rels)):
        if len(h5[key]) != n:
            raise ConfigValueError(f"{path}: field {key!r} has {len(h5[key])} rows, expected {n}")
    check.ranges(h5, "box", num_boxes)
    check.ranges(h5, "rel", num_rels)
    no_box = np.flatnonzero((h5["img_to_first_rel"] >= 0) & (h5["img_to_first_box"] < 0))
    if len(no_box):
        check.image(no_box[0], "img_to_first_rel", "relations on an image without boxes")
    boxes = h5["boxes"]
    check.values(boxes, (boxes[:, :2] >= 0).all(1), h5, "box", "boxes", "centres cx, cy >= 0")
    check.values(boxes, (boxes[:, 2:] > 0).all(1), h5, "box", "boxes", "sizes w, h > 0")
    labels, preds = h5["labels"], h5["predicates"]
    check.values(
        labels,
        (labels >= 1) & (labels <= num_classes),
        h5,
        "box",
        "labels",
        f"an object class in 1..{num_classes}",
    )
    check.values(
        preds,
        (preds >= 1) & (preds <= num_preds),
        h5,
        "rel",
        "predicates",
        f"a predicate id in 1..{num_preds}",
    )
    with_rels = np.flatnonzero(h5["img_to_first_rel"] >= 0)
    first_rel, last_rel = h5["img_to_first_rel"][with_rels], h5["img_to_last_rel"][with_rels]
    rel_rows = ranges_to_indices(first_rel, last_rel)
    counts = last_rel - first_rel + 1
    lo = np.repeat(h5["img_to_first_box"][with_rels], counts)[:, None]
    hi = np.repeat(h5["img_to_last_box"][with_rels], counts)[:, None]
    rels = h5["relationships"][rel_rows]
    bad = np.flatnonzero(((rels < lo) | (rels > hi)).any(1))
    if len(bad):
        k = bad[0]
        image = with_rels[np.searchsorted(np.cumsum(counts), k, side="right")]
        check.image(
            image,
            "relationships",
            f"row {rel_rows[k]} = {rels[k].tolist()} outside the "
            f"image's boxes {lo[k, 0]}..{hi[k, 0]}",
        )
    rows, owners, described = _boxes_outside(h5, image_sizes, box_scale)
    field = f"boxes_{box_scale}"
    if len(rows) and check_mode(invalid_annotations) == "error":
        check.image(owners[0], field, f"{described[0]}; set DATASETS.INVALID_ANNOTATIONS drop "
                    "to leave such boxes and their relations out")  # fmt: skip
    if len(rows):
        listed = "; ".join(
            f"image_id {image_ids[i]} {d}" for i, d in zip(owners[:_LISTED], described)
        )
        logger.warning(
            f"{path}: dropped {len(rows)} of {len(boxes)} boxes ({field}) that lie outside their "
            f"image, with their relations (DATASETS.INVALID_ANNOTATIONS is 'drop'): {listed}"
            + (" ..." if len(rows) > _LISTED else "")
        )
    drop = np.zeros(len(boxes), dtype=bool)
    drop[rows] = True
    return drop
