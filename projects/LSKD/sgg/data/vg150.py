"""Loader of the standard Visual Genome VG150 files (the Xu et al. 2017 split as preprocessed by
the Scene-Graph-Benchmark): ``VG-SGG-with-attri.h5``, ``VG-SGG-dicts-with-attri.json``,
``image_data.json`` and the images ``VG_100K/<image_id>.jpg``, all in one folder.

The whole h5 file is read into numpy arrays and checked at once (the real file has 108k images and
1.1M boxes), so a bad file fails before training starts, naming the file, image and field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ConfigValueError, MissingFileError
from sgg.data.vg150_checks import (
    PER_IMAGE_KEYS,
    check_vg150_arrays,
    drop_boxes,
    ranges_to_indices,
)

H5_FILE = "VG-SGG-with-attri.h5"
DICTS_FILE = "VG-SGG-dicts-with-attri.json"
IMAGE_DATA_FILE = "image_data.json"
IMAGE_DIR = "VG_100K"
SPLITS = ("train", "val", "test")
# Images of image_data.json that the h5 file leaves out (unreadable in the VG release).
CORRUPTED_IMAGE_IDS = frozenset({1592, 1722, 4616, 4617})
_H5_SPLIT_FLAG = {"train": 0, "val": 0, "test": 2}
_H5_KEYS = (*PER_IMAGE_KEYS, "labels", "relationships", "predicates")
_LAYOUT = (
    f"<root>/{H5_FILE}, <root>/{DICTS_FILE}, <root>/{IMAGE_DATA_FILE} and <root>/{IMAGE_DIR}/"
    "<image_id>.jpg, with <root> = $DETECTRON2_DATASETS/vg (DETECTRON2_DATASETS defaults to "
    "'datasets'; the files are not downloadable here: use the generated vgsynth_* datasets to "
    "run without them)"
)


def vg150_files(root: str | os.PathLike) -> dict[str, Path]:
    """Paths of the VG150 files under ``root``: keys ``h5``, ``dicts``, ``image_data``,
    ``image_dir`` (nothing is checked)."""
    root = Path(root).expanduser()
    return {
        "h5": root / H5_FILE,
        "dicts": root / DICTS_FILE,
        "image_data": root / IMAGE_DATA_FILE,
        "image_dir": root / IMAGE_DIR,
    }


def _require(path: Path) -> Path:
    if not path.exists():
        raise MissingFileError(
            f"Visual Genome file {path.absolute()} not found; expected {_LAYOUT}"
        )
    return path


def _id_mapping(info: dict, key: str, path: Path) -> list[str]:
    """Names of ``info[key]`` (name -> id 1..K) in id order; ids must be exactly 1..K."""
    if key not in info:
        raise ConfigValueError(f"{path}: key {key!r} missing (expected a name -> id mapping)")
    mapping = info[key]
    ids = sorted(mapping.values())
    if ids != list(range(1, len(ids) + 1)):
        raise ConfigValueError(f"{path}: {key!r} ids must be 1..{len(ids)} without gaps")
    return sorted(mapping, key=mapping.get)


def load_vg150_classes(dicts_file: str | os.PathLike) -> dict[str, list[str]]:
    """Class names of ``VG-SGG-dicts-with-attri.json``, background excluded.

    The benchmark adds ``__background__`` = 0 to each mapping (151 object, 51 predicate slots);
    here object class ``k`` of the file (1..C) is detectron2's ``category_id`` ``k - 1`` and
    predicate id ``p`` (1..P) is ``predicate_classes[p - 1]``.

    Returns:
        ``{"thing_classes": [C names], "predicate_classes": [P names],
        "attribute_classes": [A names] (empty when the file has no attributes)}``.
    """
    path = _require(Path(dicts_file))
    info = json.loads(path.read_text())
    return {
        "thing_classes": _id_mapping(info, "label_to_idx", path),
        "predicate_classes": _id_mapping(info, "predicate_to_idx", path),
        "attribute_classes": (
            _id_mapping(info, "attribute_to_idx", path) if "attribute_to_idx" in info else []
        ),
    }


def decode_boxes(boxes: np.ndarray, max_side: np.ndarray | float, box_scale: int) -> np.ndarray:
    """(cx, cy, w, h) boxes at ``box_scale`` -> XYXY in original pixels.

    Args:
        boxes: (N, 4) centres and sizes with the image's longer side scaled to ``box_scale``.
        max_side: max(W, H) of each box's image, scalar or (N,).

    Returns:
        (N, 4) float64 ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2) * max_side / box_scale``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    xy1 = boxes[:, :2] - boxes[:, 2:] / 2
    xyxy = np.concatenate([xy1, xy1 + boxes[:, 2:]], axis=1)
    return xyxy * (np.asarray(max_side, dtype=np.float64).reshape(-1, 1) / box_scale)


