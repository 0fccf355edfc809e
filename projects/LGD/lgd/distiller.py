"""The LGD distiller: implicit teacher, its detection loss through the student's head, and the
instance-normalised feature distillation.

Losses (names as logged):

* ``loss_lgd_teacher_<term>``: the student's own detection losses (``<term>`` as the detector
  names them) computed by the student's head on the implicit teacher's maps, with the student's
  anchor targets for RetinaNet/FCOS and a full RPN + RoI pass for Faster R-CNN; weight
  ``LGD.TEACHER_LOSS_WEIGHT``.
* ``loss_lgd_distill``: MSE between IN(adapter(P_S^l)) and IN(stopgrad(F_T^l)) over all levels,
  one mean over every element of every level; weight ``LGD.DISTILL_WEIGHT`` (lambda).

Outside ``[PRE_NONDISTILL_ITERS, MAX_ITER - POST_NONDISTILL_ITERS]`` the student maps are
detached in the distillation loss, so only the adapter learns from it. Before
``PRE_FREEZE_STUDENT_BACKBONE_ITERS`` the student's bottom-up backbone is not updated.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from torch import nn

from distill.context import DistillContext
from distill.distiller import Distiller
from distill.errors import ConfigValueError
from distill.modeling import HEAD_CONFIG_NODES
from distill.modeling.head_losses import head_losses_on
from distill.modules import build_adapter
from distill.registry import DISTILLER_REGISTRY
from lgd.implicit_teacher import INTERACTIONS, ImplicitTeacher

BOTTOM_UP = "backbone.bottom_up."
STUDENTS = ("DistillGeneralizedRCNN", "DistillRetinaNet", "DistillFCOS")


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel normalisation over (H, W), no affine parameters: (N, C, H, W).

    Same values as ``F.instance_norm``; a 1x1 map (the top level of a small image) gives 0
    instead of an error.
    """
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


