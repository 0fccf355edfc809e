"""detectron2 registration of the scene-graph datasets: ``vg150_{train,val,test}`` (the real VG150
files under ``$DETECTRON2_DATASETS/vg``) and ``vgsynth_{train,val,test}`` (generated into the
cache on first load, see :mod:`sgg.data.synthetic_vg`).

Registration reads no file: the VG150 loaders raise a clear :class:`MissingFileError` when used
without the files. The ``DATASETS.VG.*`` options reach the loaders through
:func:`configure_vg_datasets`, called with the run's config before the data loaders are built.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from distill.data import EMBEDDED_CLASSES
from distill.errors import ConfigValueError
from sgg.data.synthetic_vg import (
    DEFAULT_NUM_VAL_IMAGES,
    DEFAULT_SEED,
    SYNTH_PREDICATES,
    UNANNOTATED_FILE,
    ensure_vgsynth,
    vgsynth_dir,
)
from sgg.data.vg150 import SPLITS, load_vg150, load_vg150_classes, vg150_files

VG150_PREDICATES = tuple(
    "above, across, against, along, and, at, attached to, behind, belonging to, between, "
    "carrying, covered in, covering, eating, flying in, for, from, growing on, hanging from, has, "
    "holding, in, in front of, laying on, looking at, lying on, made of, mounted on, near, of, on, "
    "on back of, over, painted on, parked on, part of, playing, riding, says, sitting on, "
    "standing on, to, under, using, walking in, walking on, watching, wearing, wears, with".split(
        ", "
    )
)
VG150_OBJECT_CLASSES = tuple(
    "airplane animal arm bag banana basket beach bear bed bench bike bird board boat book boot "
    "bottle bowl box boy branch building bus cabinet cap car cat chair child clock coat counter "
    "cow cup curtain desk dog door drawer ear elephant engine eye face fence finger flag flower "
    "food fork fruit giraffe girl glass glove guy hair hand handle hat head helmet hill horse "
    "house jacket jean kid kite lady lamp laptop leaf leg letter light logo man men motorcycle "
    "mountain mouth neck nose number orange pant paper paw people person phone pillow pizza "
    "plane plant plate player pole post pot racket railing rock roof room screen seat sheep "
    "shelf shirt shoe short sidewalk sign sink skateboard ski skier sneaker snow sock stand "
    "street surfboard table tail tie tile tire toilet towel tower track train tree truck trunk "
    "umbrella vase vegetable vehicle wave wheel window windshield wing wire woman zebra".split()
)
VG150_DATASET_NAMES = tuple(f"vg150_{s}" for s in SPLITS)
VGSYNTH_DATASET_NAMES = tuple(f"vgsynth_{s}" for s in SPLITS)
# DATASETS.VG.* as last applied by configure_vg_datasets (the config defaults until then).
_LOAD_OPTIONS: dict[str, Any] = {
    "box_scale": 1024,
    "num_val_images": 5000,
    "filter_empty_relations": True,
    "filter_non_overlap": False,
    "invalid_annotations": "error",
}


def configure_vg_datasets(cfg) -> None:
    """Makes every VG-format dataset load with ``cfg.DATASETS.VG.*`` (BOX_SCALE,
    NUM_VAL_IMAGES, FILTER_EMPTY_RELATIONS, FILTER_NON_OVERLAP) and
    DATASETS.INVALID_ANNOTATIONS; vgsynth keeps its own validation size.
    FILTER_DUPLICATE_RELATIONS is the dataset mapper's."""
    vg = cfg.DATASETS.VG
    _LOAD_OPTIONS.update(
        box_scale=int(vg.BOX_SCALE),
        num_val_images=int(vg.NUM_VAL_IMAGES),
        filter_empty_relations=bool(vg.FILTER_EMPTY_RELATIONS),
        filter_non_overlap=bool(vg.FILTER_NON_OVERLAP),
        invalid_annotations=str(cfg.DATASETS.get("INVALID_ANNOTATIONS", "error")),
    )


