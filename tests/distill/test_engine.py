"""DistillTrainer on the embedded data: training, checkpoints without teacher, exact resume."""

from __future__ import annotations

import torch
from conftest import tiny_cfg

from distill.checkpoint import SafeCheckpointer
from distill.detectron2_internals import inner_trainer
from distill.divergence import CheckedSimpleTrainer
from distill.engine import DistillTrainer

DETERMINISTIC = [
    "DATALOADER.ASPECT_RATIO_GROUPING", False, "INPUT.RANDOM_FLIP", "none",
    "SOLVER.CHECKPOINT_PERIOD", 3, "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (4,),
    "SOLVER.BASE_LR", 0.01, "SEED", 7, "DATASETS.TEST", (),
    # Batch statistics of 2 tiny images amplify float rounding (which depends on memory
    # alignment on some CPUs) into visible weight differences; frozen BN keeps runs comparable.
    "MODEL.RESNETS.NORM", "FrozenBN",
]  # fmt: skip


def trainer_for(tmp_path, teacher, max_iter, *opts):
    cfg = tiny_cfg("retinanet", *DETERMINISTIC, "SOLVER.MAX_ITER", max_iter,
                   "OUTPUT_DIR", str(tmp_path), *opts,
                   distillers=["FeatureKD"], teacher=teacher)  # fmt: skip
    return DistillTrainer(cfg)


def test_train_checkpoint_and_exact_resume(tmp_path, teacher_files):
    teacher = teacher_files("retinanet")
    torch.manual_seed(0)
    full = trainer_for(tmp_path / "full", teacher, 6)
    full.resume_or_load(resume=False)
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}

    torch.manual_seed(0)
    interrupted = trainer_for(tmp_path / "cut", teacher, 6)
    interrupted.resume_or_load(resume=False)
    interrupted.max_iter = 3  # stop after iterations 0-2, as a killed run would
    interrupted.train()
    saved = torch.load(tmp_path / "cut" / "model_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2
    assert not [k for k in saved["model"] if "teacher" in k]
    assert "optimizer" in saved["trainer"]["_trainer"]  # momentum survives the interruption
    assert "LRScheduler" in saved["trainer"]["hooks"]

    torch.manual_seed(123)  # a new process: another RNG state, another model init
    resumed = trainer_for(tmp_path / "cut", teacher, 6)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    state = resumed.model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(state[key], value, rtol=1e-5, atol=1e-6), key
    assert resumed.scheduler.last_epoch == full.scheduler.last_epoch


def test_evaluation_reports_coco_ap(tmp_path):
    cfg = tiny_cfg("retinanet", "OUTPUT_DIR", str(tmp_path), "MODEL.RETINANET.SCORE_THRESH_TEST",
                   0.0)  # fmt: skip
    from detectron2.modeling import build_model

    model = build_model(cfg)
    results = DistillTrainer.test(cfg, model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_same_seed_same_weights_whatever_the_global_state(tmp_path, teacher_files):
    """SEED alone fixes the initialisation and the training: two runs started from different
    global random states end with bit-identical weights, and the seed is in the checkpoint."""
    teacher = teacher_files("retinanet")
    finals, inits = [], []
    for run, global_seed in (("a", 0), ("b", 999)):
        torch.manual_seed(global_seed)
        trainer = trainer_for(tmp_path / run, teacher, 3, "MODEL.RESNETS.NORM", "BN")
        inits.append(trainer.model.state_dict()["backbone.fpn_output3.weight"].clone())
        trainer.resume_or_load(resume=False)
        trainer.train()
        saved = torch.load(tmp_path / run / "model_final.pth", weights_only=True)
        assert saved["trainer"]["seed"] == 7
        finals.append(saved["model"])
    assert finals[0].keys() == finals[1].keys()
    for key, value in finals[0].items():
        assert torch.equal(value, finals[1][key]), key
    assert torch.equal(inits[0], inits[1])
    torch.manual_seed(0)
    other = trainer_for(tmp_path / "c", teacher, 3, "MODEL.RESNETS.NORM", "BN", "SEED", 8)
    assert not torch.equal(other.model.state_dict()["backbone.fpn_output3.weight"], inits[0])


def test_default_trainer_builds_the_run_from_the_drawn_seed(tmp_path):
    """detectron2's DefaultTrainer.__init__ builds the run with this codebase's inner trainer and
    checkpointer, leaves detectron2 as it was, and reads its batches from the run's drawn seed."""
    import detectron2.engine.defaults as defaults

    parts = ("create_ddp_model", "SimpleTrainer", "AMPTrainer", "DetectionCheckpointer")
    before = {name: getattr(defaults, name) for name in parts}
    cfg = tiny_cfg("retinanet", "SEED", -1, "DATASETS.TEST", (), "OUTPUT_DIR", str(tmp_path))
    trainer = DistillTrainer(cfg)
    assert {name: getattr(defaults, name) for name in parts} == before
    assert isinstance(trainer.checkpointer, SafeCheckpointer)
    assert isinstance(inner_trainer(trainer), CheckedSimpleTrainer)
    assert cfg.SEED == -1 and trainer.cfg.SEED == trainer.seed >= 0

    def first_images(loader):
        return [x["image"] for x in next(iter(loader))]

    ours = first_images(trainer.data_loader)
    same = first_images(DistillTrainer.build_train_loader(cfg, seed=trainer.seed))
    other = first_images(DistillTrainer.build_train_loader(cfg, seed=trainer.seed + 1))
    assert all(torch.equal(a, b) for a, b in zip(ours, same, strict=True))
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, other, strict=True)
    )
