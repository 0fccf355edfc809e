"""SceneGraphEvaluator end to end on a registered tiny dataset with fake model outputs.

Every metric is in percent (0-100)."""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle

import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm
from sgg import add_sgg_config
from sgg.evaluation import SceneGraphEvaluator

from distill.errors import ConfigKeyError, ConfigValueError

P = 50
C = 5  # man, horse, hat, cup, table
RIDING, WEARING, ON, HAS = 38, 48, 31, 20
TEST, TRAIN = "sgg_eval_tiny_test", "sgg_eval_tiny_train"
TOPK = (1, 2, 4, 50, 100)


def boxes_of(n):
    return [[60.0 * i, 0.0, 60.0 * i + 49, 49.0] for i in range(n)]


def record(image_id, labels, relations, mode=BoxMode.XYXY_ABS):
    boxes = boxes_of(len(labels))
    if mode == BoxMode.XYWH_ABS:
        boxes = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes]
    return {
        "file_name": f"{image_id}.jpg", "image_id": image_id, "height": 100, "width": 400,
        "annotations": [{"bbox": b, "bbox_mode": mode, "category_id": c}
                        for b, c in zip(boxes, labels)],
        "relations": np.array(relations, dtype=np.int64).reshape(-1, 3),
    }  # fmt: skip


# image 10: the spec's toy PredCls image (man 0, horse 1, hat 2), "on" a second predicate on
# (0, 1); image 11: no relations; image 12: cup 3 on table 4 (XYWH boxes); image 13: no pairs
TEST_RECORDS = [
    record(10, [0, 1, 2], [(0, 1, RIDING), (0, 2, WEARING), (0, 1, ON)]),
    record(11, [0, 1], []),
    record(12, [3, 4], [(0, 1, ON)], mode=BoxMode.XYWH_ABS),
    record(13, [0, 1], [(0, 1, HAS)]),
]
# riding seen twice, wearing once; (man, horse, on) and (cup, table, on) never seen
TRAIN_RECORDS = [
    record(1, [0, 1, 2], [(0, 1, RIDING), (0, 2, WEARING)]),
    record(2, [0, 1], [(0, 1, RIDING)]),
]
PROBS = {
    10: {(0, 1): {RIDING: 0.6, ON: 0.3}, (0, 2): {WEARING: 0.5, HAS: 0.4}, (1, 0): {ON: 0.05}},
    11: {(0, 1): {HAS: 0.5}},
    12: {(0, 1): {ON: 0.9}, (1, 0): {ON: 0.05}},
    13: None,  # no predicted pairs
}


@pytest.fixture(autouse=True)
def tiny_datasets():
    DatasetCatalog.register(TEST, lambda: TEST_RECORDS)
    DatasetCatalog.register(TRAIN, lambda: TRAIN_RECORDS)
    names = [f"pred{i}" for i in range(1, P + 1)]
    MetadataCatalog.get(TEST).set(
        thing_classes=[f"obj{i}" for i in range(C)], predicate_classes=names,
        sgg_train_dataset=TRAIN,
    )  # fmt: skip
    yield
    for name in (TEST, TRAIN):
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)


def fake_output(image_id):
    """PredCls-style output: GT boxes and labels, all ordered pairs sorted by triplet score."""
    rec = next(r for r in TEST_RECORDS if r["image_id"] == image_id)
    n = len(rec["annotations"])
    inst = Instances((100, 400))
    inst.pred_boxes = Boxes(torch.tensor(boxes_of(n)))
    inst.scores = torch.ones(n)
    inst.pred_classes = torch.tensor([a["category_id"] for a in rec["annotations"]])
    probs = PROBS[image_id]
    pairs = [(s, o) for s in range(n) for o in range(n) if s != o] if probs is not None else []
    scores = torch.zeros(len(pairs), P + 1)
    for i, pair in enumerate(pairs):
        for p, v in probs.get(pair, {}).items():
            scores[i, p] = v
    scores[:, 0] = 1 - scores.sum(1)
    order = torch.argsort(scores[:, 1:].max(1).values if len(pairs) else scores[:, 0],
                          descending=True, stable=True)  # fmt: skip
    return {
        "instances": inst,
        "rel_pair_idxs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)[order],
        "rel_scores": scores[order],
    }


