"""Scene-graph evaluation with the Scene-Graph-Benchmark protocol: R@K, ngR@K, mR@K, ng-mR@K,
zR@K, ng-zR@K, trade-off summaries (Mean, M@K, F@K) and head/body/tail mR, as a detectron2
``DatasetEvaluator``."""

from sgg.evaluation.evaluator import SceneGraphEvaluator
from sgg.evaluation.matching import NO_MATCH, ImageMatches, box_iou, match_image
from sgg.evaluation.metrics import (
    RecallResult,
    TrainStatistics,
    compute_recalls,
    group_mean_recalls,
    predicate_groups,
    summary_metrics,
    triplet_keys,
)

__all__ = [
    "NO_MATCH",
    "ImageMatches",
    "RecallResult",
    "SceneGraphEvaluator",
    "TrainStatistics",
    "box_iou",
    "compute_recalls",
    "group_mean_recalls",
    "match_image",
    "predicate_groups",
    "summary_metrics",
    "triplet_keys",
]
