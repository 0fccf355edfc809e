"""What distillation costs: train-step time and memory, teacher forward, student inference.

:func:`run_benchmark` runs every phase in one process on one fixed batch (moved to the device
once) inside one ``EventStorage``; each phase builds its model(s) itself and frees them after.

Memory, per phase: ``model_mib`` is what building the phase's model(s) leaves resident (weights,
buffers, a teacher), ``step_peak_mib`` the peak growth above that during the timed loop
(activations, gradients, optimizer state, autograd buffers), ``total_mib`` their sum.

* CUDA: ``torch.cuda.memory_allocated`` before/after building and ``max_memory_allocated``
  (reset after building): tensor memory of the caching allocator, not what it reserves.
* CPU (Linux): process RSS from ``/proc/self/status``. Before each reading Python's garbage is
  collected and glibc's ``malloc_trim(0)`` hands freed heap back to the OS, so a phase cannot
  reuse pages an earlier phase left behind; the peak is ``VmHWM`` after resetting it to the
  current RSS by writing ``5`` to ``/proc/self/clear_refs``. RSS counts every page the process
  touches (allocator slack and thread stacks included), so it is an upper bound on tensor
  memory. Where that interface is missing, memory fields are None.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from distill.checkpoint import student_state_dict
from distill.export import plain_config

MIB = 2**20
PHASES = {
    "train_student": "train step, student alone (DISTILL.DISTILLERS=[])",
    "train_distill": "train step, student + distillers + teacher",
    "teacher_forward": "teacher preprocess + backbone, no_grad",
    "infer_plain": "eval forward, plain detector (own init)",
    "infer_extracted": "eval forward, plain detector + extracted student",
    "infer_distill": "eval forward, Distill model (teacher attached)",
}


def _proc_status_bytes(field: str) -> float | None:
    """``field`` (e.g. ``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes, or None."""
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return 1024.0 * int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Set the process's ``VmHWM`` to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class MemoryMeter:
    """Bytes in use and their peak on ``device``: CUDA allocator stats, or RSS on Linux CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        try:
            self._libc = None if self.cuda else ctypes.CDLL("libc.so.6")
        except OSError:
            self._libc = None
        rss = _proc_status_bytes("VmRSS") is not None and _reset_peak_rss()
        self.available = self.cuda or rss
        self.method = (
            "CUDA: torch.cuda.memory_allocated / max_memory_allocated"
            if self.cuda
            else "RSS: VmRSS after gc + malloc_trim, VmHWM reset via /proc/self/clear_refs"
            if rss
            else "unavailable (needs CUDA, or Linux /proc/self/clear_refs)"
        )

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def current(self) -> float | None:
        """Bytes in use now, after collecting garbage (and trimming the heap on CPU)."""
        gc.collect()
        self.sync()
        if self.cuda:
            return float(torch.cuda.memory_allocated())
        if self._libc is not None:
            self._libc.malloc_trim(0)
        return _proc_status_bytes("VmRSS") if self.available else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            _reset_peak_rss()

    def peak(self) -> float | None:
        if self.cuda:
            return float(torch.cuda.max_memory_allocated())
        return _proc_status_bytes("VmHWM") if self.available else None


def measure(
    build: Callable[[], Any],
    step: Callable[[Any], Any],
    iters: int,
    warmup: int,
    meter: MemoryMeter,
) -> tuple[dict[str, Any], Any]:
    """Time ``step(build())`` ``iters`` times after ``warmup`` untimed calls; see module doc.

    Returns:
        (stats, the built object): seconds (``median_s``, ``mean_s``, ``min_s``, ``times_s``) and
        MiB (``model_mib``, ``step_peak_mib``, ``total_mib``; None when not measurable).
    """
    before = meter.current()
    obj = build()
    built = meter.current()
    meter.reset_peak()
    times = []
    for i in range(warmup + iters):
        meter.sync()
        start = time.perf_counter()
        step(obj)
        meter.sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = meter.peak()
    stats = {"median_s": statistics.median(times), "mean_s": statistics.fmean(times)}
    stats.update(min_s=min(times), times_s=times, model_mib=None, step_peak_mib=None)
    if before is not None and built is not None and peak is not None:
        stats.update(model_mib=(built - before) / MIB, step_peak_mib=max(peak - built, 0) / MIB)
    mibs = (stats["model_mib"], stats["step_peak_mib"])
    stats["total_mib"] = None if None in mibs else sum(mibs)
    return stats, obj


def _to_device(batch: list[dict], device: torch.device) -> list[dict]:
    keys = ("image", "instances")
    return [{**x, **{k: x[k].to(device) for k in keys if k in x}} for x in batch]


def _cpu_clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _same_outputs(a: list[dict], b: list[dict]) -> bool:
    """Whether two detectors' outputs have equal pred_boxes, scores and pred_classes."""

    def fields(out: dict) -> list[torch.Tensor]:
        inst = out["instances"]
        return [inst.pred_boxes.tensor, inst.scores, inst.pred_classes]

    pairs = [(u, v) for x, y in zip(a, b, strict=True) for u, v in zip(fields(x), fields(y))]
    return all(torch.equal(u, v) for u, v in pairs)


# ratio name -> (numerator phase, denominator phase, stat)
RATIOS = {
    "train_time_distill_vs_student": ("train_distill", "train_student", "median_s"),
    "train_memory_distill_vs_student": ("train_distill", "train_student", "total_mib"),
    "train_step_peak_distill_vs_student": ("train_distill", "train_student", "step_peak_mib"),
    "teacher_forward_vs_student_train_step": ("teacher_forward", "train_student", "median_s"),
    "infer_extracted_vs_plain": ("infer_extracted", "infer_plain", "median_s"),
    "infer_distill_vs_extracted": ("infer_distill", "infer_extracted", "median_s"),
}


def _ratio(num: dict | None, den: dict | None, key: str) -> float | None:
    if not num or not den or num.get(key) is None or den.get(key) is None:
        return None
    return num[key] / den[key] if den[key] > 0 else None


def run_benchmark(
    cfg: CfgNode,
    batch: list[dict[str, Any]],
    iters: int = 10,
    warmup: int = 2,
    lr: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure the phases of :data:`PHASES` on one fixed batch; see the module docstring.

    Args:
        cfg: training config of a Distill* model (with or without distillers).
        batch: B DatasetMapper-style dicts (``image`` (3, H, W), ``instances``, ``height``,
            ``width``), moved to ``cfg.MODEL.DEVICE`` once and reused by every call.
        iters / warmup: timed / untimed calls per phase.
        lr: SGD learning rate of the train steps (the optimizer of ``DistillTrainer``).
        seed: seeds Python, numpy and torch before every model is built.

    Returns:
        JSON-able dict: environment, ``phases`` (name -> :func:`measure` stats), ``ratios``
        (:data:`RATIOS`, None where a phase is absent) and ``checks`` of the extracted student.
    """
    from distill.engine import DistillTrainer
    from distill.teacher import build_teacher

    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got {iters} and {warmup}")
    device = torch.device(cfg.MODEL.DEVICE)
    meter = MemoryMeter(device)
    batch = _to_device(batch, device)
    plain_cfg = plain_config(cfg)
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.SOLVER.BASE_LR = lr

    def built(config: CfgNode, state: dict | None = None) -> torch.nn.Module:
        seed_all_rng(seed)
        model = build_model(config)
        if state is not None:
            model.load_state_dict(state, strict=True)  # raises on missing / unexpected keys
        return model

    def evaluating(config: CfgNode, state: dict | None = None) -> Callable[[], torch.nn.Module]:
        return lambda: built(config, state).eval()

    def train_setup(config: CfgNode, state: dict) -> tuple:
        model = built(config, state).train()
        return model, DistillTrainer.build_optimizer(train_cfg, model)

    def train_step(model_and_optimizer: tuple) -> None:
        model, optimizer = model_and_optimizer
        optimizer.zero_grad(set_to_none=True)
        sum(model(batch).values()).backward()
        optimizer.step()

    def teacher_step(teacher) -> None:
        with torch.no_grad():
            teacher.features(teacher.preprocess(batch, cfg.INPUT.FORMAT))

    def infer(model: torch.nn.Module) -> list[dict]:
        with torch.no_grad():
            return model(batch)

    phases: dict[str, dict] = {}

    def phase(name: str, build: Callable, step: Callable, keep: Callable = lambda obj: None):
        phases[name], obj = measure(build, step, iters, warmup, meter)
        return keep(obj)  # the phase's model is freed on return

    checks: dict[str, Any] = {}
    with EventStorage(0) as storage:
        reference = built(cfg)
        distillers = dict(getattr(reference, "distillers", {}))
        has_teacher = getattr(reference, "teacher", None) is not None
        # the first iteration at which every distiller runs (a start_iter may delay them)
        storage.iter = max((d.start_iter for d in distillers.values()), default=0)
        checks["inactive_distillers"] = [
            n for n, d in distillers.items() if not d.is_active(storage.iter)
        ]
        init_state = _cpu_clone(reference.state_dict())
        # one-time process costs (thread pools, kernel and allocator caches) before any phase
        sum(reference.train()(batch).values()).backward()
        infer(reference.eval())
        del reference, distillers

        student_init = student_state_dict(init_state)
        phase("train_student", lambda: train_setup(plain_cfg, student_init), train_step)
        trained_state = init_state
        if cfg.DISTILL.DISTILLERS:
            keep = lambda obj: _cpu_clone(obj[0].state_dict())  # noqa: E731
            trained_state = phase(
                "train_distill", lambda: train_setup(cfg, init_state), train_step, keep
            )
        if has_teacher:
            phase("teacher_forward", lambda: build_teacher(cfg, cfg.INPUT.FORMAT), teacher_step)
        phase("infer_plain", evaluating(plain_cfg), infer)
        extracted_state = student_state_dict(trained_state)
        outputs = phase("infer_extracted", evaluating(plain_cfg, extracted_state), infer, infer)
        distill_outputs = phase("infer_distill", evaluating(cfg, trained_state), infer, infer)
    checks["extracted_outputs_equal_distill"] = _same_outputs(outputs, distill_outputs)
    checks["extracted_keys"] = len(extracted_state)
    checks["dropped_distiller_keys"] = len(trained_state) - len(extracted_state)
    name = torch.cuda.get_device_name(device) if meter.cuda else platform.processor()
    result = {"device": str(device), "device_name": name, "torch": torch.__version__}
    result.update(num_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), seed=seed)
    result.update(arch=cfg.MODEL.META_ARCHITECTURE, distillers=list(cfg.DISTILL.DISTILLERS))
    result.update(teacher=has_teacher, iteration=storage.iter, iters=iters, warmup=warmup)
    result.update(batch_size=len(batch), lr=lr, memory_method=meter.method, phases=phases)
    ratios = {k: _ratio(phases.get(n), phases.get(d), stat) for k, (n, d, stat) in RATIOS.items()}
    return {**result, "ratios": ratios, "checks": checks}
