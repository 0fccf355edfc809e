"""SceneGraphEvaluator refuses ground truth, training splits and predictions in another class
convention (1-based object classes, 0-based or out-of-range predicate ids, a model of another
class count), naming the input, the image, the field and both ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances
from sgg import add_sgg_config
from sgg.evaluation import SceneGraphEvaluator

from distill.errors import ConfigKeyError, ConfigValueError, InvalidDataError, run_cli

C, P = 3, 4  # object classes 0..2 (man, horse, hat), predicate ids 1..4
TEST, TRAIN = "sgg_eval_checks_test", "sgg_eval_checks_train"


def record(image_id, labels, relations):
    return {
        "file_name": f"{image_id}.jpg", "image_id": image_id, "height": 60, "width": 200,
        "annotations": [{"bbox": [60.0 * i, 0.0, 60.0 * i + 49, 49.0],
                         "bbox_mode": BoxMode.XYXY_ABS, "category_id": c}
                        for i, c in enumerate(labels)],
        "relations": np.array(relations, dtype=np.int64).reshape(-1, 3),
    }  # fmt: skip


GOOD = [record(7, [0, 1, 2], [(0, 1, 1), (0, 2, 4)])]


def register(test=GOOD, train=GOOD, **meta):
    """(Re-)register the two splits; metadata: C thing_classes, P predicate_classes."""
    for name, records in ((TEST, test), (TRAIN, train)):
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)
        DatasetCatalog.register(name, lambda records=records: records)
    meta = {
        "thing_classes": ["man", "horse", "hat"],
        "predicate_classes": [f"pred{i}" for i in range(1, P + 1)],
        "sgg_train_dataset": TRAIN,
        **meta,
    }
    MetadataCatalog.get(TEST).set(**{k: v for k, v in meta.items() if v is not None})


@pytest.fixture(autouse=True)
def cleanup():
    yield
    for name in (TEST, TRAIN):
        DatasetCatalog.pop(name, None)
        MetadataCatalog.pop(name, None)


def output(labels=(0, 1, 2), num_columns=P + 1):
    """A PredCls-style output for image 7: GT boxes, the given classes, pairs (0, 1), (0, 2)."""
    inst = Instances((60, 200))
    inst.pred_boxes = Boxes(torch.tensor([[60.0 * i, 0.0, 60.0 * i + 49, 49.0] for i in range(3)]))
    inst.scores = torch.ones(3)
    inst.pred_classes = torch.tensor(labels)
    scores = torch.zeros(2, num_columns)
    scores[0, 1], scores[1, 4 if num_columns > 4 else 1] = 0.9, 0.8
    return {
        "instances": inst,
        "rel_pair_idxs": torch.tensor([[0, 1], [0, 2]]),
        "rel_scores": scores,
    }


def evaluate(out, **kwargs):
    evaluator = SceneGraphEvaluator(TEST, topk=(1, 2), distributed=False, **kwargs)
    evaluator.process([{"image_id": 7}], [out])
    return evaluator.evaluate()["sgg"]


def test_valid_input_is_accepted():
    register()
    res = evaluate(output())
    assert res["R@2"] == pytest.approx(100.0) and res["R@1"] == pytest.approx(50.0)


def test_one_based_ground_truth_object_classes():
    register(test=[record(7, [1, 2, 3], [(0, 1, 1)])])
    with pytest.raises(
        InvalidDataError,
        match=rf"ground truth of '{TEST}', image 7: object classes annotations\[\*\]\.category_id "
        r"lie in 1\.\.3, expected 0\.\.2 \(3 object classes\); 1-based labels\?",
    ):
        SceneGraphEvaluator(TEST)


ZERO_BASED_HINT = "; 0-based ids? predicate id 0 is the background, relations use 1..P"


@pytest.mark.parametrize(
    "predicate, found, hint", [(0, "0..1", ZERO_BASED_HINT), (5, "1..5", ""), (-1, "-1..1", "")]
)
def test_ground_truth_predicate_ids_outside_1_to_p(predicate, found, hint):
    register(test=[record(7, [0, 1, 2], [(0, 1, 1), (0, 2, predicate)])])
    with pytest.raises(InvalidDataError) as info:
        SceneGraphEvaluator(TEST)
    assert str(info.value) == (
        f"SceneGraphEvaluator: ground truth of '{TEST}', image 7: predicate ids relations[:, 2] "
        f"lie in {found}, expected 1..4 (4 predicate classes){hint}"
    )


def test_ground_truth_relation_indices_outside_the_objects():
    register(test=[record(7, [0, 1, 2], [(0, 3, 1)])])
    with pytest.raises(
        InvalidDataError, match=r"image 7: relation object indices relations\[:, :2\] lie in "
        r"0\.\.3, expected 0\.\.2 \(its 3 annotations\)",
    ):  # fmt: skip
        SceneGraphEvaluator(TEST)


def test_training_split_in_another_convention():
    register(train=[record(3, [1, 2, 3], [(0, 1, 1)])])
    evaluator = SceneGraphEvaluator(TEST, distributed=False)  # the test split is fine
    evaluator.process([{"image_id": 7}], [output()])
    with pytest.raises(
        InvalidDataError,
        match=rf"training split '{TRAIN}', image 3: object classes annotations\[\*\]\.category_id "
        r"lie in 1\.\.3, expected 0\.\.2",
    ):
        evaluator.evaluate()
    register(train=[record(3, [0, 1], [(0, 1, 0)])])
    with pytest.raises(InvalidDataError, match=rf"'{TRAIN}', image 3: predicate ids .* 0\.\.0"):
        evaluate(output())


@pytest.mark.parametrize("labels, found", [((1, 2, 3), "1..3"), ((0, -1, 2), "-1..2")])
def test_predicted_object_classes_in_another_convention(labels, found):
    register()
    with pytest.raises(
        InvalidDataError,
        match=rf"prediction for image 7: object classes instances\.pred_classes lie in "
        rf"{found}, expected 0\.\.2 \(3 object classes\)",
    ):
        evaluate(output(labels))


def test_predicted_scores_of_another_predicate_count():
    register()
    with pytest.raises(
        ConfigValueError,
        match=r"image 7: 'rel_scores' has shape \(2, 4\), expected \(\*, 5\) \(column 0 the "
        r"background, then the 4 predicate classes\)",
    ):
        evaluate(output(num_columns=P))  # no background column: 0-based predicates


def test_class_counts_of_the_model_must_match_the_dataset():
    register()
    cfg = get_cfg()
    add_sgg_config(cfg)  # NUM_CLASSES 150, NUM_PREDICATES 50
    cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = P
    with pytest.raises(
        ConfigValueError,
        match=rf"MODEL.ROI_RELATION_HEAD.NUM_CLASSES is 150 but '{TEST}' has 3 thing_classes",
    ):
        SceneGraphEvaluator(TEST, cfg)
    cfg.MODEL.ROI_RELATION_HEAD.NUM_CLASSES = C
    cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = P + 1
    with pytest.raises(
        ConfigValueError, match="NUM_PREDICATES is 5 but .* has 4 predicate_classes"
    ):
        SceneGraphEvaluator(TEST, cfg)
    cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = P
    SceneGraphEvaluator(TEST, cfg)  # consistent
    with pytest.raises(
        ConfigValueError,
        match=r"has 3 thing_classes but 4 are evaluated \(the argument num_classes\)",
    ):
        SceneGraphEvaluator(TEST, num_classes=C + 1)
    register(thing_classes=None)  # no metadata classes: the cfg or the argument gives C
    assert evaluate(output(), num_classes=C)["R@2"] == pytest.approx(100.0)
    with pytest.raises(InvalidDataError, match=r"lie in 0\.\.2, expected 0\.\.1 \(2 object"):
        evaluate(output(), num_classes=2)


def test_unregistered_training_split():
    register(sgg_train_dataset="sgg_eval_checks_nowhere")
    with pytest.raises(
        ConfigKeyError,
        match=rf"training split 'sgg_eval_checks_nowhere' \('{TEST}' sgg_train_dataset\) is not "
        "a registered dataset",
    ):
        SceneGraphEvaluator(TEST)


def test_tools_print_one_line():
    register(test=[record(7, [1, 2, 3], [(0, 1, 1)])])
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: SceneGraphEvaluator(TEST))
    message = str(info.value.code)
    assert message.startswith("error: SceneGraphEvaluator: ground truth of") and "\n" not in message
