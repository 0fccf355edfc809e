"""The embedded synthetic COCO dataset: determinism, annotation validity, caching, registration."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data import synthetic_coco
from distill.data.synthetic_coco import (
    EMBEDDED_CLASSES,
    embedded_dataset_paths,
    ensure_embedded_dataset,
    generate_coco_split,
)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.png"))}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    """A moderately sized split (48 images, ~170 objects) shared by the content tests."""
    out = tmp_path_factory.mktemp("embedded")
    json_path = generate_coco_split(out, "train", 48, seed=0)
    return out, json.loads(json_path.read_text())


def test_same_seed_gives_identical_bytes(tmp_path):
    a = generate_coco_split(tmp_path / "a", "val", 6, seed=3)
    b = generate_coco_split(tmp_path / "b", "val", 6, seed=3)
    assert a.read_bytes() == b.read_bytes()
    files = _files(tmp_path / "a")
    assert len(files) == 6 and files == _files(tmp_path / "b")
    assert b"date" not in a.read_bytes()  # no timestamps


def test_different_seed_or_split_differs(tmp_path):
    generate_coco_split(tmp_path / "a", "val", 4, seed=3)
    generate_coco_split(tmp_path / "b", "val", 4, seed=4)
    generate_coco_split(tmp_path / "c", "train", 4, seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert all(a[k] != b[k] for k in a)
    assert not set(a.values()) & set(_files(tmp_path / "c").values())


def test_images_do_not_depend_on_count(tmp_path):
    generate_coco_split(tmp_path / "a", "train", 3, seed=0)
    generate_coco_split(tmp_path / "b", "train", 7, seed=0)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert all(a[k] == b[k] for k in a)


def test_boxes_inside_images_and_consistent_with_masks(sample):
    from pycocotools import mask as mask_util

    out, coco = sample
    images = {im["id"]: im for im in coco["images"]}
    for im in coco["images"]:
        assert 128 <= im["height"] <= 256 and 128 <= im["width"] <= 256
        with Image.open(out / "train" / im["file_name"]) as pil:
            assert pil.size == (im["width"], im["height"]) and pil.mode == "RGB"
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert 1 <= ann["category_id"] <= len(EMBEDDED_CLASSES) and ann["iscrowd"] == 0
        mask = mask_util.decode(ann["segmentation"])
        assert mask.shape == (im["height"], im["width"])
        assert ann["area"] == float(mask.sum()) <= w * h
        np.testing.assert_array_equal(mask_util.toBbox(ann["segmentation"]), ann["bbox"])


def test_class_coverage_small_objects_and_empty_images(sample):
    _, coco = sample
    anns = coco["annotations"]
    assert [c["name"] for c in coco["categories"]] == list(EMBEDDED_CLASSES)
    assert {a["category_id"] for a in anns} == set(range(1, len(EMBEDDED_CLASSES) + 1))
    areas = [a["bbox"][2] * a["bbox"][3] for a in anns]
    assert min(areas) < 16 * 16 and max(areas) > 64 * 64  # small and large objects
    annotated = {a["image_id"] for a in anns}
    assert any(im["id"] not in annotated for im in coco["images"])  # images without objects
    per_image = np.bincount([a["image_id"] for a in anns])
    assert per_image.max() <= 6 and 2.0 <= len(anns) / len(coco["images"]) <= 5.0


def test_cocoeval_of_ground_truth_as_detections_is_perfect(sample):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out, _ = sample
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "annotations" / "instances_train.json"))
        dets = [{**a, "score": 1.0} for a in gt.dataset["annotations"]]
        for a in dets:
            a.pop("id")
        for iou_type in ("bbox", "segm"):
            evaluator = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            assert evaluator.stats[0] == pytest.approx(1.0), iou_type


def test_photo_backgrounds_from_skimage_when_installed(sample):
    _, coco = sample
    if not synthetic_coco.find_background_images():
        pytest.skip("scikit-image is not installed")
    assert coco["info"]["background_source"].startswith("skimage-")
    assert embedded_dataset_paths()["dataset_dir"].name == "embedded_coco_v1"


def test_procedural_fallback_without_skimage(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_coco, "find_background_images", lambda: [])
    a = generate_coco_split(tmp_path / "a", "val", 6, seed=1)
    b = generate_coco_split(tmp_path / "b", "val", 6, seed=1)
    coco = json.loads(a.read_text())
    assert coco["info"]["background_source"] == "procedural"
    assert len(coco["annotations"]) > 0
    assert a.read_bytes() == b.read_bytes() and _files(tmp_path / "a") == _files(tmp_path / "b")
    assert embedded_dataset_paths(tmp_path)["dataset_dir"].name == "embedded_coco_v1_procedural"


def test_ensure_generates_once_atomically(tmp_path, monkeypatch):
    num = {"train": 4, "val": 2}
    paths = ensure_embedded_dataset(tmp_path, seed=5, num_images=num, progress=False)
    assert paths == embedded_dataset_paths(tmp_path, seed=5, num_images=num)
    assert [p.name for p in tmp_path.iterdir()] == [paths["dataset_dir"].name]  # no temp left
    for split, count in num.items():
        coco = json.loads(Path(paths[split]["json_file"]).read_text())
        assert len(coco["images"]) == count == len(os.listdir(paths[split]["image_root"]))

    def fail(*args, **kwargs):
        raise AssertionError("must not regenerate a complete dataset")

    monkeypatch.setattr(synthetic_coco, "generate_coco_split", fail)
    assert ensure_embedded_dataset(tmp_path, seed=5, num_images=num) == paths
    # An interrupted generation leaves neither a partial dataset nor its temporary folder.
    with pytest.raises(AssertionError):
        ensure_embedded_dataset(tmp_path / "other", num_images=num, progress=False)
    assert list((tmp_path / "other").iterdir()) == []


def test_force_regenerates_identically(tmp_path):
    num = {"train": 2, "val": 1}
    paths = ensure_embedded_dataset(tmp_path, num_images=num, progress=False)
    before = _files(paths["dataset_dir"])
    ensure_embedded_dataset(tmp_path, num_images=num, force=True, progress=False)
    assert _files(paths["dataset_dir"]) == before
    assert len(list(tmp_path.iterdir())) == 1


def test_register_embedded_datasets_lazily(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from distill.data import register_embedded_datasets
    from distill.data.register import check_builtin_dataset_root

    num = {"train": 3, "val": 2}
    names = register_embedded_datasets(tmp_path, num_images=num, name_prefix="test_tiny_embedded")
    assert names == ["test_tiny_embedded_train", "test_tiny_embedded_val"]
    assert (
        register_embedded_datasets(tmp_path, num_images=num, name_prefix="test_tiny_embedded") == []
    )
    assert not any(tmp_path.iterdir())  # registration generates nothing
    check_builtin_dataset_root(names)  # embedded datasets need no files up front
    meta = MetadataCatalog.get("test_tiny_embedded_val")
    assert meta.thing_classes == list(EMBEDDED_CLASSES) and meta.evaluator_type == "coco"
    assert meta.json_file == embedded_dataset_paths(tmp_path, num_images=num)["val"]["json_file"]
    records = DatasetCatalog.get("test_tiny_embedded_val")
    assert Path(meta.json_file).is_file() and len(records) == 2
    assert all(Path(r["file_name"]).is_file() for r in records)
    assert sum(len(r["annotations"]) for r in records) > 0
    for split in ("train", "val"):  # registered (not generated) by `import distill`
        assert f"embedded_coco_{split}" in DatasetCatalog.list()
        json_file = MetadataCatalog.get(f"embedded_coco_{split}").json_file
        assert json_file.endswith(f"annotations/instances_{split}.json")


def test_missing_builtin_coco_names_the_expected_paths(tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import builtin, register_coco_instances

    from distill.data.register import check_builtin_dataset_root

    # detectron2 resolves DETECTRON2_DATASETS once, at import: register coco_2017_val exactly as
    # builtin.register_all_coco does for DETECTRON2_DATASETS=<empty tmp dir>, under a test name.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    image_dir, json_file = builtin._PREDEFINED_SPLITS_COCO["coco"]["coco_2017_val"]
    name = "test_empty_root_coco_2017_val"
    if name not in DatasetCatalog.list():
        metadata = builtin._get_builtin_metadata("coco")
        register_coco_instances(name, metadata, tmp_path / json_file, tmp_path / image_dir)
    with pytest.raises(FileNotFoundError) as info:
        check_builtin_dataset_root([name])
    message = str(info.value)
    for expected in (name, "DETECTRON2_DATASETS", str(tmp_path)):
        assert expected in message
    assert str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in message
    assert str(tmp_path / "coco" / "val2017") in message
    with pytest.raises(KeyError, match="no_such_dataset"):
        check_builtin_dataset_root("no_such_dataset")
    real = MetadataCatalog.get("coco_2017_val")  # the real builtin, under the import-time root
    if not os.path.exists(real.json_file):
        with pytest.raises(FileNotFoundError, match=re.escape(os.path.abspath(real.json_file))):
            check_builtin_dataset_root("coco_2017_val")
