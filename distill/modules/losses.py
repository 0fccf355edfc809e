"""Shared knowledge-distillation losses, computed in fp32 whatever the input dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor | None = None,
    normalize: str = "mask",
) -> torch.Tensor:
    """Mean squared error between feature maps, optionally restricted to a spatial mask.

    Args:
        student: (N, C, H, W) student features.
        teacher: (N, C, H, W) teacher features (detached here).
        mask: optional (N, 1, H, W) or (N, H, W) non-negative weights; None = all ones.
        normalize: "mask" divides by C * sum(mask) (mean over the masked elements; a zero mask
            gives 0), "numel" divides by N*C*H*W.

    Returns:
        scalar tensor.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"masked_mse: shapes differ, {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    diff = (student.float() - teacher.detach().float()) ** 2
    if mask is None:
        return diff.mean()
    mask = mask.float()
    if mask.dim() == 3:
        mask = mask[:, None]
    weighted = (diff * mask).sum()
    if normalize == "numel":
        return weighted / diff.numel()
    if normalize != "mask":
        raise ValueError(f"masked_mse: normalize must be 'mask' or 'numel', got {normalize!r}")
    denom = mask.expand_as(diff).sum()
    return weighted / denom.clamp(min=1e-12) if denom > 0 else weighted * 0.0


def kl_div_with_temperature(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t / T) || softmax(s / T)) over the last dimension.

    Args:
        student_logits: (..., K) student logits.
        teacher_logits: (..., K) teacher logits (detached here).
        temperature: softening temperature T > 0.
        reduction: "batchmean" (sum over K, mean over the other elements), "sum" or "none"
            (per-element KL of shape (...)).

    Returns:
        scalar, or (...) for reduction "none"; 0 for empty inputs.
    """
    if temperature <= 0:
        raise ValueError(f"kl_div_with_temperature: temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kl_div_with_temperature: shapes differ, {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)}"
        )
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1) * temperature**2
    if reduction == "none":
        return kl
    if reduction == "sum":
        return kl.sum()
    if reduction != "batchmean":
        raise ValueError(f"kl_div_with_temperature: unknown reduction {reduction!r}")
    return kl.mean() if kl.numel() > 0 else kl.sum()
