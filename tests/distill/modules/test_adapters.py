"""Feature adapters: shapes, parameter counts, registry errors."""

from __future__ import annotations

import pytest
import torch

from distill.modules import build_adapter


def test_conv1x1_shape_and_params():
    adapter = build_adapter("Conv1x1Adapter", 64, 256)
    assert adapter(torch.randn(2, 64, 5, 7)).shape == (2, 256, 5, 7)
    assert sum(p.numel() for p in adapter.parameters()) == 64 * 256 + 256


def test_conv_stack_shape_and_params():
    adapter = build_adapter("ConvStackAdapter", 64, 128, num_convs=2)
    assert adapter(torch.randn(1, 64, 9, 9)).shape == (1, 128, 9, 9)
    expected = (64 * 128 * 9 + 128) + (128 * 128 * 9 + 128)
    assert sum(p.numel() for p in adapter.parameters()) == expected


def test_unknown_adapter():
    with pytest.raises(KeyError, match="Conv1x1Adapter"):
        build_adapter("Nope", 1, 1)