@DISTILLER_REGISTRY.register()
class LGD(Distiller):
    """Label-guided self-distillation (no pretrained teacher).

    Args:
        teacher: the implicit teacher.
        adapter: student FPN map -> map compared with the teacher's (shared across levels).
        distill_weight: lambda, the factor on ``loss_lgd_distill``.
        teacher_loss_weight: factor on the teacher's detection losses.
        distill_window: (first, last) iteration at which the student maps receive the
            distillation gradient (inclusive).
        freeze_backbone_iters: iterations during which the bottom-up backbone is not updated.
        dense_student: the student is a RetinaNet/FCOS (its anchor targets are reused).
    """

    config_node = "LGD"
    student_solver_children = ("adapter",)

    @configurable
    def __init__(
        self,
        *,
        teacher: ImplicitTeacher,
        adapter: nn.Module,
        distill_weight: float = 1.0,
        teacher_loss_weight: float = 1.0,
        distill_window: tuple[int, int] = (0, 2**62),
        freeze_backbone_iters: int = 0,
        dense_student: bool = True,
        **kwargs,
    ):
        self.needs = frozenset(
            {"images", "student_features", "gt_instances"}
            | ({"dense_targets"} if dense_student else set())
        )
        super().__init__(**kwargs)
        self.teacher = teacher
        self.adapter = adapter
        self.distill_weight = distill_weight
        self.teacher_loss_weight = teacher_loss_weight
        self.distill_window = tuple(distill_window)
        self.freeze_backbone_iters = freeze_backbone_iters

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        super().add_config(cfg)
        node = cfg[cls.config_node]
        if "DISTILL_WEIGHT" in node:
            return
        node.DISTILL_WEIGHT = 1.0  # lambda: factor on the feature distillation loss
        node.TEACHER_LOSS_WEIGHT = 1.0  # factor on the implicit teacher's detection losses
        # The student maps get the distillation gradient from PRE_NONDISTILL_ITERS to
        # SOLVER.MAX_ITER - POST_NONDISTILL_ITERS (inclusive); outside, only the adapter learns.
        node.PRE_NONDISTILL_ITERS = 30000
        node.POST_NONDISTILL_ITERS = 0
        # Iterations at the start during which the bottom-up backbone (not the FPN) is not updated.
        node.PRE_FREEZE_STUDENT_BACKBONE_ITERS = 20000
        node.ADAPTER = "ConvStackAdapter"  # ADAPTER_REGISTRY name of the student-side adapter
        node.ADAPTER_NUM_CONVS = 3  # 3x3 convs of the ConvStackAdapter
        node.CONTEXT_BOX = True  # add a whole-image context token per image
        # Stop the teacher's detection-loss gradient at the student's FPN maps (R-CNN configs).
        node.DETACH_APPEARANCE = False
        node.NUM_HEADS = 8  # heads of the inter-object relation attention
        # Which embedding queries the relation attention: "appearance_query" (official code) or
        # "label_query" (the roles the official code's comment describes).
        node.INTERACTION = "appearance_query"

    @classmethod
    def from_config(cls, cfg, student_shapes, teacher_shapes):
        node = cfg[cls.config_node]
        arch = cfg.MODEL.META_ARCHITECTURE
        if arch not in STUDENTS:
            raise ConfigValueError(
                f"LGD: MODEL.META_ARCHITECTURE {arch!r} is not supported; use one of "
                f"{sorted(STUDENTS)}"
            )
        widths = {shape.channels for shape in student_shapes.values()}
        if len(widths) != 1:
            raise ConfigValueError(
                f"LGD: the student's backbone levels have different widths {sorted(widths)}; the "
                "implicit teacher feeds the student's head and needs one FPN width"
            )
        if node.INTERACTION not in INTERACTIONS:
            raise ConfigValueError(f"LGD.INTERACTION: {node.INTERACTION!r} not in {INTERACTIONS}")
        channels = widths.pop()
        num_classes = cfg.MODEL[HEAD_CONFIG_NODES[arch]].NUM_CLASSES
        max_iter = cfg.SOLVER.MAX_ITER
        teacher = ImplicitTeacher(
            channels,
            num_classes,
            num_heads=node.NUM_HEADS,
            context_box=node.CONTEXT_BOX,
            detach_appearance=node.DETACH_APPEARANCE,
            interaction=node.INTERACTION,
        )
        adapter_kwargs = {"num_convs": node.ADAPTER_NUM_CONVS}
        if node.ADAPTER != "ConvStackAdapter":
            adapter_kwargs = {}
        return {
            **super().from_config(cfg, student_shapes, teacher_shapes),
            "teacher": teacher,
            "adapter": build_adapter(node.ADAPTER, channels, channels, **adapter_kwargs),
            "distill_weight": node.DISTILL_WEIGHT,
            "teacher_loss_weight": node.TEACHER_LOSS_WEIGHT,
            "distill_window": (node.PRE_NONDISTILL_ITERS, max_iter - node.POST_NONDISTILL_ITERS),
            "freeze_backbone_iters": node.PRE_FREEZE_STUDENT_BACKBONE_ITERS,
            "dense_student": issubclass(META_ARCH_REGISTRY.get(arch), DenseDetector),
        }

    def distills_student(self, iteration: int) -> bool:
        """Whether the distillation loss reaches the student's maps at ``iteration``."""
        first, last = self.distill_window
        return first <= iteration <= last

    def frozen_student_prefixes(self, iteration: int) -> tuple[str, ...]:
        return (BOTTOM_UP,) if iteration < self.freeze_backbone_iters else ()

    def teacher_maps(self, context: DistillContext) -> dict[str, torch.Tensor]:
        """The implicit teacher's maps for the batch: level -> (B, C, H_l, W_l)."""
        features = {k: v.float() for k, v in context.student_features.items()}
        image_size = tuple(context.images.tensor.shape[-2:])
        return self.teacher(features, context.gt_instances, image_size)

    def distill_loss(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor],
        detach_student: bool = False,
    ) -> torch.Tensor:
        """Mean of (IN(adapter(S)) - IN(T))^2 over all elements of all levels; T is detached."""
        diffs = []
        for level in sorted(teacher):
            s = student[level].float()
            s = self.adapter(s.detach() if detach_student else s)
            diff = instance_norm(s) - instance_norm(teacher[level].detach())
            diffs.append(diff.flatten(1))
        return torch.cat(diffs, dim=1).pow(2).mean()

    def forward(self, context: DistillContext) -> dict[str, torch.Tensor]:
        maps = self.teacher_maps(context)
        head_losses = head_losses_on(context, maps, scope="lgd_teacher")
        losses = {
            f"loss_lgd_teacher_{key.removeprefix('loss_')}": value * self.teacher_loss_weight
            for key, value in head_losses.items()
        }
        detach = not self.distills_student(context.iteration)
        distill = self.distill_loss(context.student_features, maps, detach_student=detach)
        losses["loss_lgd_distill"] = distill * self.distill_weight
        return losses
