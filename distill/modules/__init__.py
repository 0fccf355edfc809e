"""Shared building blocks of distillation methods: adapters and KD losses."""

from distill.modules.adapters import Conv1x1Adapter, ConvStackAdapter, build_adapter
from distill.modules.losses import kl_div_with_temperature, masked_mse

__all__ = [
    "Conv1x1Adapter",
    "ConvStackAdapter",
    "build_adapter",
    "kl_div_with_temperature",
    "masked_mse",
]
