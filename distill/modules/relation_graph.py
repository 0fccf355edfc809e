"""Relation graphs over instance nodes: cosine edge matrices, node and edge losses, and the
teacher-driven choice of background nodes.

A batch's nodes are flat (T, ...) tensors (e.g. RoI-pooled features (T, C, 7, 7)) with an
:class:`~distill.modules.object_sets.ObjectGroups` saying which image each belongs to; each image
has its own graph, with no edges across images. Student and teacher nodes must come in the same
order, so that node i of both graphs covers the same region.

Every loss is a **sum over images of a per-image mean**: an image's term does not depend on how
many nodes the other images have, and a batch holding the same image twice gives twice the loss.
An image without nodes contributes 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.modules.object_sets import ObjectGroups

SIMILARITIES = ("instance", "channel")


def cosine_edge_matrix(nodes: torch.Tensor, similarity: str = "instance") -> torch.Tensor:
    """Pairwise cosine similarity of nodes: (M, ...) -> (M, M), symmetric, unit diagonal.

    Args:
        nodes: (M, D) or (M, C, *spatial) node features.
        similarity: ``"instance"``: the cosine of the flattened node vectors; ``"channel"``: per
            channel the cosine over the spatial cells, averaged over channels (nodes must be
            (M, C, *spatial)).
    """
    if similarity == "instance":
        flat = nodes.flatten(1).float()
        norms = flat.norm(dim=1).clamp(min=1e-12)
        # normalising the (M, M) Gram matrix, not the (M, D) nodes: D >> M for RoI features
        return (flat @ flat.T) / (norms[:, None] * norms[None, :])
    if similarity == "channel":
        if nodes.dim() < 3:
            raise ValueError("edge matrices: 'channel' similarity needs (M, C, *spatial) nodes")
        unit = F.normalize(nodes.flatten(2).float(), dim=2)  # (M, C, S)
        return torch.einsum("pcs,qcs->pq", unit, unit) / nodes.shape[1]
    raise ValueError(f"edge matrices: similarity must be one of {SIMILARITIES}")


def per_image_sum_of_means(
    values: torch.Tensor, groups: ObjectGroups, per_node: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_b w_b * (sum of ``values`` of image b) / (N_b * per_node); images with N_b = 0 give 0.

    Args:
        values: (T,) per-node sums (e.g. of squared errors over ``per_node`` elements).
        groups: the image of each node.
        per_node: elements behind each value, so that the division gives an element mean.
        weights: optional (B,) per-image factors.
    """
    sums = values.new_zeros(groups.num_images).index_add(0, groups.image_index, values)
    counts = groups.counts.to(values.dtype) * per_node
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))
    if weights is not None:
        means = means * weights
    return means.sum()


def node_errors(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors of each node: (T, ...) x (T, ...) -> (T,); teacher detached.

    Computed once over all nodes, the losses of node subsets (foreground, background) are then
    :func:`per_image_sum_of_means` of its entries, with no copy of the node tensors.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"node losses: shapes differ, {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    diff = (student.float() - teacher.detach().float()).flatten(1)
    return diff.pow(2).sum(dim=1)


def node_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    groups: ObjectGroups,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_b w_b * mean over image b's node elements of (student - teacher)^2; teacher detached.

    Args:
        student, teacher: (T, ...) nodes of the same shape and order.
        groups: the image of each node.
        weights: optional (B,) per-image factors (e.g. the adaptive background weight).
    """
    per_node = student[0].numel() if len(student) else 1
    return per_image_sum_of_means(node_errors(student, teacher), groups, per_node, weights)


def edge_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    groups: ObjectGroups,
    similarity: str = "instance",
) -> torch.Tensor:
    """sum_b 0.5 * mean over the (M_b, M_b) entries of (E^t_b - E^s_b)^2; teacher detached.

    One edge matrix per image, over that image's nodes only (:meth:`ObjectGroups.split`); the
    diagonal contributes 0.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"edge_loss: shapes differ, {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    terms = []
    for s, t in zip(groups.split(student), groups.split(teacher.detach()), strict=True):
        if len(s):
            with torch.no_grad():
                e_t = cosine_edge_matrix(t, similarity)
            terms.append((e_t - cosine_edge_matrix(s, similarity)).pow(2).mean())
    if not terms:
        return student.sum() * 0.0
    return 0.5 * torch.stack(terms).sum()


def background_cross_entropy(logits: torch.Tensor, background_class: int = -1) -> torch.Tensor:
    """-log softmax(logits)[background]: (N, K + 1) -> (N,), how little the model believes a
    region is background."""
    return -F.log_softmax(logits.float(), dim=1)[:, background_class]


def mine_background(
    teacher_logits: torch.Tensor, threshold: float, background_class: int = -1
) -> torch.Tensor:
    """Background regions the teacher finds confusing: (N,) bool, True where the teacher's
    cross-entropy against background is at least ``threshold`` (p_bg <= exp(-threshold))."""
    return background_cross_entropy(teacher_logits, background_class) >= threshold


def adaptive_background_weight(
    num_foreground: torch.Tensor, num_background: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Per-image background node weight alpha * N_fg / N_bg; 0 where N_bg = 0."""
    fg, bg = num_foreground.float(), num_background.float()
    return torch.where(bg > 0, alpha * fg / bg.clamp(min=1), torch.zeros_like(bg))