def run(evaluator, image_ids=(10, 11, 12, 13)):
    evaluator.reset()
    for i in image_ids:
        evaluator.process([{"image_id": i}], [fake_output(i)])
    return evaluator.evaluate()


def make(**kwargs):
    kwargs = {"topk": TOPK, "head_min": 1, "tail_max": 1, **kwargs}
    return SceneGraphEvaluator(TEST, **kwargs)


# hand-computed (percent); image 10: GC ranks (0, 1, -), no-graph ranks (0, 1, 3); image 12: 0
EXPECTED = {
    "R@1": 100 * (1 / 3 + 1) / 2, "R@2": 100 * 5 / 6, "R@4": 100 * 5 / 6, "R@100": 100 * 5 / 6,
    "ngR@1": 100 * 2 / 3, "ngR@2": 100 * 5 / 6, "ngR@4": 100.0,
    # per predicate: riding (img 10), wearing (img 10), on: mean(img 10, img 12)
    "mR@1": 100 * (1 + 0 + 0.5) / P, "mR@2": 100 * 2.5 / P, "mR@100": 100 * 2.5 / P,
    "ng-mR@1": 100 * 1.5 / P, "ng-mR@2": 100 * 2.5 / P, "ng-mR@4": 100 * 3 / P,
    # zero-shot: img 10 (man, horse, on) never retrieved with graph constraint; img 12 at rank 0
    "zR@1": 50.0, "zR@100": 50.0, "ng-zR@2": 50.0, "ng-zR@4": 100.0,
    "Mean": (2 * 100 * 5 / 6 + 2 * 100 * 2.5 / P) / 4,
    "M@2": (100 * 5 / 6 + 100 * 2.5 / P) / 2,
    "F@2": 2 * (100 * 5 / 6) * (100 * 2.5 / P) / (100 * 5 / 6 + 100 * 2.5 / P),
    # groups by train counts (head > 1: riding; tail < 1: the 48 unseen incl. on; body: wearing)
    "mR@2_head": 100.0, "mR@2_body": 100.0, "mR@2_tail": 100 * 0.5 / 48, "mR@1_body": 0.0,
}  # fmt: skip


def test_end_to_end_hand_computed(tmp_path):
    res = run(make(output_dir=str(tmp_path)))["sgg"]
    for key, value in EXPECTED.items():
        assert res[key] == pytest.approx(value), key
    assert all(f"{m}@{k}" in res for m in ("ng-mR", "zR", "ng-zR", "M", "F") for k in TOPK)
    saved = json.loads((tmp_path / "sgg_evaluation.json").read_text())
    assert saved["unit"] == "percent" and "not_reported" not in saved
    assert saved["metrics"] == pytest.approx(res)
    assert saved["num_images"] == 2
    assert saved["num_skipped_no_relations"] == 1 and saved["num_skipped_no_predictions"] == 1
    assert saved["num_zeroshot_images"] == 2
    assert saved["per_predicate"][f"pred{ON}"]["mR@2"] == pytest.approx(50.0)
    assert saved["groups"]["head"] == [f"pred{RIDING}"]
    assert saved["settings"]["iou_plus_one"] is True


def test_images_without_relations_or_pairs_are_skipped():
    full = run(make(distributed=False))["sgg"]
    only = run(make(distributed=False), image_ids=(10, 12))["sgg"]
    assert only == pytest.approx(full)


def test_without_train_statistics_no_zero_shot_or_groups(tmp_path, caplog):
    MetadataCatalog.remove(TEST)
    MetadataCatalog.get(TEST).set(
        thing_classes=[f"obj{i}" for i in range(C)],
        predicate_classes=[f"pred{i}" for i in range(1, P + 1)],
    )
    evaluator = make(output_dir=str(tmp_path))
    for _ in range(2):  # two evaluations, one warning each
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sgg.evaluation.evaluator"):
            res = run(evaluator)["sgg"]
        assert res["R@2"] == pytest.approx(EXPECTED["R@2"])
        assert not any(k.startswith(("zR", "ng-zR")) or k.endswith("_head") for k in res)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # once per evaluation
        for words in (
            "zR@K, ng-zR@K and mR@K_head/body/tail",
            f"'{TEST}'",
            "seen in training",
            "training relations per predicate",
            "sgg_train_dataset",
            "train_dataset=",
        ):
            assert words in warnings[0], words  # fmt: skip
    saved = json.loads((tmp_path / "sgg_evaluation.json").read_text())
    assert saved["not_reported"]["reason"] == warnings[0]
    assert "zR@K" in saved["not_reported"]["metrics"]
    res = run(make(train_dataset=TRAIN))["sgg"]  # the explicit argument works too
    assert res["zR@1"] == pytest.approx(50.0)


