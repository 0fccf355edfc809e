"""detectron2 registration of the embedded dataset, and a clear error for missing real COCO.

detectron2 is imported inside the functions, so importing this module stays cheap and works
before detectron2 is installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

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


def register_embedded_datasets(
    root: str | os.PathLike | None = None,
    num_images: dict[str, int] | None = None,
    name_prefix: str = "embedded_coco",
) -> list[str]:
    """Registers ``embedded_coco_train`` / ``embedded_coco_val`` lazily in detectron2.

    Nothing is generated here: the ``DatasetCatalog`` loader calls
    :func:`ensure_embedded_dataset` (which generates into the cache on first use) and then
    ``load_coco_json``. ``MetadataCatalog`` gets ``thing_classes``, ``evaluator_type="coco"`` and
    the deterministic future ``json_file`` / ``image_root`` (COCOEvaluator reads ``json_file``
    when constructed, which detectron2's trainers do after building the test loader, i.e. after
    generation). Idempotent: names that are already registered are skipped.

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
        DatasetCatalog.register(name, partial(_load, resolved_root, num_images, name, split))
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


def check_builtin_dataset_root(dataset_names: str | Iterable[str]) -> None:
    """Checks that the files of detectron2 builtin datasets (e.g. ``coco_2017_train``) exist.

    Paths come from ``MetadataCatalog`` as set by detectron2's builtin registration, which
    resolves them under ``$DETECTRON2_DATASETS`` (default ``datasets``) when detectron2 is first
    imported. Embedded and other non-builtin names without path metadata are skipped.

    Args:
        dataset_names: One name or several.

    Raises:
        ConfigKeyError: (a ``KeyError``) A name is not registered in ``DatasetCatalog``.
        MissingFileError: (a ``FileNotFoundError``) Naming the dataset, the missing
            annotation file / image directory and the environment variable to set.
    """
    import detectron2.data.datasets  # noqa: F401  (registers the builtin datasets)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            raise ConfigKeyError(
                f"DATASETS: {name!r} is not registered in detectron2's DatasetCatalog"
            )
        meta = MetadataCatalog.get(name)
        if getattr(meta, "embedded", False):  # generated on first load
            continue
        expected = {k: getattr(meta, k) for k in _PATH_KEYS if hasattr(meta, k)}
        missing = {k: p for k, p in expected.items() if p and not os.path.exists(p)}
        if missing:
            described = ", ".join(
                f"{k} {os.path.abspath(p)}" + (" (missing)" if k in missing else " (found)")
                for k, p in expected.items()
            )
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise MissingFileError(
                f"Dataset '{name}' not found: {described}. Set DETECTRON2_DATASETS (now "
                f"{root!r}, read when detectron2 is imported) to the folder that holds e.g. "
                "coco/annotations/ and coco/train2017/, or use the embedded datasets "
                f"{' / '.join(EMBEDDED_DATASET_NAMES)}, which need no download."
            )


def annotated_input(cfg, dataset: str, index: int = 0) -> dict:
    """Image ``index`` of ``dataset`` with its ground truth, resized as at test time."""
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.data import transforms as T

    records = [r for r in DatasetCatalog.get(dataset) if r.get("annotations")]
    if not 0 <= index < len(records):
        raise IndexError(f"{dataset} has {len(records)} annotated images; got index {index}")
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    mapper = DatasetMapper(is_train=True, augmentations=[resize], image_format=cfg.INPUT.FORMAT)
    return mapper(records[index])
