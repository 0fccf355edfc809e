"""Dataset kinds beyond COCO-style detection: the dataset mapper and evaluator of each.

A project whose datasets need their own mapper (e.g. scene graphs, which keep relations and
every box) and evaluator registers them under its datasets' ``MetadataCatalog`` key
``evaluator_type``; :class:`distill.engine.DistillTrainer` then builds the train loader, the test
loaders and the evaluators of those datasets with them. Datasets of other types get detectron2's
``DatasetMapper`` and ``COCOEvaluator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode


@dataclass(frozen=True)
class DatasetTask:
    """How to map and evaluate the datasets of one ``evaluator_type``.

    Attributes:
        mapper: ``mapper(cfg, is_train)`` -> a dataset mapper (callable on a dataset dict).
        evaluator: ``evaluator(cfg, dataset_name, output_folder)`` -> a ``DatasetEvaluator``.
        configure: optional ``configure(cfg)``, applying the config's dataset options (e.g.
            filters) to the registered loaders before any dataset dict is loaded.
    """

    mapper: Callable[[CfgNode, bool], Callable[[dict], Any]]
    evaluator: Callable[[CfgNode, str, str], Any]
    configure: Callable[[CfgNode], None] | None = None


DATASET_TASKS: dict[str, DatasetTask] = {}


def register_dataset_task(evaluator_type: str, task: DatasetTask) -> None:
    """Use ``task`` for every dataset whose metadata ``evaluator_type`` is this one."""
    DATASET_TASKS[evaluator_type] = task


def dataset_task(dataset_name: str) -> DatasetTask | None:
    """The registered task of a dataset, or None (COCO-style detection)."""
    from detectron2.data import MetadataCatalog

    return DATASET_TASKS.get(MetadataCatalog.get(dataset_name).get("evaluator_type", ""))


def dataset_mapper(cfg: CfgNode, dataset_name: str, is_train: bool) -> Callable[[dict], Any]:
    """The mapper of the dataset's task, else detectron2's ``DatasetMapper``, wrapped so that an
    unreadable or truncated image fails naming its file (:class:`ImageErrorNamingMapper`)."""
    from detectron2.data import DatasetMapper

    from distill.data.images import ImageErrorNamingMapper

    task = dataset_task(dataset_name)
    mapper = task.mapper(cfg, is_train) if task is not None else DatasetMapper(cfg, is_train)
    return ImageErrorNamingMapper(mapper)


def configure_dataset_tasks(cfg: CfgNode) -> None:
    """Apply ``cfg`` to the loaders of every registered task, and make the COCO-format datasets
    of DATASETS.TRAIN / TEST check their annotations when loaded with
    DATASETS.INVALID_ANNOTATIONS (:mod:`distill.data.checked_coco`). Idempotent."""
    from distill.data.checked_coco import check_coco_annotations_of

    check_coco_annotations_of(cfg)
    for task in DATASET_TASKS.values():
        if task.configure is not None:
            task.configure(cfg)
