"""Scene-graph evaluation as a detectron2 :class:`DatasetEvaluator` (Scene-Graph-Benchmark rules).

``process`` matches each image's predicted scene graph to its GT relations right away and keeps
only two small rank arrays per image (see :mod:`sgg.evaluation.matching`); ``evaluate`` gathers
them on the main process and computes R@K, ngR@K, mR@K, ng-mR@K, zR@K, ng-zR@K, the trade-off
summaries and the head/body/tail mR (see :mod:`sgg.evaluation.metrics`), all in percent (0-100).

The class conventions are checked on the way in (:mod:`sgg.evaluation.labels`): object classes
0..C-1 and predicate ids 1..P in the ground truth, the training split and the predictions, with C
and P from the dataset's metadata; any other convention is refused, naming the input, the image,
the field and both ranges, instead of silently scoring 0.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from distill.errors import ConfigKeyError, ConfigValueError
from sgg.evaluation.inputs import (
    ImageGT,
    graph_from_dataset_dict,
    gt_from_dataset_dict,
    prediction_from_output,
)
from sgg.evaluation.matching import ImageMatches, match_image
from sgg.evaluation.metrics import (
    TrainStatistics,
    compute_recalls,
    group_mean_recalls,
    predicate_groups,
    summary_metrics,
    triplet_keys,
)
from sgg.evaluation.report import format_tables

# the benchmark's values of TEST.RELATION.* (sgg/config.py), used without a cfg
_DEFAULTS = {
    "TOPK": (20, 50, 100),
    "IOU_THRESHOLD": 0.5,
    "IOU_PLUS_ONE": True,
    "HEAD_MIN": 10000,
    "TAIL_MAX": 500,
    "NO_GRAPH_PREDICATES_PER_PAIR": 0,
}
NO_GRAPH_CANDIDATES = 100  # (pair, predicate) candidates ranked per image for ngR (the benchmark)
# metrics that need the training statistics, and what each needs
_NEEDS_STATISTICS = (
    "zR@K and ng-zR@K need the (subject class, object class, predicate) triplets seen in training; "
    "mR@K_head/body/tail need the training relations per predicate"
)


def _setting(cfg: Any, explicit: Any, key: str) -> Any:
    """An explicit argument, else ``cfg.TEST.RELATION.<key>``, else the benchmark default."""
    if explicit is not None:
        return explicit
    if cfg is not None:
        return cfg.TEST.RELATION[key]
    return _DEFAULTS[key]


def _class_count(
    dataset_name: str, names: list, meta_key: str, explicit: int | None, cfg: Any, cfg_key: str,
    arg_name: str,
) -> int:  # fmt: skip
    """C or P: ``explicit``, else ``len(names)`` (the metadata's class names), else
    ``cfg.MODEL.ROI_RELATION_HEAD.<cfg_key>``; the metadata, when it has names, must agree with
    the other two (a model of another class count, or another convention, would match nothing).
    """
    cfg_name = f"MODEL.ROI_RELATION_HEAD.{cfg_key}"
    if explicit is not None:
        count, source = int(explicit), f"the argument {arg_name}"
    elif names:
        count, source = len(names), f"metadata {meta_key}"
    elif cfg is not None:
        count, source = int(cfg.MODEL.ROI_RELATION_HEAD[cfg_key]), cfg_name
    else:
        raise ConfigKeyError(
            f"SceneGraphEvaluator: metadata of '{dataset_name}' has no {meta_key}; "
            f"pass {arg_name} or a cfg"
        )
    if count < 1:
        raise ConfigValueError(f"SceneGraphEvaluator: {source} must be positive: {count}")
    if names and len(names) != count:
        raise ConfigValueError(
            f"SceneGraphEvaluator: '{dataset_name}' has {len(names)} {meta_key} but {count} are "
            f"evaluated ({source})"
        )
    if explicit is None and cfg is not None and names:
        model = int(cfg.MODEL.ROI_RELATION_HEAD[cfg_key])
        if model != len(names):
            raise ConfigValueError(
                f"SceneGraphEvaluator: {cfg_name} is {model} but '{dataset_name}' has "
                f"{len(names)} {meta_key}: the model's classes and the dataset's do not match"
            )
    return count


class SceneGraphEvaluator(DatasetEvaluator):
    """Scene-graph recalls of a relation model on a registered scene-graph dataset.

    The GT comes from ``DatasetCatalog.get(dataset_name)`` (original pixel boxes, all relations),
    keyed by ``image_id``; the training statistics (seen triplets for zR, predicate counts for the
    head/body/tail groups) from the dataset named by the metadata's ``sgg_train_dataset`` or by
    ``train_dataset``; without one, zR and the groups are not reported (a warning per
    evaluation says so, and ``sgg_evaluation.json`` lists them under ``"not_reported"``). Images
    without GT relations are skipped, and so are images without predicted pairs (the benchmark's
    rule). Every metric is in percent (0-100).
    """

    def __init__(
        self,
        dataset_name: str,
        cfg: Any = None,
        *,
        topk: Sequence[int] | None = None,
        iou_threshold: float | None = None,
        iou_plus_one: bool | None = None,
        head_min: int | None = None,
        tail_max: int | None = None,
        no_graph_predicates_per_pair: int | None = None,
        num_predicates: int | None = None,
        num_classes: int | None = None,
        train_dataset: str | None = None,
        output_dir: str | None = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset whose dicts carry ``"relations"``.
            cfg: a config with ``TEST.RELATION.*`` (``sgg.add_sgg_config``); explicit arguments
                override it; without both, the benchmark's defaults.
            topk: the K of every metric (TEST.RELATION.TOPK).
            iou_threshold: subject and object IoU must both reach it (TEST.RELATION.IOU_THRESHOLD).
            iou_plus_one: +1-pixel IoU convention (TEST.RELATION.IOU_PLUS_ONE).
            head_min, tail_max: predicate groups by training count (TEST.RELATION.HEAD_MIN /
                TAIL_MAX): head > head_min, tail < tail_max, body otherwise.
            no_graph_predicates_per_pair: the candidate predicates of each pair (its best)
                for ngR@K, ng-mR@K and ng-zR@K; 0 = all P, the benchmark's
                (TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR). The best 100 (pair, predicate)
                candidates of an image are ranked, as in the benchmark.
            num_predicates: P; default: the metadata's ``predicate_classes``, else
                ``cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES``. GT and training predicate ids
                must lie in 1..P, ``rel_scores`` have P + 1 columns.
            num_classes: C; default: the metadata's ``thing_classes``, else
                ``cfg.MODEL.ROI_RELATION_HEAD.NUM_CLASSES``. GT, training and predicted object
                classes must lie in 0..C-1. With a cfg, its class counts must equal the
                metadata's.
            train_dataset: the training split for the statistics; default: the metadata's
                ``sgg_train_dataset``.
            output_dir: where ``sgg_evaluation.json`` is written (None: not written).
            distributed: gather the results of all processes (only the main one returns them).
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._topk = tuple(int(k) for k in _setting(cfg, topk, "TOPK"))
        if not self._topk or min(self._topk) < 1:
            raise ConfigValueError(f"TEST.RELATION.TOPK must be positive integers: {self._topk}")
        self._iou_threshold = float(_setting(cfg, iou_threshold, "IOU_THRESHOLD"))
        if not 0.0 < self._iou_threshold <= 1.0:
            raise ConfigValueError(
                f"TEST.RELATION.IOU_THRESHOLD must lie in (0, 1]: {self._iou_threshold}"
            )
        self._iou_plus_one = bool(_setting(cfg, iou_plus_one, "IOU_PLUS_ONE"))
        self._head_min = int(_setting(cfg, head_min, "HEAD_MIN"))
        self._tail_max = int(_setting(cfg, tail_max, "TAIL_MAX"))
        per_pair = _setting(cfg, no_graph_predicates_per_pair, "NO_GRAPH_PREDICATES_PER_PAIR")
        self._ng_per_pair = int(per_pair)
        if max(self._topk) > NO_GRAPH_CANDIDATES:
            self._logger.warning(
                f"TEST.RELATION.TOPK {self._topk}: ngR@K, ng-mR@K and ng-zR@K for K above "
                f"{NO_GRAPH_CANDIDATES} equal those @{NO_GRAPH_CANDIDATES} (the benchmark ranks "
                f"{NO_GRAPH_CANDIDATES} no-graph-constraint candidates per image)"
            )
        self._output_dir = output_dir
        self._distributed = distributed

        meta = MetadataCatalog.get(dataset_name)
        names = list(meta.get("predicate_classes", []))
        if names and names[0] in ("__background__", "background"):
            names = names[1:]
        self._num_predicates = _class_count(
            dataset_name, names, "predicate_classes", num_predicates, cfg, "NUM_PREDICATES",
            "num_predicates",
        )  # fmt: skip
        self._num_classes = _class_count(
            dataset_name, list(meta.get("thing_classes", [])), "thing_classes", num_classes, cfg,
            "NUM_CLASSES", "num_classes",
        )  # fmt: skip
        if not 0 <= self._ng_per_pair <= self._num_predicates:
            raise ConfigValueError(
                f"TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR must lie in 0..{self._num_predicates}"
                f" (candidate predicates per pair; 0 = all, the benchmark): {self._ng_per_pair}"
            )
        self._predicate_names = names or [str(i) for i in range(1, self._num_predicates + 1)]
        self._train_dataset = train_dataset or meta.get("sgg_train_dataset", None)
        if self._train_dataset and self._train_dataset not in DatasetCatalog.list():
            how = "train_dataset" if train_dataset else f"'{dataset_name}' sgg_train_dataset"
            raise ConfigKeyError(
                f"SceneGraphEvaluator: the training split '{self._train_dataset}' ({how}) is not "
                "a registered dataset"
            )
        self._gt = self._load_gt(dataset_name)
        self._stats: TrainStatistics | None = None
        self.reset()

    def _load_gt(self, dataset_name: str) -> dict[Any, ImageGT]:
        gt = {}
        for record in DatasetCatalog.get(dataset_name):
            image_id = record["image_id"]
            if image_id in gt:
                raise ConfigValueError(f"{dataset_name}: image_id {image_id} occurs twice")
            gt[image_id] = gt_from_dataset_dict(
                record, self._num_predicates, dataset_name, num_classes=self._num_classes
            )
        return gt

    def reset(self) -> None:
        # per image: (image_id, ImageMatches) or (image_id, None) when it had no predicted pair
        self._records: list[tuple[Any, ImageMatches | None]] = []
        self._num_no_relations = 0

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Match each image's outputs to its GT and keep the (R,) match ranks."""
        for inp, out in zip(inputs, outputs, strict=True):
            image_id = inp["image_id"]
            gt = self._gt.get(image_id)
            if gt is None:
                raise ConfigKeyError(
                    f"SceneGraphEvaluator: image {image_id} is not in '{self._dataset_name}'"
                )
            if len(gt.relations) == 0:
                self._num_no_relations += 1
                continue
            pred = prediction_from_output(
                out, self._num_predicates, image_id, num_classes=self._num_classes
            )
            if len(pred.pair_idxs) == 0:
                self._records.append((image_id, None))
                continue
            matches = match_image(
                gt.boxes,
                gt.labels,
                gt.relations,
                pred.boxes,
                pred.labels,
                pred.scores,
                pred.pair_idxs,
                pred.rel_scores,
                max_k=max(self._topk),
                num_candidates=NO_GRAPH_CANDIDATES,
                predicates_per_pair=self._ng_per_pair,
                iou_threshold=self._iou_threshold,
                iou_plus_one=self._iou_plus_one,
            )
            self._records.append((image_id, matches))

    def _train_statistics(self) -> TrainStatistics | None:
        """Seen triplets and predicate counts of the training split (checked), loaded once."""
        if self._stats is None and self._train_dataset:
            where = f"training split '{self._train_dataset}'"
            graphs = (
                graph_from_dataset_dict(r, self._num_classes, self._num_predicates, where)
                for r in DatasetCatalog.get(self._train_dataset)
            )
            self._stats = TrainStatistics.from_graphs(graphs, self._num_predicates)
        return self._stats

    def _not_reported_reason(self) -> str:
        """Why zR and the head/body/tail groups are missing, and how to get them."""
        return (
            f"SceneGraphEvaluator: zR@K, ng-zR@K and mR@K_head/body/tail of "
            f"'{self._dataset_name}' are not reported: no training split is known, and "
            f"{_NEEDS_STATISTICS}. Register the training split and set "
            f"MetadataCatalog.get('{self._dataset_name}').sgg_train_dataset to its name, or pass "
            "train_dataset= to SceneGraphEvaluator."
        )

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Gather, compute the metrics (percent), log them, write the JSON; ``{"sgg": {...}}``."""
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather((self._records, self._num_no_relations), dst=0)
            if not comm.is_main_process():
                return {}
            records = list(itertools.chain(*(g[0] for g in gathered)))
            num_no_relations = sum(g[1] for g in gathered)
        else:
            records, num_no_relations = self._records, self._num_no_relations
        if not records and not num_no_relations:
            self._logger.warning("[SceneGraphEvaluator] Did not receive valid predictions.")
            return {}

        unique: dict[Any, ImageMatches | None] = {}
        for image_id, matches in records:  # the first record of an image wins
            unique.setdefault(image_id, matches)
        if len(unique) < len(records):
            self._logger.warning(f"{len(records) - len(unique)} images were evaluated twice")
        matched = {i: m for i, m in unique.items() if m is not None}
        num_no_pred = len(unique) - len(matched)
        rels = [self._gt[i].relations for i in matched]
        stats = self._train_statistics()
        not_reported = None
        if stats is None:
            not_reported = self._not_reported_reason()
            self._logger.warning(not_reported)
        zeroshot = None
        if stats is not None:
            keys = [triplet_keys(self._gt[i].labels, r) for i, r in zip(matched, rels)]
            zeroshot = stats.zeroshot_masks(keys)
        recalls = compute_recalls(
            [r[:, 2] for r in rels], list(matched.values()), self._num_predicates, self._topk,
            zeroshot,
        )  # fmt: skip

        metrics = dict(recalls.scalars)
        metrics.update(summary_metrics(metrics, self._topk))
        groups = None
        if stats is not None:
            groups = predicate_groups(stats.predicate_counts, self._head_min, self._tail_max)
            metrics.update(group_mean_recalls(recalls.per_predicate, groups))

        counts = {
            "num_images": recalls.num_images,
            "num_skipped_no_relations": num_no_relations,
            "num_skipped_no_predictions": num_no_pred,
            "num_zeroshot_images": recalls.num_zeroshot_images,
        }
        train_counts = None if stats is None else stats.predicate_counts[1:]
        text = format_tables(metrics, recalls, self._topk, self._predicate_names, train_counts)
        if not_reported:
            text += "\nzR, ng-zR and head/body/tail mR: not reported (no training statistics)"
        self._logger.info(f"Scene-graph evaluation of '{self._dataset_name}' ({counts}):\n{text}")
        if self._output_dir:
            self._write_json(metrics, recalls, counts, groups, not_reported)
        return {"sgg": metrics}

    def _write_json(self, metrics, recalls, counts, groups, not_reported) -> None:
        per_predicate = {
            name: {k: float(v[i]) for k, v in recalls.per_predicate.items()}
            for i, name in enumerate(self._predicate_names)
        }
        settings = {
            "dataset": self._dataset_name,
            "train_dataset": self._train_dataset,
            "topk": list(self._topk),
            "iou_threshold": self._iou_threshold,
            "iou_plus_one": self._iou_plus_one,
            "head_min": self._head_min,
            "tail_max": self._tail_max,
            "no_graph_predicates_per_pair": self._ng_per_pair,
            "no_graph_candidates": NO_GRAPH_CANDIDATES,
            "num_classes": self._num_classes,
            "num_predicates": self._num_predicates,
        }
        out = {
            "unit": "percent",
            "metrics": metrics,
            "per_predicate": per_predicate,
            **counts,
            "settings": settings,
        }
        if not_reported:
            out["not_reported"] = {
                "metrics": ["zR@K", "ng-zR@K", "mR@K_head", "mR@K_body", "mR@K_tail"],
                "reason": not_reported,
            }
        if groups is not None:
            out["groups"] = {
                g: [self._predicate_names[i - 1] for i in ids] for g, ids in groups.items()
            }
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, "sgg_evaluation.json")
        with PathManager.open(path, "w") as f:
            json.dump(out, f, indent=2)
        self._logger.info(f"Wrote {path}")
