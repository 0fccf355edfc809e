"""DistillTrainer: detectron2's DefaultTrainer for a student with distillers.

Differences from ``DefaultTrainer``:

* the optimizer covers the student and the distillers only (the teacher is not a submodule);
  each distiller may have its own learning rate, weight decay and optimizer type, and may freeze
  student parameters for some iterations (:mod:`distill.solver`);
* DDP works on CPU (gloo) as well as GPU, and finds parameters left unused by a distiller that
  its schedule switched off;
* the training batches, their augmentations and the model's random choices are a function of the
  run's seed and the iteration (:mod:`distill.data.resumable_loader`); with the optimizer state
  (momentum), the dense detectors' loss normalizer, the iteration and the LR schedule in the
  checkpoint, a resumed run continues exactly as the uninterrupted one;
* weights are read without running code from the file (:mod:`distill.checkpoint`); ``--resume``
  refuses a checkpoint of another model; checkpoints are written atomically;
* ``SEED`` also seeds the model's initialisation: two runs with the same seed start from, and
  (single process, same thread count) end with, the same weights; a seed drawn for ``SEED < 0``
  is the ``SEED`` of the trainer's ``cfg``;
* a non-finite loss, gradient or weight stops the run at once, and so does a distillation loss
  that dwarfs the student's own losses for several iterations (a broken teacher)
  (:mod:`distill.divergence`);
* ``SOLVER.LR_SCHEDULER_NAME: WarmupReduceLROnPlateau`` lowers the LR when the periodic
  evaluation stalls (:mod:`distill.plateau`);
* AMP is refused with a clear message where detectron2's AMPTrainer cannot run (no CUDA);
* the student is evaluated with COCOEvaluator (pycocotools when detectron2 has no compiled ops),
  or with the mapper and evaluator a project registered for its datasets
  (:mod:`distill.data.tasks`).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.engine import create_ddp_model as detectron2_create_ddp_model
from detectron2.engine.hooks import EvalHook, PeriodicCheckpointer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.checkpoint import RESUME_SOURCE, SafeCheckpointer, check_local_weights
from distill.compiled_ops import check_compiled_ops, check_device
from distill.data.register import check_builtin_dataset_root, check_datasets
from distill.data.resumable_loader import build_seeded_train_loader, seed_iteration
from distill.data.tasks import configure_dataset_tasks, dataset_mapper, dataset_task
from distill.detectron2_internals import (
    default_trainer_builds,
    inner_trainer,
    last_eval_results,
    restart_train_loader,
)
from distill.divergence import (
    CheckedAMPTrainer,
    CheckedSimpleTrainer,
    FiniteGradientCheck,
    FiniteWeightsCheck,
    build_loss_ratio_stop,
)
from distill.errors import ConfigValueError
from distill.plateau import SCHEDULER_NAME as PLATEAU_SCHEDULER
from distill.plateau import ReduceLROnPlateau, build_plateau_scheduler
from distill.solver import build_distill_optimizer

logger = logging.getLogger(__name__)

# Training state that dense detectors keep as plain attributes (EMA of the positive-anchor count).
RESUMABLE_MODEL_ATTRIBUTES = ("loss_normalizer",)


def create_ddp_model(model: nn.Module, *, find_unused: bool, **kwargs) -> nn.Module:
    """detectron2's ``create_ddp_model``; CPU processes (gloo) get no ``device_ids``, and
    ``find_unused`` finds the parameters a distiller left unused (its schedule switched it off)."""
    if comm.get_world_size() > 1 and model.device.type != "cuda":
        kwargs["device_ids"] = None
    find_unused = find_unused and bool(getattr(model, "distillers", None))
    return detectron2_create_ddp_model(model, find_unused_parameters=find_unused, **kwargs)


def check_amp(cfg) -> None:
    """detectron2's AMPTrainer needs CUDA: refuse ``SOLVER.AMP.ENABLED`` without it."""
    if cfg.SOLVER.AMP.ENABLED and not (
        cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()
    ):
        raise ConfigValueError("SOLVER.AMP.ENABLED needs MODEL.DEVICE cuda with a GPU available")


