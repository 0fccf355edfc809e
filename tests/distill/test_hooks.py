"""Feature recorder and method taps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import ConfigValueError
from distill.hooks import (
    FeatureRecorder,
    Record,
    RepeatedCallError,
    UnknownModulePathError,
    tap_method,
)


def toy():
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Sequential(nn.Conv2d(4, 2, 1))
    )


def test_records_named_outputs_only_inside_block():
    model = toy()
    recorder = FeatureRecorder(model, ["0.0", "1"])
    x = torch.randn(1, 3, 8, 8)
    with recorder.recording() as records:
        out = model(x)
    assert records["0.0"].shape == (1, 4, 6, 6)
    assert torch.equal(records["1"], out)
    assert not any(m._forward_hooks for m in model.modules())
    model(x)  # no hooks left behind: nothing recorded outside the block
    assert set(records) == {"0.0", "1"}


class Twice(nn.Module):
    """Runs ``shared`` on its input, then on the result: two calls per forward."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 3)

    def forward(self, x):
        return self.shared(self.shared(x))


def test_records_inputs_as_positional_args_keyed_as_declared():
    model = toy()
    declared = Record("1.0", what="input")
    recorder = FeatureRecorder(model, ["1:input", declared, "0"])
    x = torch.randn(1, 3, 8, 8)
    with recorder.recording() as records:
        model(x)
    assert set(records) == {"1:input", declared, "0"}
    (received,) = records["1:input"]  # the tuple of positional args
    assert torch.equal(received, records["0"])
    assert isinstance(records[declared], tuple) and torch.equal(records[declared][0], received)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_module_called_twice_is_refused_naming_path_and_calls():
    model = Twice()
    for spec in ("shared", "shared:input", Record("shared")):
        recorder = FeatureRecorder(model, [spec], owner="student")
        with pytest.raises(RepeatedCallError) as info:
            with recorder.recording():
                model(torch.randn(2, 3))
        message = str(info.value)
        assert "student module 'shared' ran 2 times" in message
        assert f"'{Record.parse(spec).path}" in message and ":all'" in message
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_all_calls_recorded_as_a_list_in_call_order():
    model = Twice()
    recorder = FeatureRecorder(
        model, ["shared:all", "shared:input:all", Record("shared", calls="all")]
    )
    x = torch.randn(2, 3)
    with recorder.recording() as records:
        out = model(x)
    first, second = records["shared:all"]
    assert torch.equal(first, model.shared(x)) and torch.equal(second, out)
    received = [args[0] for args in records["shared:input:all"]]
    assert len(received) == 2 and torch.equal(received[0], x) and torch.equal(received[1], first)
    assert len(records[Record("shared", calls="all")]) == 2
    with recorder.recording() as records:  # each block starts empty
        model(x)
    assert len(records["shared:all"]) == 2


@pytest.mark.parametrize("spec", ["0:inputs", "0:input:output", "0:all:all", ":input", 3])
def test_malformed_spec_is_refused(spec):
    with pytest.raises(ConfigValueError, match="recorder"):
        FeatureRecorder(toy(), [spec])


def test_unknown_path_names_it_and_close_matches():
    with pytest.raises(UnknownModulePathError) as info:
        FeatureRecorder(toy(), ["0.1", "1.00"], owner="student")
    message = str(info.value)
    assert "'1.00'" in message and "student" in message and "1.0" in message
    with pytest.raises(UnknownModulePathError, match="'1.00'.*1.0"):
        FeatureRecorder(toy(), ["1.00:input:all"])


def test_tap_method_records_and_restores():
    class Thing:
        def f(self, x):
            return x + 1

    thing, records = Thing(), {}
    with tap_method(thing, "f", records, "out"):
        assert thing.f(1) == 2
    assert records == {"out": 2}
    assert "f" not in vars(thing)
