"""What a distiller is told about its student: :class:`StudentSpec`.

The Distill meta-architectures describe themselves with three class attributes (``student_kind``,
``head_config_node``, ``plain_architecture``); :func:`describe_student` combines them with the
config and the backbone's output shapes, so that no distiller re-derives "which detector is this"
from ``MODEL.META_ARCHITECTURE`` strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY

from distill.errors import ConfigValueError

# two_stage: an R-CNN (RPN + RoI heads, sampled RoIs); dense: a one-stage detector (RetinaNet,
# FCOS: anchor/point targets); scene_graph: an R-CNN whose RoI heads also predict relations.
STUDENT_KINDS = ("two_stage", "dense", "scene_graph")


@dataclass(frozen=True)
class StudentSpec:
    """A student detector as the distillers see it.

    Attributes:
        architecture: ``MODEL.META_ARCHITECTURE`` (a Distill meta-architecture).
        kind: one of :data:`STUDENT_KINDS`.
        plain_architecture: the detector that loads the extracted student.
        head_node: ``MODEL.<head_node>`` holds the head's ``NUM_CLASSES`` and ``IN_FEATURES``.
        num_classes: foreground classes of the head.
        head_in_features: the backbone outputs the head reads, e.g. ``("p3", ..., "p7")``.
        feature_shapes: every backbone output, name -> ShapeSpec (channels, stride).
    """

    architecture: str
    kind: str
    plain_architecture: str
    head_node: str
    num_classes: int
    head_in_features: tuple[str, ...]
    feature_shapes: Mapping[str, ShapeSpec] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in STUDENT_KINDS:
            raise ValueError(f"student kind {self.kind!r} is not one of {STUDENT_KINDS}")
        object.__setattr__(self, "feature_shapes", MappingProxyType(dict(self.feature_shapes)))

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    @property
    def has_roi_heads(self) -> bool:
        """R-CNN students (plain or scene-graph) sample RoIs for their box head."""
        return self.kind in ("two_stage", "scene_graph")


def student_class(cfg) -> type:
    """The Distill meta-architecture class named by ``MODEL.META_ARCHITECTURE``.

    Raises:
        ConfigValueError: the architecture is not a Distill meta-architecture.
    """
    from distill.modeling.distill_arch import DistillMixin

    name = cfg.MODEL.META_ARCHITECTURE
    cls = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    if cls is None or not issubclass(cls, DistillMixin):
        known = sorted(n for n, c in META_ARCH_REGISTRY if issubclass(c, DistillMixin))
        raise ConfigValueError(
            f"MODEL.META_ARCHITECTURE {name!r} is not a distillation student; use one of {known}"
        )
    return cls


def plain_architecture(name: str) -> str:
    """The plain detector of a Distill meta-architecture; any other name unchanged."""
    from distill.modeling.distill_arch import DistillMixin

    cls = META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None
    return cls.plain_architecture if cls and issubclass(cls, DistillMixin) else name


def describe_student(cfg, feature_shapes: Mapping[str, ShapeSpec] | None = None) -> StudentSpec:
    """The :class:`StudentSpec` of the config's student, with the given backbone output shapes."""
    cls = student_class(cfg)
    head = cfg.MODEL[cls.head_config_node]
    return StudentSpec(
        architecture=cfg.MODEL.META_ARCHITECTURE,
        kind=cls.student_kind,
        plain_architecture=cls.plain_architecture,
        head_node=cls.head_config_node,
        num_classes=head.NUM_CLASSES,
        head_in_features=tuple(head.IN_FEATURES),
        feature_shapes=feature_shapes or {},
    )
