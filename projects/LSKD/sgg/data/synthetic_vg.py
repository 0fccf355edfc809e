"""Seeded generator of "vgsynth", a small scene-graph dataset in exactly the three VG150 file
formats, built from the embedded detection data (:mod:`distill.data`): the same images (as JPEG),
boxes and object classes, plus relations from :mod:`sgg.data.synthetic_relations`. What was true
but not annotated is kept in ``unannotated_relations.json`` (indices local to each image's boxes,
as the loader's ``annotations``) so that it can be measured.

Object class ids 1..8 keep the embedded order (not alphabetical as in VG150), so a detector trained
on ``embedded_coco_*`` has the same classes; predicate ids are alphabetical as in VG150. Images
of the embedded ``train`` split get h5 split 0 (vgsynth train/val), those of ``val`` split 2
(vgsynth test).
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from distill.data import (
    DATASET_VERSION,
    EMBEDDED_CLASSES,
    embedded_dataset_paths,
    ensure_embedded_dataset,
    ensure_generated_folder,
)
from sgg.data.synthetic_relations import SYNTH_PREDICATES, annotate_relations, true_predicates
from sgg.data.vg150 import DICTS_FILE, H5_FILE, IMAGE_DATA_FILE, IMAGE_DIR

SYNTH_VERSION = "vgsynth_v1"
DEFAULT_SEED = 0
DEFAULT_NUM_VAL_IMAGES = 40  # the first train-split images forming vgsynth_val (of ~200)
UNANNOTATED_FILE = "unannotated_relations.json"
SYNTH_ATTRIBUTES = ("big", "occluded", "small", "tall", "truncated", "wide")
_H5_SPLIT = {"train": 0, "val": 2}  # embedded train -> VG train/val, embedded val -> VG test
_IMAGE_ID_BASE = {"train": 100_000, "val": 200_000}  # clear of VG's corrupted ids 1592..4617
_RELATION_STREAM = 1  # extra seed word: relation sampling never shares draws with rendering


def encode_boxes(boxes: np.ndarray, max_side: np.ndarray | float, box_scale: int) -> np.ndarray:
    """XYXY pixels -> int32 (cx, cy, w, h) with the longer image side scaled to ``box_scale``,
    as the VG preprocessing script: x, y floored, w, h ceiled (at least 2), centre x + w // 2."""
    scaled = np.asarray(boxes, dtype=np.float64) * (box_scale / np.reshape(max_side, (-1, 1)))
    xy = np.floor(scaled[:, :2] + 1e-6)
    wh = np.maximum(np.ceil(scaled[:, 2:] - scaled[:, :2] - 1e-6), 2)
    return np.concatenate([xy + np.floor(wh / 2), wh], axis=1).astype(np.int32)


