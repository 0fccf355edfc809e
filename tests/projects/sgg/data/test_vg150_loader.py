"""VG150 loader on hand-built h5/json files: decoding, split rules, filters, every error case, and
the vg150_* registration."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from sgg.data import (
    VG150_DATASET_NAMES,
    decode_boxes,
    default_vg_root,
    load_vg150,
    load_vg150_classes,
    register_vg150,
)

from distill.errors import ConfigValueError, InvalidDataError, MissingFileError

CLASSES = ["cat", "dog", "man"]  # ids 1..3, alphabetical like VG
PREDICATES = ["above", "has", "on"]
# h5 images: (image_id, split, (W, H), [((cx, cy, w, h) at 1024, label 1..3)], [(s, o, pred)]).
IMAGES = [
    (10, 0, (512, 256), [((100, 50, 40, 20), 1), ((300, 100, 100, 100), 2)], [(0, 1, 3)]),
    (11, 0, (100, 100), [], []),  # no boxes
    (12, 2, (1024, 1024), [((100, 100, 50, 50), 1), ((120, 110, 60, 40), 2),
                           ((500, 500, 80, 80), 3)], [(0, 1, 1), (0, 1, 3), (2, 0, 2)]),
    (13, 0, (640, 480), [((50, 50, 20, 20), 3), ((200, 200, 30, 30), 1)], []),  # no relations
    (14, 0, (800, 600), [((100, 100, 60, 60), 3), ((120, 120, 60, 60), 1),
                         ((600, 400, 40, 40), 2)], [(0, 1, 3), (0, 2, 1)]),
    (15, 0, (300, 400), [((100, 100, 80, 80), 2), ((130, 130, 40, 40), 3)], [(1, 0, 2)]),
    (16, 2, (500, 500), [((1022, 10, 8, 8), 1)], []),  # crosses the right border
]  # fmt: skip


def h5_arrays(images=IMAGES) -> dict[str, np.ndarray]:
    """The VG h5 arrays of ``images`` (global box indices in ``relationships``)."""
    arrays = {k: [] for k in ("split", "first_box", "last_box", "first_rel", "last_rel")}
    boxes, labels, rels, preds = [], [], [], []
    for _, split, _, objs, relations in images:
        n, r = len(boxes), len(rels)
        arrays["split"].append(split)
        arrays["first_box"].append(n if objs else -1)
        arrays["last_box"].append(n + len(objs) - 1 if objs else -1)
        arrays["first_rel"].append(r if relations else -1)
        arrays["last_rel"].append(r + len(relations) - 1 if relations else -1)
        boxes += [b for b, _ in objs]
        labels += [c for _, c in objs]
        rels += [(n + s, n + o) for s, o, _ in relations]
        preds += [p for _, _, p in relations]
    out = {f"img_to_{k}": np.array(v, np.int32) for k, v in arrays.items() if k != "split"}
    out["split"] = np.array(arrays["split"], np.int32)
    out["boxes_1024"] = np.array(boxes, np.int32)
    out["boxes_512"] = out["boxes_1024"] // 2
    out["labels"] = np.array(labels, np.int32)[:, None]
    out["attributes"] = np.zeros((len(boxes), 10), np.int32)
    out["relationships"] = np.array(rels, np.int32)
    out["predicates"] = np.array(preds, np.int32)[:, None]
    return out


def write_vg(root: Path, mutate=None, drop_keys=(), images=IMAGES) -> Path:
    """Writes the three VG150 files (and an empty VG_100K/) of ``images`` into ``root``;
    ``mutate(arrays)`` edits the h5 arrays first."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "VG_100K").mkdir(exist_ok=True)
    arrays = h5_arrays(images)
    if mutate is not None:
        mutate(arrays)
    with h5py.File(root / "VG-SGG-with-attri.h5", "w") as f:
        for key, value in arrays.items():
            if key not in drop_keys:
                f.create_dataset(key, data=value)
    image_data = [{"image_id": i, "width": w, "height": h} for i, _, (w, h), _, _ in images]
    image_data.insert(2, {"image_id": 1592, "width": 10, "height": 10})  # corrupted: skipped
    (root / "image_data.json").write_text(json.dumps(image_data))
    dicts = {
        "label_to_idx": {c: i + 1 for i, c in enumerate(CLASSES)},
        "idx_to_label": {str(i + 1): c for i, c in enumerate(CLASSES)},
        "predicate_to_idx": {p: i + 1 for i, p in enumerate(PREDICATES)},
        "idx_to_predicate": {str(i + 1): p for i, p in enumerate(PREDICATES)},
    }
    (root / "VG-SGG-dicts-with-attri.json").write_text(json.dumps(dicts))
    return root


