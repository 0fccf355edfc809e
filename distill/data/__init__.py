"""Datasets: the seeded synthetic "embedded" COCO dataset and detectron2 registration helpers.

Importing this package generates nothing: the embedded dataset is generated (into the cache)
the first time it is loaded through detectron2's ``DatasetCatalog`` or
:func:`ensure_embedded_dataset` is called. detectron2 is only imported by the functions of
:mod:`distill.data.register` and :mod:`distill.data.checked_coco` that need it.
"""

from distill.data.annotation_checks import find_invalid_annotations
from distill.data.cache import ensure_generated_folder
from distill.data.register import (
    EMBEDDED_DATASET_NAMES,
    annotated_input,
    check_builtin_dataset_root,
    check_datasets,
    register_embedded_datasets,
)
from distill.data.synthetic_coco import (
    DATASET_VERSION,
    EMBEDDED_CLASSES,
    default_cache_root,
    embedded_dataset_paths,
    ensure_embedded_dataset,
    generate_coco_split,
)

__all__ = [
    "DATASET_VERSION",
    "EMBEDDED_CLASSES",
    "EMBEDDED_DATASET_NAMES",
    "annotated_input",
    "check_builtin_dataset_root",
    "check_datasets",
    "default_cache_root",
    "embedded_dataset_paths",
    "ensure_embedded_dataset",
    "ensure_generated_folder",
    "find_invalid_annotations",
    "generate_coco_split",
    "register_embedded_datasets",
]