def _read_h5(path: Path, box_scale: int) -> dict[str, np.ndarray]:
    import h5py

    keys = (*_H5_KEYS, f"boxes_{box_scale}")
    with h5py.File(_require(path), "r") as f:
        missing = [k for k in keys if k not in f]
        if missing:
            raise ConfigValueError(
                f"{path}: missing key(s) {missing} (has {sorted(f.keys())}); "
                "DATASETS.VG.BOX_SCALE selects boxes_<BOX_SCALE>"
            )
        h5 = {k: f[k][()] for k in keys}
    h5["boxes"] = h5.pop(f"boxes_{box_scale}").reshape(-1, 4)
    h5["labels"], h5["predicates"] = h5["labels"].reshape(-1), h5["predicates"].reshape(-1)
    h5["relationships"] = h5["relationships"].reshape(-1, 2)
    return h5


def _read_image_data(path: Path) -> list[dict]:
    """Entries of image_data.json without the corrupted images, in file (= h5) order."""
    entries = json.loads(_require(path).read_text())
    for i, e in enumerate(entries):
        if not all(isinstance(e.get(k), int) and e[k] > 0 for k in ("width", "height")):
            raise ConfigValueError(f"{path}: entry {i} (image_id {e.get('image_id')}) needs "
                                   f"positive integer width and height, got {e}")  # fmt: skip
    return [e for e in entries if int(e["image_id"]) not in CORRUPTED_IMAGE_IDS]


def _boxes_intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(R,) bool: XYXY boxes intersect with maskrcnn-benchmark's +1 pixel convention."""
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    return (w > 0) & (h > 0)


