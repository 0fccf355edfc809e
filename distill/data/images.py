"""Image reading that names the file: a missing, truncated or undecodable image fails with an
:class:`InvalidDataError` naming the file and the image id, instead of a PIL traceback from deep
inside a data-loader worker (PIL's "image file is truncated" names no file).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from distill.errors import InvalidDataError

# What PIL raises for a missing, unreadable, truncated or corrupt file (OSError covers
# FileNotFoundError and UnidentifiedImageError; some decoders raise SyntaxError).
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


def unreadable_image(file_name: str, image_id: Any, error: BaseException) -> InvalidDataError:
    """The error for an image that could not be read or decoded."""
    return InvalidDataError(
        f"image {file_name} (image_id {image_id}) cannot be read: {type(error).__name__}: {error}"
    )


def read_image_naming_file(file_name: str, image_format: str, image_id: Any = None) -> np.ndarray:
    """detectron2's ``read_image``; a file that cannot be read or decoded raises
    :class:`InvalidDataError` naming it. Returns the (H, W, C) array in ``image_format``."""
    from detectron2.data import detection_utils as utils

    try:
        return utils.read_image(file_name, format=image_format)
    except UNREADABLE_IMAGE_ERRORS as e:
        raise unreadable_image(file_name, image_id, e) from e


class ImageErrorNamingMapper:
    """Wraps a dataset mapper (e.g. detectron2's ``DatasetMapper``): an image that cannot be
    read or decoded fails with :class:`InvalidDataError` naming the dataset dict's
    ``file_name`` and ``image_id``; every other result or error passes through unchanged.
    (A dataset mapper's only file reads are the image and its optional segmentation file.)"""

    def __init__(self, mapper: Callable[[dict], Any]):
        self.mapper = mapper

    def __call__(self, dataset_dict: dict) -> Any:
        try:
            return self.mapper(dataset_dict)
        except UNREADABLE_IMAGE_ERRORS as e:
            name, image_id = dataset_dict.get("file_name"), dataset_dict.get("image_id")
            raise unreadable_image(name, image_id, e) from e

    def __repr__(self) -> str:
        return f"ImageErrorNamingMapper({self.mapper!r})"
