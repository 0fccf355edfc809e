"""Early refusal of configs that need what this machine lacks: detectron2's compiled ops, CUDA.

``make install`` can give a detectron2 whose compiled extension is a pure-Python stand-in
(``detectron2._C.IS_STANDIN``): models build, but ops such as deformable convolution fail only
when first called. :func:`check_compiled_ops` names the config keys at fault before anything
is built; :func:`check_device` refuses ``MODEL.DEVICE cuda`` (detectron2's default) where torch
finds no GPU, instead of torch's driver traceback.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode

from distill.errors import ConfigValueError


def has_compiled_ops() -> bool:
    """Whether detectron2's compiled extension (C++/CUDA ops) is installed."""
    from detectron2 import _C

    return not getattr(_C, "IS_STANDIN", False)


def compiled_op_keys(cfg: CfgNode) -> list[str]:
    """The config keys of ``cfg`` that select an op only detectron2's compiled extension has."""
    keys = []
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        keys.append("MODEL.RESNETS.DEFORM_ON_PER_STAGE (deformable convolution)")
    return keys


def check_compiled_ops(cfg: CfgNode, role: str = "the model") -> None:
    """Raise ConfigValueError when ``cfg`` needs compiled ops that this detectron2 lacks."""
    keys = compiled_op_keys(cfg)
    if keys and not has_compiled_ops():
        raise ConfigValueError(
            f"{role} needs detectron2's compiled ops, selected by {', '.join(keys)}; this "
            "detectron2 was installed without them (pure-Python stand-in). Install a detectron2 "
            "built with its C++/CUDA extension, or set these keys off."
        )


def check_device(cfg: CfgNode) -> torch.device:
    """``MODEL.DEVICE`` as a device; ConfigValueError if it is CUDA and torch finds none."""
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but torch finds no CUDA device: "
            "add MODEL.DEVICE cpu to run on the CPU"
        )
    return device
