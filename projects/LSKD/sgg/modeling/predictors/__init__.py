"""Predicate predictors; importing this package registers them in SGG_PREDICTOR_REGISTRY."""

from sgg.modeling.predictors import motifs, transformer, vctree  # noqa: F401  (registration)
from sgg.modeling.predictors.registry import SGG_PREDICTOR_REGISTRY, build_predictor

__all__ = ["SGG_PREDICTOR_REGISTRY", "build_predictor"]
