"""Recording named intermediate results of the student and the teacher during a forward pass.

:class:`FeatureRecorder` records the outputs of submodules named by their dotted path
(``"backbone.bottom_up.res4"``); :func:`tap_method` records the return value of a method of one
object (e.g. ``roi_heads.label_and_sample_proposals``) and :func:`replay_method` makes a method
return a recorded value. All attach only inside a ``with`` block and detach on exit, so a model
outside such a block runs exactly its own code.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from distill.errors import ConfigKeyError


class UnknownModulePathError(ConfigKeyError):
    """A recorder path names no submodule of the model."""


def resolve_module(model: nn.Module, path: str, owner: str = "model") -> nn.Module:
    """Return the submodule at dotted ``path``; raise naming the path and close matches."""
    names = [name for name, _ in model.named_modules() if name]
    if path not in names:
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise UnknownModulePathError(
            f"{owner} has no module at path {path!r} (a dotted name from named_modules()).{hint}"
        )
    return model.get_submodule(path)


class FeatureRecorder:
    """Records the outputs of named submodules of one model.

    Paths are checked when the recorder is created, so a typo fails before training starts.

    Example::

        recorder = FeatureRecorder(model, ["backbone.bottom_up.res4"])
        with recorder.recording() as records:
            model(batched_inputs)
        records["backbone.bottom_up.res4"]  # (N, C, H, W)
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], owner: str = "model"):
        self.paths = list(dict.fromkeys(paths))
        self.modules = {p: resolve_module(model, p, owner) for p in self.paths}

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, Any]]:
        """Attach hooks for the duration of the block; yields the dict filled by the forward."""
        records: dict[str, Any] = {}
        handles = []
        for path, module in self.modules.items():

            def hook(_module, _inputs, output, path=path):
                records[path] = output

            handles.append(module.register_forward_hook(hook))
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()


@contextlib.contextmanager
def tap_method(obj: Any, name: str, records: dict[str, Any], key: str) -> Iterator[None]:
    """Store the return value of ``obj.<name>(...)`` in ``records[key]`` inside the block.

    The bound method is shadowed by an instance attribute for the duration of the block and
    restored afterwards; the class and other instances are untouched.
    """
    method = getattr(obj, name)

    def tapped(*args, **kwargs):
        result = method(*args, **kwargs)
        records[key] = result
        return result

    setattr(obj, name, tapped)
    try:
        yield
    finally:
        delattr(obj, name)


@contextlib.contextmanager
def replay_method(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Inside the block, ``obj.<name>(...)`` returns ``value`` without running.

    Used to run a detector's code again on other inputs while reusing a result recorded with
    :func:`tap_method` (e.g. the student's anchor targets for a second head pass).
    """
    setattr(obj, name, lambda *args, **kwargs: value)
    try:
        yield
    finally:
        delattr(obj, name)
