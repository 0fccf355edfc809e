"""What distillation costs: train-step time and memory, teacher forward, student inference.

:func:`run_benchmark` measures the phases ``train_student``, ``train_distill``,
``teacher_forward``, ``infer_plain``, ``infer_extracted`` and ``infer_distill`` in one process on
one fixed batch, inside one ``EventStorage``; each phase builds its model(s) and frees them after.
The student's random initial weights (the same in every phase) have their frozen-BN statistics
calibrated on the batch (:func:`calibrate_frozen_batchnorm`), so deep random students stay finite.
First every phase's memory pass: build, then ``MEMORY_CALLS`` untimed calls (the first creates
lazy state such as momentum buffers, the second runs with it). ``model_mib`` is what building
leaves in use (weights, buffers, a teacher), ``step_peak_mib`` the peak growth above that
(activations, gradients, optimizer state), ``total_mib`` their sum. Then every phase's timed
pass: build, ``warmup`` untimed and ``iters`` timed calls; with ``rounds`` > 1 the timed passes of
all phases are repeated, in turn, and each phase's times pooled.

* CUDA: ``torch.cuda.memory_allocated`` / ``max_memory_allocated``: tensor memory of the caching
  allocator, not what it reserves.
* CPU (Linux): process RSS from ``/proc/self/status``, the peak being ``VmHWM`` reset to the
  current RSS through ``/proc/self/clear_refs``; before each reading garbage is collected and
  ``malloc_trim(0)`` returns free heap to the OS. Until the timed passes glibc's mmap threshold
  is fixed at 128 KiB: every tensor of 128 KiB or more is its own mapping, resident while alive
  and unmapped when freed, so RSS follows live tensors (plus small-object heap and thread
  stacks), not what the heap retains. The timed passes run with it fixed at 32 MiB, the ceiling
  of glibc's adaptive threshold in steady training (fresh mappings page-fault). The process
  keeps these malloc settings. Without ``/proc``, memory fields are None.
"""

from __future__ import annotations

import contextlib
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
from distill.compiled_ops import check_device
from distill.export import plain_config
from distill.random_teacher import calibrate_frozen_batchnorm

MIB, MEMORY_CALLS = 2**20, 2
# glibc mallopt parameters and the thresholds of the memory pass / the timed calls
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_PRECISE, _FAST = (128 * 1024, 128 * 1024), (64 * MIB, 32 * MIB)


def _proc_status_bytes(field: str) -> float | None:
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes, or None."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
        return 1024.0 * int(match.group(1)) if match else None
    return None


def _reset_peak_rss() -> bool:
    """Set the process's ``VmHWM`` to its current RSS (Linux >= 4.0); False if impossible."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")
        return True
    return False


class MemoryMeter:
    """Bytes in use and their peak on ``device``: CUDA allocator stats, or RSS on Linux CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._libc = None
        with contextlib.suppress(OSError):
            libc = None if self.cuda else ctypes.CDLL("libc.so.6")
            self._libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
        rss = not self.cuda and _proc_status_bytes("VmRSS") is not None and _reset_peak_rss()
        self.available = self.cuda or rss
        glibc = "glibc mmap threshold 128 KiB" if self._libc else "no glibc mallopt (rough)"
        cpu = f"RSS (VmRSS, VmHWM reset by clear_refs), {glibc}" if rss else "unavailable"
        self.method = "CUDA memory_allocated / max_memory_allocated" if self.cuda else cpu
        self.precise(True)

    def precise(self, on: bool) -> None:
        """Fix glibc's trim and mmap thresholds for measuring (on) or for timing (off)."""
        if self._libc is not None:
            trim, mmap = _PRECISE if on else _FAST
            self._libc.mallopt(_M_TRIM_THRESHOLD, trim)
            self._libc.mallopt(_M_MMAP_THRESHOLD, mmap)

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
        self.sync()
        if self.cuda:
            return float(torch.cuda.max_memory_allocated())
        return _proc_status_bytes("VmHWM") if self.available else None


def measure_memory(
    build: Callable[[], Any], step: Callable[[Any], Any], meter: MemoryMeter
) -> dict:
    """MiB used by ``build()`` (``model_mib``) and the peak above that in ``MEMORY_CALLS`` calls
    of ``step`` (``step_peak_mib``), and their sum (``total_mib``); None when not measurable."""
    before = meter.current()
    obj = build()
    built = meter.current()
    meter.reset_peak()
    for _ in range(MEMORY_CALLS):
        step(obj)
    peak = meter.peak()
    if None in (before, built, peak):
        return {"model_mib": None, "step_peak_mib": None, "total_mib": None}
    model, step_peak = (built - before) / MIB, max(peak - built, 0.0) / MIB
    return {"model_mib": model, "step_peak_mib": step_peak, "total_mib": model + step_peak}


def measure_time(
    build: Callable[[], Any],
    step: Callable[[Any], Any],
    iters: int,
    warmup: int,
    meter: MemoryMeter,
) -> tuple[list[float], Any]:
    """Seconds of each of ``iters`` calls of ``step(obj)`` after ``warmup`` untimed ones, and
    ``obj = build()``."""
    obj = build()
    times = []
    for i in range(warmup + iters):
        meter.sync()
        start = time.perf_counter()
        step(obj)
        meter.sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, obj


def time_stats(times: list[float]) -> dict[str, Any]:
    """``median_s``, ``mean_s``, ``min_s`` and ``times_s`` of a list of call times."""
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "times_s": times,
    }


def _to_device(batch: list[dict], device: torch.device) -> list[dict]:
    keys = ("image", "instances")
    return [{**x, **{k: x[k].to(device) for k in keys if k in x}} for x in batch]


