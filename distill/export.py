"""The student of a distillation run as a plain detectron2 model: config and weights."""

from __future__ import annotations

from detectron2.config import CfgNode

from distill.modeling import PLAIN_META_ARCHITECTURES


def plain_config(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` building the plain detector of its student (no distillers, no teacher)."""
    plain = cfg.clone()
    plain.defrost()
    arch = plain.MODEL.META_ARCHITECTURE
    plain.MODEL.META_ARCHITECTURE = PLAIN_META_ARCHITECTURES.get(arch, arch)
    plain.DISTILL.DISTILLERS = []
    plain.DISTILL.TEACHER.CONFIG_FILE = ""
    plain.DISTILL.TEACHER.WEIGHTS = ""
    plain.freeze()
    return plain
