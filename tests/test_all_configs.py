"""Every shipped config that describes a model trains two optimizer steps through
:class:`distill.engine.DistillTrainer` and evaluates one image, so that no config can break unseen.

Which files: every YAML under ``configs/`` and ``projects/*/configs/`` (globbed, so new files are
covered) that selects ``MODEL.META_ARCHITECTURE`` itself or through its ``_BASE_`` chain:
detectron2's defaults complete the rest, so such a file is a trainable model, base files and
teacher configs included. Only ``configs/Base-Embedded.yaml`` selects none: it holds the data,
input and solver settings of the embedded configs, and alone builds detectron2's default
C4 R-CNN, which nothing ships.

What each run changes (the model family, depths, widths, heads, norms, distillers and solver
types stay as shipped):

* data: the embedded datasets, tiny (2 training images, 1 test image), generated into a temporary
  cache; VG-format configs (VG150, vgsynth) get the vgsynth scene graphs made from them. Class and
  predicate counts follow the data (8 objects, 15 predicates): detectron2's COCOEvaluator and the
  scene-graph evaluator refuse labels the dataset does not have, and the count only sizes the
  last layer. A teacher gets the same counts through ``DISTILL.TEACHER.OPTS``.
* size: 64-96 px images, one image per batch, two iterations, fewer proposals, sampled RoIs and
  detections, no data-loader workers.
* weights: random (``MODEL.WEIGHTS ""``: the ImageNet and trained-detector files are not here).
  Frozen BatchNorm layers, which would keep identity statistics and let a deep random ResNet blow
  its activations up to inf, get the statistics of a batch
  (:func:`distill.random_teacher.calibrate_frozen_batchnorm`), as pretrained weights would give
  them. A teacher is its config's model, random and calibrated the same way, saved to a temporary
  file.
* learning rate: ``SOLVER.BASE_LR`` 1e-5. A random deep ResNet with unnormalised (MSRA) input has
  weight gradients of 1e4-1e5 (7e4 on res3 of the calibrated random R101), so even the shipped
  rate of iteration 0 (BASE_LR x WARMUP_FACTOR, 1e-5) throws it to inf in one step, where
  pretrained weights would not. Optimizer, momentum, weight decay,
  clipping, schedule and the distillers' own solvers stay as shipped.
* checkpoints: the final checkpoint's content is assembled but not written (0.5-2 GB for a
  paper-scale model with its momentum); a tiny config equal to one already trained (a base file
  and its child, e.g. ``Base-RetinaNet.yaml`` and ``retinanet_R_50_FPN_1x.yaml``) trains once.

Configs that need detectron2's compiled ops (deformable convolution) must stop in the trainer's
constructor with the :func:`distill.compiled_ops.check_compiled_ops` error, before a model is
built, where this detectron2 lacks them; they run fully where it has them.
"""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_batch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(REPO.glob("configs/**/*.yaml")) + sorted(REPO.glob("projects/*/configs/**/*.yaml"))
EMBEDDED, VGSYNTH = "all_configs_embedded", "all_configs_vgsynth"
CLASS_COUNT_KEYS = ("ROI_HEADS", "RETINANET", "FCOS")  # MODEL.<node>.NUM_CLASSES of each head
TINY = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 96,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96,
    "SOLVER.IMS_PER_BATCH", 1, "SOLVER.MAX_ITER", 2, "DATALOADER.NUM_WORKERS", 0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 100, "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "TEST.DETECTIONS_PER_IMAGE", 10,
    "MODEL.RETINANET.TOPK_CANDIDATES_TEST", 100, "MODEL.FCOS.TOPK_CANDIDATES_TEST", 100,
    "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.ROI_RELATION_HEAD.MAX_PROPOSALS_PER_IMAGE", 10,
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SEED", 0, "SOLVER.BASE_LR", 1e-5,
]  # fmt: skip


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def selects_architecture(path: Path) -> bool:
    """Whether ``path`` or a file of its ``_BASE_`` chain sets ``MODEL.META_ARCHITECTURE``."""
    node = yaml.safe_load(path.read_text()) or {}
    if "META_ARCHITECTURE" in (node.get("MODEL") or {}):
        return True
    base = node.get("_BASE_")
    return bool(base) and selects_architecture((path.parent / base).resolve())


MODEL_CONFIGS = [p for p in CONFIGS if selects_architecture(p)]


