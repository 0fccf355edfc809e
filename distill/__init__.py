"""Knowledge distillation for detectron2: the shared core.

Importing ``distill`` registers the Distill meta-architectures, the yacs FCOS, the adapters and
the embedded datasets. :func:`load_projects` imports every installed method project (entry-point
group ``distill.projects``) so that their distillers are registered.
"""

from importlib.metadata import entry_points

from distill import distillers, modeling, modules  # noqa: F401  (registration)
from distill.config import add_distill_config, get_distill_cfg
from distill.context import DistillContext
from distill.data.register import register_embedded_datasets
from distill.distiller import CONTEXT_ITEMS, Distiller
from distill.registry import ADAPTER_REGISTRY, DISTILLER_REGISTRY

register_embedded_datasets()


def load_projects() -> list[str]:
    """Import every project registered under the ``distill.projects`` entry-point group."""
    loaded = []
    for entry in entry_points(group="distill.projects"):
        entry.load()
        loaded.append(entry.name)
    return loaded


__all__ = [
    "ADAPTER_REGISTRY",
    "CONTEXT_ITEMS",
    "DISTILLER_REGISTRY",
    "DistillContext",
    "Distiller",
    "add_distill_config",
    "get_distill_cfg",
    "load_projects",
    "register_embedded_datasets",
]
