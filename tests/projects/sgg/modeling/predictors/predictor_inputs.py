"""Random predictor inputs shared by the Motifs and Transformer predictor tests."""

from __future__ import annotations

import torch
from sgg.modeling.structures import RelationInputs

D, HIDDEN, POOL, C, P, EMBED = 32, 16, 32, 8, 6, 12
MODES = ("predcls", "sgcls", "sgdet")


def make_inputs(num_objs=(4, 3, 1), mode="predcls", seed=0, labels=True) -> RelationInputs:
    """Random boxes, features and all ordered pairs per image (a 1-object image has none)."""
    g = torch.Generator().manual_seed(seed)
    boxes, pairs = [], []
    for n in num_objs:
        xy = torch.rand(n, 2, generator=g) * 60
        boxes.append(torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], dim=1))
        grid = torch.cartesian_prod(torch.arange(n), torch.arange(n)).reshape(-1, 2)
        pairs.append(grid[grid[:, 0] != grid[:, 1]])
    n, m = sum(num_objs), sum(len(p) for p in pairs)
    return RelationInputs(
        obj_features=torch.randn(n, D, generator=g).requires_grad_(),
        union_features=torch.randn(m, D, generator=g).requires_grad_(),
        boxes=boxes,
        image_sizes=[(110, 120)] * len(num_objs),
        pair_idxs=pairs,
        obj_det_logits=torch.randn(n, C + 1, generator=g),
        obj_labels=torch.randint(0, C, (n,), generator=g) if labels else None,
        mode=mode,
    )