def test_only_base_files_describe_no_model():
    """A config that is not a base file and selects no architecture would silently build
    detectron2's default model: every such file is a ``Base-*`` (data / solver settings)."""
    partial = [rel(p) for p in CONFIGS if p not in MODEL_CONFIGS]
    assert all(Path(p).name.startswith("Base-") for p in partial), partial
    assert MODEL_CONFIGS


@pytest.fixture(scope="module", autouse=True)
def native_convolutions():
    """oneDNN builds kernels per convolution shape: on 64 px inputs that costs more than the
    convolutions (measured: each run about 2x slower); torch's own kernels compute the same."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


@pytest.fixture(scope="module")
def trained_configs() -> dict[str, str]:
    """Tiny config (YAML dump) -> the file whose test trained it and passed, in this module."""
    return {}


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    """Registers the tiny embedded (COCO-format) and vgsynth (VG-format) datasets; returns
    ``evaluator_type -> (train, test)`` dataset names."""
    from sgg.data import register_vgsynth

    from distill.data import register_embedded_datasets

    cache = tmp_path_factory.mktemp("all_configs_cache")
    register_embedded_datasets(cache, num_images={"train": 2, "val": 1}, name_prefix=EMBEDDED)
    register_vgsynth(cache, num_images={"train": 4, "val": 1}, num_val_images=1,
                     name_prefix=VGSYNTH)  # fmt: skip
    return {"coco": (f"{EMBEDDED}_train", f"{EMBEDDED}_val"),
            "sgg": (f"{VGSYNTH}_train", f"{VGSYNTH}_test")}  # fmt: skip


def tiny_config(path: Path, datasets: dict):
    """The config of ``path`` on the tiny data, at the tiny size, with random weights."""
    from detectron2.data import MetadataCatalog

    from distill.random_teacher import distillers_reading_teacher
    from distill.user_code import load_config

    cfg = load_config(str(path))
    kind = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("evaluator_type", "coco")
    train, test = datasets["sgg" if kind == "sgg" else "coco"]
    meta = MetadataCatalog.get(test)
    num_classes = len(meta.thing_classes)
    head_counts = [
        x for node in CLASS_COUNT_KEYS for x in (f"MODEL.{node}.NUM_CLASSES", num_classes)
    ]
    cfg.merge_from_list([*TINY, *head_counts, "DATASETS.TRAIN", (train,), "DATASETS.TEST", (test,),
                         "OUTPUT_DIR", ""])  # fmt: skip
    if kind == "sgg":
        cfg.MODEL.ROI_RELATION_HEAD.NUM_CLASSES = num_classes
        cfg.MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = len(meta.predicate_classes)
    if distillers_reading_teacher(cfg):
        cfg.DISTILL.TEACHER.OPTS = [*cfg.DISTILL.TEACHER.OPTS, *head_counts]
    return cfg


def calibration_batch() -> list[dict]:
    return make_batch(num_images=1, size=(64, 96), boxes_per_image=(2,))


class _Backbone(nn.Module):
    """A detector's preprocessing and backbone, called on a batch (what frozen BN sees)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        return self.model.backbone(self.model.preprocess_image(batch).tensor)


def trainer_class():
    """DistillTrainer whose randomly initialised model gets calibrated frozen-BN statistics."""
    from distill.engine import DistillTrainer
    from distill.random_teacher import calibrate_frozen_batchnorm

    class RandomInitTrainer(DistillTrainer):
        @classmethod
        def build_model(cls, cfg) -> nn.Module:
            model = super().build_model(cfg)
            calibrate_frozen_batchnorm(_Backbone(model), calibration_batch())
            return model

    return RandomInitTrainer


def needed_compiled_ops(cfg) -> list[str]:
    """The compiled-op keys of the config and of its teacher (if a distiller reads one)."""
    from distill.compiled_ops import compiled_op_keys
    from distill.random_teacher import distillers_reading_teacher
    from distill.teacher import teacher_config

    keys = compiled_op_keys(cfg)
    if distillers_reading_teacher(cfg):
        keys += compiled_op_keys(teacher_config(cfg))
    return keys


def assert_fails_before_building(cfg, monkeypatch) -> None:
    import detectron2.engine.defaults

    from distill.engine import DistillTrainer
    from distill.errors import ConfigValueError

    def no_model(cfg):
        raise AssertionError("a model was built before the compiled-ops check")

    monkeypatch.setattr(detectron2.engine.defaults, "build_model", no_model)
    with pytest.raises(ConfigValueError, match="needs detectron2's compiled ops") as error:
        DistillTrainer(cfg)
    assert "MODEL.RESNETS.DEFORM_ON_PER_STAGE" in str(error.value)


