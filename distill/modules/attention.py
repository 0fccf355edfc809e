"""Multi-head attention among the objects of the same image.

The T objects of a batch form one sequence; a block-diagonal mask
(:meth:`ObjectGroups.same_image_mask`) lets each object attend only to the objects of its own
image, so one call serves the whole batch and images stay independent.
"""

from __future__ import annotations

import torch
from torch import nn

from distill.modules.object_sets import ObjectGroups


class SameImageAttention(nn.Module):
    """``nn.MultiheadAttention`` (with biases, no dropout) restricted to same-image objects.

    No residual, feed-forward or norm is added: the output is the attention's output projection.

    Args:
        embed_dim: width of queries, keys, values and output.
        num_heads: heads; ``embed_dim`` must be divisible by it.
    """

    def __init__(self, embed_dim: int, num_heads: int = 8):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"SameImageAttention: embed_dim {embed_dim} is not divisible by {num_heads} heads"
            )
        self.attention = nn.MultiheadAttention(embed_dim, num_heads)

    def forward(
        self, query: torch.Tensor, key_value: torch.Tensor, groups: ObjectGroups
    ) -> torch.Tensor:
        """Attend from each object's query to the keys/values of its image's objects.

        Args:
            query: (T, C) or (T, L, C): L independent sets of queries (e.g. one per feature
                level) over the same objects.
            key_value: (T, C) or (T, L, C); a (T, C) input on either side is shared by the
                L sets of the other.
            groups: the image of each object.

        Returns:
            (T, C) when both inputs are (T, C), else (T, L, C).
        """
        squeeze = query.dim() == 2 and key_value.dim() == 2
        sets = max(query.shape[1] if query.dim() == 3 else 1,
                   key_value.shape[1] if key_value.dim() == 3 else 1)  # fmt: skip
        if query.dim() == 2:
            query = query[:, None].expand(-1, sets, -1)
        if key_value.dim() == 2:
            key_value = key_value[:, None].expand(-1, sets, -1)
        if len(groups) == 0:
            out = query.new_zeros(query.shape)
        else:
            mask = groups.same_image_mask()
            out, _ = self.attention(query, key_value, key_value, attn_mask=mask, need_weights=False)
        return out[:, 0] if squeeze else out
