"""The frozen teacher: built from its own config file, weights and overrides.

The teacher is held by the student meta-architecture *outside* its module tree, so it is never in
the student's ``state_dict``, ``parameters()``, optimizer, DDP reducer or checkpoints, and
``student.train()`` cannot switch it out of eval mode. The student moves it along in ``_apply``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import ImageList
from torch import nn

from distill.checkpoint import (
    StudentCheckpointer,
    check_local_weights,
    expand_path,
    incompatibility_report,
)
from distill.compiled_ops import check_compiled_ops
from distill.errors import ConfigValueError, MissingFileError
from distill.teacher_card import TeacherCard, check_teacher_card

logger = logging.getLogger(__name__)

_SWAPPABLE_FORMATS = {"RGB", "BGR"}


class TeacherWeightsError(ConfigValueError):
    """The teacher checkpoint does not fit the teacher architecture."""


class Teacher:
    """A frozen detector: eval mode, no gradients, ``no_grad`` (optionally autocast) forward.

    Args:
        model: a detectron2 meta-architecture with weights loaded.
        input_format: the teacher's ``INPUT.FORMAT``.
        autocast: run forwards under ``torch.autocast`` (outputs are cast back to fp32).
        card: the teacher card of its weights, or None for an unverified teacher.
    """

    def __init__(
        self,
        model: nn.Module,
        input_format: str,
        autocast: bool = False,
        card: TeacherCard | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.input_format = input_format
        self.autocast = autocast
        self.card = card

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """``no_grad`` and, if configured, autocast for running any part of the teacher."""
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.autocast):
            yield

    def preprocess(self, batched_inputs: list[dict], student_format: str) -> ImageList:
        """The student's (augmented) images, in the teacher's channel order and normalisation.

        Returns:
            ImageList of (N, C, H, W) padded to the teacher backbone's size divisibility.
        """
        images = [x["image"].to(self.device) for x in batched_inputs]
        if student_format != self.input_format:
            images = [x.flip(0) for x in images]
        mean, std = self.model.pixel_mean, self.model.pixel_std
        images = [(x - mean) / std for x in images]
        return ImageList.from_tensors(images, self.model.backbone.size_divisibility)

    def features(self, images: ImageList) -> dict[str, torch.Tensor]:
        """Backbone features of the teacher, fp32 and detached: name -> (N, C, Hi, Wi)."""
        with self.inference():
            features = self.model.backbone(images.tensor)
        return {k: v.float() for k, v in features.items()}


def teacher_config(cfg: CfgNode) -> CfgNode:
    """The frozen plain config of the teacher described by ``cfg.DISTILL.TEACHER``.

    :func:`distill.user_code.load_config` of ``CONFIG_FILE`` and ``OPTS`` (imports included);
    distillers of the teacher config are dropped (it is built plain), ``MODEL.DEVICE`` is the
    student's and ``MODEL.WEIGHTS`` is ``DISTILL.TEACHER.WEIGHTS``.

    Raises:
        ConfigValueError / MissingFileError: ``CONFIG_FILE`` is empty or names a missing file.
    """
    from distill.user_code import load_config

    tcfg = cfg.DISTILL.TEACHER
    config_file = expand_path(tcfg.CONFIG_FILE)
    if not config_file:
        raise ConfigValueError(
            f"DISTILL.DISTILLERS={list(cfg.DISTILL.DISTILLERS)} need a teacher, but "
            "DISTILL.TEACHER.CONFIG_FILE is empty: set it to the teacher's detectron2 config file."
        )
    if not os.path.isfile(config_file):
        raise MissingFileError(f"DISTILL.TEACHER.CONFIG_FILE: no file at {config_file!r}")
    teacher_cfg = load_config(config_file, list(tcfg.OPTS))
    teacher_cfg.DISTILL.DISTILLERS = []
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = expand_path(tcfg.WEIGHTS)
    teacher_cfg.freeze()
    return teacher_cfg


def build_teacher(cfg: CfgNode, student_format: str) -> Teacher:
    """Build the teacher described by ``cfg.DISTILL.TEACHER`` and load its weights.

    The config is :func:`teacher_config`. The weights' teacher card is checked and logged first
    (:func:`distill.teacher_card.check_teacher_card`). Checkpoint keys of distillers
    (``distillers.*``) are dropped, so a distilled student's checkpoint can teach.

    Raises:
        ValueError / FileNotFoundError: a key is empty or names a missing file.
        TeacherCardError: no passing card for the weights, unless not
            ``DISTILL.TEACHER.REQUIRE_CARD``.
        TeacherWeightsError: missing, unexpected or wrongly shaped keys, unless
            ``DISTILL.TEACHER.ALLOW_MISMATCHED_WEIGHTS``.
    """
    teacher_cfg = teacher_config(cfg)
    config_file, weights = expand_path(cfg.DISTILL.TEACHER.CONFIG_FILE), teacher_cfg.MODEL.WEIGHTS
    if not weights:
        raise ConfigValueError(
            "DISTILL.TEACHER.WEIGHTS is empty: a teacher needs trained weights "
            f"(the checkpoint of the model described by {config_file})."
        )
    check_local_weights(weights, "DISTILL.TEACHER.WEIGHTS")
    card = check_teacher_card(weights, require=cfg.DISTILL.TEACHER.REQUIRE_CARD)
    check_compiled_ops(teacher_cfg, f"the teacher ({config_file})")
    fmt = teacher_cfg.INPUT.FORMAT
    if fmt != student_format and not {fmt, student_format} <= _SWAPPABLE_FORMATS:
        raise ConfigValueError(
            f"teacher INPUT.FORMAT {fmt!r} cannot be derived from the student's {student_format!r}"
        )
    model = build_model(teacher_cfg)
    load_teacher_weights(model, weights, cfg.DISTILL.TEACHER.ALLOW_MISMATCHED_WEIGHTS)
    return Teacher(model, fmt, autocast=cfg.DISTILL.TEACHER.AUTOCAST, card=card)


def load_teacher_weights(model: nn.Module, path: str, allow_mismatch: bool) -> None:
    """Load ``path`` into ``model``, refusing any incompatibility unless ``allow_mismatch``.

    The file is read by :func:`distill.checkpoint.read_weights_file` (no code runs; a truncated
    or foreign file stops naming ``DISTILL.TEACHER.WEIGHTS``)."""
    logger.info(f"loading the teacher's weights from {path}")
    # drops the distiller weights of a distilled teacher
    checkpointer = StudentCheckpointer(model, source="DISTILL.TEACHER.WEIGHTS")
    report = incompatibility_report(checkpointer._load_model(checkpointer._load_file(path)))
    if not report:
        logger.info(f"teacher weights loaded from {path}")
        return
    if not allow_mismatch:
        raise TeacherWeightsError(
            f"DISTILL.TEACHER.WEIGHTS {path!r} does not fit the teacher architecture: {report}. "
            "Check DISTILL.TEACHER.CONFIG_FILE, or set DISTILL.TEACHER.ALLOW_MISMATCHED_WEIGHTS "
            "True to load it anyway."
        )
    logger.warning(f"teacher weights {path} loaded with mismatches: {report}")
