"""Registries of the distillation core (fvcore ``Registry``) and their builders."""

from __future__ import annotations

from detectron2.utils.registry import Registry

from distill.errors import ConfigKeyError

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = """
Registry of distillers (subclasses of :class:`distill.distiller.Distiller`).

A registered class is built with ``cls(cfg, student, teacher_shapes, needs=...)`` (``student``: a
:class:`distill.student.StudentSpec`) through its
``@configurable`` ``from_config`` and selected by name in ``DISTILL.DISTILLERS``.
"""

ADAPTER_REGISTRY = Registry("ADAPTER")
ADAPTER_REGISTRY.__doc__ = """
Registry of feature adapters: modules mapping a student feature map (N, C_s, H, W) to
(N, C_t, H, W). Called as ``cls(in_channels, out_channels, **kwargs)``.
"""


def get_distiller_class(name: str) -> type:
    """Look a distiller class up by name; an unknown name lists the registered ones."""
    if name not in DISTILLER_REGISTRY:
        known = ", ".join(sorted(n for n, _ in DISTILLER_REGISTRY)) or "(none)"
        raise ConfigKeyError(
            f"DISTILL.DISTILLERS: unknown distiller {name!r}. Registered distillers: {known}. "
            "If your own code defines it, load that module with --import MODULE_OR_FILE or list "
            "it in DISTILL.IMPORTS (installed projects are found by distill.load_config)"
        )
    return DISTILLER_REGISTRY.get(name)
