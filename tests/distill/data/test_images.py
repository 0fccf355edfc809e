"""A truncated or unreadable image fails naming its file and image id, through detectron2's
DatasetMapper (wrapped by ``dataset_mapper``), also inside a data-loader worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.structures import BoxMode
from PIL import Image

import distill
from distill.data.images import ImageErrorNamingMapper, read_image_naming_file
from distill.data.tasks import dataset_mapper
from distill.errors import InvalidDataError


def write_jpeg(path, truncate: bool = False):
    """A 48x64 noise JPEG at ``path``; with ``truncate``, only its first half is kept."""
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def _record(path, image_id: int = 5) -> dict:
    box = {"bbox": [4.0, 4.0, 20.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    return {"file_name": str(path), "image_id": image_id, "height": 48, "width": 64,
            "annotations": [box]}  # fmt: skip


@pytest.fixture
def cfg():
    cfg = distill.get_distill_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 48, "INPUT.MAX_SIZE_TEST", 64])
    return cfg


@pytest.mark.parametrize("kind", ["truncated", "not an image", "missing"])
def test_unreadable_image_names_its_file_and_image_id(tmp_path, cfg, kind):
    path = tmp_path / "broken.jpg"
    if kind == "truncated":
        write_jpeg(path, truncate=True)
    elif kind == "not an image":
        path.write_bytes(b"<html>not found</html>")
    mapper = ImageErrorNamingMapper(DatasetMapper(cfg, is_train=False))
    with pytest.raises(InvalidDataError) as err:
        mapper(_record(path))
    assert str(err.value).startswith(f"image {path} (image_id 5) cannot be read: ")
    with pytest.raises(InvalidDataError, match=f"image {path} \\(image_id 9\\)"):
        read_image_naming_file(str(path), "BGR", image_id=9)


def test_readable_image_maps_as_detectron2_does(tmp_path, cfg):
    record = _record(write_jpeg(tmp_path / "ok.jpg"))
    mapper = dataset_mapper(cfg, "embedded_coco_val", is_train=False)
    assert isinstance(mapper, ImageErrorNamingMapper)
    assert isinstance(mapper.mapper, DatasetMapper)
    out, plain = mapper(record), DatasetMapper(cfg, is_train=False)(record)
    assert out.keys() == plain.keys() and torch.equal(out["image"], plain["image"])


def test_other_mapper_errors_pass_through(tmp_path):
    def broken(_):
        raise KeyError("category_id")

    with pytest.raises(KeyError, match="category_id"):
        ImageErrorNamingMapper(broken)(_record(tmp_path / "x.jpg"))


def test_truncated_image_in_a_loader_worker_names_the_file(tmp_path, cfg):
    path = write_jpeg(tmp_path / "0001.jpg", truncate=True)
    loader = build_detection_test_loader(
        [_record(path)], mapper=dataset_mapper(cfg, "embedded_coco_val", False), num_workers=1
    )
    with pytest.raises(InvalidDataError) as err:
        next(iter(loader))
    message = str(err.value)  # one line, as in the main process; the worker traceback in args
    assert message.startswith(f"image {path} (image_id 5) cannot be read: ") and "\n" not in message
    assert "DataLoader worker process 0" in err.value.args[0]
