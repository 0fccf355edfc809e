"""The quality gate a teacher passes before it may teach, and the card that records it.

A teacher trained from scratch can collapse without a non-finite loss: its box scores stop
depending on the image (every detection of every image scoring the same), detectron2 reports
"No predictions from the model!" and an AP of NaN, and a student distilled from it is wrecked.
The gate evaluates the weights on ``DATASETS.TEST[0]`` and fails them when

* the AP is NaN (no predictions) or below ``TEACHER_GATE.MIN_AP``;
* with every score threshold at 0, the first ``TEACHER_GATE.IMAGES`` test images get no
  detection at all, or detections whose scores do not depend on the image.

:func:`card_teacher` runs the gate on a weights file and writes its card
(:mod:`distill.teacher_card`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import math
import os
import subprocess
from collections.abc import Iterator

import torch
from detectron2.config import CfgNode
from torch import nn

from distill.teacher_card import TeacherCard, file_sha256, write_card

# scores equal to this tolerance on every image (sorted) mean the scores ignore the input
_CONSTANT_ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The gate's measurements and verdict (AP values in percent)."""

    dataset: str
    ap: float
    ap50: float
    passed: bool
    verdict: str


@contextlib.contextmanager
def all_scores_kept(model: nn.Module) -> Iterator[None]:
    """Set every ``test_score_thresh`` in ``model`` (detectron2's box predictors and dense
    detectors) to 0 for the body, then restore them."""
    saved = [(m, m.test_score_thresh) for m in model.modules() if hasattr(m, "test_score_thresh")]
    for module, _ in saved:
        module.test_score_thresh = 0.0
    try:
        yield
    finally:
        for module, value in saved:
            module.test_score_thresh = value


def score_vectors(model: nn.Module, inputs: list[dict]) -> list[torch.Tensor]:
    """Each image's detection scores, sorted in decreasing order, with every threshold at 0."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), all_scores_kept(model):
            outputs = [model([x])[0]["instances"] for x in inputs]
    finally:
        model.train(was_training)
    return [o.scores.detach().float().cpu().sort(descending=True).values for o in outputs]


def constant_outputs(scores: list[torch.Tensor]) -> str | None:
    """What is wrong with the per-image score vectors of :func:`score_vectors`, or None.

    Fails when no image has a detection, and when every image's sorted scores equal the first
    image's (to 1e-5): a detector whose scores do not depend on its input.
    """
    if all(s.numel() == 0 for s in scores):
        return f"no detections on {len(scores)} test images even with every score threshold at 0"
    if len(scores) < 2:
        return None
    length = min(s.numel() for s in scores)
    if length == 0:
        return None
    first = scores[0][:length]
    if all(torch.allclose(s[:length], first, rtol=0, atol=_CONSTANT_ATOL) for s in scores[1:]):
        low, high = first.min().item(), first.max().item()
        return (
            f"outputs do not depend on the input: the {len(scores)} test images get the same "
            f"{length} detection scores ({low:.4g} to {high:.4g})"
        )
    return None


def run_gate(cfg: CfgNode, model: nn.Module) -> GateResult:
    """Evaluate ``model`` on ``cfg.DATASETS.TEST[0]`` and decide whether it may teach."""
    from distill.engine import DistillTrainer  # the engine builds on the teacher side

    dataset = cfg.DATASETS.TEST[0]
    one = cfg.clone()
    one.defrost()
    one.DATASETS.TEST = (dataset,)
    one.freeze()
    loader = DistillTrainer.build_test_loader(one, dataset)
    inputs = list(itertools.islice((x for batch in loader for x in batch), cfg.TEACHER_GATE.IMAGES))
    fault = constant_outputs(score_vectors(model, inputs))
    bbox = DistillTrainer.test(one, model).get("bbox", {})
    ap, ap50 = float(bbox.get("AP", math.nan)), float(bbox.get("AP50", math.nan))
    min_ap = cfg.TEACHER_GATE.MIN_AP
    if fault is None and math.isnan(ap):
        fault = f"no predictions on {dataset} (AP is NaN)"
    if fault is None and ap < min_ap:
        fault = f"AP {ap:.1f} on {dataset} is below TEACHER_GATE.MIN_AP {min_ap:g}"
    verdict = fault or f"AP {ap:.1f} >= TEACHER_GATE.MIN_AP {min_ap:g}, outputs vary by image"
    return GateResult(dataset, ap, ap50, passed=fault is None, verdict=verdict)


def codebase_commit() -> str:
    """The git commit of this checkout, or "unknown" (an installed copy, no git)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def card_teacher(
    cfg: CfgNode,
    model: nn.Module,
    weights: str,
    *,
    config_file: str,
    source: str,
    seed: int | None = None,
    iterations: int | None = None,
) -> TeacherCard:
    """Run the gate on ``model`` (holding the weights of the file ``weights``) and write the
    card next to ``weights``; returns the card, passed or not."""
    result = run_gate(cfg, model)
    card = TeacherCard(
        weights_sha256=file_sha256(weights),
        config_file=config_file,
        config=cfg.dump(),
        seed=seed,
        iterations=iterations,
        dataset=result.dataset,
        ap=result.ap,
        ap50=result.ap50,
        min_ap=float(cfg.TEACHER_GATE.MIN_AP),
        passed=result.passed,
        verdict=result.verdict,
        source=source,
        commit=codebase_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        threads=torch.get_num_threads(),
    )
    write_card(card, weights)
    return card


def load_for_gate(cfg: CfgNode, weights: str, source: str) -> nn.Module:
    """The plain detector of ``cfg`` holding ``weights``, which must fit it exactly (distiller
    weights of a distilled checkpoint are ignored); ``source`` names the file in errors."""
    from distill.checkpoint import StudentCheckpointer
    from distill.engine import DistillTrainer
    from distill.export import plain_config

    model = DistillTrainer.build_model(plain_config(cfg))
    StudentCheckpointer(model, source=source, exact=True).load(weights, checkpointables=[])
    return model
