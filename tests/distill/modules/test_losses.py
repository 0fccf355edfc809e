"""Shared KD losses: golden values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from distill.modules import kl_div_with_temperature, masked_mse


def test_masked_mse_golden():
    s = torch.zeros(1, 2, 2, 2)
    t = torch.arange(8.0).view(1, 2, 2, 2)
    assert masked_mse(s, t).item() == pytest.approx(sum(i * i for i in range(8)) / 8)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # only pixel (0, 0): values 0 and 4
    assert masked_mse(s, t, mask).item() == pytest.approx((0 + 16) / 2)
    assert masked_mse(s, t, mask, normalize="numel").item() == pytest.approx(16 / 8)
    assert masked_mse(s, t, torch.zeros(1, 2, 2)).item() == 0.0


def test_masked_mse_zero_for_identical_and_teacher_detached():
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    s = t.detach().clone().requires_grad_(True)
    loss = masked_mse(s, t)
    assert loss.item() == 0.0
    (masked_mse(s + 1, t)).backward()
    assert t.grad is None and s.grad is not None


def test_masked_mse_shape_error():
    with pytest.raises(ValueError, match="shapes differ"):
        masked_mse(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))


def test_kl_golden_and_temperature():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_div_with_temperature(s, t).item() == pytest.approx(expected, rel=1e-5)
    t2 = t * 2  # at T=2 the teacher distribution is the same, the loss is scaled by T^2
    assert kl_div_with_temperature(s, t2, temperature=2.0).item() == pytest.approx(
        4 * expected, rel=1e-5
    )
    assert kl_div_with_temperature(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_fp16_inputs_computed_in_fp32_and_empty():
    s, t = torch.randn(4, 5).half(), torch.randn(4, 5).half()
    assert kl_div_with_temperature(s, t).dtype == torch.float32
    empty = kl_div_with_temperature(torch.zeros(0, 5), torch.zeros(0, 5))
    assert empty.item() == 0.0
