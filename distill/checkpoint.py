"""Reading and writing checkpoints safely: the one loader of every weights file.

Every path that reads weights (``MODEL.WEIGHTS`` for training and ``--eval-only``, the teacher's
weights, ``--resume``, ``tools/extract_student.py``) goes through :func:`read_weights_file`:

* ``.pkl`` files (detectron2 / Caffe2 model zoo) are unpickled by :class:`WeightsUnpickler`,
  which builds numpy arrays, numbers, strings and plain containers only and refuses any other
  class, so a crafted file cannot run code;
* every other file is read with ``torch.load(weights_only=True)``;
* a truncated or foreign file stops with one line naming the config key and the file.

:class:`SafeCheckpointer` is detectron2's ``DetectionCheckpointer`` on top of that loader; it
can also require that the weights fit the model exactly (``--resume``, ``--eval-only``), and it
writes checkpoints and ``last_checkpoint`` atomically, so a run killed while saving leaves the
previous checkpoint usable.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import string
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
from detectron2.checkpoint import DetectionCheckpointer

from distill.errors import ConfigValueError, MissingFileError

logger = logging.getLogger(__name__)

# What names the checkpoint that ``--resume`` loads, in messages.
RESUME_SOURCE = "--resume (OUTPUT_DIR/last_checkpoint)"
# Distiller modules live under this prefix in the student's state_dict (``model.distillers``).
DISTILLER_PREFIX = "distillers."

# (module, name) pairs a weights .pkl may reference: numpy arrays and scalars (numpy 1 and 2
# spellings), ordered dicts, and the byte decoding Python 3 pickles of numpy arrays use.
_PICKLE_ALLOWED = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{prefix}.multiarray", "_reconstruct"),
        (f"{prefix}.multiarray", "scalar"),
        (f"{prefix}.numeric", "_frombuffer"),
    )
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class UnsafeCheckpointError(ConfigValueError):
    """A weights file holds objects other than arrays, numbers, strings and containers."""


class UnreadableCheckpointError(ConfigValueError):
    """A weights file is truncated, empty or not a checkpoint at all."""


class WeightsMismatchError(ConfigValueError):
    """Weights whose keys or shapes do not fit the model they are loaded into."""


class WeightsUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numbers, strings and plain containers; refuses other classes."""

    def __init__(self, file, source: str, path: str):
        super().__init__(file, encoding="latin1")  # Python 2 pickles of the Caffe2 model zoo
        self._source, self._path = source, path

    def find_class(self, module: str, name: str):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self._source}: {self._path!r} holds a pickled {module}.{name}, which is not a "
            "weight; refusing to load it (weights .pkl files may hold numpy arrays, numbers, "
            "strings and plain containers only)"
        )


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


