"""Feature recorder and method taps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.hooks import FeatureRecorder, UnknownModulePathError, tap_method


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


def test_unknown_path_names_it_and_close_matches():
    with pytest.raises(UnknownModulePathError) as info:
        FeatureRecorder(toy(), ["0.1", "1.00"], owner="student")
    message = str(info.value)
    assert "'1.00'" in message and "student" in message and "1.0" in message


def test_tap_method_records_and_restores():
    class Thing:
        def f(self, x):
            return x + 1

    thing, records = Thing(), {}
    with tap_method(thing, "f", records, "out"):
        assert thing.f(1) == 2
    assert records == {"out": 2}
    assert "f" not in vars(thing)
