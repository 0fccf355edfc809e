"""The LGD distiller: implicit teacher, its detection loss through the student's head, and the
instance-normalised feature distillation.

Losses (names as logged):

* ``loss_lgd_teacher_<term>``: the student's own detection losses (``<term>`` as the detector
  names them) computed by the student's head on the implicit teacher's maps, with the student's
  anchor targets for RetinaNet/FCOS and a full RPN + RoI pass for Faster R-CNN; weight
  ``LGD.WEIGHTS.TEACHER``.
* ``loss_lgd_distill``: MSE between IN(adapter(P_S^l)) and IN(stopgrad(F_T^l)) over all levels,
  one mean over every element of every level; weight ``LGD.WEIGHTS.DISTILL`` (lambda).

Outside ``[PRE_NONDISTILL_ITERS, MAX_ITER - POST_NONDISTILL_ITERS]`` the student maps are
detached in the distillation loss, so only the adapter learns from it. Before
``PRE_FREEZE_STUDENT_BACKBONE_ITERS`` the student's bottom-up backbone is not updated.
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import nn

from distill.context import DistillContext
from distill.distiller import Distiller
from distill.errors import ConfigValueError
from distill.modeling.head_losses import head_losses_on
from distill.modules import build_adapter
from distill.registry import DISTILLER_REGISTRY
from lgd.implicit_teacher import INTERACTIONS, ImplicitTeacher

BOTTOM_UP = "backbone.bottom_up."


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
        distill_window: (first, last) iteration at which the student maps receive the
            distillation gradient (inclusive).
        freeze_backbone_iters: iterations during which the bottom-up backbone is not updated.
    """

    config_node = "LGD"
    # distill: lambda, on loss_lgd_distill; teacher: on the implicit teacher's detection losses
    terms = {"distill": 1.0, "teacher": 1.0}
    student_kinds = ("two_stage", "dense")
    student_solver_children = ("adapter",)

    @configurable
    def __init__(
        self,
        *,
        teacher: ImplicitTeacher,
        adapter: nn.Module,
        distill_window: tuple[int, int] = (0, 2**62),
        freeze_backbone_iters: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.adapter = adapter
        self.distill_window = tuple(distill_window)
        self.freeze_backbone_iters = freeze_backbone_iters

    @classmethod
    def add_config(cls, cfg: CN) -> None:
        super().add_config(cfg)
        node = cfg[cls.config_node]
        if "INTERACTION" in node:
            return
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
    def needs_for(cls, cfg, student):
        dense = {"dense_targets"} if student.is_dense else set()
        return frozenset({"images", "student_features", "gt_instances"} | dense)

    @classmethod
    def from_config(cls, cfg, student, teacher_shapes):
        ret = super().from_config(cfg, student, teacher_shapes)
        node = cfg[cls.config_node]
        widths = {shape.channels for shape in student.feature_shapes.values()}
        if len(widths) != 1:
            raise ConfigValueError(
                f"LGD: the student's backbone levels have different widths {sorted(widths)}; the "
                "implicit teacher feeds the student's head and needs one FPN width"
            )
        if node.INTERACTION not in INTERACTIONS:
            raise ConfigValueError(f"LGD.INTERACTION: {node.INTERACTION!r} not in {INTERACTIONS}")
        channels = widths.pop()
        max_iter = cfg.SOLVER.MAX_ITER
        teacher = ImplicitTeacher(
            channels,
            student.num_classes,
            num_heads=node.NUM_HEADS,
            context_box=node.CONTEXT_BOX,
            detach_appearance=node.DETACH_APPEARANCE,
            interaction=node.INTERACTION,
        )
        adapter_kwargs = {"num_convs": node.ADAPTER_NUM_CONVS}
        if node.ADAPTER != "ConvStackAdapter":
            adapter_kwargs = {}
        return {
            **ret,
            "teacher": teacher,
            "adapter": build_adapter(node.ADAPTER, channels, channels, **adapter_kwargs),
            "distill_window": (node.PRE_NONDISTILL_ITERS, max_iter - node.POST_NONDISTILL_ITERS),
            "freeze_backbone_iters": node.PRE_FREEZE_STUDENT_BACKBONE_ITERS,
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
        losses = {}
        if self.computes("teacher"):
            head_losses = head_losses_on(context, maps, scope="lgd_teacher")
            losses = {
                f"loss_lgd_teacher_{key.removeprefix('loss_')}": value
                for key, value in head_losses.items()
            }
        if self.computes("distill"):
            detach = not self.distills_student(context.iteration)
            losses["loss_lgd_distill"] = self.distill_loss(
                context.student_features, maps, detach_student=detach
            )
        return losses