def box_attributes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 10) attribute ids of :data:`SYNTH_ATTRIBUTES` (1-based, 0-padded), from the geometry:
    big/small by area, tall/wide by aspect, truncated at the border, occluded by a later box."""
    x1, y1, x2, y2 = boxes.T
    w, h = x2 - x1, y2 - y1
    ix = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    iy = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    occluded = np.triu(ix * iy > 0, k=1).any(axis=1)  # a later-drawn box overlaps it
    flags = {
        "big": w * h > 0.1 * width * height,
        "occluded": occluded,
        "small": w * h < 16**2,
        "tall": h > 1.3 * w,
        "wide": w > 1.3 * h,
        "truncated": (x1 <= 0.5) | (y1 <= 0.5) | (x2 >= width - 0.5) | (y2 >= height - 0.5),
    }
    ids = np.stack([flags[a] for a in SYNTH_ATTRIBUTES], axis=1) * np.arange(1, 7)
    ids = np.sort(np.where(ids > 0, ids, 99), axis=1) % 99  # present ids ascending, then zeros
    return np.pad(ids, ((0, 0), (0, 10 - ids.shape[1]))).astype(np.int32)


def vgsynth_dir(
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    num_images: dict[str, int] | None = None,
) -> Path:
    """Folder of the dataset for these parameters, without generating anything: the embedded
    dataset's folder name with ``vgsynth_v1`` for ``embedded_coco_v1`` (e.g.
    ``<cache>/vgsynth_v1``), so one folder always holds one exact content."""
    embedded = embedded_dataset_paths(root, seed, num_images)["dataset_dir"]
    return embedded.parent / embedded.name.replace(DATASET_VERSION, SYNTH_VERSION, 1)


def ensure_vgsynth(
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    num_images: dict[str, int] | None = None,
    force: bool = False,
) -> Path:
    """Generates the dataset into the cache on first use (atomically) and returns its folder.

    The embedded dataset with the same parameters is generated first if needed. Generation is
    atomic (:func:`distill.data.cache.ensure_generated_folder`): an interrupted run leaves nothing
    partial and concurrent processes end up with one identical copy.

    Args:
        root: Cache root (``$DISTILL_CACHE`` or ``~/.cache/distill`` by default).
        seed: Base seed of the images and the relations.
        num_images: Embedded images per split, keys ``train`` (-> h5 split 0) and ``val``
            (-> h5 split 2); default 240 / 60.
        force: Regenerate even if a complete copy exists.
    """

    def write(folder: Path) -> None:
        write_vgsynth(folder, ensure_embedded_dataset(root, seed, num_images, progress=False), seed)

    return ensure_generated_folder(vgsynth_dir(root, seed, num_images), write, force=force)


def _name_maps(kind: str, names: tuple[str, ...], counts: np.ndarray, count_key: str) -> dict:
    """``<kind>_to_idx``, ``idx_to_<kind>`` (ids 1..K, string keys as in VG) and the counts."""
    return {
        f"{kind}_to_idx": {n: i + 1 for i, n in enumerate(names)},
        f"idx_to_{kind}": {str(i + 1): n for i, n in enumerate(names)},
        count_key: {n: int(c) for n, c in zip(names, counts)},
    }


def _embedded_images(paths: dict) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """``(image entry, (N, 4) XYXY boxes, (N,) classes 0..7)`` of one embedded split, objects
    in drawing order (annotation id order)."""
    coco = json.loads(Path(paths["json_file"]).read_text())
    by_image: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        by_image[ann["image_id"]].append(ann)
    out = []
    for img in sorted(coco["images"], key=lambda im: im["id"]):
        boxes = np.array([a["bbox"] for a in by_image[img["id"]]], np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        classes = np.array([a["category_id"] - 1 for a in by_image[img["id"]]], np.int64)
        out.append((img, boxes, classes))
    return out


def _h5_arrays(images: list[dict]) -> dict[str, np.ndarray]:
    """The VG h5 datasets from per-image ``split``, ``boxes``, ``classes``, ``max_side``,
    ``attributes`` and ``relations`` (local indices, made global here)."""
    num_boxes = np.array([len(im["boxes"]) for im in images])
    num_rels = np.array([len(im["relations"]) for im in images])
    first_box, first_rel = np.cumsum(num_boxes) - num_boxes, np.cumsum(num_rels) - num_rels
    boxes = np.concatenate([im["boxes"] for im in images])
    max_side = np.repeat([im["max_side"] for im in images], num_boxes)
    rels = np.concatenate([im["relations"] for im in images])
    rels[:, :2] += np.repeat(first_box, num_rels)[:, None]
    return {
        "split": np.array([im["split"] for im in images], np.int32),
        "img_to_first_box": np.where(num_boxes > 0, first_box, -1).astype(np.int32),
        "img_to_last_box": np.where(num_boxes > 0, first_box + num_boxes - 1, -1).astype(np.int32),
        "img_to_first_rel": np.where(num_rels > 0, first_rel, -1).astype(np.int32),
        "img_to_last_rel": np.where(num_rels > 0, first_rel + num_rels - 1, -1).astype(np.int32),
        "labels": np.concatenate([im["classes"] for im in images]).astype(np.int32)[:, None] + 1,
        "boxes_1024": encode_boxes(boxes, max_side, 1024),
        "boxes_512": encode_boxes(boxes, max_side, 512),
        "attributes": np.concatenate([im["attributes"] for im in images]),
        "relationships": rels[:, :2].astype(np.int32),
        "predicates": rels[:, 2:].astype(np.int32),
    }


def write_vgsynth(out_dir: str | os.PathLike, embedded: dict, seed: int = DEFAULT_SEED) -> None:
    """Writes the VG150-format files of the embedded dataset ``embedded`` into ``out_dir``.

    Args:
        embedded: :func:`distill.data.ensure_embedded_dataset`'s paths (``train``/``val``).
        seed: Seed of the relation sampling, per image ``PCG64([seed, crc32(split), id, 1])``.
    """
    import h5py

    out_dir = Path(out_dir)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    images, unannotated = [], {}
    for split in ("train", "val"):
        if split not in embedded:
            raise ValueError(f"vgsynth needs embedded 'train' and 'val' splits, got {embedded}")
        for img, boxes, classes in _embedded_images(embedded[split]):
            image_id, width, height = _IMAGE_ID_BASE[split] + img["id"], img["width"], img["height"]
            photo = Image.open(Path(embedded[split]["image_root"]) / img["file_name"])
            photo.convert("RGB").save(out_dir / IMAGE_DIR / f"{image_id}.jpg", quality=95)
            words = [seed, zlib.crc32(split.encode()), img["id"], _RELATION_STREAM]
            rng = np.random.Generator(np.random.PCG64(words))
            rels, missing, other = annotate_relations(true_predicates(boxes, classes), rng)
            if len(missing) or len(other):
                unannotated[str(image_id)] = {"missing_pair": missing.tolist(),
                                              "other_predicate": other.tolist()}  # fmt: skip
            images.append({"image_id": image_id, "width": width, "height": height,
                           "split": _H5_SPLIT[split], "boxes": boxes, "classes": classes,
                           "max_side": max(width, height), "relations": rels,
                           "attributes": box_attributes(boxes, width, height)})  # fmt: skip

    arrays = _h5_arrays(images)
    with h5py.File(out_dir / H5_FILE, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, track_times=False)
    attrs = arrays["attributes"][arrays["attributes"] > 0] - 1
    counts = {  # over both splits, like VG's raw counts
        "object_count": np.bincount(arrays["labels"].ravel() - 1, minlength=len(EMBEDDED_CLASSES)),
        "predicate_count": np.bincount(
            arrays["predicates"].ravel() - 1, minlength=len(SYNTH_PREDICATES)
        ),
        "attribute_count": np.bincount(attrs, minlength=len(SYNTH_ATTRIBUTES)),
    }
    dicts = {
        **_name_maps("label", EMBEDDED_CLASSES, counts["object_count"], "object_count"),
        **_name_maps("predicate", SYNTH_PREDICATES, counts["predicate_count"], "predicate_count"),
        **_name_maps("attribute", SYNTH_ATTRIBUTES, counts["attribute_count"], "attribute_count"),
    }
    (out_dir / DICTS_FILE).write_text(json.dumps(dicts, indent=1))
    image_data = [{k: im[k] for k in ("image_id", "width", "height")} for im in images]
    (out_dir / IMAGE_DATA_FILE).write_text(json.dumps(image_data))
    side = {
        "description": "true relations not annotated, (subject, object, predicate id) with "
        "indices local to the image's boxes; missing_pair: the pair has no annotation, "
        "other_predicate: the pair is annotated with another predicate",
        "version": SYNTH_VERSION,
        "seed": seed,
        "predicates": list(SYNTH_PREDICATES),
        "images": unannotated,
    }
    (out_dir / UNANNOTATED_FILE).write_text(json.dumps(side))
