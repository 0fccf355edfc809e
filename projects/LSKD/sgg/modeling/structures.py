"""What the relation head hands to a predicate predictor, and what the predictor returns.

Conventions (as the data): object classes are detectron2's, ``0 .. C-1`` with background ``C``
in object logits (C + 1 columns, background last); predicates are Visual Genome's, ``1 .. P``
with background ``0`` in predicate logits (P + 1 columns, background first). Objects and pairs
of a batch are flat tensors in image-major order: image 0's objects, then image 1's, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RelationInputs:
    """One batch of objects and candidate pairs.

    Attributes:
        obj_features: (N, D) RoI features of the N objects (the box head MLP output).
        union_features: (M, D) union-box features of the M pairs.
        boxes: per image, (N_i, 4) XYXY object boxes in input-image pixels.
        image_sizes: per image, (height, width) of the input image.
        pair_idxs: per image, (M_i, 2) long, (subject, object) indices local to the image.
        obj_det_logits: (N, C + 1) the detector's class logits of each object (background last);
            in PredCls/SGCls the box head's logits on the GT boxes.
        obj_labels: (N,) long GT classes (0 .. C-1): the input in PredCls, the target of the
            object refinement in training; None at SGCls/SGDet test time.
        mode: ``"predcls"``, ``"sgcls"`` or ``"sgdet"``.
        rel_binary: training only, per image (N_i, N_i) float, 1 where the GT has any relation
            from object i to object j (VCTree's binary tree-score target); else None.
    """

    obj_features: torch.Tensor
    union_features: torch.Tensor
    boxes: list[torch.Tensor]
    image_sizes: list[tuple[int, int]]
    pair_idxs: list[torch.Tensor]
    obj_det_logits: torch.Tensor
    obj_labels: torch.Tensor | None
    mode: str
    rel_binary: list[torch.Tensor] | None = None

    @property
    def num_objs(self) -> list[int]:
        return [len(b) for b in self.boxes]

    @property
    def num_pairs(self) -> list[int]:
        return [len(p) for p in self.pair_idxs]

    def global_pair_idxs(self) -> torch.Tensor:
        """(M, 2) pair indices into the flat (N, ...) object tensors."""
        offsets, start = [], 0
        for n in self.num_objs:
            offsets.append(start)
            start += n
        parts = [p + o for p, o in zip(self.pair_idxs, offsets, strict=True)]
        if not parts:
            return torch.zeros((0, 2), dtype=torch.long, device=self.obj_features.device)
        return torch.cat(parts, dim=0)


@dataclass
class RelationOutputs:
    """A predictor's result for one :class:`RelationInputs`.

    Attributes:
        obj_logits: (N, C + 1) refined object logits (background last). PredCls: logits that
            put all mass on the GT label (e.g. a large constant at it).
        obj_preds: (N,) long predicted classes 0 .. C-1 (PredCls: the GT labels); the frequency
            bias is indexed with them.
        rel_logits: (M, P + 1) predicate logits, background column 0, **without** the frequency
            bias (the relation head adds it).
        losses: predictor-specific training losses, e.g. ``{"loss_vctree_binary": ...}``.
    """

    obj_logits: torch.Tensor
    obj_preds: torch.Tensor
    rel_logits: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
