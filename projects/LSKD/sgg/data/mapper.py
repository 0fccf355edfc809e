"""Dataset mapper of scene-graph datasets: image, GT instances and relations for the model.

Unlike detectron2's ``DatasetMapper`` it keeps every annotation, in order, in training and at
test time (relation indices point into them; PredCls/SGCls take the GT boxes at test time), and
it never flips: a horizontal flip is refused rather than ignored, so that a config meant for
detection cannot silently train an SGG model under different augmentations than it says.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.logger import log_first_n

from distill.data.images import read_image_naming_file
from distill.errors import ConfigValueError


def filter_duplicate_relations(
    relations: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Keeps one relation per ordered (subject, object) pair, chosen uniformly at random.

    Args:
        relations: (R, 3) rows (subject, object, predicate).
        rng: Random generator; default numpy's global one, which the training loader seeds
            per sample from the run's seed and the iteration
            (:mod:`distill.data.resumable_loader`), so each load of an image draws anew.

    Returns:
        (R', 3) the kept rows, in their original order.
    """
    relations = np.asarray(relations).reshape(-1, 3)
    order = (
        rng.permutation(len(relations))
        if rng is not None
        else np.random.permutation(len(relations))
    )
    _, first = np.unique(relations[order, :2], axis=0, return_index=True)
    return relations[np.sort(order[first])]


class SceneGraphDatasetMapper:
    """Maps a scene-graph dataset dict (see :func:`sgg.data.load_vg150`) to the model's input.

    Output: the dict's ``file_name``, ``image_id``, ``height``, ``width`` (original size, the
    frame of the model's outputs), plus ``image`` uint8 tensor (C, H, W) after resizing,
    ``instances`` (``gt_boxes`` in resized pixels, ``gt_classes``; every annotation in order)
    and ``relations`` LongTensor (R, 3) (subject, object, predicate id 1..P). In training with
    ``filter_duplicate_relations``, one predicate per ordered pair is drawn at each load.
    An image that cannot be read or decoded raises ``InvalidDataError`` naming its file.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str,
        filter_duplicate_relations: bool = True,
    ):
        """
        Args:
            is_train: Training (duplicate filtering applies) or inference.
            augmentations: detectron2 augmentations (resizing; no flip).
            image_format: Decoding format of the image, as cfg.INPUT.FORMAT.
            filter_duplicate_relations: Training: one random predicate per ordered pair.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.filter_duplicates = filter_duplicate_relations and is_train

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        """``ResizeShortestEdge`` from INPUT.MIN_SIZE_*/MAX_SIZE_*; INPUT.RANDOM_FLIP must be
        "none" in training (flips would need flipped predicates, which VG lacks)."""
        if is_train and cfg.INPUT.RANDOM_FLIP != "none":
            raise ConfigValueError(
                f"INPUT.RANDOM_FLIP = {cfg.INPUT.RANDOM_FLIP!r}: scene-graph training does not "
                "flip images (the benchmark disables flips); set INPUT.RANDOM_FLIP none"
            )
        if is_train:
            sizes = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
            resize = T.ResizeShortestEdge(*sizes, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        else:
            resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        return {
            "is_train": is_train,
            "augmentations": [resize],
            "image_format": cfg.INPUT.FORMAT,
            "filter_duplicate_relations": cfg.DATASETS.VG.FILTER_DUPLICATE_RELATIONS,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image_naming_file(d["file_name"], self.image_format, d.get("image_id"))
        height, width = d["height"], d["width"]
        if image.shape[:2] != (height, width):
            # A few VG image_data.json sizes are wrong; the boxes are in the recorded frame.
            log_first_n(
                logging.WARNING,
                f"{d['file_name']}: image is {image.shape[1]}x"
                f"{image.shape[0]}, image_data says {width}x{height}; resizing it",
                n=10,
            )
            image = T.ResizeTransform(*image.shape[:2], height, width).apply_image(image)
        annotations = d.pop("annotations", [])
        boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        for mode in {a["bbox_mode"] for a in annotations} - {BoxMode.XYXY_ABS}:
            rows = [i for i, a in enumerate(annotations) if a["bbox_mode"] == mode]
            boxes[rows] = BoxMode.convert(boxes[rows], mode, BoxMode.XYXY_ABS)
        classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        relations = np.asarray(d.get("relations", np.zeros((0, 3))), dtype=np.int64)
        relations = relations.reshape(-1, 3)
        bad = (relations[:, :2] < 0).any(1) | (relations[:, :2] >= len(boxes)).any(1)
        if bad.any() or (relations[:, 2] < 1).any():
            raise ConfigValueError(
                f"image_id {d.get('image_id')}: relations {relations.tolist()} "
                f"invalid for {len(boxes)} annotations (predicate ids start at 1)"
            )
        if self.filter_duplicates:
            relations = filter_duplicate_relations(relations)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        instances = Instances(image.shape[:2])
        instances.gt_boxes = Boxes(
            torch.as_tensor(transforms.apply_box(boxes), dtype=torch.float32)
        )
        instances.gt_boxes.clip(image.shape[:2])
        instances.gt_classes = torch.as_tensor(classes)
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d["instances"] = instances
        d["relations"] = torch.as_tensor(relations)
        return d