def read_weights_file(path: str, source: str) -> Any:
    """The object stored in a weights file, read without running code from it.

    Args:
        path: a ``.pkl`` (pickled numpy weights) or a file written by ``torch.save``.
        source: what named the file (a config key, ``--resume``, ``--weights``), for messages.

    Raises:
        MissingFileError: no file at ``path``.
        UnsafeCheckpointError: the file references a class that weights never need.
        UnreadableCheckpointError: the file is truncated, empty or of another format.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{source}: no file at {os.path.abspath(path)!r}")
    try:
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                return WeightsUnpickler(f, source, path).load()
        return _torch_load_weights(path, source)
    except (UnsafeCheckpointError, UnreadableCheckpointError):
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, ValueError,
            TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError) as e:  # fmt: skip
        reason = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {reason}".rstrip(": ") if len(reason) < 20 else reason
        raise UnreadableCheckpointError(
            f"{source}: {path!r} is not a readable checkpoint (truncated, or not written by "
            f"torch.save or as a detectron2 .pkl): {reason}"
        ) from None


def _torch_load_weights(path: str, source: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a refused class: a broken file
            raise
        raise UnsafeCheckpointError(
            f"{source}: {path!r} holds a pickled {found.group(1)}, which is not a tensor or a "
            "plain container; refusing to load it (checkpoints are read with "
            "torch.load(weights_only=True))"
        ) from None


def checkpoint_dict(data: Any, path: str, source: str) -> dict[str, Any]:
    """``data`` of a weights file as detectron2's ``{"model": state_dict, ...}``.

    Accepts the detectron2 model-zoo ``.pkl`` layout (``model`` + ``__author__``), Caffe2 /
    ImageNet ``.pkl`` blobs (renamed by detectron2's matching heuristics), pycls ``.pyth``
    (``model_state``), training checkpoints and bare state_dicts.
    """
    if not isinstance(data, dict):
        raise UnreadableCheckpointError(
            f"{source}: {path!r} holds a {type(data).__name__}, not a checkpoint dict"
        )
    if path.endswith(".pkl"):
        if "model" in data and "__author__" in data:
            logger.info(f"reading {path} from {data['__author__']!r}")
            return data
        blobs = data.get("blobs", data)
        model = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
        return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}
    if path.endswith(".pyth") and "model_state" in data:
        model = {k: v for k, v in data["model_state"].items() if "num_batches_tracked" not in k}
        return {"model": model, "__author__": "pycls", "matching_heuristics": True}
    if not isinstance(data.get("model"), dict):
        return {"model": data}
    return data


def incompatibility_report(incompatible) -> str:
    """One line listing missing, unexpected and wrongly shaped keys; empty if they all fit.

    Args:
        incompatible: fvcore's ``_IncompatibleKeys`` (returned by ``Checkpointer._load_model``).
    """
    problems = {
        "missing keys": list(incompatible.missing_keys),
        "unexpected keys": list(incompatible.unexpected_keys),
        "wrong shapes": [
            f"{k}: {c} in file, {m} in model" for k, c, m in incompatible.incorrect_shapes
        ],  # fmt: skip
    }
    return "; ".join(
        f"{len(items)} {kind} (e.g. {', '.join(items[:3])})"
        for kind, items in problems.items()
        if items
    )


def student_state_dict(state: dict) -> dict:
    """The student's weights of a distillation state_dict: everything but ``distillers.*``."""
    return {k: v for k, v in state.items() if not k.startswith(DISTILLER_PREFIX)}


class SafeCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer reading through :func:`read_weights_file`, saving atomically.

    Args:
        source: what names the files it loads (a config key), used in error messages.
        exact: refuse weights with missing, unexpected or wrongly shaped keys
            (:class:`WeightsMismatchError`) instead of detectron2's warning.
        model, save_dir, **checkpointables: as ``DetectionCheckpointer``.
    """

    def __init__(self, model, save_dir: str = "", *, source: str = "MODEL.WEIGHTS",
                 exact: bool = False, **checkpointables):  # fmt: skip
        super().__init__(model, save_dir, **checkpointables)
        self.source = source
        self.exact = exact
        self._path = ""

    def _load_file(self, filename: str) -> dict[str, Any]:
        self._path = filename
        return checkpoint_dict(read_weights_file(filename, self.source), filename, self.source)

    def _load_model(self, checkpoint: dict[str, Any]):
        incompatible = super()._load_model(checkpoint)
        report = incompatibility_report(incompatible) if self.exact else ""
        if report:
            raise WeightsMismatchError(
                f"{self.source}: {self._path!r} does not fit this config's "
                f"{type(self.model).__name__}: {report}. Was it written with another config?"
            )
        return incompatible

    def save(self, name: str, **kwargs: Any) -> None:
        """As fvcore's ``save``, but written to a temporary file and renamed into place."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _write_atomically(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(path, lambda f: f.write(last_filename_basename.encode()))


class StudentCheckpointer(SafeCheckpointer):
    """Loads a distillation checkpoint into the plain student, ignoring distiller weights."""

    def _load_model(self, checkpoint):
        checkpoint["model"] = student_state_dict(checkpoint["model"])
        return super()._load_model(checkpoint)


def _write_atomically(path: str, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a temporary file next to ``path``, then rename it to ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
