"""check_datasets: every dataset of DATASETS.TRAIN and DATASETS.TEST is registered and its files
exist before anything is built (a wrong test set used to be found only after training)."""

from __future__ import annotations

import pytest
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

import distill
from distill.data import check_datasets
from distill.errors import ConfigKeyError, ConfigValueError, MissingFileError


def _cfg(train=("embedded_coco_train",), test=("embedded_coco_val",), mode="error"):
    cfg = distill.get_distill_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = tuple(train), tuple(test)
    cfg.DATASETS.INVALID_ANNOTATIONS = mode
    return cfg


def test_registered_datasets_pass_without_loading(monkeypatch):
    def no_loading(name):
        raise AssertionError(f"{name} was loaded")

    monkeypatch.setattr(DatasetCatalog, "get", no_loading)
    distill.load_projects()  # the scene-graph project registers vgsynth_*
    check_datasets(_cfg(test=("embedded_coco_val", "vgsynth_test")))  # generated on first load


def test_unknown_test_dataset_names_the_key_and_a_close_name():
    with pytest.raises(ConfigKeyError) as err:
        check_datasets(_cfg(test=("embedded_coco_val", "embedded_coco_vall")))
    assert str(err.value).startswith(
        "DATASETS.TEST: 'embedded_coco_vall' is not registered in detectron2's DatasetCatalog; "
        "did you mean 'embedded_coco_val'"
    )
    with pytest.raises(ConfigKeyError, match="^DATASETS.TRAIN: 'no_such_set' is not registered"):
        check_datasets(_cfg(train=("no_such_set",)))


def test_missing_file_of_a_test_dataset_is_named(tmp_path):
    name = "test_check_datasets_missing_json"
    if name not in DatasetCatalog:
        register_coco_instances(name, {}, str(tmp_path / "val.json"), str(tmp_path))
    with pytest.raises(MissingFileError) as err:
        check_datasets(_cfg(test=(name,)))
    message = str(err.value)
    assert message.startswith(f"DATASETS.TEST: dataset '{name}' not found: ")
    assert f"json_file {tmp_path / 'val.json'} (missing)" in message
    assert f"image_root {tmp_path} (found)" in message


def test_invalid_annotation_mode_is_refused_up_front():
    with pytest.raises(ConfigValueError, match="DATASETS.INVALID_ANNOTATIONS = 'ignore'"):
        check_datasets(_cfg(mode="ignore"))
