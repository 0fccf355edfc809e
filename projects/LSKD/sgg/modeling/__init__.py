"""The scene-graph model: relation head, predictors, the meta-architectures."""

from sgg.modeling import predictors  # noqa: F401  (registration)
from sgg.modeling.meta_arch import DistillSceneGraphRCNN, SceneGraphRCNN
from sgg.modeling.relation_head import RelationHead

__all__ = ["DistillSceneGraphRCNN", "RelationHead", "SceneGraphRCNN"]
