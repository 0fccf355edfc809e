"""Seeded generator of a small COCO-format detection dataset (the "embedded data").

Eight classes of textured shapes are pasted onto crops of real CC0 photos shipped inside the
scikit-image package (or onto procedural textures when scikit-image is absent). Later objects
occlude earlier ones; boxes, areas and RLE masks describe the *visible* part, as in COCO.
Everything is a pure function of ``(seed, split, image index)``, so the same seed gives
byte-identical PNGs and JSON, and image ``i`` does not depend on how many images are made.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from distill.data.cache import ensure_generated_folder
from distill.data.synthetic_render import EMBEDDED_CLASSES, render_image

DATASET_VERSION = "embedded_coco_v1"
DEFAULT_SEED = 0
DEFAULT_NUM_IMAGES = {"train": 240, "val": 60}
_SKIMAGE_PHOTOS = (  # PNG only: lossless decoding is identical across libraries
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "moon.png", "motorcycle_left.png",
)  # fmt: skip


def find_background_images() -> list[Path]:
    """Locates the CC0 photos in the installed scikit-image package without importing it.

    Returns:
        Existing image paths (empty if scikit-image is not installed). ``skimage.data`` is not
        imported on purpose: it may try to download files through pooch.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [data_dir / name for name in _SKIMAGE_PHOTOS if (data_dir / name).is_file()]


def background_source(paths: list[Path]) -> str:
    """Background description for the JSON ``info``: ``"skimage-<version>:<files>"`` or
    ``"procedural"``."""
    if not paths:
        return "procedural"
    try:
        version = importlib.metadata.version("scikit-image")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"skimage-{version}:" + ",".join(p.name for p in paths)


@lru_cache(maxsize=4)
def _load_photos(paths: tuple[Path, ...]) -> tuple[Image.Image, ...]:
    return tuple(Image.open(p).convert("RGB") for p in paths)


def _progress(items: Iterable, total: int, desc: str, enabled: bool) -> Iterator:
    """tqdm when installed, otherwise a counter on stderr every ~10%."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        step = max(1, total // 10)
        for i, item in enumerate(items, 1):
            yield item
            if i % step == 0 or i == total:
                print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)
        return
    yield from tqdm(items, total=total, desc=desc, unit="img")


def _encode_rle(mask: np.ndarray) -> dict[str, Any] | None:
    try:
        from pycocotools import mask as mask_util
    except ImportError:
        return None
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_coco_split(
    out_dir: str | os.PathLike,
    split: str,
    num_images: int,
    seed: int = DEFAULT_SEED,
    image_size_range: tuple[int, int] = (128, 256),
    progress: bool = False,
) -> Path:
    """Writes ``out_dir/<split>/NNNNNN.png`` and ``out_dir/annotations/instances_<split>.json``.

    Args:
        out_dir: Dataset directory (created if needed).
        split: Split name; part of the per-image seed, so splits never share images.
        num_images: Number of images; image ``i`` is identical whatever this number is.
        seed: Base seed; each image uses ``PCG64([seed, crc32(split), i])``.
        image_size_range: Inclusive range of each image side in pixels (H and W drawn apart).
        progress: Show a progress bar (tqdm if installed, else a stderr counter).

    Returns:
        Path of the COCO JSON. Boxes are ``[x, y, w, h]`` floats of the visible mask, ``area``
        is its pixel count and ``segmentation`` its RLE (omitted without pycocotools).
    """
    out_dir = Path(out_dir)
    image_dir, ann_dir = out_dir / split, out_dir / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    bg_paths = find_background_images()
    photos = _load_photos(tuple(bg_paths)) if bg_paths else ()
    images, annotations = [], []
    for index in _progress(range(num_images), num_images, f"{split} images", progress):
        img, objects = render_image(seed, split, index, image_size_range, photos)
        file_name = f"{index:06d}.png"
        Image.fromarray(img).save(image_dir / file_name, format="PNG")
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
        )
        for cat_id, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
            rle = _encode_rle(mask)
            if rle is not None:
                ann["segmentation"] = rle
            annotations.append(ann)
    info = {
        "description": "synthetic textured shapes (distill embedded dataset)",
        "version": DATASET_VERSION,
        "split": split,
        "seed": seed,
        "image_size_range": list(image_size_range),
        "background_source": background_source(bg_paths),
    }
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(EMBEDDED_CLASSES)
    ]
    coco = {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}  # fmt: skip
    json_path = ann_dir / f"instances_{split}.json"
    json_path.write_text(json.dumps(coco, separators=(",", ":")))
    return json_path


def default_cache_root() -> Path:
    """``$DISTILL_CACHE`` if set, else ``~/.cache/distill``."""
    return Path(os.path.expanduser(os.environ.get("DISTILL_CACHE", "~/.cache/distill")))


def embedded_dataset_paths(
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    num_images: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Deterministic paths of the embedded dataset, without generating anything.

    The folder is ``<root>/embedded_coco_v1`` for the defaults with scikit-image photos;
    a ``_procedural`` suffix marks the fallback backgrounds and ``_s<seed>_train<n>-val<n>``
    non-default parameters, so one folder always holds one exact content.

    Returns:
        ``{"dataset_dir": Path, "train": {"json_file", "image_root"}, "val": {...}}``
        (paths as ``str``; one entry per split of ``num_images``).
    """
    num_images = dict(DEFAULT_NUM_IMAGES if num_images is None else num_images)
    name = DATASET_VERSION
    if not find_background_images():
        name += "_procedural"
    if seed != DEFAULT_SEED or num_images != DEFAULT_NUM_IMAGES:
        name += f"_s{seed}_" + "-".join(f"{split}{n}" for split, n in num_images.items())
    dataset_dir = Path(root).expanduser() if root is not None else default_cache_root()
    dataset_dir = dataset_dir.absolute() / name
    paths: dict[str, Any] = {"dataset_dir": dataset_dir}
    for split in num_images:
        paths[split] = {
            "json_file": str(dataset_dir / "annotations" / f"instances_{split}.json"),
            "image_root": str(dataset_dir / split),
        }
    return paths


def ensure_embedded_dataset(
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    num_images: dict[str, int] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates the embedded dataset into the cache on first use and returns its paths.

    Generation is atomic (:func:`distill.data.cache.ensure_generated_folder`): an interrupted run
    never leaves a partial dataset, and concurrent processes end up with one identical copy.

    Args:
        root: Cache root (default :func:`default_cache_root`).
        seed: Base seed.
        num_images: Images per split (default ``{"train": 240, "val": 60}``).
        force: Delete and regenerate an existing dataset.
        progress: Show progress bars while generating.

    Returns:
        The dict of :func:`embedded_dataset_paths`.
    """
    paths = embedded_dataset_paths(root, seed, num_images)

    def write(folder: Path) -> None:
        for split, count in (num_images or DEFAULT_NUM_IMAGES).items():
            generate_coco_split(folder, split, count, seed, progress=progress)

    ensure_generated_folder(paths["dataset_dir"], write, force=force)
    return paths
