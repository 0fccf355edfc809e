"""Running ``main(args)`` on one process, with detectron2's ``launch``, or under ``torchrun``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

# The log set-up of this process's current run: its output folder and the handlers it added.
_run_logging: dict = {"output_dir": None, "handlers": None}


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.run) sets these for every worker process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def init_torchrun_process_group() -> None:
    """Join the torchrun job: NCCL with CUDA (one GPU per local rank), gloo on CPU.

    Also creates detectron2's per-machine process group, which ``comm.get_local_rank`` needs.
    """
    world_size = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ["LOCAL_WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    machine = rank // local_size
    for i in range(world_size // local_size):
        group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
        if i == machine:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def run(main: Callable, args) -> object:
    """Run ``main(args)`` under torchrun's environment, or through detectron2's ``launch``.

    detectron2's ``launch`` spawns one process per GPU and needs CUDA for more than one;
    ``torchrun --nproc_per_node N tools/train_net.py ...`` runs N processes on CPU too (gloo).
    """
    if launched_by_torchrun():
        init_torchrun_process_group()
        try:
            return main(args)
        finally:
            dist.destroy_process_group()
    if args.num_gpus > 1 and not torch.cuda.is_available():
        raise SystemExit(
            "--num-gpus > 1 needs CUDA; on CPU run several processes with "
            "`torchrun --nproc_per_node N tools/train_net.py ...` instead"
        )
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def setup_run_logging(output_dir: str | None) -> None:
    """detectron2's log set-up (console on the main process, ``output_dir/log.txt``) for the
    ``detectron2`` and ``fvcore`` loggers, as ``default_setup`` does, and for this codebase's
    and those of the projects and user modules imported so far (call it after the config is
    loaded), so that their lines (the run's seed, the teacher's card, warnings) reach the console
    and the log file like detectron2's.

    Idempotent for one ``output_dir``. A process that runs one job after another (``compare_runs``)
    calls it per job: the previous job's handlers are removed first, so each line is printed once
    and lands in the current job's ``log.txt`` only."""
    from distill.user_code import user_modules

    if _run_logging["handlers"] is not None:
        if _run_logging["output_dir"] == output_dir:
            return
        for logger, handler in _run_logging["handlers"]:
            logger.removeHandler(handler)
        setup_logger.cache_clear()  # detectron2 caches the set-up by its arguments
    names = ("detectron2", "fvcore", "distill", *user_modules())
    before = {name: set(logging.getLogger(name).handlers) for name in names}
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank)  # the same call as default_setup's
    for name in names[1:]:
        setup_logger(output_dir, distributed_rank=rank, name=name)
    _run_logging["output_dir"] = output_dir
    _run_logging["handlers"] = [
        (logging.getLogger(name), handler)
        for name in names
        for handler in logging.getLogger(name).handlers
        if handler not in before[name]
    ]