def _cpu_clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _same_outputs(a: list[dict], b: list[dict]) -> bool:
    """Whether two detectors' outputs have equal pred_boxes, scores and pred_classes."""
    fields = (lambda i: i.pred_boxes.tensor, lambda i: i.scores, lambda i: i.pred_classes)
    pairs = [(x["instances"], y["instances"]) for x, y in zip(a, b, strict=True)]
    return all(torch.equal(f(x), f(y)) for x, y in pairs for f in fields)


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
    a, b = (num or {}).get(key), (den or {}).get(key)
    return a / b if a is not None and b else None


def run_benchmark(
    cfg: CfgNode,
    batch: list,
    iters: int = 10,
    warmup: int = 2,
    lr: float = 1e-4,
    seed: int = 0,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure the phases on one fixed batch, as the module docstring says.

    Args:
        cfg: training config of a Distill* model (with or without distillers).
        batch: B DatasetMapper-style dicts (``image`` (3, H, W), ``instances``, ``height``,
            ``width``), moved to ``cfg.MODEL.DEVICE`` once and reused by every call.
        iters / warmup: timed / untimed calls per phase and round.
        rounds: the timed passes of all phases are repeated this many times, one phase after
            the other, and each phase's times pooled: on a machine whose speed drifts (shared
            CPUs), every phase then samples the slow and the fast periods alike.
        lr: SGD learning rate of the train steps (the optimizer of ``DistillTrainer``).
        seed: seeds Python, numpy and torch before every model is built.

    Returns:
        JSON-able dict: environment, ``phases`` (name -> the stats of :func:`measure_time` and
        :func:`measure_memory`), ``ratios`` (:data:`RATIOS`, None where a phase is absent) and
        ``checks`` (the extracted student's outputs equal the Distill model's, key counts).
    """
    from distill.engine import DistillTrainer
    from distill.teacher import build_teacher

    if iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(
            f"need iters >= 1, warmup >= 0 and rounds >= 1, got {iters}, {warmup} and {rounds}"
        )
    device = check_device(cfg)
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

    with EventStorage(0) as storage:
        reference = built(cfg)
        calibrated = calibrate_frozen_batchnorm(reference, batch)
        distillers = dict(getattr(reference, "distillers", {}))
        has_teacher = getattr(reference, "teacher", None) is not None
        # the first iteration at which every distiller runs (a start_iter may delay them)
        storage.iter = max((d.start_iter for d in distillers.values()), default=0)
        inactive = [n for n, d in distillers.items() if not d.is_active(storage.iter)]
        init_state = _cpu_clone(reference.state_dict())
        # one-time process costs (thread pools, kernel caches) before any phase
        sum(reference.train()(batch).values()).backward()
        infer(reference.eval())
        del reference, distillers

        # the infer phases load the weights left by the timed train steps (same init, same
        # number of SGD steps): the plain student's, and the Distill model's (and its student)
        student_init = student_state_dict(init_state)
        trained = {"train_student": student_init, "train_distill": init_state}
        key = "train_distill" if cfg.DISTILL.DISTILLERS else "train_student"
        student = lambda: student_state_dict(trained[key])  # noqa: E731
        specs = {"train_student": (lambda: train_setup(plain_cfg, student_init), train_step)}
        if cfg.DISTILL.DISTILLERS:
            specs["train_distill"] = (lambda: train_setup(cfg, init_state), train_step)
        if has_teacher:
            specs["teacher_forward"] = (lambda: build_teacher(cfg, cfg.INPUT.FORMAT), teacher_step)
        specs["infer_plain"] = (lambda: built(plain_cfg, trained["train_student"]).eval(), infer)
        specs["infer_extracted"] = (lambda: built(plain_cfg, student()).eval(), infer)
        specs["infer_distill"] = (lambda: built(cfg, trained[key]).eval(), infer)

        # every memory pass before any timed call: see the module docstring
        memory = {name: measure_memory(*spec, meter) for name, spec in specs.items()}
        meter.precise(False)
        times: dict[str, list[float]] = {name: [] for name in specs}
        outputs = {}
        for _ in range(rounds):
            for name, (build, step) in specs.items():
                phase_times, obj = measure_time(build, step, iters, warmup, meter)
                times[name] += phase_times
                if name in trained:
                    trained[name] = _cpu_clone(obj[0].state_dict())
                elif name in ("infer_extracted", "infer_distill"):
                    outputs[name] = infer(obj)
                del obj
        phases = {name: {**time_stats(times[name]), **memory[name]} for name in specs}
    checks = {"inactive_distillers": inactive, "extracted_keys": len(student())}
    checks["calibrated_frozen_bn_layers"] = calibrated
    checks["dropped_distiller_keys"] = len(trained[key]) - len(student())
    checks["extracted_outputs_equal_distill"] = _same_outputs(*outputs.values())
    name = torch.cuda.get_device_name(device) if meter.cuda else platform.processor()
    result = {"device": str(device), "device_name": name, "torch": torch.__version__}
    result.update(num_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), seed=seed)
    result.update(arch=cfg.MODEL.META_ARCHITECTURE, distillers=list(cfg.DISTILL.DISTILLERS))
    result.update(teacher=has_teacher, iteration=storage.iter, iters=iters, warmup=warmup)
    result.update(rounds=rounds)
    result.update(batch_size=len(batch), lr=lr, memory_method=meter.method, phases=phases)
    ratios = {k: _ratio(phases.get(n), phases.get(d), stat) for k, (n, d, stat) in RATIOS.items()}
    return {**result, "ratios": ratios, "checks": checks}