def load_vg150(
    root: str | os.PathLike,
    split: str,
    box_scale: int = 1024,
    num_val_images: int = 5000,
    filter_empty_relations: bool = True,
    filter_non_overlap: bool = False,
    invalid_annotations: str = "error",
) -> list[dict[str, Any]]:
    """Loads one VG150 split as detectron2 dataset dicts with relations.

    Steps, as the benchmark: h5 ``split`` 0 = train/val, 2 = test; images without boxes are
    dropped, and without relations too when ``filter_empty_relations``; ``val`` is the first
    ``num_val_images`` remaining train-split images and ``train`` the rest; for ``train`` only,
    ``filter_non_overlap`` drops relations whose boxes do not intersect (+1 pixel convention, at
    ``box_scale``) and then images left without relations. Duplicate predicates of a pair are kept
    (the training mapper samples one per load).

    Args:
        root: Folder holding the three files and ``VG_100K/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        box_scale: Selects ``boxes_<box_scale>`` (DATASETS.VG.BOX_SCALE).
        invalid_annotations: DATASETS.INVALID_ANNOTATIONS: a box lying outside its image
            (image_data.json size) is refused (``"error"``) or left out with its relations and
            a counted warning (``"drop"``); other problems are always refused.

    Returns:
        One dict per image: ``file_name``, ``image_id``, ``height``, ``width``, ``annotations``
        (``bbox`` XYXY_ABS pixels clipped to the image, ``bbox_mode``, ``category_id`` 0..C-1;
        all boxes of the image, in file order) and ``relations`` int64 (R, 3) rows
        (subject index, object index, predicate id 1..P) into ``annotations``.

    Raises:
        MissingFileError: A file or the image folder is absent.
        ConfigValueError: Bad or inconsistent content (names the file, image id and field).
    """
    from detectron2.structures import BoxMode

    if split not in SPLITS:
        raise ConfigValueError(f"VG150 split {split!r} unknown; expected one of {SPLITS}")
    files = vg150_files(root)
    classes = load_vg150_classes(files["dicts"])
    image_data = _read_image_data(files["image_data"])
    h5 = _read_h5(files["h5"], box_scale)
    _require(files["image_dir"])
    if len(image_data) != len(h5["split"]):
        raise ConfigValueError(
            f"{files['image_data']} lists {len(image_data)} images (corrupted ids "
            f"{sorted(CORRUPTED_IMAGE_IDS)} excluded) but {files['h5']} has {len(h5['split'])}"
        )
    image_ids = np.array([int(e["image_id"]) for e in image_data], dtype=np.int64)
    sizes = np.array([[e["width"], e["height"]] for e in image_data], dtype=np.int64).reshape(-1, 2)
    num_classes, num_preds = len(classes["thing_classes"]), len(classes["predicate_classes"])
    drop = check_vg150_arrays(h5, files["h5"], image_ids, num_classes, num_preds, sizes,
                              box_scale, invalid_annotations)  # fmt: skip
    if drop.any():
        h5 = drop_boxes(h5, drop)

    keep = (h5["split"] == _H5_SPLIT_FLAG[split]) & (h5["img_to_first_box"] >= 0)
    if filter_empty_relations:
        keep &= h5["img_to_first_rel"] >= 0
    images = np.flatnonzero(keep)
    if num_val_images < 0:
        raise ConfigValueError(f"DATASETS.VG.NUM_VAL_IMAGES must be >= 0, got {num_val_images}")
    if split == "val":
        images = images[:num_val_images]
    elif split == "train":
        if len(images) <= num_val_images:
            raise ConfigValueError(
                f"DATASETS.VG.NUM_VAL_IMAGES = {num_val_images} leaves no training images: "
                f"{files['h5']} has {len(images)} usable train-split images"
            )
        images = images[num_val_images:]

    first_box, last_box = h5["img_to_first_box"][images], h5["img_to_last_box"][images]
    box_rows = ranges_to_indices(first_box, last_box)
    box_counts = last_box - first_box + 1
    width = np.array([image_data[i]["width"] for i in images], dtype=np.float64)
    height = np.array([image_data[i]["height"] for i in images], dtype=np.float64)
    scaled = decode_boxes(h5["boxes"][box_rows], 1.0, 1)  # XYXY at box_scale
    pixels = scaled * np.repeat(np.maximum(width, height) / box_scale, box_counts)[:, None]
    limits = np.repeat(np.stack([width, height, width, height], 1), box_counts, axis=0)
    pixels = np.clip(pixels, 0, limits)

    has_rel = h5["img_to_first_rel"][images] >= 0
    first_rel = np.where(has_rel, h5["img_to_first_rel"][images], 0)
    rel_counts = np.where(has_rel, h5["img_to_last_rel"][images] - first_rel + 1, 0)
    rel_rows = ranges_to_indices(first_rel, first_rel + rel_counts - 1)
    rels = np.concatenate(
        [
            h5["relationships"][rel_rows] - np.repeat(first_box, rel_counts)[:, None],
            h5["predicates"][rel_rows, None],
        ],
        axis=1,
    ).astype(np.int64)
    if split == "train" and filter_non_overlap:
        rows = np.repeat(np.cumsum(box_counts) - box_counts, rel_counts)[:, None] + rels[:, :2]
        inter = _boxes_intersect(scaled[rows[:, 0]], scaled[rows[:, 1]])
        owner = np.repeat(np.arange(len(images)), rel_counts)
        rels, rel_counts = rels[inter], np.bincount(owner[inter], minlength=len(images))

    # Python lists once (tolist per image would dominate the loading time of the real file).
    box_list, labels = pixels.tolist(), (h5["labels"][box_rows].astype(np.int64) - 1).tolist()
    box_end, rel_end = np.cumsum(box_counts).tolist(), np.cumsum(rel_counts).tolist()
    ids, heights, widths = image_ids[images].tolist(), height.tolist(), width.tolist()
    image_dir = str(files["image_dir"])
    dicts = []
    for k in range(len(images)):
        rel_start = rel_end[k - 1] if k else 0
        if split == "train" and filter_non_overlap and rel_end[k] == rel_start:
            continue
        start = box_end[k - 1] if k else 0
        annotations = [
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": label}
            for box, label in zip(box_list[start : box_end[k]], labels[start : box_end[k]])
        ]
        dicts.append(
            {
                "file_name": f"{image_dir}{os.sep}{ids[k]}.jpg",
                "image_id": ids[k],
                "height": int(heights[k]),
                "width": int(widths[k]),
                "annotations": annotations,
                "relations": rels[rel_start : rel_end[k]],
            }
        )
    return dicts
