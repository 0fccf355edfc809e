"""An LGD run interrupted and resumed ends with the weights of an uninterrupted run: the
schedules, the frozen backbone and the teacher's own optimizer (AdamW) survive the restart."""

from __future__ import annotations

import torch
from conftest import tiny_cfg

from distill.engine import DistillTrainer

OPTS = [
    "DATALOADER.ASPECT_RATIO_GROUPING", False, "INPUT.RANDOM_FLIP", "none",
    "SOLVER.CHECKPOINT_PERIOD", 2, "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (3,),
    "SOLVER.BASE_LR", 0.01, "SEED", 5, "DATASETS.TEST", (), "SOLVER.MAX_ITER", 5,
    "MODEL.RESNETS.NORM", "FrozenBN",  # batch statistics of 2 tiny images amplify rounding
    "LGD.PRE_NONDISTILL_ITERS", 2, "LGD.PRE_FREEZE_STUDENT_BACKBONE_ITERS", 3,
    "LGD.OPTIMIZER", "AdamW", "LGD.LR_FACTOR", 0.01,
]  # fmt: skip


def trainer(out):
    return DistillTrainer(tiny_cfg("retinanet", *OPTS, "OUTPUT_DIR", str(out),
                                   distillers=["LGD"]))  # fmt: skip


def test_interrupted_lgd_run_resumes_exactly(tmp_path):
    torch.manual_seed(0)
    full = trainer(tmp_path / "full")
    full.resume_or_load(resume=False)
    full.train()
    expected = {k: v.clone() for k, v in full.model.state_dict().items()}

    torch.manual_seed(0)
    cut = trainer(tmp_path / "cut")
    cut.resume_or_load(resume=False)
    cut.max_iter = 2  # iterations 0-1, inside the frozen-backbone phase
    cut.train()
    torch.manual_seed(99)
    resumed = trainer(tmp_path / "cut")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert set(resumed.optimizer.optimizers) == {"SGD", "AdamW"}
    resumed.train()
    state = resumed.model.state_dict()
    for key, value in expected.items():
        assert torch.allclose(state[key], value, rtol=1e-5, atol=1e-6), key