def test_simulated_two_process_gather(monkeypatch):
    single = run(make())["sgg"]
    payloads = {}

    def fake_gather(data, dst=0):
        payloads[rank] = pickle.loads(pickle.dumps(data))  # what would cross the wire
        return [payloads[0], payloads[1]] if rank == 0 else []

    monkeypatch.setattr(comm, "gather", fake_gather)
    monkeypatch.setattr(comm, "is_main_process", lambda: rank == 0)
    rank = 1
    assert run(make(), image_ids=(12, 13)) == {}  # non-main processes return nothing
    rank = 0
    merged = run(make(), image_ids=(10, 11))["sgg"]
    assert merged == pytest.approx(single)
    assert merged["R@1"] != pytest.approx(run(make(distributed=False), (10, 11))["sgg"]["R@1"])


def test_settings_from_cfg_and_overrides():
    cfg = get_cfg()
    add_sgg_config(cfg)
    cfg.MODEL.ROI_RELATION_HEAD.NUM_CLASSES = C
    cfg.TEST.RELATION.TOPK = (1, 2)
    res = run(SceneGraphEvaluator(TEST, cfg))["sgg"]
    assert set(k for k in res if k.startswith("R@")) == {"R@1", "R@2"}
    assert "mR@2_head" in res and np.isnan(res["mR@2_head"])  # HEAD_MIN 10000: empty group
    res = run(SceneGraphEvaluator(TEST, cfg, topk=(4,)))["sgg"]
    assert res["ngR@4"] == pytest.approx(100.0) and "R@1" not in res


def test_no_graph_predicates_per_pair_from_cfg(tmp_path):
    cfg = get_cfg()
    add_sgg_config(cfg)
    cfg.MODEL.ROI_RELATION_HEAD.NUM_CLASSES = C
    cfg.TEST.RELATION.TOPK = TOPK
    assert cfg.TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR == 0  # all predicates: the benchmark
    full = run(SceneGraphEvaluator(TEST, cfg, head_min=1, tail_max=1))["sgg"]
    for key in ("ngR@1", "ngR@2", "ngR@4", "ng-mR@4", "ng-zR@4"):
        assert full[key] == pytest.approx(EXPECTED[key]), key
    cfg.TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR = 1  # one per pair: the graph constraint's
    one = run(SceneGraphEvaluator(TEST, cfg, output_dir=str(tmp_path)))["sgg"]
    for k in TOPK:
        for ng, gc in (("ngR", "R"), ("ng-mR", "mR"), ("ng-zR", "zR")):
            assert one[f"{ng}@{k}"] == pytest.approx(one[f"{gc}@{k}"]), (ng, k)
    assert one["ngR@4"] == pytest.approx(100 * 5 / 6)  # "on" of (0, 1) is lost (full: 100)
    saved = json.loads((tmp_path / "sgg_evaluation.json").read_text())
    assert saved["settings"]["no_graph_predicates_per_pair"] == 1
    # the argument overrides the cfg; more than P per pair is refused
    assert run(SceneGraphEvaluator(TEST, cfg, no_graph_predicates_per_pair=0))["sgg"][
        "ngR@4"
    ] == pytest.approx(100.0)
    cfg.TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR = P + 1
    with pytest.raises(ConfigValueError, match=r"NO_GRAPH_PREDICATES_PER_PAIR must lie in 0..50"):
        SceneGraphEvaluator(TEST, cfg)


def test_logged_tables_are_in_percent(caplog):
    with caplog.at_level(logging.INFO, logger="sgg.evaluation.evaluator"):
        run(make())
    lines = "\n".join(r.getMessage() for r in caplog.records).splitlines()

    def cells(label):
        rows = [line.split("|") for line in lines if line.startswith("|")]
        return [float(c) for c in next(r for r in rows if r[1].strip() == label)[2:-1]]

    r_at = [EXPECTED.get(f"R@{k}", EXPECTED["R@100"]) for k in TOPK]  # R@50 = R@100
    assert cells("R") == pytest.approx(r_at, abs=0.005)
    # "on": 0 in training, in 2 images, R@1 = mean(0, 100) (image 12 at rank 0), ..., ngR@100 100
    assert cells(f"pred{ON}") == [0, 2, 50, 50, 50, 50, 50, 100]


