"""The detectron2 internals :class:`distill.engine.DistillTrainer` relies on, one function each.

detectron2 has no public way to do these; each function names what it relies on, so that a
detectron2 that changes it fails here, in one place.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from detectron2.engine import DefaultTrainer, SimpleTrainer


@contextlib.contextmanager
def default_trainer_builds(**substitutes: Callable) -> Iterator[None]:
    """Inside the block, ``DefaultTrainer.__init__`` calls ``substitutes[name]`` for ``name``.

    ``DefaultTrainer.__init__`` has no ``build_*`` method for its DDP wrapper, its inner trainer
    and its checkpointer: it calls ``create_ddp_model``, ``SimpleTrainer`` / ``AMPTrainer`` and
    ``DetectionCheckpointer``, names it looks up in the globals of ``detectron2.engine.defaults``
    when it runs (detectron2 0.6 and later). Relies on exactly that.

    Raises:
        RuntimeError: after the block, if a substitute was never called (``AMPTrainer`` and
            ``SimpleTrainer`` count as one): this detectron2 builds that part another way.
    """
    module = sys.modules[DefaultTrainer.__module__]
    missing = [name for name in substitutes if not hasattr(module, name)]
    if missing:
        raise RuntimeError(f"detectron2's DefaultTrainer module has no {missing}: cannot replace")
    saved = {name: getattr(module, name) for name in substitutes}
    called: set[str] = set()

    def counted(name: str, build: Callable) -> Callable:
        def call(*args, **kwargs):
            called.add("SimpleTrainer" if name == "AMPTrainer" else name)
            return build(*args, **kwargs)

        return call

    for name, build in substitutes.items():
        setattr(module, name, counted(name, build))
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    unused = {"SimpleTrainer" if n == "AMPTrainer" else n for n in substitutes} - called
    if unused:
        raise RuntimeError(
            f"detectron2's DefaultTrainer.__init__ did not call {sorted(unused)}: this detectron2 "
            "builds its trainer another way, so DistillTrainer cannot replace those parts"
        )


def inner_trainer(trainer: DefaultTrainer) -> SimpleTrainer:
    """The ``SimpleTrainer`` / ``AMPTrainer`` that runs the steps of a ``DefaultTrainer``.

    Relies on ``DefaultTrainer`` keeping it in ``_trainer`` (no public accessor)."""
    return trainer._trainer


def restart_train_loader(trainer: SimpleTrainer, loader: Iterable) -> None:
    """Make ``trainer`` take its next batches from a new ``loader``.

    Uses ``reset_data_loader`` where detectron2 has it (after 0.6); detectron2 0.6 reads the
    iterator it keeps in ``SimpleTrainer._data_loader_iter``, which this relies on."""
    if hasattr(trainer, "reset_data_loader"):
        trainer.reset_data_loader(lambda: loader)
        return
    trainer.data_loader = loader
    trainer._data_loader_iter = iter(loader)


def last_eval_results(trainer: DefaultTrainer) -> Any:
    """The results of the last periodic or final evaluation of ``trainer.train()``.

    Relies on ``DefaultTrainer.build_hooks`` storing them in ``_last_eval_results`` (``train()``
    returns them only when ``TEST.EXPECTED_RESULTS`` is set)."""
    return trainer._last_eval_results
