"""COCO-format datasets whose annotations are checked when their json is parsed.

:class:`CheckedCocoLoader` wraps a dataset's ``DatasetCatalog`` loader (detectron2's builtins
such as ``coco_2017_train``, ``register_coco_instances`` datasets, the embedded datasets). While
it runs, the pycocotools ``COCO`` class that detectron2's ``load_coco_json`` instantiates is a
subclass that parses the dataset's json itself, checks it with
:func:`distill.data.annotation_checks.find_invalid_annotations` and then indexes the checked
content: the file (450 MB for COCO train) is parsed once, as before. Invalid annotations either
refuse the dataset (:class:`InvalidDataError` naming the json file, the count and the first
image ids / annotation ids) or, with ``DATASETS.INVALID_ANNOTATIONS: drop``, are left out with
one warning that counts and names them; a box is never rewritten.

A loader that never parses the json through pycocotools (a custom one) is checked after it
returns, by parsing the json once more; dropping needs ``load_coco_json`` and is refused there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from distill.data.annotation_checks import (
    describe_problems,
    find_invalid_annotations,
    without_annotations,
)
from distill.errors import ConfigValueError, InvalidDataError

logger = logging.getLogger(__name__)

INVALID_ANNOTATION_MODES = ("error", "drop")
_MODE_KEY = "DATASETS.INVALID_ANNOTATIONS"


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`INVALID_ANNOTATION_MODES`, else a ConfigValueError."""
    if mode not in INVALID_ANNOTATION_MODES:
        raise ConfigValueError(
            f"{_MODE_KEY} = {mode!r}; expected one of {list(INVALID_ANNOTATION_MODES)}"
        )
    return mode


def checked_coco_json(coco: dict[str, Any], json_file: str, mode: str) -> dict[str, Any]:
    """``coco`` if valid; without its invalid annotations in ``drop`` mode (with a warning).

    Raises:
        InvalidDataError: In ``error`` mode, naming ``json_file``, the number of invalid
            annotations and the image id / annotation id / reason of the first few.
    """
    problems = find_invalid_annotations(coco)
    if not problems:
        return coco
    count = f"{len(problems)} of {len(coco.get('annotations', []))} annotations"
    if check_mode(mode) == "error":
        raise InvalidDataError(
            f"{json_file}: {count} are invalid: {describe_problems(problems)}. Fix the file, or "
            f"set {_MODE_KEY} drop to leave them out (they are never rewritten)"
        )
    logger.warning(
        f"{json_file}: dropped {count} as invalid ({_MODE_KEY} is 'drop'): "
        f"{describe_problems(problems)}"
    )
    return without_annotations(coco, problems)


@contextlib.contextmanager
def _checking_coco_parser(json_file: str, mode: str) -> Iterator[list[str]]:
    """While active, ``pycocotools.coco.COCO(json_file)`` returns the checked content.

    Yields a list that receives ``json_file`` when the checked parser ran. Other files are
    parsed by pycocotools as usual.
    """
    import pycocotools.coco as coco_module

    original = coco_module.COCO
    target = os.path.realpath(json_file)
    used: list[str] = []

    class CheckingCOCO(original):
        def __init__(self, annotation_file=None):
            if annotation_file is None or os.path.realpath(annotation_file) != target:
                super().__init__(annotation_file)
                return
            super().__init__()
            with open(annotation_file) as f:
                self.dataset = checked_coco_json(json.load(f), json_file, mode)
            self.createIndex()
            used.append(json_file)

    coco_module.COCO = CheckingCOCO
    try:
        yield used
    finally:
        coco_module.COCO = original


@dataclass(frozen=True)
class CheckedCocoLoader:
    """A ``DatasetCatalog`` loader whose COCO json is checked as it is parsed (module doc).

    Attributes:
        loader: The dataset's own loader (e.g. ``load_coco_json(json_file, image_root, name)``).
        json_file: The dataset's annotation file (its metadata ``json_file``).
        mode: ``"error"`` (refuse the dataset) or ``"drop"`` (leave invalid annotations out).
    """

    loader: Callable[[], list[dict]]
    json_file: str
    mode: str = "error"

    def __call__(self) -> list[dict]:
        with _checking_coco_parser(self.json_file, check_mode(self.mode)) as used:
            dicts = self.loader()
        if not used:  # the loader did not parse the json through pycocotools
            with open(self.json_file) as f:
                coco = json.load(f)
            if self.mode == "drop" and find_invalid_annotations(coco):
                raise ConfigValueError(
                    f"{_MODE_KEY} drop: {self.json_file} has invalid annotations, but its "
                    "loader does not read it with detectron2's load_coco_json, so they cannot "
                    "be dropped; fix the file"
                )
            checked_coco_json(coco, self.json_file, "error")
        return dicts


def check_coco_annotations(dataset_names: Iterable[str], mode: str = "error") -> list[str]:
    """Makes the named COCO-format datasets check their annotations whenever they are loaded.

    Applies to registered datasets whose metadata has a ``json_file`` and ``evaluator_type``
    ``"coco"``; their ``DatasetCatalog`` loader is wrapped in a :class:`CheckedCocoLoader`
    (re-wrapped with ``mode`` if already wrapped). Unregistered names are skipped (see
    :func:`distill.data.register.check_datasets`). Idempotent; nothing is loaded here.

    Returns:
        The names whose loaders now check their annotations.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    check_mode(mode)
    checked = []
    for name in dict.fromkeys(dataset_names):
        if name not in DatasetCatalog:
            continue
        meta = MetadataCatalog.get(name)
        json_file = meta.get("json_file")
        if meta.get("evaluator_type") != "coco" or not json_file:
            continue
        loader = DatasetCatalog[name]
        if isinstance(loader, CheckedCocoLoader):
            loader = loader.loader
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, CheckedCocoLoader(loader, str(json_file), mode))
        checked.append(name)
    return checked


def check_coco_annotations_of(cfg) -> list[str]:
    """:func:`check_coco_annotations` for DATASETS.TRAIN and DATASETS.TEST with
    DATASETS.INVALID_ANNOTATIONS (default ``"error"``)."""
    mode = cfg.DATASETS.get("INVALID_ANNOTATIONS", "error")
    return check_coco_annotations([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST], mode)
