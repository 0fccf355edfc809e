"""The generated "vgsynth" dataset: exact VG150 file formats read by the real loader, the truth
and annotator model (long tail, multi-predicate pairs, unannotated relations), determinism,
caching and registration."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from sgg.data import (
    SYNTH_PREDICATES,
    VGSYNTH_DATASET_NAMES,
    annotate_relations,
    configure_vg_datasets,
    decode_boxes,
    ensure_vgsynth,
    load_vg150,
    register_vgsynth,
    true_predicates,
    write_vgsynth,
)
from sgg.data import register as sgg_register
from sgg.data.synthetic_vg import encode_boxes

import distill
from distill.data import EMBEDDED_CLASSES, ensure_embedded_dataset

SMALL = {"train": 96, "val": 24}  # embedded images: 96 -> h5 split 0, 24 -> split 2
NUM_VAL = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """Cache root shared by the sgg data tests of this session (generated once)."""
    return tmp_path_factory.getbasetemp() / "sgg_data_cache"


@pytest.fixture(scope="module")
def synth(cache) -> Path:
    return ensure_vgsynth(cache, num_images=SMALL)


def _coco(cache: Path, split: str) -> tuple[dict, dict[int, list]]:
    paths = ensure_embedded_dataset(cache, num_images=SMALL, progress=False)
    coco = json.loads(Path(paths[split]["json_file"]).read_text())
    by_image: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return coco, by_image


def _triplets(rows) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in r) for r in rows}


def test_files_have_the_vg150_formats(synth):
    with h5py.File(synth / "VG-SGG-with-attri.h5") as f:
        assert set(f) == {"split", "img_to_first_box", "img_to_last_box", "img_to_first_rel",
                          "img_to_last_rel", "labels", "boxes_1024", "boxes_512", "attributes",
                          "relationships", "predicates"}  # fmt: skip
        h5 = {k: f[k][()] for k in f}
    n_img, n_box, n_rel = len(h5["split"]), len(h5["labels"]), len(h5["predicates"])
    assert n_img == 120 and list(h5["split"]) == [0] * 96 + [2] * 24
    assert h5["labels"].shape == (n_box, 1) and set(h5["labels"].ravel()) <= set(range(1, 9))
    assert h5["boxes_1024"].shape == (n_box, 4) and h5["boxes_1024"].dtype == np.int32
    assert np.abs(2 * h5["boxes_512"] - h5["boxes_1024"]).max() <= 3
    assert h5["attributes"].shape == (n_box, 10) and h5["attributes"].max() <= 6
    assert h5["relationships"].shape == (n_rel, 2) and h5["predicates"].shape == (n_rel, 1)
    assert h5["predicates"].min() >= 1 and h5["predicates"].max() <= len(SYNTH_PREDICATES)
    assert (h5["img_to_first_box"] < 0).any()  # the embedded data has images without objects
    dicts = json.loads((synth / "VG-SGG-dicts-with-attri.json").read_text())
    assert dicts["idx_to_label"]["1"] == EMBEDDED_CLASSES[0]
    assert sorted(dicts["predicate_to_idx"], key=dicts["predicate_to_idx"].get) == sorted(
        SYNTH_PREDICATES
    )  # alphabetical ids as VG
    assert dicts["idx_to_predicate"]["1"] == "above" and len(dicts["attribute_to_idx"]) == 6
    assert sum(dicts["predicate_count"].values()) == n_rel
    assert sum(dicts["object_count"].values()) == n_box
    image_data = json.loads((synth / "image_data.json").read_text())
    assert len(image_data) == n_img and set(image_data[0]) == {"image_id", "width", "height"}
    for entry in image_data[::40]:
        with Image.open(synth / "VG_100K" / f"{entry['image_id']}.jpg") as im:
            assert im.format == "JPEG" and im.size == (entry["width"], entry["height"])


def test_real_loader_reads_the_generated_files(synth, cache):
    splits = {s: load_vg150(synth, s, num_val_images=NUM_VAL) for s in ("train", "val", "test")}
    with h5py.File(synth / "VG-SGG-with-attri.h5") as f:
        usable = (f["img_to_first_box"][()] >= 0) & (f["img_to_first_rel"][()] >= 0)
        split = f["split"][()]
    assert len(splits["val"]) == NUM_VAL
    assert len(splits["train"]) + NUM_VAL == (usable & (split == 0)).sum()
    assert len(splits["test"]) == (usable & (split == 2)).sum()
    train_ids = [d["image_id"] for d in splits["val"] + splits["train"]]
    assert train_ids == sorted(train_ids)  # val = the first train-split images
    for split_name, coco_split in (("train", "train"), ("test", "val")):
        coco, anns = _coco(cache, coco_split)
        base = 100_000 if coco_split == "train" else 200_000
        sizes = {im["id"]: max(im["width"], im["height"]) for im in coco["images"]}
        for d in splits[split_name]:
            objs = sorted(anns[d["image_id"] - base], key=lambda a: a["id"])
            expected = np.array([a["bbox"] for a in objs])
            expected[:, 2:] += expected[:, :2]
            got = np.array([a["bbox"] for a in d["annotations"]])
            tolerance = 1.5 * sizes[d["image_id"] - base] / 1024 + 1e-6
            np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)
            assert [a["category_id"] for a in d["annotations"]] == [
                a["category_id"] - 1 for a in objs
            ]
            assert len(d["relations"]) and d["relations"][:, :2].max() < len(objs)


def test_side_file_completes_the_annotated_truth(synth, cache):
    side = json.loads((synth / "unannotated_relations.json").read_text())
    assert side["predicates"] == list(SYNTH_PREDICATES)
    loaded = {d["image_id"]: d for s in ("train", "val", "test")
              for d in load_vg150(synth, s, num_val_images=NUM_VAL)}  # fmt: skip
    num_missing = num_other = multi_annotated = 0
    for coco_split, base in (("train", 100_000), ("val", 200_000)):
        _, anns = _coco(cache, coco_split)
        for image, objs in anns.items():
            objs = sorted(objs, key=lambda a: a["id"])
            boxes = np.array([a["bbox"] for a in objs], dtype=np.float64).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]
            classes = np.array([a["category_id"] - 1 for a in objs], dtype=np.int64)
            truth = true_predicates(boxes, classes)
            true = _triplets(np.argwhere(truth) + [0, 0, 1])
            record = loaded.get(base + image, {"relations": np.zeros((0, 3))})
            annotated = _triplets(record["relations"])
            entry = side["images"].get(str(base + image), {})
            missing = _triplets(entry.get("missing_pair", []))
            other = _triplets(entry.get("other_predicate", []))
            assert annotated | missing | other == true
            assert not (annotated & missing or annotated & other or missing & other)
            pairs = Counter((s, o) for s, o, _ in annotated)
            assert not {(s, o) for s, o, _ in missing} & set(pairs)
            assert {(s, o) for s, o, _ in other} <= set(pairs)
            num_missing, num_other = num_missing + len(missing), num_other + len(other)
            multi_annotated += sum(c > 1 for c in pairs.values())
    assert num_missing > 50 and num_other > 30  # unannotated pairs and multi-predicate pairs
    assert multi_annotated > 5  # some pairs carry two annotated predicates (mapper filters them)


def test_predicate_distribution_is_long_tailed(synth):
    with h5py.File(synth / "VG-SGG-with-attri.h5") as f:
        counts = np.bincount(f["predicates"][()].ravel(), minlength=len(SYNTH_PREDICATES) + 1)[1:]
    top = np.sort(counts)[::-1]
    assert all(top[i] >= 1.3 * top[i + 1] for i in range(3)), top  # strictly decreasing head
    assert top[0] >= 0.35 * counts.sum() and top[0] >= 10 * top[top > 0][-1]
    assert (counts < 0.05 * counts.sum()).sum() >= 5  # a tail of rare predicates


def test_true_predicates_hand_case():
    # square (big, drawn first), capsule inside it drawn on top, disc below the square
    boxes = np.array([[0, 0, 100, 100], [40, 40, 60, 60], [0, 130, 100, 160]], dtype=np.float64)
    classes = np.array([EMBEDDED_CLASSES.index(c) for c in ("square", "capsule", "disc")])
    truth = true_predicates(boxes, classes)
    named = {(s, o, SYNTH_PREDICATES[p]) for s, o, p in np.argwhere(truth)}
    assert named == {
        (1, 0, "in front of"), (1, 0, "on"), (1, 0, "lying on"), (1, 0, "in"),
        (0, 1, "behind"), (0, 1, "has"),
        (0, 2, "above"), (0, 2, "over"), (0, 2, "near"), (2, 0, "under"), (2, 0, "near"),
    }  # fmt: skip


def test_annotator_partitions_the_truth():
    boxes = np.array([[0, 0, 100, 100], [40, 40, 60, 60], [0, 130, 100, 160]], dtype=np.float64)
    truth = true_predicates(boxes, np.array([1, 6, 0]))
    true = _triplets(np.argwhere(truth) + [0, 0, 1])
    written_counts = []
    for seed in range(30):
        annotated, missing, other = annotate_relations(truth, np.random.default_rng(seed))
        parts = [_triplets(annotated), _triplets(missing), _triplets(other)]
        assert set().union(*parts) == true and sum(map(len, parts)) == len(true)
        assert len(annotated) >= 1 and max(Counter(map(tuple, annotated[:, :2])).values()) <= 2
        written_counts.append(len(annotated))
    assert len(set(written_counts)) > 1  # the annotator is random
    empty = annotate_relations(
        np.zeros((0, 0, len(SYNTH_PREDICATES)), bool), np.random.default_rng()
    )
    assert all(a.shape == (0, 3) for a in empty)


def test_box_encoding_inverts_the_decoding():
    np.testing.assert_array_equal(encode_boxes(np.array([[40, 20, 60, 30]]), 512, 1024),
                                  [[100, 50, 40, 20]])  # fmt: skip
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 50, (50, 2))], axis=1)
    for scale in (1024, 512):
        decoded = decode_boxes(encode_boxes(boxes, 256, scale), 256, scale)
        assert np.abs(decoded - boxes).max() <= 1.5 * 256 / scale


def test_same_seed_gives_identical_files(tmp_path, cache):
    embedded = ensure_embedded_dataset(cache, num_images=SMALL, progress=False)
    write_vgsynth(tmp_path / "a", embedded, seed=0)
    write_vgsynth(tmp_path / "b", embedded, seed=0)
    write_vgsynth(tmp_path / "c", embedded, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 4 + 120
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    h5 = "VG-SGG-with-attri.h5"
    assert (tmp_path / "a" / h5).read_bytes() != (tmp_path / "c" / h5).read_bytes()
    assert (tmp_path / "a" / "VG_100K").is_dir()


def test_ensure_is_cached_and_atomic(synth, cache):
    stamp = (synth / "VG-SGG-with-attri.h5").stat().st_mtime_ns
    assert ensure_vgsynth(cache, num_images=SMALL) == synth
    assert (synth / "VG-SGG-with-attri.h5").stat().st_mtime_ns == stamp
    assert (synth / "COMPLETE").is_file() and synth.name.startswith("vgsynth_v1")
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_registration_metadata_and_config(synth, cache, monkeypatch):
    for name in VGSYNTH_DATASET_NAMES:  # registered at import, generated only when loaded
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(EMBEDDED_CLASSES)
        assert meta.predicate_classes == sorted(SYNTH_PREDICATES)
        assert meta.evaluator_type == "sgg" and meta.sgg_train_dataset == "vgsynth_train"
    names = register_vgsynth(cache, num_images=SMALL, num_val_images=NUM_VAL,
                             name_prefix="vgsynth_small")  # fmt: skip
    assert names == ["vgsynth_small_train", "vgsynth_small_val", "vgsynth_small_test"]
    assert register_vgsynth(cache, num_images=SMALL, name_prefix="vgsynth_small") == []
    meta = MetadataCatalog.get("vgsynth_small_test")
    assert meta.sgg_train_dataset == "vgsynth_small_train" and meta.vg_root == str(synth)
    assert Path(meta.unannotated_file).is_file()
    sizes = {s: len(DatasetCatalog.get(f"vgsynth_small_{s}")) for s in ("train", "val", "test")}
    assert sizes["val"] == NUM_VAL
    assert sizes["train"] == len(load_vg150(synth, "train", num_val_images=NUM_VAL))

    monkeypatch.setattr(sgg_register, "_LOAD_OPTIONS", dict(sgg_register._LOAD_OPTIONS))
    cfg = distill.get_distill_cfg()
    cfg.DATASETS.VG.FILTER_EMPTY_RELATIONS = False
    cfg.DATASETS.VG.NUM_VAL_IMAGES = 3  # vgsynth keeps its registered validation size
    configure_vg_datasets(cfg)
    assert len(DatasetCatalog.get("vgsynth_small_val")) == NUM_VAL
    test = DatasetCatalog.get("vgsynth_small_test")
    assert len(test) > sizes["test"] and any(len(d["relations"]) == 0 for d in test)
