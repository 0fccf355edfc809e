"""Distillers of the core (method projects register theirs in projects/<Method>/)."""

from distill.distillers.feature_kd import FeatureKD

__all__ = ["FeatureKD"]