def default_vg_root() -> Path:
    """``$DETECTRON2_DATASETS/vg`` (``datasets/vg`` by default), as detectron2's builtins."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))) / "vg"


def _load(name: str, root_fn, split: str, num_val_images: int | None) -> list[dict]:
    """Loads ``split`` from the folder ``root_fn()`` after checking its classes."""
    from detectron2.data import MetadataCatalog

    root = root_fn()
    meta = MetadataCatalog.get(name)
    dicts_file = vg150_files(root)["dicts"]
    classes = load_vg150_classes(dicts_file)
    for key in ("thing_classes", "predicate_classes"):
        if classes[key] != list(getattr(meta, key)):
            raise ConfigValueError(
                f"{dicts_file}: {key} {classes[key][:5]}... ({len(classes[key])}) differ from "
                f"those registered for dataset {name!r} ({len(getattr(meta, key))})"
            )
    options = dict(_LOAD_OPTIONS)
    if num_val_images is not None:
        options["num_val_images"] = num_val_images
    return load_vg150(root, split, **options)


def _register(prefix: str, root_fn, num_val_images: int | None, **metadata) -> list[str]:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    registered = []
    for split in SPLITS:
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, partial(_load, name, root_fn, split, num_val_images))
        MetadataCatalog.get(name).set(
            evaluator_type="sgg", sgg_train_dataset=f"{prefix}_train", split=split, **metadata
        )
        registered.append(name)
    return registered


def register_vg150(root: str | os.PathLike | None = None, name_prefix: str = "vg150") -> list[str]:
    """Registers ``vg150_train`` / ``vg150_val`` / ``vg150_test`` lazily (idempotent).

    Metadata: ``thing_classes`` (150), ``predicate_classes`` (50, ``[0]`` = predicate id 1),
    ``evaluator_type="sgg"``, ``sgg_train_dataset`` (the train split's name, from which the
    evaluator derives zero-shot triplets and predicate groups), ``vg_root`` and
    ``required_paths`` (the three files and the image folder, checked before a run starts by
    :func:`distill.data.check_datasets`).

    Args:
        root: Folder of the VG150 files; default :func:`default_vg_root`, resolved now.

    Returns:
        The names registered by this call.
    """
    root = Path(root).expanduser() if root is not None else default_vg_root()
    return _register(
        name_prefix,
        lambda: root,
        None,
        vg_root=str(root),
        required_paths=[str(p) for p in vg150_files(root).values()],
        thing_classes=list(VG150_OBJECT_CLASSES),
        predicate_classes=list(VG150_PREDICATES),
    )


def register_vgsynth(
    root: str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    num_images: dict[str, int] | None = None,
    num_val_images: int = DEFAULT_NUM_VAL_IMAGES,
    name_prefix: str = "vgsynth",
) -> list[str]:
    """Registers ``vgsynth_train`` / ``vgsynth_val`` / ``vgsynth_test`` lazily (idempotent).

    The first load generates the dataset into the cache (:func:`ensure_vgsynth`). Metadata as
    :func:`register_vg150`, with the embedded classes, the synthetic predicates, ``vg_root``,
    ``unannotated_file`` (true relations left unannotated) and ``embedded=True``.

    Args:
        root: Cache root, resolved now (``$DISTILL_CACHE`` or ``~/.cache/distill``).
        seed: Generator seed.
        num_images: Embedded images per split (default train 240 -> train/val, val 60 -> test).
        num_val_images: Validation size (overrides DATASETS.VG.NUM_VAL_IMAGES).
        name_prefix: Datasets are named ``<name_prefix>_<split>`` (e.g. tiny test sets).
    """
    folder = vgsynth_dir(root, seed, num_images)
    root = folder.parent

    def root_fn() -> Path:
        return ensure_vgsynth(root, seed, num_images)

    return _register(
        name_prefix,
        root_fn,
        num_val_images,
        vg_root=str(folder),
        unannotated_file=str(folder / UNANNOTATED_FILE),
        embedded=True,
        thing_classes=list(EMBEDDED_CLASSES),
        predicate_classes=list(SYNTH_PREDICATES),
    )
