"""detectron2 registration of the embedded dataset, and up-front checks of a run's datasets
(registered, files present) with a clear error for missing real COCO.

detectron2 is imported inside the functions, so importing this module stays cheap and works
before detectron2 is installed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from distill.data.checked_coco import CheckedCocoLoader, check_mode
from distill.data.synthetic_coco import (
    DEFAULT_NUM_IMAGES,
    EMBEDDED_CLASSES,
    embedded_dataset_paths,
    ensure_embedded_dataset,
)
from distill.errors import ConfigKeyError, MissingFileError

EMBEDDED_DATASET_NAMES = ("embedded_coco_train", "embedded_coco_val")
# Metadata keys that builtin detectron2 datasets use for files/folders that must exist.
_PATH_KEYS = (
    "json_file", "image_root", "image_dir", "gt_dir", "dirname",
    "panoptic_root", "panoptic_json", "sem_seg_root",
)  # fmt: skip
# Metadata key of other datasets: a list of files/folders that must exist before loading.
REQUIRED_PATHS_KEY = "required_paths"


def register_embedded_datasets(
    root: str | os.PathLike | None = None,
    num_images: dict[str, int] | None = None,
    name_prefix: str = "embedded_coco",
) -> list[str]:
    """Registers ``embedded_coco_train`` / ``embedded_coco_val`` lazily in detectron2.

    Nothing is generated here: the ``DatasetCatalog`` loader calls
    :func:`ensure_embedded_dataset` (which generates into the cache on first use) and then
    ``load_coco_json``, checking the annotations as it parses them
    (:class:`~distill.data.checked_coco.CheckedCocoLoader`). ``MetadataCatalog`` gets
    ``thing_classes``, ``evaluator_type="coco"`` and the deterministic future ``json_file`` /
    ``image_root`` (COCOEvaluator reads ``json_file`` when constructed, which detectron2's
    trainers do after building the test loader, i.e. after generation). Idempotent: names
    that are already registered are skipped.

    Args:
        root: Cache root; resolved now (``$DISTILL_CACHE`` or ``~/.cache/distill`` by default)
            so later changes of the environment cannot split metadata and data.
        num_images: Images per split (default 240 train / 60 val); one dataset per split.
        name_prefix: Datasets are named ``<name_prefix>_<split>`` (e.g. for tiny test sets).

    Returns:
        The names registered by this call.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    num_images = dict(DEFAULT_NUM_IMAGES if num_images is None else num_images)
    paths = embedded_dataset_paths(root, num_images=num_images)
    resolved_root = Path(paths["dataset_dir"]).parent
    registered = []
    for split, count in num_images.items():
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        load = partial(_load, resolved_root, num_images, name, split)
        DatasetCatalog.register(name, CheckedCocoLoader(load, paths[split]["json_file"]))
        MetadataCatalog.get(name).set(
            thing_classes=list(EMBEDDED_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(EMBEDDED_CLASSES))},
            json_file=paths[split]["json_file"],
            image_root=paths[split]["image_root"],
            evaluator_type="coco",
            embedded=True,  # generated on first load: check_builtin_dataset_root skips it
            num_images=count,
        )
        registered.append(name)
    return registered


def _load(root: Path, num_images: dict[str, int], name: str, split: str) -> list[dict[str, Any]]:
    from detectron2.data.datasets import load_coco_json

    paths = ensure_embedded_dataset(root, num_images=num_images)
    return load_coco_json(paths[split]["json_file"], paths[split]["image_root"], name)


def check_builtin_dataset_root(dataset_names: str | Iterable[str], key: str = "DATASETS") -> None:
    """Checks that the named datasets are registered and the files they need exist.

    Paths come from ``MetadataCatalog``: those detectron2's builtin registration sets (e.g.
    ``json_file`` and ``image_root`` of ``coco_2017_train``, resolved under
    ``$DETECTRON2_DATASETS`` (default ``datasets``) when detectron2 is first imported), and the
    list ``required_paths`` that other registrations set (e.g. the VG150 files). Embedded
    datasets (generated on first load) and names without path metadata are skipped.

    Args:
        dataset_names: One name or several.
        key: The config key that named them, for the messages (e.g. ``DATASETS.TEST``).

    Raises:
        ConfigKeyError: (a ``KeyError``) A name is not registered in ``DatasetCatalog``; the
            message names ``key`` and the registered names closest to it.
        MissingFileError: (a ``FileNotFoundError``) Naming the dataset, every expected file /
            folder (missing or found) and the environment variable to set.
    """
    import detectron2.data.datasets  # noqa: F401  (registers the builtin datasets)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    for name in dataset_names:
        if name not in DatasetCatalog:
            close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigKeyError(
                f"{key}: {name!r} is not registered in detectron2's DatasetCatalog{hint}"
            )
        meta = MetadataCatalog.get(name)
        if getattr(meta, "embedded", False):  # generated on first load
            continue
        expected = [(k, getattr(meta, k)) for k in _PATH_KEYS if hasattr(meta, k)]
        expected += [(REQUIRED_PATHS_KEY, p) for p in meta.get(REQUIRED_PATHS_KEY, [])]
        if any(p and not os.path.exists(p) for _, p in expected):
            described = ", ".join(
                f"{k} {os.path.abspath(p)}" + (" (found)" if os.path.exists(p) else " (missing)")
                for k, p in expected
                if p
            )
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise MissingFileError(
                f"{key}: dataset '{name}' not found: {described}. Set DETECTRON2_DATASETS (now "
                f"{root!r}, read when detectron2 is imported) to the folder that holds e.g. "
                "coco/annotations/ and coco/train2017/, or use the embedded datasets "
                f"{' / '.join(EMBEDDED_DATASET_NAMES)}, which need no download."
            )


def check_datasets(cfg) -> None:
    """Checks before anything is built that every dataset of DATASETS.TRAIN and DATASETS.TEST
    is registered and its files exist (:func:`check_builtin_dataset_root`), and that
    DATASETS.INVALID_ANNOTATIONS is valid, so that a wrong test set fails at start, not after
    training. Reads no dataset.

    Raises:
        ConfigKeyError: A name is not registered (the message names the key, e.g.
            ``DATASETS.TEST``).
        MissingFileError: A file of a dataset is missing.
        ConfigValueError: DATASETS.INVALID_ANNOTATIONS is neither "error" nor "drop".
    """
    check_mode(cfg.DATASETS.get("INVALID_ANNOTATIONS", "error"))
    for key in ("TRAIN", "TEST"):
        check_builtin_dataset_root(list(cfg.DATASETS[key]), key=f"DATASETS.{key}")


def annotated_input(cfg, dataset: str, index: int = 0) -> dict:
    """Image ``index`` of ``dataset`` with its ground truth, resized as at test time."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    from distill.data.images import ImageErrorNamingMapper

    records = [r for r in DatasetCatalog.get(dataset) if r.get("annotations")]
    if not 0 <= index < len(records):
        raise IndexError(f"{dataset} has {len(records)} annotated images; got index {index}")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    mapper = DatasetMapper(is_train=True, augmentations=[resize], image_format=cfg.INPUT.FORMAT)
    return ImageErrorNamingMapper(mapper)(records[index])
