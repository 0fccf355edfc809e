"""Checkpoint helpers: the student part of a distillation checkpoint, and local weight files."""

from __future__ import annotations

import os
import string

from detectron2.checkpoint import DetectionCheckpointer

from distill.errors import MissingFileError

# Distiller modules live under this prefix in the student's state_dict (``model.distillers``).
DISTILLER_PREFIX = "distillers."


def student_state_dict(state: dict) -> dict:
    """The student's weights of a distillation state_dict: everything but ``distillers.*``."""
    return {k: v for k, v in state.items() if not k.startswith(DISTILLER_PREFIX)}


def expand_path(path: str) -> str:
    """Expand ``~`` and environment variables; ``$DISTILL_CACHE`` defaults to the cache root."""
    from distill.data.synthetic_coco import default_cache_root

    env = {**os.environ, "DISTILL_CACHE": str(default_cache_root())}
    return os.path.expanduser(string.Template(path).safe_substitute(env))


def check_local_weights(path: str, key: str) -> None:
    """Fail early when a weights file is a URL or absent: nothing is downloaded at run time."""
    if "://" in path:
        raise MissingFileError(
            f"{key}={path!r} is a URL; nothing is downloaded at run time. Download the file "
            f"yourself and set {key} to its local path."
        )
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{key}: expected the weights file at {os.path.abspath(path)!r}, but it does not "
            "exist. configs/coco/README.md lists the pretrained and teacher weights of the paper "
            "configs and where to get them."
        )


class StudentCheckpointer(DetectionCheckpointer):
    """Loads a distillation checkpoint into the plain student, ignoring distiller weights."""

    def _load_model(self, checkpoint):
        checkpoint["model"] = student_state_dict(checkpoint["model"])
        return super()._load_model(checkpoint)