def test_iou_convention_through_the_evaluator(monkeypatch):
    # shrink the predicted subject of image 12 to half its height: IoU 0.5 with +1, 0.49 without
    out = fake_output(12)
    out["instances"].pred_boxes.tensor[0] = torch.tensor([0.0, 0.0, 49.0, 24.0])
    for plus_one, expected in ((True, 100.0), (False, 0.0)):
        ev = make(iou_plus_one=plus_one)
        ev.process([{"image_id": 12}], [out])
        assert ev.evaluate()["sgg"]["R@1"] == pytest.approx(expected)


def test_bad_outputs_have_clear_errors():
    ev = make()
    out = fake_output(10)
    del out["rel_scores"]
    with pytest.raises(ConfigKeyError, match=r"'rel_scores' \(FloatTensor \(M, 51\)\)"):
        ev.process([{"image_id": 10}], [out])
    out = fake_output(10)
    out["rel_scores"] = out["rel_scores"][:, :P]
    with pytest.raises(
        ConfigValueError, match=r"'rel_scores' has shape \(6, 50\), expected \(\*, 51\)"
    ):
        ev.process([{"image_id": 10}], [out])
    out = fake_output(10)
    out["rel_pair_idxs"] = out["rel_pair_idxs"][:, :1]
    with pytest.raises(ConfigValueError, match=r"'rel_pair_idxs' has shape \(6, 1\), expected"):
        ev.process([{"image_id": 10}], [out])
    out = fake_output(10)
    out["rel_pair_idxs"][0, 0] = 3
    with pytest.raises(ConfigValueError, match="must index the 3 instances"):
        ev.process([{"image_id": 10}], [out])
    out = fake_output(10)
    out["instances"].remove("scores")
    with pytest.raises(ConfigKeyError, match="lack 'scores'"):
        ev.process([{"image_id": 10}], [out])
    with pytest.raises(ConfigKeyError, match="image 99 is not in"):
        ev.process([{"image_id": 99}], [fake_output(10)])


def test_bad_dataset_has_clear_errors():
    DatasetCatalog.register("sgg_eval_tiny_bad", lambda: [record(1, [0, 1], [(0, 1, 51)])])
    try:
        with pytest.raises(ConfigValueError, match=r"image 1: predicate ids relations\[:, 2\] lie"):
            SceneGraphEvaluator("sgg_eval_tiny_bad", num_predicates=P, num_classes=C)
        with pytest.raises(ConfigKeyError, match="no predicate_classes"):
            SceneGraphEvaluator("sgg_eval_tiny_bad")
        with pytest.raises(ConfigKeyError, match="no thing_classes; pass num_classes or a cfg"):
            SceneGraphEvaluator("sgg_eval_tiny_bad", num_predicates=P)
        DatasetCatalog.remove("sgg_eval_tiny_bad")
        DatasetCatalog.register("sgg_eval_tiny_bad", lambda: [record(1, [0], [])] * 2)
        with pytest.raises(ConfigValueError, match="image_id 1 occurs twice"):
            SceneGraphEvaluator("sgg_eval_tiny_bad", num_predicates=P, num_classes=C)
    finally:
        DatasetCatalog.remove("sgg_eval_tiny_bad")
        MetadataCatalog.pop("sgg_eval_tiny_bad", None)
    with pytest.raises(ConfigValueError, match="IOU_THRESHOLD"):
        make(iou_threshold=0.0)
    with pytest.raises(ConfigValueError, match="TOPK"):
        make(topk=(0, 20))


def test_benchmark_tool_smoke(tmp_path):
    path = REPO / "projects/LSKD/tools/benchmark_sgg_eval.py"
    spec = importlib.util.spec_from_file_location("benchmark_sgg_eval", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "bench.json"
    result = tool.main(["--num-images", "30", "--num-train-images", "30", "--json", str(out)])
    assert out.read_text() == json.dumps(result, indent=2) + "\n"
    assert result["num_images"] == 30 and result["images_per_s"] > 0
    assert result["metrics_unit"] == "percent"
    metrics = result["metrics"]
    assert 0 < metrics["R@20"] <= metrics["R@100"] < 100
    for name in (tool.TEST, tool.TRAIN):
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)
