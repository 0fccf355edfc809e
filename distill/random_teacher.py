"""A random-init teacher in place of trained teacher weights (``--random-teacher`` of
``tools/train_net.py`` and ``tools/benchmark.py``).

The teacher's compute does not depend on its weights, so a random teacher of the teacher config's
architecture measures the cost of distillation and checks a distiller's wiring before a teacher
is trained; its losses mean nothing.
"""

from __future__ import annotations

import logging
import os

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from distill.errors import ConfigValueError
from distill.modeling.distill_arch import distillers_reading_teacher

logger = logging.getLogger(__name__)

NOTICE = "RANDOM TEACHER: losses are meaningless; for wiring checks only"


def calibrate_frozen_batchnorm(model: torch.nn.Module, batch: list[dict]) -> int:
    """Give every ``FrozenBatchNorm2d`` of a randomly initialised ``model`` the statistics of
    its own input: per-channel mean and (biased) variance on ``batch``, in one eval forward.

    With identity statistics a random ResNet-50 multiplies its activations at every residual
    block (FPN maps of std ~2000 at 320 px), its losses are in the hundreds and SGD diverges to
    NaN within a few steps. Calibrated, the network runs at the unit scale trained statistics
    give, so its timings are those of a sane detector. Only buffers change; the compute is the
    same. Layers that the forward does not reach keep their statistics.

    Returns:
        The number of layers calibrated.
    """
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module: FrozenBatchNorm2d, args: tuple) -> None:
        x = args[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
        handles.pop(module).remove()  # the first call only

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = {m: m.register_forward_pre_hook(set_statistics) for m in layers}
    was_training = model.training
    try:
        with torch.no_grad(), EventStorage(0):
            model.eval()(batch)
    finally:
        for handle in handles.values():
            handle.remove()
        model.train(was_training)
    return len(layers) - len(handles)


def no_teacher_reason(cfg: CfgNode) -> str | None:
    """Why the model of ``cfg`` builds no teacher, or None when a distiller reads one."""
    distillers = list(cfg.DISTILL.DISTILLERS)
    if not distillers:
        return "the config has no DISTILL.DISTILLERS"
    if not distillers_reading_teacher(cfg):
        return f"DISTILL.DISTILLERS={distillers} read no teacher (they need no teacher weights)"
    return None


def calibration_batch(cfg: CfgNode, num_images: int = 2) -> list[dict]:
    """The first ``num_images`` images of ``DATASETS.TRAIN[0]`` through detectron2's test-time
    ``DatasetMapper``: what :func:`save_random_teacher` calibrates on."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:num_images]]


def save_random_teacher(cfg: CfgNode, batch: list[dict], directory: str, seed: int = 0) -> str:
    """Write a random-init, :func:`calibrate_frozen_batchnorm`-ed checkpoint of the teacher of
    ``cfg`` (its ``DISTILL.TEACHER`` config and overrides) to ``directory``; return its path.

    The main process writes it; the others wait and return the same path.
    """
    from detectron2.checkpoint import DetectionCheckpointer

    from distill.teacher import teacher_config

    if comm.is_main_process():
        os.makedirs(directory, exist_ok=True)
        seed_all_rng(seed)
        model = build_model(teacher_config(cfg))
        keys = ("image", "instances")
        batch = [{**x, **{k: x[k].to(model.device) for k in keys if k in x}} for x in batch]
        calibrate_frozen_batchnorm(model, batch)
        DetectionCheckpointer(model, save_dir=directory).save("random_teacher")
    comm.synchronize()
    return os.path.join(directory, "random_teacher.pth")


def with_random_teacher(cfg: CfgNode, batch: list, directory: str, seed: int) -> CfgNode:
    """A frozen copy of ``cfg`` with ``DISTILL.TEACHER.WEIGHTS`` replaced by a random teacher
    saved in ``directory`` (:func:`save_random_teacher`) and ``REQUIRE_CARD`` False.

    Raises:
        ConfigValueError: no configured distiller reads a teacher (:func:`no_teacher_reason`).
    """
    reason = no_teacher_reason(cfg)
    if reason is not None:
        raise ConfigValueError(f"--random-teacher: {reason}; there is no teacher to replace")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DISTILL.TEACHER.WEIGHTS = save_random_teacher(cfg, batch, directory, seed)
    cfg.DISTILL.TEACHER.REQUIRE_CARD = False  # a random teacher is unverified by design
    cfg.freeze()
    return cfg


class RandomTeacherNotice(HookBase):
    """Logs :data:`NOTICE` when training starts (with the random teacher's file) and every
    ``period`` iterations (detectron2's ``PeriodicWriter`` period in ``DefaultTrainer``), so that
    no reader of the log takes the run's losses for distillation."""

    def __init__(self, weights: str, period: int = 20):
        self.weights, self.period = weights, period

    def before_train(self) -> None:
        logger.warning(f"{NOTICE} (DISTILL.TEACHER.WEIGHTS {self.weights})")

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self.period == 0 or next_iter == self.trainer.max_iter:
            logger.warning(NOTICE)
