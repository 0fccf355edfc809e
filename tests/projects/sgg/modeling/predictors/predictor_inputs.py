"""Small predictors and random inputs shared by the predictor tests."""

from __future__ import annotations

import torch
from sgg.modeling.predictors.motifs import MotifPredictor
from sgg.modeling.predictors.transformer import TransformerPredictor
from sgg.modeling.predictors.vctree import VCTreePredictor
from sgg.modeling.structures import RelationInputs

D, HIDDEN, POOL, C, P, EMBED = 32, 16, 32, 8, 6, 12
MODES = ("predcls", "sgcls", "sgdet")
SIZES = dict(feature_dim=D, num_classes=C, num_predicates=P, embed_dim=EMBED, hidden_dim=HIDDEN)
PREDICTORS = {  # name -> (class, small settings); VCTree projects the union features (24 != D)
    "motifs": (MotifPredictor, dict(pooling_dim=POOL, dropout=0.2, obj_layers=1, rel_layers=2)),
    "vctree": (VCTreePredictor, dict(pooling_dim=24, dropout=0.2, obj_layers=1, rel_layers=2)),
    "transformer": (
        TransformerPredictor,
        dict(pooling_dim=POOL, obj_layers=2, rel_layers=1, num_heads=2, key_dim=8, val_dim=6,
             inner_dim=24, dropout=0.1),
    ),
}  # fmt: skip


def make_predictor(name: str, seed: int = 0, **overrides):
    """The small predictor ``name`` (a key of :data:`PREDICTORS`), initialised from ``seed``."""
    cls, settings = PREDICTORS[name]
    torch.manual_seed(seed)
    return cls(**{**SIZES, **settings, **overrides})


def make_inputs(
    num_objs=(4, 3, 1), mode="predcls", seed=0, labels=True, binary=False
) -> RelationInputs:
    """Random boxes, features and all ordered pairs per image (a 1-object image has none);
    with ``binary``, random (N_i, N_i) ``rel_binary`` targets."""
    g = torch.Generator().manual_seed(seed)
    boxes, pairs = [], []
    for n in num_objs:
        xy = torch.rand(n, 2, generator=g) * 60
        boxes.append(torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], dim=1))
        grid = torch.cartesian_prod(torch.arange(n), torch.arange(n)).reshape(-1, 2)
        pairs.append(grid[grid[:, 0] != grid[:, 1]])
    n, m = sum(num_objs), sum(len(p) for p in pairs)
    inputs = RelationInputs(
        obj_features=torch.randn(n, D, generator=g).requires_grad_(),
        union_features=torch.randn(m, D, generator=g).requires_grad_(),
        boxes=boxes,
        image_sizes=[(110, 120)] * len(num_objs),
        pair_idxs=pairs,
        obj_det_logits=torch.randn(n, C + 1, generator=g),
        obj_labels=torch.randint(0, C, (n,), generator=g) if labels else None,
        mode=mode,
    )
    if binary:
        inputs.rel_binary = [(torch.rand(k, k, generator=g) > 0.6).float() for k in num_objs]
    return inputs
