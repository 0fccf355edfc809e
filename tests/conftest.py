"""Shared fixtures: tiny configs, synthetic batches and random-init teachers, all on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {
    "faster_rcnn": "configs/embedded/faster_rcnn_R18_small.yaml",
    "retinanet": "configs/embedded/retinanet_R18_small.yaml",
    "fcos": "configs/embedded/fcos_R18_small.yaml",
}
TINY_OPTS = [
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FCOS.NUM_CONVS", 1,
    # GroupNorm(32) over 32 channels has one value per group on the 1x1 P7 of a tiny image
    "MODEL.RETINANET.NORM", "",
    "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
    "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
    "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "MODEL.DEVICE", "cpu",
]  # fmt: skip

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_cfg(family: str, *opts, distillers=(), teacher=None, freeze: bool = True):
    """A tiny CPU config of ``family`` (faster_rcnn / retinanet / fcos) with extra overrides.

    Args:
        teacher: (config_file, weights) of a teacher, or None; it needs no teacher card.
    """
    from distill.user_code import load_config

    chosen = ["DISTILL.DISTILLERS", list(distillers)]
    if teacher is not None:
        config_file, weights = map(str, teacher)
        # random-init teachers have no card
        chosen += ["DISTILL.TEACHER.CONFIG_FILE", config_file, "DISTILL.TEACHER.WEIGHTS", weights,
                   "DISTILL.TEACHER.REQUIRE_CARD", False]  # fmt: skip
    cfg = load_config(str(REPO / FAMILIES[family]), [*TINY_OPTS, *chosen, *opts])
    if freeze:
        cfg.freeze()
    return cfg


def write_user_distiller(path: Path, name: str = "UserNormKD", node: str = "USER_NORM_KD") -> Path:
    """A teacher-free distiller in its own file, as a user writes one (the README's "Adding a
    distiller" shape): ``loss_<node>_l2`` pulls the student's ``<NODE>.LEVEL`` map towards 0, and
    building it logs "<name> reads <level>" through the module's own logger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'''
import logging

from detectron2.config import configurable

from distill import DISTILLER_REGISTRY, Distiller

logger = logging.getLogger(__name__)


@DISTILLER_REGISTRY.register()
class {name}(Distiller):
    config_node = "{node}"
    terms = {{"l2": 1.0}}
    needs = frozenset({{"student_features"}})

    @configurable
    def __init__(self, *, level, **kwargs):
        super().__init__(**kwargs)
        self.level = level

    @classmethod
    def add_config(cls, cfg):
        super().add_config(cfg)
        cfg.{node}.LEVEL = "p3"

    @classmethod
    def from_config(cls, cfg, student, teacher_shapes=None):
        logger.info("{name} reads %s", cfg.{node}.LEVEL)
        ret = super().from_config(cfg, student, teacher_shapes)
        return {{**ret, "level": cfg.{node}.LEVEL}}

    def forward(self, context):
        features = context.student_features[self.level]  # (N, C, H, W)
        return {{"loss_{node.lower()}_l2": 1e-3 * features.pow(2).mean()}}
''')
    return path


def make_batch(num_images: int = 2, size=(96, 128), boxes_per_image=(3, 1), seed: int = 0):
    """Dataset-mapper style inputs: uint8-valued float images (C, H, W) and GT instances."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        h, w = size
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        n = boxes_per_image[i % len(boxes_per_image)]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 12 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, 8, (n,), generator=g)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


def save_random_teacher(tmp_path: Path, family: str, *opts, seed: int = 1) -> tuple[Path, Path]:
    """Write a tiny plain teacher config (FPN 48) and its random-init checkpoint."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from distill.export import plain_config

    cfg = plain_config(tiny_cfg(family, "MODEL.FPN.OUT_CHANNELS", 48, *opts))
    torch.manual_seed(seed)
    model = build_model(cfg)
    config_file = tmp_path / f"teacher_{family}.yaml"
    config_file.write_text(cfg.dump())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save(f"teacher_{family}")
    return config_file, tmp_path / f"teacher_{family}.pth"


def train_step(model, batch, iteration: int = 0):
    """One forward/backward in an EventStorage; returns the loss dict."""
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage(iteration) as storage:
        storage.iter = iteration
        losses = model(batch)
        sum(losses.values()).backward()
    return losses


@pytest.fixture
def teacher_files(tmp_path):
    """Factory: ``teacher_files(family)`` -> (config_file, weights) of a random-init teacher."""
    return lambda family, *opts: save_random_teacher(tmp_path, family, *opts)


@pytest.fixture(scope="session")
def small_embedded(tmp_path_factory) -> tuple[str, str]:
    """(train, val) names of a 4 + 4 image embedded dataset, for fast end-to-end evaluation."""
    from distill.data import register_embedded_datasets

    cache = tmp_path_factory.mktemp("small_embedded")
    register_embedded_datasets(cache, num_images={"train": 4, "val": 4}, name_prefix="small_coco")
    return "small_coco_train", "small_coco_val"
