"""Knowledge distillation for detectron2: the shared core.

Importing ``distill`` registers the Distill meta-architectures, the yacs FCOS, the adapters and
the embedded datasets; it imports no method project. :func:`load_config` builds a config, importing
the user code it names and, when needed, the installed projects (:mod:`distill.user_code`).
"""

from distill import distillers, modeling, modules  # noqa: F401  (registration)
from distill.config import add_distill_config, get_distill_cfg
from distill.context import DistillContext
from distill.data.register import register_embedded_datasets
from distill.distiller import CONTEXT_ITEMS, Distiller
from distill.registry import ADAPTER_REGISTRY, DISTILLER_REGISTRY
from distill.user_code import import_user_code, load_config, load_projects

register_embedded_datasets()


__all__ = [
    "ADAPTER_REGISTRY",
    "CONTEXT_ITEMS",
    "DISTILLER_REGISTRY",
    "DistillContext",
    "Distiller",
    "add_distill_config",
    "get_distill_cfg",
    "import_user_code",
    "load_config",
    "load_projects",
    "register_embedded_datasets",
]
