"""SceneGraphDatasetMapper: resizing, instances kept in order in train and test, relations and
their duplicate filtering (training only, random at each load), the no-flip rule, unreadable
images named."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from PIL import Image
from sgg.data import SceneGraphDatasetMapper, filter_duplicate_relations, register_vgsynth

import distill
from distill.errors import ConfigValueError, InvalidDataError


def _cfg(*opts):
    cfg = distill.get_distill_cfg()
    cfg.merge_from_list(["INPUT.RANDOM_FLIP", "none", "INPUT.MIN_SIZE_TRAIN", (80,),
                         "INPUT.MAX_SIZE_TRAIN", 1000, "INPUT.MIN_SIZE_TEST", 80,
                         "INPUT.MAX_SIZE_TEST", 1000, *opts])  # fmt: skip
    return cfg


@pytest.fixture
def record(tmp_path) -> dict:
    """A 40x80 image with three objects (one degenerate) and a pair with two predicates."""
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:] = 255
    Image.fromarray(image).save(tmp_path / "7.png")
    xyxy = BoxMode.XYXY_ABS
    return {
        "file_name": str(tmp_path / "7.png"),
        "image_id": 7,
        "height": 40,
        "width": 80,
        "annotations": [
            {"bbox": [10.0, 5.0, 30.0, 25.0], "bbox_mode": xyxy, "category_id": 3},
            {"bbox": [50.0, 10.0, 20.0, 20.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
            {"bbox": [60.0, 30.0, 60.0, 30.0], "bbox_mode": xyxy, "category_id": 5},  # empty
        ],
        "relations": np.array([[0, 1, 31], [0, 1, 20], [1, 0, 5], [2, 0, 1]], np.int64),
    }


def test_test_mapping_keeps_everything(record):
    out = SceneGraphDatasetMapper(_cfg(), is_train=False)(record)
    assert set(out) == {"file_name", "image_id", "height", "width", "image", "instances",
                        "relations"}  # fmt: skip
    assert (out["height"], out["width"], out["image_id"]) == (40, 80, 7)
    assert out["image"].shape == (3, 80, 160) and out["image"].dtype == torch.uint8
    assert out["image"][:, :, 70].sum() == 0 and (out["image"][:, :, 90] == 255).all()
    inst = out["instances"]
    assert inst.image_size == (80, 160) and len(inst) == 3  # the empty box is not filtered
    expected = torch.tensor([[20, 10, 60, 50], [100, 20, 140, 60], [120, 60, 120, 60]])
    torch.testing.assert_close(inst.gt_boxes.tensor, expected.float())
    assert inst.gt_classes.tolist() == [3, 0, 5]
    assert out["relations"].dtype == torch.int64
    assert out["relations"].tolist() == record["relations"].tolist()  # duplicates kept at test
    assert len(record["annotations"]) == 3  # the input dict is not modified


def test_training_draws_one_predicate_per_pair_at_each_load(record):
    mapper = SceneGraphDatasetMapper(_cfg(), is_train=True)
    np.random.seed(0)
    chosen = Counter()
    for _ in range(200):
        rels = mapper(record)["relations"].tolist()
        assert len(rels) == 3 and [1, 0, 5] in rels and [2, 0, 1] in rels
        pair = [r for r in rels if r[:2] == [0, 1]]
        assert len(pair) == 1
        chosen[pair[0][2]] += 1
    assert set(chosen) == {31, 20} and min(chosen.values()) > 70  # uniform, redrawn each time
    assert len(mapper(record)["instances"]) == 3


def test_duplicate_filter_can_be_disabled(record):
    cfg = _cfg("DATASETS.VG.FILTER_DUPLICATE_RELATIONS", False)
    out = SceneGraphDatasetMapper(cfg, is_train=True)(record)
    assert out["relations"].tolist() == record["relations"].tolist()


def test_filter_duplicate_relations_golden():
    rels = np.array([[0, 1, 3], [2, 0, 1], [0, 1, 7], [0, 1, 9], [1, 0, 3]])
    seen = Counter()
    for seed in range(300):
        kept = filter_duplicate_relations(rels, np.random.default_rng(seed)).tolist()
        rows = [rels.tolist().index(r) for r in kept]  # every kept row is an input row
        assert rows == sorted(rows)  # in the input order
        assert sorted(r[:2] for r in kept) == [[0, 1], [1, 0], [2, 0]]
        seen[next(r[2] for r in kept if r[:2] == [0, 1])] += 1
    assert set(seen) == {3, 7, 9} and min(seen.values()) > 70  # uniform over the pair's rows
    assert filter_duplicate_relations(np.zeros((0, 3), np.int64)).shape == (0, 3)


def test_flip_is_refused_in_training_only():
    cfg = _cfg("INPUT.RANDOM_FLIP", "horizontal")
    with pytest.raises(ConfigValueError, match="INPUT.RANDOM_FLIP"):
        SceneGraphDatasetMapper(cfg, is_train=True)
    SceneGraphDatasetMapper(cfg, is_train=False)  # inference never flips


def test_bad_relations_and_size_mismatch(record):
    mapper = SceneGraphDatasetMapper(_cfg(), is_train=False)
    bad = dict(record, relations=np.array([[0, 3, 1]]))
    with pytest.raises(ConfigValueError, match="image_id 7"):
        mapper(bad)
    with pytest.raises(ConfigValueError, match="predicate ids start at 1"):
        mapper(dict(record, relations=np.array([[0, 1, 0]])))
    # image_data sizes can be wrong: the image is brought to the recorded frame of the boxes
    out = mapper(dict(record, height=80, width=160))
    assert out["image"].shape == (3, 80, 160) and (out["height"], out["width"]) == (80, 160)
    assert out["instances"].gt_boxes.tensor[0].tolist() == [10, 5, 30, 25]


@pytest.mark.parametrize("content", ["truncated", "not an image"])
def test_unreadable_image_names_its_file_and_image_id(record, tmp_path, content):
    path = tmp_path / "7.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else b"GIF89a")
    with pytest.raises(InvalidDataError) as err:
        SceneGraphDatasetMapper(_cfg(), is_train=True)(dict(record, file_name=str(path)))
    assert str(err.value).startswith(f"image {path} (image_id 7) cannot be read: ")


def test_mapper_on_generated_vgsynth(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "sgg_data_cache"
    register_vgsynth(cache, num_images={"train": 96, "val": 24}, num_val_images=16,
                     name_prefix="vgsynth_mapper")  # fmt: skip
    dicts = DatasetCatalog.get("vgsynth_mapper_train")
    mapper = SceneGraphDatasetMapper(_cfg(), is_train=True)
    for d in dicts[:5]:
        out = mapper(d)
        h, w = out["image"].shape[1:]
        assert min(h, w) == 80 and len(out["instances"]) == len(d["annotations"])
        rels = out["relations"]
        assert rels[:, :2].max() < len(d["annotations"]) and rels[:, 2].min() >= 1
        assert len({tuple(p) for p in rels[:, :2].tolist()}) == len(rels)
        scale = torch.tensor([w / d["width"], h / d["height"]] * 2)
        original = torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)
        torch.testing.assert_close(out["instances"].gt_boxes.tensor / scale, original,
                                   atol=1e-3, rtol=1e-4)  # fmt: skip
    assert Path(dicts[0]["file_name"]).suffix == ".jpg"