@pytest.fixture
def vg_root(tmp_path) -> Path:
    return write_vg(tmp_path / "vg")


def _by_id(dicts) -> dict[int, dict]:
    return {d["image_id"]: d for d in dicts}


def test_decode_golden():
    out = decode_boxes(np.array([[100, 50, 40, 20]]), 512, 1024)
    np.testing.assert_allclose(out, [[40, 20, 60, 30]])


def test_classes_exclude_background(vg_root):
    classes = load_vg150_classes(vg_root / "VG-SGG-dicts-with-attri.json")
    assert classes["thing_classes"] == CLASSES
    assert classes["predicate_classes"][0] == "above"  # predicate id 1
    assert classes["attribute_classes"] == []
    assert all("__background__" not in v for v in classes.values())


def test_class_ids_with_gap_are_rejected(tmp_path):
    path = tmp_path / "dicts.json"
    path.write_text(json.dumps({"label_to_idx": {"a": 1, "b": 3}, "predicate_to_idx": {"x": 1}}))
    with pytest.raises(ConfigValueError, match="label_to_idx"):
        load_vg150_classes(path)


def test_splits_val_rule_and_content(vg_root):
    val = load_vg150(vg_root, "val", num_val_images=1)
    train = load_vg150(vg_root, "train", num_val_images=1)
    test = load_vg150(vg_root, "test", num_val_images=1)
    # train split (h5 0) with boxes and relations: 10, 14, 15 (11: no boxes, 13: no relations)
    assert [d["image_id"] for d in val] == [10]
    assert [d["image_id"] for d in train] == [14, 15]
    assert [d["image_id"] for d in test] == [12]  # 16 has no relations
    d = val[0]
    assert d["file_name"] == str(vg_root / "VG_100K" / "10.jpg")
    assert (d["height"], d["width"]) == (256, 512)
    bboxes = [a["bbox"] for a in d["annotations"]]
    np.testing.assert_allclose(bboxes, [[40, 20, 60, 30], [125, 25, 175, 75]])  # golden
    assert [a["category_id"] for a in d["annotations"]] == [0, 1]  # labels 1..C -> 0..C-1
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])
    # relations are local indices with VG predicate ids; duplicates on a pair are kept
    assert d["relations"].dtype == np.int64
    np.testing.assert_array_equal(d["relations"], [[0, 1, 3]])
    np.testing.assert_array_equal(test[0]["relations"], [[0, 1, 1], [0, 1, 3], [2, 0, 2]])
    np.testing.assert_array_equal(_by_id(train)[15]["relations"], [[1, 0, 2]])
    assert len(load_vg150(vg_root, "train", num_val_images=0)) == 3


def test_empty_relation_filter_can_be_disabled(vg_root):
    opts = {"num_val_images": 1, "filter_empty_relations": False}
    assert [d["image_id"] for d in load_vg150(vg_root, "train", **opts)] == [13, 14, 15]
    test = _by_id(load_vg150(vg_root, "test", **opts))
    assert sorted(test) == [12, 16]  # 11 (no boxes) is never loaded
    assert test[16]["relations"].shape == (0, 3)
    np.testing.assert_allclose(
        test[16]["annotations"][0]["bbox"], [497.0703125, 2.9296875, 500, 6.8359375]
    )  # clipped


def test_non_overlap_filter_only_when_enabled_and_only_train(vg_root):
    train = _by_id(load_vg150(vg_root, "train", num_val_images=0, filter_non_overlap=True))
    assert sorted(train) == [14, 15]  # 10's only relation joins disjoint boxes: image dropped
    np.testing.assert_array_equal(train[14]["relations"], [[0, 1, 3]])  # (0, 2) disjoint
    plain = _by_id(load_vg150(vg_root, "train", num_val_images=0))
    assert sorted(plain) == [10, 14, 15] and len(plain[14]["relations"]) == 2
    val = load_vg150(vg_root, "val", num_val_images=1, filter_non_overlap=True)
    assert [d["image_id"] for d in val] == [10]  # val/test are never filtered


def test_num_val_images_leaving_no_train_raises(vg_root):
    with pytest.raises(ConfigValueError, match="NUM_VAL_IMAGES"):
        load_vg150(vg_root, "train", num_val_images=3)
    with pytest.raises(ConfigValueError, match="split 'dev'"):
        load_vg150(vg_root, "dev")


@pytest.mark.parametrize(
    "name", ["VG-SGG-with-attri.h5", "VG-SGG-dicts-with-attri.json", "image_data.json", "VG_100K"]
)
def test_missing_file(vg_root, name):
    path = vg_root / name
    path.rmdir() if path.is_dir() else path.unlink()
    with pytest.raises(MissingFileError) as err:
        load_vg150(vg_root, "train", num_val_images=1)
    assert str(path) in str(err.value) and "DETECTRON2_DATASETS" in str(err.value)


