"""Consistency checks of a VG150 h5 file, vectorised over all images, boxes and relations; each
failure raises :class:`ConfigValueError` naming the file, the image id and the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.errors import ConfigValueError

PER_IMAGE_KEYS = ("split", "img_to_first_box", "img_to_last_box", "img_to_first_rel",
                  "img_to_last_rel")  # fmt: skip
_PLURAL = {"box": "boxes", "rel": "relations"}


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
    """Raises ConfigValueError naming the h5 file, the image id and the field."""

    def __init__(self, path: Path, image_ids: np.ndarray):
        self.path, self.image_ids = path, image_ids

    def image(self, image: int, field: str, problem: str) -> None:
        where = f"image_id {self.image_ids[image]}" if image >= 0 else "no image"
        raise ConfigValueError(f"{self.path}: {where}, field {field!r}: {problem}")

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

    def values(
        self, values: np.ndarray, ok: np.ndarray, h5: dict, kind: str, field: str, expected: str
    ) -> None:
        bad = np.flatnonzero(~ok)
        if len(bad):
            j = int(bad[0])
            owner = _owner(j, h5[f"img_to_first_{kind}"], h5[f"img_to_last_{kind}"])
            self.image(owner, field, f"row {j} = {values[j].tolist()}, expected {expected}")


def check_vg150_arrays(
    h5: dict[str, np.ndarray], path: Path, image_ids: np.ndarray, num_classes: int, num_preds: int
) -> None:
    """Checks shapes, index ranges, box validity, labels, predicates and relation indices.

    Args:
        h5: The file's arrays, with ``boxes`` (N_box, 4) at the chosen scale, ``labels`` and
            ``predicates`` flattened and ``relationships`` (N_rel, 2).
        path: The h5 file, for the messages.
        image_ids: (N_img,) VG image ids, aligned with the h5 image axis.
        num_classes: C, object labels must be in 1..C.
        num_preds: P, predicates must be in 1..P.
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
