"""The LSKD configs on the plateau LR schedule read a metric that the scene-graph evaluator reports
(the core default, ``bbox/AP``, is a detection metric), from a periodic validation."""

from __future__ import annotations

import numpy as np
import pytest
import sgg  # noqa: F401  (registers the SGG config keys)
from conftest import REPO
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation.testing import flatten_results_dict
from sgg.evaluation import SceneGraphEvaluator
from sgg.evaluation.synthetic import synthetic_dataset, synthetic_output

from distill.config import get_distill_cfg
from distill.plateau import SCHEDULER_NAME

CONFIGS = sorted((REPO / "projects/LSKD/configs").glob("**/*.yaml"))
DATASET = "sgg_plateau_metric_test"


def load(path):
    cfg = get_distill_cfg()
    cfg.merge_from_file(str(path))
    return cfg


@pytest.fixture(scope="module")
def plateau_configs():
    loaded = {path.relative_to(REPO).as_posix(): load(path) for path in CONFIGS}
    plateau = {
        k: cfg for k, cfg in loaded.items() if cfg.SOLVER.LR_SCHEDULER_NAME == SCHEDULER_NAME
    }
    assert len(plateau) == 10, sorted(plateau)  # the VG150 relation base, 3 predictors x 3 modes
    return plateau


@pytest.fixture(scope="module")
def reported_keys():
    """The storage keys of a SceneGraphEvaluator's results, as detectron2's EvalHook puts them."""
    records = synthetic_dataset(4, num_classes=10, num_predicates=5)
    DatasetCatalog.register(DATASET, lambda: records)
    MetadataCatalog.get(DATASET).set(
        thing_classes=[f"class_{i}" for i in range(10)],
        predicate_classes=[f"predicate_{i}" for i in range(1, 6)],
    )
    try:
        evaluator = SceneGraphEvaluator(DATASET, distributed=False)
        rng = np.random.default_rng(0)
        outputs = [synthetic_output(r, rng, num_classes=10, num_predicates=5) for r in records]
        evaluator.process(records, outputs)
        return set(flatten_results_dict(evaluator.evaluate()))
    finally:
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)


def test_plateau_configs_read_a_reported_validation_metric(plateau_configs, reported_keys):
    assert get_distill_cfg().SOLVER.PLATEAU.METRIC not in reported_keys
    for name, cfg in plateau_configs.items():
        assert cfg.SOLVER.PLATEAU.METRIC == "sgg/R@100", name
        assert cfg.SOLVER.PLATEAU.METRIC in reported_keys, name
        assert cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.TEST == ("vg150_val",), name
