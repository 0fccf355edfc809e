"""How ``tools/train_net.py`` (``DistillTrainer``) maps and evaluates the scene-graph datasets
(metadata ``evaluator_type == "sgg"``): relations and every box kept by the dataset mapper, the
scene-graph evaluator for scene-graph models, COCO box AP for a plain detector trained on them.
"""

from __future__ import annotations

from detectron2.modeling import META_ARCH_REGISTRY

from distill.data.tasks import DatasetTask, register_dataset_task

EVALUATOR_TYPE = "sgg"


def build_mapper(cfg, is_train: bool):
    """The scene-graph dataset mapper (boxes, labels and relations, never flipped)."""
    from sgg.data.mapper import SceneGraphDatasetMapper

    return SceneGraphDatasetMapper(cfg, is_train)


def build_evaluator(cfg, dataset_name: str, output_folder: str):
    """``SceneGraphEvaluator`` for a scene-graph model, ``COCOEvaluator`` (box AP) for the
    detector of step 1."""
    from detectron2.evaluation import COCOEvaluator

    from sgg.evaluation import SceneGraphEvaluator
    from sgg.modeling import SceneGraphRCNN

    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if issubclass(arch, SceneGraphRCNN):
        return SceneGraphEvaluator(dataset_name, cfg, output_dir=output_folder)
    return COCOEvaluator(dataset_name, output_dir=output_folder)


def configure(cfg) -> None:
    """``DATASETS.VG.*`` for the VG-format loaders."""
    from sgg.data import configure_vg_datasets

    configure_vg_datasets(cfg)


register_dataset_task(
    EVALUATOR_TYPE,
    DatasetTask(mapper=build_mapper, evaluator=build_evaluator, configure=configure),
)
