"""COCO-format annotations are checked when loaded: the pure check on hand-built json, the
checked DatasetCatalog loaders (refuse / drop, one parse), the embedded dataset unchanged, and the
wrapping of a run's datasets by ``configure_dataset_tasks``."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

import distill
from distill.data import find_invalid_annotations, register_embedded_datasets
from distill.data.checked_coco import CheckedCocoLoader, check_coco_annotations
from distill.data.tasks import configure_dataset_tasks
from distill.errors import ConfigValueError, InvalidDataError

# Two 64x48 images, categories 1 and 3 (ids need not be contiguous).
VALID = {
    "images": [
        {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 8, "file_name": "b.jpg", "width": 64, "height": 48},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    "annotations": [
        {"id": 11, "image_id": 7, "bbox": [10.0, 5.0, 20.0, 10.0], "category_id": 1},
        {"id": 12, "image_id": 7, "bbox": [0.0, 0.0, 0.4, 0.3], "category_id": 3},  # tiny
        {"id": 13, "image_id": 8, "bbox": [40.0, 30.0, 24.6, 18.5], "category_id": 3},  # +0.6
        {"id": 14, "image_id": 8, "bbox": [-0.9, 0.0, 10.0, 10.0], "category_id": 1},  # -0.9
        {"id": 15, "image_id": 8, "bbox": [1, 2, 3, 4], "category_id": 1},  # integers
    ],
}
# Each case replaces annotation id 12 (image 7) with these fields -> expected words of the reason.
BAD = {
    "negative width": ({"bbox": [30.0, 5.0, -20.0, 10.0]}, "width -20.0"),
    "zero height": ({"bbox": [30.0, 5.0, 20.0, 0.0]}, "height 0.0"),
    "nan": ({"bbox": [math.nan, 5.0, 20.0, 10.0]}, "not finite"),
    "inf": ({"bbox": [30.0, 5.0, math.inf, 10.0]}, "not finite"),
    "3 numbers": ({"bbox": [30.0, 5.0, 20.0]}, "4 numbers"),
    "strings": ({"bbox": ["30", "5", "20", "10"]}, "4 numbers"),
    "no bbox": ({"bbox": None}, "4 numbers"),
    "past the right edge": ({"bbox": [50.0, 5.0, 16.0, 10.0]}, "x2 = 66"),
    "above the top": ({"bbox": [10.0, -3.0, 5.0, 10.0]}, "outside its 64x48 image"),
    "entirely outside": ({"bbox": [100.0, 60.0, 5.0, 5.0]}, "outside its 64x48 image"),
    "unknown category": ({"category_id": 2}, "category_id 2 is not an id of 'categories'"),
}


def coco_with(**fields) -> dict:
    """VALID with annotation id 12 updated by ``fields`` (a deep copy)."""
    coco = copy.deepcopy(VALID)
    coco["annotations"][1].update(fields)
    return coco


def test_valid_json_including_tiny_and_border_boxes_has_no_problem():
    assert find_invalid_annotations(VALID) == []


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_annotation_is_found_with_its_ids(case):
    fields, words = BAD[case]
    coco = coco_with(**fields)
    before = copy.deepcopy(coco)
    problems = find_invalid_annotations(coco)
    assert [(p.index, p.image_id, p.annotation_id) for p in problems] == [(1, 7, 12)]
    assert words in problems[0].reason
    assert str(problems[0]).startswith("image_id 7, annotation id 12: ")
    assert json.dumps(coco) == json.dumps(before)  # pure: the input is not modified


def test_reasons_of_one_annotation_are_joined():
    coco = coco_with(bbox=[1.0, 1.0, -2.0, 3.0], category_id=99)
    (problem,) = find_invalid_annotations(coco)
    assert "width -2.0" in problem.reason and "category_id 99" in problem.reason


def test_known_zero_height_boxes_of_real_coco_are_accepted_but_not_others():
    coco = copy.deepcopy(VALID)
    coco["images"].append({"id": 200365, "width": 640, "height": 480})
    coco["annotations"].append(
        {"id": 918, "image_id": 200365, "bbox": [296.65, 388.33, 1.03, 0.0], "category_id": 1}
    )
    assert find_invalid_annotations(coco) == []
    coco["annotations"][-1]["id"] = 919
    assert [p.annotation_id for p in find_invalid_annotations(coco)] == [919]


def test_annotation_of_an_unknown_image_is_not_bounds_checked():
    coco = coco_with(image_id=999, bbox=[500.0, 500.0, 5.0, 5.0])
    assert find_invalid_annotations(coco) == []  # detectron2 ignores it, with a warning


# --- the DatasetCatalog loaders -------------------------------------------------------------


def _write(tmp_path, coco: dict, name: str) -> str:
    """Writes ``coco`` and registers it as a COCO-format dataset ``name``; returns the json."""
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps(coco))
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    return str(json_file)


def _three_bad() -> dict:
    coco = copy.deepcopy(VALID)
    anns = coco["annotations"]
    anns[0]["bbox"] = [30.0, 5.0, -20.0, 10.0]  # image 7, id 11: would become another box
    anns[2]["category_id"] = 5  # image 8, id 13
    anns[3]["bbox"] = [200.0, 5.0, 10.0, 10.0]  # image 8, id 14: outside
    return coco


def test_checked_loader_refuses_naming_file_ids_and_count(tmp_path):
    json_file = _write(tmp_path, _three_bad(), "test_checks_refused")
    check_coco_annotations(["test_checks_refused"])
    with pytest.raises(InvalidDataError) as err:
        DatasetCatalog.get("test_checks_refused")
    message = str(err.value)
    assert message.startswith(f"{json_file}: 3 of 5 annotations are invalid: ")
    for ids in ("image_id 7, annotation id 11", "image_id 8, annotation id 13",
                "image_id 8, annotation id 14"):  # fmt: skip
        assert ids in message
    assert "set DATASETS.INVALID_ANNOTATIONS drop" in message


def test_only_the_first_few_are_listed(tmp_path):
    coco = copy.deepcopy(VALID)
    coco["annotations"] = [
        {"id": 100 + i, "image_id": 7, "bbox": [1.0, 1.0, -1.0, 1.0], "category_id": 1}
        for i in range(8)
    ]
    _write(tmp_path, coco, "test_checks_many")
    check_coco_annotations(["test_checks_many"])
    with pytest.raises(InvalidDataError, match="8 of 8 annotations") as err:
        DatasetCatalog.get("test_checks_many")
    assert "annotation id 104" in str(err.value) and "annotation id 105" not in str(err.value)
    assert "... and 3 more" in str(err.value)


def test_drop_mode_drops_with_a_counted_warning_and_rewrites_nothing(tmp_path, caplog):
    json_file = _write(tmp_path, _three_bad(), "test_checks_dropped")
    check_coco_annotations(["test_checks_dropped"], mode="drop")
    with caplog.at_level(logging.WARNING, logger="distill.data.checked_coco"):
        dicts = DatasetCatalog.get("test_checks_dropped")
    (warning,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert warning.startswith(f"{json_file}: dropped 3 of 5 annotations as invalid")
    assert "annotation id 11" in warning
    kept = {d["image_id"]: [a["bbox"] for a in d["annotations"]] for d in dicts}
    assert kept == {7: [[0.0, 0.0, 0.4, 0.3]], 8: [[1, 2, 3, 4]]}  # the valid ones, as written


def test_the_json_is_parsed_once(tmp_path, monkeypatch):
    _write(tmp_path, VALID, "test_checks_parse_once")
    check_coco_annotations(["test_checks_parse_once"])
    parsed = []
    real_load = json.load
    monkeypatch.setattr(json, "load", lambda f, **kw: parsed.append(f.name) or real_load(f, **kw))
    dicts = DatasetCatalog.get("test_checks_parse_once")
    assert len(parsed) == 1 and sum(len(d["annotations"]) for d in dicts) == 5


def test_loader_that_bypasses_pycocotools_is_checked_after_loading(tmp_path):
    json_file = _write(tmp_path, _three_bad(), "test_checks_custom")
    loader = CheckedCocoLoader(lambda: [{"image_id": 7}], json_file, "error")
    with pytest.raises(InvalidDataError, match="3 of 5 annotations"):
        loader()
    with pytest.raises(ConfigValueError, match="cannot be dropped"):
        CheckedCocoLoader(loader.loader, json_file, "drop")()
    valid_file = _write(tmp_path, VALID, "test_checks_custom_valid")
    assert CheckedCocoLoader(lambda: ["x"], valid_file, "drop")() == ["x"]


def test_unknown_mode_names_the_key(tmp_path):
    with pytest.raises(ConfigValueError, match="DATASETS.INVALID_ANNOTATIONS = 'skip'"):
        check_coco_annotations([], mode="skip")


def test_embedded_dataset_loads_unchanged(tmp_path):
    names = register_embedded_datasets(
        tmp_path, num_images={"train": 3, "val": 2}, name_prefix="test_checks_embedded"
    )
    for name in names:
        assert isinstance(DatasetCatalog[name], CheckedCocoLoader)  # checked without a config
        dicts = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        plain = load_coco_json(meta.json_file, meta.image_root, name)
        assert dicts == plain and sum(len(d["annotations"]) for d in dicts) > 0


def test_a_runs_coco_datasets_are_wrapped_with_the_configured_mode(tmp_path):
    _write(tmp_path, _three_bad(), "test_checks_run_train")
    distill.load_projects()  # the scene-graph project registers vgsynth_*
    cfg = distill.get_distill_cfg()
    assert cfg.DATASETS.INVALID_ANNOTATIONS == "error"
    cfg.DATASETS.TRAIN = ("test_checks_run_train",)
    cfg.DATASETS.TEST = ("coco_2017_val", "vgsynth_val")  # builtin COCO; not COCO-format
    configure_dataset_tasks(cfg)
    for name in ("test_checks_run_train", "coco_2017_val"):
        assert DatasetCatalog[name].mode == "error"
    assert not isinstance(DatasetCatalog["vgsynth_val"], CheckedCocoLoader)
    with pytest.raises(InvalidDataError, match="3 of 5"):
        DatasetCatalog.get("test_checks_run_train")
    cfg.DATASETS.INVALID_ANNOTATIONS = "drop"
    configure_dataset_tasks(cfg)  # re-wraps the original loader, not the wrapper
    loader = DatasetCatalog["test_checks_run_train"]
    assert loader.mode == "drop" and not isinstance(loader.loader, CheckedCocoLoader)
    assert sum(len(d["annotations"]) for d in DatasetCatalog.get("test_checks_run_train")) == 2
