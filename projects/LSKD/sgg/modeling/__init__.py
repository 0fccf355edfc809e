"""The scene-graph model: relation head, predictors, the meta-architecture."""

from sgg.modeling import predictors  # noqa: F401  (registration)