@dataclass
class Run:
    """What two training iterations and the final evaluation left (plain data, no tensors)."""

    step_iterations: list[int]  # the iteration of each optimizer step
    losses: dict[str, list[float]]  # logged loss -> its values, one per iteration
    distiller_prefixes: list[str]  # the loss-name prefix of each distiller
    checkpoints: dict[str, list[str]]  # name the trainer saved -> the keys of its content
    results: dict[str, dict[str, float]]  # the test set's evaluation: task -> metric -> value


class RecordedSave:
    """Stands in for ``checkpointer.save``: assembles the checkpoint's content as detectron2's
    checkpointer does and records its keys under the name, writing nothing."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.saved: dict[str, list[str]] = {}

    def __call__(self, name: str, **extra) -> None:
        objects = {"model": self.checkpointer.model, **self.checkpointer.checkpointables}
        self.saved[name] = sorted({**{k: v.state_dict() for k, v in objects.items()}, **extra})


def train_two_steps(cfg) -> Run:
    """Train ``cfg`` for its two iterations with every hook of the trainer, the final
    evaluation included. The checkpointer assembles what it would save (the model's and the
    trainer's state) but writes nothing: a paper-scale model with its momentum is 0.5-2 GB."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import get_event_storage

    seed_all_rng(0)
    trainer = trainer_class()(cfg)
    try:
        steps = []
        trainer.optimizer.register_step_post_hook(lambda *_: steps.append(get_event_storage().iter))
        trainer.checkpointer.save = RecordedSave(trainer.checkpointer)
        trainer.resume_or_load(resume=False)
        trainer.train()
        history = trainer.storage.histories()
        return Run(
            step_iterations=steps,
            losses={k: [v for v, _ in h.values()] for k, h in history.items() if "loss" in k},
            distiller_prefixes=[
                d.loss_prefix for d in getattr(trainer.model, "distillers", {}).values()
            ],
            checkpoints=trainer.checkpointer.save.saved,
            results=trainer._last_eval_results,
        )
    finally:
        del trainer  # it holds reference cycles: free its GBs now
        gc.collect()


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=rel)
def test_config_trains_two_steps_and_evaluates_one_image(path, tiny_datasets, trained_configs,
                                                         tmp_path, monkeypatch):  # fmt: skip
    from distill.compiled_ops import has_compiled_ops
    from distill.random_teacher import distillers_reading_teacher, save_random_teacher

    monkeypatch.chdir(REPO)  # teacher CONFIG_FILEs are relative to the repository
    cfg = tiny_config(path, tiny_datasets)
    if needed_compiled_ops(cfg) and not has_compiled_ops():
        cfg.freeze()
        assert_fails_before_building(cfg, monkeypatch)
        return
    key = cfg.dump()
    if key in trained_configs:
        return  # the test of trained_configs[key] trained this very config, and passed
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    teacher = tmp_path / "teacher"
    if distillers_reading_teacher(cfg):
        cfg.DISTILL.TEACHER.WEIGHTS = save_random_teacher(cfg, calibration_batch(), str(teacher))
        cfg.DISTILL.TEACHER.REQUIRE_CARD = False  # random teachers have no card
    cfg.freeze()
    try:
        run = train_two_steps(cfg)
    finally:
        shutil.rmtree(teacher, ignore_errors=True)  # up to 0.25 GB

    # one step per iteration; torch runs the hooks once more per nesting of hooked step methods
    assert sorted(set(run.step_iterations)) == [0, 1], run.step_iterations
    assert len(run.losses["total_loss"]) == 2, run.losses
    assert all(math.isfinite(v) for values in run.losses.values() for v in values), run.losses
    for prefix in run.distiller_prefixes:  # every distiller added its losses
        assert any(name.startswith(prefix) for name in run.losses), (prefix, list(run.losses))
    assert list(run.checkpoints) == ["model_final"], run.checkpoints
    assert {"model", "trainer"} <= set(run.checkpoints["model_final"]), run.checkpoints
    task = "sgg" if cfg.MODEL.META_ARCHITECTURE == "SceneGraphRCNN" else "bbox"
    assert list(run.results) == [task], list(run.results)  # the single test set's tasks
    metrics = run.results[task]
    assert metrics and all(math.isnan(v) or 0.0 <= v <= 100.0 for v in metrics.values()), metrics
    trained_configs[key] = rel(path)