def _with_seed(cfg, seed: int):
    """A copy of ``cfg`` with ``SEED`` set (frozen if ``cfg`` is)."""
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.SEED = seed
    if frozen:
        cfg.freeze()
    return cfg


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class DistillTrainer(DefaultTrainer):
    """Trains a (Distill*) detectron2 model; see the module docstring for what differs.

    ``DefaultTrainer.__init__`` builds everything through the ``build_*`` methods below; the run's
    seed is drawn and the global random states seeded from it first, and the parts it has no
    ``build_*`` method for (DDP wrapper, inner trainer, checkpointer) are this module's
    (:func:`distill.detectron2_internals.default_trainer_builds`).
    """

    def __init__(self, cfg):
        check_amp(cfg)
        check_datasets(cfg)  # DATASETS.TRAIN and TEST, before anything is built
        # one seed for the whole run (drawn when SEED < 0), saved with the checkpoints; it also
        # seeds the model's initialisation, so every tool that trains starts from the same weights
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        logger.info(f"Run seed: {self.seed}" + ("" if cfg.SEED >= 0 else " (drawn: SEED < 0)"))
        if cfg.SEED != self.seed:  # build_train_loader(cfg) reads the drawn seed from the config
            cfg = _with_seed(cfg, self.seed)
        seed_all_rng(self.seed)
        find_unused = cfg.DISTILL.FIND_UNUSED_PARAMETERS
        with default_trainer_builds(
            create_ddp_model=functools.partial(create_ddp_model, find_unused=find_unused),
            SimpleTrainer=CheckedSimpleTrainer,
            AMPTrainer=CheckedAMPTrainer,
            DetectionCheckpointer=SafeCheckpointer,
        ):
            super().__init__(cfg)
        model = unwrap(self.model)
        self.optimizer.register_step_pre_hook(FiniteGradientCheck(model))
        inner_trainer(self).loss_ratio_stop = build_loss_ratio_stop(self.cfg, model)

    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        """detectron2's model. Fails first on a config needing CUDA or compiled ops this machine
        lacks, and on distillers configured for a meta-architecture that cannot run them."""
        check_device(cfg)
        check_compiled_ops(cfg)
        configure_dataset_tasks(cfg)  # models may read training statistics of their datasets
        model = super().build_model(cfg)
        if cfg.DISTILL.DISTILLERS and not hasattr(model, "distillers"):
            arch = cfg.MODEL.META_ARCHITECTURE
            raise ConfigValueError(
                f"DISTILL.DISTILLERS={list(cfg.DISTILL.DISTILLERS)} but MODEL.META_ARCHITECTURE "
                f"{arch!r} does not run distillers: use a Distill meta-architecture "
                "(DistillGeneralizedRCNN, DistillRetinaNet, DistillFCOS)"
            )
        return model

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """detectron2's schedulers, plus ``WarmupReduceLROnPlateau`` (:mod:`distill.plateau`)."""
        if cfg.SOLVER.LR_SCHEDULER_NAME == PLATEAU_SCHEDULER:
            if cfg.TEST.EVAL_PERIOD <= 0 or not cfg.DATASETS.TEST:
                raise ConfigValueError(
                    f"SOLVER.LR_SCHEDULER_NAME {PLATEAU_SCHEDULER!r} reads the periodic "
                    "evaluation: set TEST.EVAL_PERIOD > 0 and a validation set in DATASETS.TEST"
                )
            return build_plateau_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)

    def build_hooks(self):
        """detectron2's hooks, after the per-iteration seeding; the finite-weights check right
        before the checkpointer; with the plateau schedule, its hook right after evaluation."""
        hooks = [IterationSeed(), *super().build_hooks()]
        saving = [i for i, h in enumerate(hooks) if isinstance(h, PeriodicCheckpointer)]
        if saving:  # the main process only
            period = self.cfg.SOLVER.CHECKPOINT_PERIOD
            hooks.insert(saving[0], FiniteWeightsCheck(unwrap(self.model), period, self.max_iter))
        plateau = getattr(self.scheduler, "plateau", None)
        if plateau is not None:
            p = self.cfg.SOLVER.PLATEAU
            hook = ReduceLROnPlateau(plateau, p.METRIC, p.PATIENCE, p.FACTOR, p.THRESHOLD,
                                     p.MAX_DECAYS)  # fmt: skip
            index = next(i for i, h in enumerate(hooks) if isinstance(h, EvalHook))
            hooks.insert(index + 1, hook)
        return hooks

    @classmethod
    def build_optimizer(cls, cfg, model: nn.Module) -> torch.optim.Optimizer:
        """SGD over the student's parameters plus each distiller's own solver
        (:func:`distill.solver.build_distill_optimizer`)."""
        return build_distill_optimizer(cfg, unwrap(model))

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0, seed: int | None = None):
        """The training batches from iteration ``start_iter`` on, a function of ``seed``
        (default ``SEED``) and the iteration: detectron2's datasets, mapper (or the dataset
        task's) and sampler, batched and augmented by
        :func:`distill.data.resumable_loader.build_seeded_train_loader`."""
        configure_dataset_tasks(cfg)
        mapper = dataset_mapper(cfg, cfg.DATASETS.TRAIN[0], True) if cfg.DATASETS.TRAIN else None
        # detectron2's datasets and mapper; sampler=() skips its sampler (we build ours)
        kwargs = build_detection_train_loader.from_config(cfg, mapper, sampler=())
        if seed is None:
            seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_seeded_train_loader(
            cfg, kwargs["dataset"], kwargs["mapper"], seed, start_iter=start_iter
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """detectron2's test loader, with the mapper of the dataset's registered task if any
        (:mod:`distill.data.tasks`); an unreadable image names its file."""
        configure_dataset_tasks(cfg)
        mapper = dataset_mapper(cfg, dataset_name, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str | None = None):
        """COCOEvaluator, or the evaluator of the dataset's registered task."""
        check_builtin_dataset_root(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        task = dataset_task(dataset_name)
        if task is not None:
            return task.evaluator(cfg, dataset_name, output_folder)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def train(self):
        """detectron2's training loop, with TorchScript's graph optimizations off: they set in
        after a scripted function's first calls (fvcore's focal loss), so a resumed run would
        round differently from the uninterrupted one for a few iterations."""
        with torch.jit.optimized_execution(False):
            return super().train()

    def state_dict(self) -> dict:
        """Iteration, hook states (LR schedule), optimizer state (SGD momentum) and the
        model's running loss normalizers, which detectron2 keeps outside the state_dict."""
        state = super().state_dict()
        state["seed"] = self.seed
        state["_trainer"] = inner_trainer(self).state_dict()
        model = unwrap(self.model)
        state["model_attributes"] = {
            name: float(getattr(model, name))
            for name in RESUMABLE_MODEL_ATTRIBUTES
            if hasattr(model, name)
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.seed = int(state_dict.get("seed", self.seed))
        if "_trainer" in state_dict:
            inner_trainer(self).load_state_dict(state_dict["_trainer"])
        model = unwrap(self.model)
        for name, value in state_dict.get("model_attributes", {}).items():
            setattr(model, name, value)

    def resume_or_load(self, resume: bool = True) -> None:
        """As detectron2's; a resumed run also continues the data stream where it stopped.

        Resuming, the last checkpoint of ``OUTPUT_DIR`` must fit the model exactly (a folder
        of another architecture is refused, naming the mismatch). Otherwise a non-empty
        ``MODEL.WEIGHTS`` must be an existing local file: nothing is downloaded, and a missing
        file fails here, naming the path.
        """
        resuming = resume and self.checkpointer.has_checkpoint()
        self.checkpointer.source = RESUME_SOURCE if resuming else "MODEL.WEIGHTS"
        self.checkpointer.exact = resuming
        if self.cfg.MODEL.WEIGHTS and not resuming:
            check_local_weights(self.cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
        seed = self.seed
        super().resume_or_load(resume=resume)
        if self.start_iter > 0 or self.seed != seed:
            loader = self.build_train_loader(self.cfg, self.start_iter, self.seed)
            restart_train_loader(inner_trainer(self), loader)


class IterationSeed(HookBase):
    """Seeds the global random states from the run's seed and the iteration before each step."""

    def before_step(self) -> None:
        seed_iteration(self.trainer.seed, self.trainer.iter, comm.get_rank())


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over the checkpoints of another one, unless told what to do.

    ``resume``: the run continues them. ``overwrite``: they are deleted first (main process),
    so neither ``--resume`` nor a reader of ``last_checkpoint`` can mix the two runs.

    Raises:
        ConfigValueError: ``output_dir`` holds ``last_checkpoint`` or ``model_*.pth`` and
            neither flag is set.
    """
    if resume or not os.path.isdir(output_dir):
        return
    found = sorted(
        name
        for name in os.listdir(output_dir)
        if name == "last_checkpoint" or (name.startswith("model_") and name.endswith(".pth"))
    )
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[-3:]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigValueError(
            f"OUTPUT_DIR {output_dir!r} already holds checkpoints of a run ({shown}): pass "
            "--resume to continue that run, or --overwrite to delete them and start again"
        )
    if comm.is_main_process():
        for name in found:
            os.remove(os.path.join(output_dir, name))
        logger.warning(f"--overwrite: deleted {len(found)} checkpoint files in {output_dir}")
    comm.synchronize()


def train_and_evaluate(cfg) -> dict[str, dict[str, float]]:
    """Train ``cfg`` from scratch (no resume) and return its final evaluation,
    dataset -> task -> metric (e.g. ``{"embedded_coco_val": {"bbox": {"AP": ...}}}``)."""
    trainer = DistillTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = last_eval_results(trainer)  # of the evaluation after the last iteration
    if len(cfg.DATASETS.TEST) == 1:  # detectron2 unwraps the results of a single dataset
        results = {cfg.DATASETS.TEST[0]: results}
    return results
