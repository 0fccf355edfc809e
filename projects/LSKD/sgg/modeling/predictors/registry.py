"""The registry of predicate predictors (Motifs, VCTree, Transformer, ...)."""

from __future__ import annotations

from detectron2.utils.registry import Registry

from distill.errors import ConfigValueError

SGG_PREDICTOR_REGISTRY = Registry("SGG_PREDICTOR")
SGG_PREDICTOR_REGISTRY.__doc__ = """
Predicate predictors of the relation head: ``cls(cfg, feature_dim)`` (``@configurable``), an
``nn.Module`` whose ``forward(inputs: RelationInputs) -> RelationOutputs``.
"""


def build_predictor(cfg, feature_dim: int):
    """The predictor named by ``MODEL.ROI_RELATION_HEAD.PREDICTOR``."""
    name = cfg.MODEL.ROI_RELATION_HEAD.PREDICTOR
    if name not in SGG_PREDICTOR_REGISTRY:
        raise ConfigValueError(
            f"MODEL.ROI_RELATION_HEAD.PREDICTOR: {name!r} is not registered; known: "
            f"{sorted(k for k, _ in SGG_PREDICTOR_REGISTRY)}"
        )
    return SGG_PREDICTOR_REGISTRY.get(name)(cfg, feature_dim)
