"""Recording named intermediate results of the student and the teacher during a forward pass.

:class:`FeatureRecorder` records what named submodules return or receive; :func:`tap_method`
records the return value of a method of one object (e.g. ``roi_heads.label_and_sample_proposals``)
and :func:`replay_method` makes a method return a recorded value. All attach only inside a
``with`` block and detach on exit, so a model outside such a block runs exactly its own code.

A recorder spec names a submodule by its dotted path in ``named_modules()``, optionally followed
by options after colons:

* ``"backbone.bottom_up.res4"`` (or ``"...:output"``): the module's output (its return value);
* ``"roi_heads.box_predictor:input"``: its inputs, the tuple of positional arguments of the call
  (keyword arguments are not recorded);
* a trailing ``":all"`` (``"roi_heads.box_head:all"``, ``"roi_heads.box_head:input:all"``): every
  call of the ``recording()`` block, a list in call order.

Without ``":all"``, a module that runs more than once in one block is an error
(:class:`RepeatedCallError`, naming the path and the number of calls): one call never silently
replaces another. In code, :class:`Record` ``(path, what="output" | "input", calls="one" | "all")``
says the same and is accepted alongside strings. Records are keyed by exactly the spec the caller
gave (the string or the :class:`Record`); a module that did not run in the block has no record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from torch import nn

from distill.errors import ConfigKeyError, ConfigValueError

WHAT = ("output", "input")
CALLS = ("one", "all")


class UnknownModulePathError(ConfigKeyError):
    """A recorder path names no submodule of the model."""


class RepeatedCallError(ConfigValueError):
    """A module recorded with ``calls="one"`` ran more than once in one recording block."""


@dataclasses.dataclass(frozen=True)
class Record:
    """What to record of the submodule at ``path``.

    Attributes:
        path: dotted name from ``named_modules()``.
        what: ``"output"`` (the return value) or ``"input"`` (the tuple of positional args).
        calls: ``"one"`` (a second call in one block is an error) or ``"all"`` (a list of every
            call, in call order).
    """

    path: str
    what: Literal["output", "input"] = "output"
    calls: Literal["one", "all"] = "one"

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ConfigValueError(f"recorder path must be a non-empty string, got {self.path!r}")
        if self.what not in WHAT:
            raise ConfigValueError(f"Record {self.path!r}: what={self.what!r} not in {WHAT}")
        if self.calls not in CALLS:
            raise ConfigValueError(f"Record {self.path!r}: calls={self.calls!r} not in {CALLS}")

    @classmethod
    def parse(cls, spec: RecordSpec) -> Record:
        """The :class:`Record` of a spec: a Record as it is, or ``"path[:input|:output][:all]"``."""
        if isinstance(spec, Record):
            return spec
        if not isinstance(spec, str):
            raise ConfigValueError(f"recorder spec {spec!r} is neither a string nor a Record")
        path, *options = spec.split(":")
        what = [o for o in options if o in WHAT]
        unknown = [o for o in options if o not in WHAT and o != "all"]
        if unknown or len(what) > 1 or len(options) != len(set(options)):
            raise ConfigValueError(
                f"recorder spec {spec!r}: expected 'path', 'path:input' or 'path:output', "
                "optionally followed by ':all'"
            )
        return cls(path, what[0] if what else "output", "all" if "all" in options else "one")

    def __str__(self) -> str:
        what = ":input" if self.what == "input" else ""
        return self.path + what + (":all" if self.calls == "all" else "")


RecordSpec = str | Record


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
    """Records the outputs or inputs of named submodules of one model (see the module doc).

    Paths are checked when the recorder is created, so a typo fails before training starts.

    Example::

        recorder = FeatureRecorder(model, ["backbone.bottom_up.res4", "roi_heads.box_head:input"])
        with recorder.recording() as records:
            model(batched_inputs)
        records["backbone.bottom_up.res4"]  # (N, C, H, W)
        records["roi_heads.box_head:input"]  # (pooled (R, C, 7, 7),)

    Args:
        model: the model whose submodules are recorded.
        paths: specs, strings or :class:`Record` (repeats are recorded once).
        owner: the model's name in error messages (``"student"``, ``"teacher"``).
    """

    def __init__(self, model: nn.Module, paths: Sequence[RecordSpec], owner: str = "model"):
        self.owner = owner
        self.paths = list(dict.fromkeys(paths))
        self.records = {spec: Record.parse(spec) for spec in self.paths}
        self.modules = {
            spec: resolve_module(model, record.path, owner) for spec, record in self.records.items()
        }

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[RecordSpec, Any]]:
        """Attach hooks for the duration of the block; yields the dict filled by the forward.

        Raises:
            RepeatedCallError: on leaving the block, if a module recorded with ``calls="one"``
                ran more than once in it.
        """
        records: dict[RecordSpec, Any] = {}
        calls = dict.fromkeys(self.records, 0)
        handles = []
        for spec, record in self.records.items():

            def keep(value, spec=spec, every=record.calls == "all"):
                calls[spec] += 1
                if every:
                    records.setdefault(spec, []).append(value)
                elif calls[spec] == 1:
                    records[spec] = value

            module = self.modules[spec]
            if record.what == "input":
                handle = module.register_forward_pre_hook(lambda _m, args, keep=keep: keep(args))
            else:
                handle = module.register_forward_hook(lambda _m, _i, out, keep=keep: keep(out))
            handles.append(handle)
        try:
            yield records
        finally:
            for handle in handles:
                handle.remove()
        repeated = [
            (spec, n) for spec, n in calls.items() if n > 1 and self.records[spec].calls == "one"
        ]
        if repeated:
            spec, n = repeated[0]
            every = dataclasses.replace(self.records[spec], calls="all")
            raise RepeatedCallError(
                f"{self.owner} module {every.path!r} ran {n} times in one forward, but the "
                f"recorder spec {str(spec)!r} keeps one call: declare {str(every)!r} to record "
                "every call as a list"
            )


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
