"""The student of a distillation run as a plain detectron2 model: config and weights."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from detectron2.config import CfgNode

from distill.checkpoint import (
    DISTILLER_PREFIX,
    SafeCheckpointer,
    read_weights_file,
    student_state_dict,
)
from distill.errors import ConfigValueError
from distill.student import plain_architecture

logger = logging.getLogger(__name__)

_DDP_PREFIX = "module."


def plain_config(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` building the plain detector of its student (no distillers, no teacher)."""
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.META_ARCHITECTURE = plain_architecture(plain.MODEL.META_ARCHITECTURE)
    plain.DISTILL.DISTILLERS = []
    plain.DISTILL.TEACHER.CONFIG_FILE = ""
    plain.DISTILL.TEACHER.WEIGHTS = ""
    plain.freeze()
    return plain


def load_training_checkpoint(path: str, source: str = "--weights") -> dict[str, Any]:
    """A detectron2 training checkpoint (``{"model": state_dict, ...}``) read on the CPU by
    :func:`distill.checkpoint.read_weights_file` (no code runs from the file).

    Raises:
        MissingFileError: no file at ``path``.
        ConfigValueError: the file is unreadable, holds objects other than tensors and plain
            containers, or is not a dict with a ``"model"`` state_dict.
    """
    checkpoint = read_weights_file(path, source)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        found = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint)
        raise ConfigValueError(
            f"{source}: {path!r} has no 'model' state_dict (found {found}): expected a "
            "training checkpoint written by detectron2's DetectionCheckpointer"
        )
    return checkpoint


def _plain_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``state`` as plain, contiguous CPU tensors (numpy arrays of old checkpoints converted)."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        out[key] = value.detach().cpu().contiguous().as_subclass(torch.Tensor)
    return out


def check_student_state(cfg: CfgNode, state: dict[str, torch.Tensor]) -> None:
    """Raise ``ConfigValueError`` unless ``state`` fits the plain detector of ``cfg`` exactly.

    Builds the plain detector on the CPU and compares key sets and shapes.
    """
    from detectron2.modeling import build_model

    plain = plain_config(cfg).clone()
    plain.defrost()
    plain.MODEL.DEVICE = "cpu"
    expected = build_model(plain).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} in checkpoint, {tuple(v.shape)} in model"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = {"missing": missing, "unexpected": unexpected, "wrongly shaped": shapes}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        report = "; ".join(
            f"{len(keys)} {kind} keys (e.g. {', '.join(keys[:3])})"
            for kind, keys in problems.items()
        )
        raise ConfigValueError(
            f"the student weights do not fit the plain {plain.MODEL.META_ARCHITECTURE} of this "
            f"config: {report}. Is it the config the checkpoint was trained with?"
        )


def extract_student(
    checkpoint_path: str,
    output_path: str,
    cfg: CfgNode,
    verify: bool = True,
) -> dict[str, Any]:
    """Write the student of a distillation training checkpoint as a plain detectron2 model.

    Keeps the ``"model"`` state_dict minus ``distillers.*`` (optimizer, scheduler, iteration
    and any other entries are dropped) and writes ``{"model": state}`` of plain tensors to
    ``output_path`` (loadable with ``torch.load(weights_only=True)``), and
    :func:`plain_config` of ``cfg`` next to it (``output_path`` with a ``.yaml`` suffix), with
    ``MODEL.WEIGHTS`` set to the absolute ``output_path`` so that the pair evaluates as is.

    Args:
        checkpoint_path: training checkpoint of a Distill* model (``DetectionCheckpointer``).
        output_path: where the student weights go (``.pth``); folders are created.
        cfg: the training config of the checkpoint (Distill* meta-architecture or plain).
        verify: build the plain detector and check that the weights fit it exactly.

    Returns:
        Stats: ``checkpoint``, ``weights``, ``config`` (paths), ``iteration`` (or None),
        ``model_keys``, ``student_keys``, ``distiller_keys``, ``dropped_entries`` (top-level
        checkpoint entries other than ``"model"``), ``num_elements`` (numbers in the student
        tensors).

    Raises:
        MissingFileError / ConfigValueError: see :func:`load_training_checkpoint`;
            ``ConfigValueError`` also when ``verify`` finds missing, unexpected or mis-shaped keys.
    """
    checkpoint = load_training_checkpoint(checkpoint_path)
    model_state = checkpoint["model"]
    if model_state and all(k.startswith(_DDP_PREFIX) for k in model_state):
        model_state = {k[len(_DDP_PREFIX) :]: v for k, v in model_state.items()}
    state = _plain_tensors(student_state_dict(model_state))
    if verify:
        check_student_state(cfg, state)

    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    torch.save({"model": state}, output_path)
    config_path = os.path.splitext(output_path)[0] + ".yaml"
    plain = plain_config(cfg).clone()
    plain.defrost()
    plain.MODEL.WEIGHTS = os.path.abspath(output_path)
    with open(config_path, "w") as f:
        f.write(plain.dump())
    stats = {
        "checkpoint": checkpoint_path,
        "weights": output_path,
        "config": config_path,
        "iteration": checkpoint.get("iteration"),
        "model_keys": len(model_state),
        "student_keys": len(state),
        "distiller_keys": sum(k.startswith(DISTILLER_PREFIX) for k in model_state),
        "dropped_entries": sorted(k for k in checkpoint if k != "model"),
        "num_elements": sum(v.numel() for v in state.values()),
    }
    logger.info(f"student of {checkpoint_path} written to {output_path} and {config_path}")
    return stats


def load_distill_run(
    config_file: str, weights: str, opts: list[str], distiller: str, imports: list[str] = ()
):
    """(cfg, model) of a training run with ``distiller``: the Distill model of ``config_file``
    (+ ``opts``, after importing ``imports``) with the run's checkpoint loaded, distiller weights
    and teacher included."""
    from detectron2.modeling import build_model

    from distill.checkpoint import check_local_weights
    from distill.user_code import load_config

    cfg = load_config(config_file, opts, imports)
    cfg.freeze()
    if distiller not in cfg.DISTILL.DISTILLERS:
        raise ConfigValueError(f"{config_file}: DISTILL.DISTILLERS has no {distiller!r}")
    check_local_weights(weights, "--weights")
    model = build_model(cfg)
    SafeCheckpointer(model, source="--weights").load(weights)
    return cfg, model