def test_missing_h5_key_and_box_scale(tmp_path):
    root = write_vg(tmp_path / "a", drop_keys=("predicates",))
    with pytest.raises(ConfigValueError, match=r"VG-SGG-with-attri.h5: missing key\(s\) \['predi"):
        load_vg150(root, "test")
    root = write_vg(tmp_path / "b", drop_keys=("boxes_512",))
    with pytest.raises(ConfigValueError, match="boxes_512"):
        load_vg150(root, "test", box_scale=512)
    assert len(load_vg150(root, "test")) == 1  # boxes_1024 is there


def test_image_count_mismatch(vg_root):
    path = vg_root / "image_data.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-1]))
    with pytest.raises(ConfigValueError, match="image_data.json lists 6 images .* has 7"):
        load_vg150(vg_root, "test")


def test_bad_image_size_in_image_data(vg_root):
    path = vg_root / "image_data.json"
    entries = json.loads(path.read_text())
    entries[3]["width"] = 0
    path.write_text(json.dumps(entries))
    with pytest.raises(ConfigValueError, match=r"image_data.json: entry 3 \(image_id 12\)"):
        load_vg150(vg_root, "test")


def _set(key, index, value):
    def mutate(arrays):
        arrays[key][index] = value

    return mutate


# h5 indices: image 0..6 = ids 10..16; boxes: 10 -> 0-1, 12 -> 2-4, 13 -> 5-6, 14 -> 7-9,
# 15 -> 10-11, 16 -> 12; relations: 10 -> 0, 12 -> 1-3, 14 -> 4-5, 15 -> 6.
BAD_DATA = {
    "first after last": (_set("img_to_last_box", 4, 6), 14, "img_to_first_box"),
    "one side -1": (_set("img_to_last_rel", 3, 0), 13, "img_to_first_rel"),
    "range past the end": (_set("img_to_last_box", 6, 99), 16, "img_to_first_box"),
    "relations without boxes": (
        lambda a: (_set("img_to_first_rel", 1, 0)(a), _set("img_to_last_rel", 1, 0)(a)),
        11, "img_to_first_rel",
    ),
    "zero width": (_set("boxes_1024", (10, 2), 0), 15, "'boxes'"),
    "negative centre": (_set("boxes_1024", (3, 0), -1), 12, "'boxes'"),
    "predicate too large": (_set("predicates", 5, 4), 14, "'predicates'"),
    "predicate zero": (_set("predicates", 0, 0), 10, "'predicates'"),
    "label too large": (_set("labels", 11, 4), 15, "'labels'"),
    "label zero": (_set("labels", 2, 0), 12, "'labels'"),
    "relation to another image's box": (_set("relationships", (6, 1), 9), 15, "'relationships'"),
    "box ranges of two images overlap": (
        _set("img_to_first_box", 5, 9), 15, "'img_to_first_box/img_to_last_box': range 9..11 "
        "overlaps range 7..9 of image_id 14",
    ),
    "relation ranges of two images overlap": (
        _set("img_to_first_rel", 5, 5), 15, "'img_to_first_rel/img_to_last_rel': range 5..6 "
        "overlaps range 4..5 of image_id 14",
    ),
    # image 10 is 512x256, i.e. 1024x512 at box scale 1024: y1 = 600 - 50 / 2 is below it
    "box below the image": (
        _set("boxes_1024", 1, (300, 600, 100, 50)), 10, "'boxes_1024': row 1 = [300, 600, 100, "
        "50] (cx, cy, w, h) starts at x1, y1 = 125.0, 287.5 pixels, outside the 512x256 image",
    ),
    # image 15 is 300x400, i.e. 768x1024 at box scale 1024: x1 = 780
    "box right of the image": (_set("boxes_1024", 10, (800, 100, 40, 40)), 15, "'boxes_1024'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_names_file_image_and_field(tmp_path, case):
    mutate, image_id, field = BAD_DATA[case]
    root = write_vg(tmp_path / "vg", mutate=mutate)
    with pytest.raises(ConfigValueError) as err:
        load_vg150(root, "train", num_val_images=1)
    message = str(err.value)
    assert "VG-SGG-with-attri.h5" in message and f"image_id {image_id}," in message
    assert field in message
    assert isinstance(err.value, InvalidDataError)


def test_drop_mode_leaves_boxes_outside_the_image_out_with_their_relations(tmp_path, caplog):
    def mutate(arrays):
        arrays["boxes_1024"][9] = (600, 900, 40, 40)  # image 14 (1024x768 at scale): y1 = 880
        arrays["boxes_1024"][5:7] = (50, 800, 20, 20)  # both boxes of image 13 (1024x768)

    root = write_vg(tmp_path / "vg", mutate=mutate)
    opts = {"num_val_images": 0, "filter_empty_relations": False}
    with pytest.raises(InvalidDataError, match="image_id 13, field 'boxes_1024'"):
        load_vg150(root, "train", **opts)
    with caplog.at_level("WARNING", logger="sgg.data.vg150_checks"):
        dropped = _by_id(load_vg150(root, "train", invalid_annotations="drop", **opts))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "VG-SGG-with-attri.h5: dropped 3 of 13 boxes (boxes_1024)" in warning
    assert "image_id 13 row 5" in warning and "image_id 14 row 9" in warning
    reference = _by_id(load_vg150(write_vg(tmp_path / "ok"), "train", **opts))
    assert sorted(dropped) == [10, 14, 15]  # 13 has no box left
    assert dropped[14]["annotations"] == reference[14]["annotations"][:2]
    np.testing.assert_array_equal(dropped[14]["relations"], [[0, 1, 3]])  # (0, 2, 1) used box 2
    for image_id in (10, 15):
        assert dropped[image_id]["annotations"] == reference[image_id]["annotations"]
        np.testing.assert_array_equal(dropped[image_id]["relations"],
                                      reference[image_id]["relations"])  # fmt: skip


def test_loading_is_vectorised(tmp_path):
    """60k images with 10 boxes and 5 relations each load in seconds, not minutes."""
    n, k, r = 60_000, 10, 5
    objs = [((50 + 10 * j, 60, 20, 20), 1 + j % 3) for j in range(k)]
    images = [(100_000 + i, 2 * (i % 3 == 0), (800, 600), objs, [(j, j + 1, 1 + j % 3)
              for j in range(r)]) for i in range(n)]  # fmt: skip
    root = write_vg(tmp_path / "big", images=images)
    start = time.perf_counter()
    train = load_vg150(root, "train", num_val_images=5000)
    elapsed = time.perf_counter() - start
    assert len(train) == 40_000 - 5000 and len(train[-1]["annotations"]) == k
    np.testing.assert_allclose(
        train[-1]["annotations"][9]["bbox"], [101.5625, 39.0625, 117.1875, 54.6875]
    )
    assert elapsed < 15, f"loading took {elapsed:.1f} s"


def test_vg150_registration_and_metadata(monkeypatch, tmp_path):
    for name in VG150_DATASET_NAMES:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "sgg" and meta.sgg_train_dataset == "vg150_train"
        assert len(meta.thing_classes) == 150 and len(meta.predicate_classes) == 50
        assert meta.thing_classes[0] == "airplane" and meta.thing_classes[-1] == "zebra"
        assert meta.predicate_classes[0] == "above" and meta.predicate_classes[-1] == "with"
        assert meta.predicate_classes == sorted(meta.predicate_classes)
        assert meta.predicate_classes[30] == "on"  # VG predicate id 31
        assert "__background__" not in meta.thing_classes + meta.predicate_classes
    assert register_vg150() == []  # idempotent
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert default_vg_root() == tmp_path / "vg"


def test_registered_split_without_files_raises_clearly(tmp_path):
    assert register_vg150(tmp_path / "nowhere", name_prefix="vg150_nowhere") == [
        "vg150_nowhere_train", "vg150_nowhere_val", "vg150_nowhere_test"]  # fmt: skip
    with pytest.raises(MissingFileError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("vg150_nowhere_val")


def test_missing_files_are_found_before_a_run_starts(vg_root):
    import distill
    from distill.data import check_datasets

    register_vg150(vg_root, name_prefix="vg150_up_front")
    cfg = distill.get_distill_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("vg150_up_front_train",), ("vg150_up_front_test",)
    check_datasets(cfg)
    (vg_root / "VG-SGG-with-attri.h5").unlink()
    with pytest.raises(MissingFileError) as err:
        check_datasets(cfg)
    message = str(err.value)
    assert message.startswith("DATASETS.TRAIN: dataset 'vg150_up_front_train' not found")
    assert f"{vg_root / 'VG-SGG-with-attri.h5'} (missing)" in message
    assert f"{vg_root / 'VG_100K'} (found)" in message


def test_registered_split_checks_the_files_classes(vg_root):
    register_vg150(vg_root, name_prefix="vg150_tiny_classes")
    with pytest.raises(ConfigValueError, match="VG-SGG-dicts-with-attri.json: thing_classes"):
        DatasetCatalog.get("vg150_tiny_classes_test")
