"""VCTree predicate predictor (Tang et al. CVPR'19, as reimplemented by Scene-Graph-Benchmark).

Per image, a learned score for every ordered object pair (visual, label-embedding and geometric
features) defines a maximum spanning tree; its binary form carries bidirectional tree LSTMs for
the object context (and, in SGCls/SGDet, a top-down object-label decoder) and then the edge
context, from which the Motifs-style pair head predicts predicates. The pair scores are trained by
the extra ``loss_vctree_binary`` against "is there a GT relation from i to j".

Differences from SGB: the pair score has no co-occurrence prior (the predictor does not receive
the dataset statistics; the relation head adds the frequency bias to the predicate logits), the
tree is the exact maximum spanning tree of the symmetrised scores (SGB grows it greedily from
directed scores), and the binary loss skips the (meaningless) diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from distill.errors import ConfigValueError
from sgg.modeling.embeddings import class_embedding, position_embedding
from sgg.modeling.predictors.common import (
    batchnorm_safe,
    check_inputs,
    embed_objects,
    onehot_logits,
)
from sgg.modeling.predictors.registry import SGG_PREDICTOR_REGISTRY
from sgg.modeling.predictors.vctree_tree import (
    BiTreeLSTM,
    TopDownTreeLSTM,
    TreeSchedule,
    build_schedule,
    dropout_mask,
)
from sgg.modeling.structures import RelationInputs, RelationOutputs


def overlap_info(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 4) XYXY boxes -> (N, 6) how each box overlaps the others of its image: number of
    intersecting boxes, summed intersection / image area, summed IoU, the two means over the
    intersecting boxes, and the box's own area / image area."""
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    inter = inter * (1.0 - torch.eye(len(boxes), device=boxes.device))
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-9)
    count = (inter > 0).float().sum(dim=1)
    image_area = float(image_size[0] * image_size[1])
    inter_sum, iou_sum = inter.sum(dim=1) / image_area, iou.sum(dim=1)
    denom = count.clamp(min=1.0)
    return torch.stack(
        [count, inter_sum, iou_sum, inter_sum / denom, iou_sum / denom, area / image_area], dim=1
    )


class TreeScoreNet(nn.Module):
    """Pairwise tree scores: logit[i, j] = w . [s_i * o_j, s_i, o_j] + b, with subject / object
    features s, o from the (detached) RoI feature, label embedding, box geometry and overlap."""

    def __init__(self, feature_dim: int, embed_dim: int, hidden: int):
        super().__init__()
        self.obj_reduce = nn.Linear(feature_dim, 128)
        self.emb_reduce = nn.Linear(embed_dim, 128)
        self.box_embed = nn.Sequential(nn.Linear(9, 128), nn.BatchNorm1d(128), nn.ReLU())
        self.overlap_embed = nn.Sequential(nn.Linear(6, 128), nn.BatchNorm1d(128), nn.ReLU())
        self.score_pre = nn.Linear(4 * 128, hidden)
        self.score_sub = nn.Linear(hidden, hidden)
        self.score_obj = nn.Linear(hidden, hidden)
        self.pair = nn.Linear(3 * hidden, 1)
        for layer in (self.obj_reduce, self.emb_reduce, self.score_pre, self.score_sub):
            nn.init.xavier_uniform_(layer.weight)
        nn.init.xavier_uniform_(self.score_obj.weight)

    def forward(self, x, embed, geometry, overlap, num_objs: list[int]) -> list[torch.Tensor]:
        """(N, D), (N, E), (N, 9), (N, 6) -> per image (N_i, N_i) score logits."""
        parts = [self.obj_reduce(x.detach()), self.emb_reduce(embed.detach())]
        parts += [batchnorm_safe(self.box_embed, geometry)]
        parts += [batchnorm_safe(self.overlap_embed, overlap)]
        h = F.relu(self.score_pre(torch.cat(parts, dim=1)))
        sub, obj = F.relu(self.score_sub(h)), F.relu(self.score_obj(h))
        w_prod, w_sub, w_obj = self.pair.weight[0].split(sub.shape[1])
        bias = self.pair.bias
        return [
            (s * w_prod) @ o.T + (s @ w_sub)[:, None] + (o @ w_obj)[None] + bias
            for s, o in zip(sub.split(num_objs), obj.split(num_objs))
        ]


def tree_binary_loss(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """VCTree's binary loss: per image the mean BCE over off-diagonal pairs (i, j) between
    sigmoid(logit[i, j]) and ``target[i, j] > 0``, then the mean over images with >= 2 objects
    (0, still attached to the graph, when there are none)."""
    terms = []
    for logit, target in zip(logits, targets):
        if len(logit) < 2:
            continue
        off = ~torch.eye(len(logit), dtype=torch.bool, device=logit.device)
        terms.append(F.binary_cross_entropy_with_logits(logit[off], (target[off] > 0).float()))
    if not terms:
        return torch.cat([logit.flatten() for logit in logits]).sum() * 0.0 + 0.0  # not -0.0
    return torch.stack(terms).mean()


class TreeObjectDecoder(nn.Module):
    """SGCls/SGDet object classifier: a top-down tree LSTM whose input at each node is its
    features plus the embedding of its binary parent's predicted label (a learned start vector
    at the roots): sampled from the softmax in training, the arg-max at test (as SGB)."""

    def __init__(self, in_dim, hidden, num_classes, embed_dim, embed_file, dropout):
        super().__init__()
        self.embed = class_embedding(num_classes, embed_dim, embed_file)
        self.start = nn.Parameter(torch.randn(embed_dim))
        self.lstm = TopDownTreeLSTM(in_dim, hidden, extra_dim=embed_dim)
        self.out = nn.Linear(hidden, num_classes + 1)
        self.dropout, self.hidden = dropout, hidden

    def forward(self, x: torch.Tensor, tree: TreeSchedule) -> torch.Tensor:
        """(N, in_dim) -> (N, C + 1) object logits, background last."""
        if x.shape[0] == 0:
            return self.out(x.new_zeros(0, self.hidden))

        def parent_label_embedding(d: int, parent_h: torch.Tensor | None) -> torch.Tensor:
            if parent_h is None:
                return self.start.expand(len(tree.levels[0]), -1)
            fg = self.out(parent_h)[:, :-1].detach()
            if self.training:
                labels = torch.multinomial(fg.softmax(dim=1), 1)[:, 0]
            else:
                labels = fg.argmax(dim=1)
            return self.embed(labels)[tree.parent_pos[d]]

        mask = dropout_mask(self.dropout, self.hidden, x, self.training)
        return self.out(self.lstm(x, tree, mask, parent_label_embedding))


@SGG_PREDICTOR_REGISTRY.register()
class VCTreePredictor(nn.Module):
    """VCTree context + pair head; see the module docstring.

    Args:
        feature_dim: D, the size of object and union features.
        num_classes / num_predicates: C object classes, P predicates.
        embed_dim / embed_file: class embeddings (see ``embeddings.class_embedding``).
        hidden_dim: context size H (even: each tree direction has H / 2).
        pooling_dim: pair representation size; union features are projected to it if D differs.
        dropout: tree-LSTM dropout (decoder always, encoders with > 1 layer).
        obj_layers / rel_layers: layers of the object / edge context tree LSTMs.
    """

    @configurable
    def __init__(
        self,
        *,
        feature_dim: int,
        num_classes: int,
        num_predicates: int,
        embed_dim: int = 200,
        embed_file: str = "",
        hidden_dim: int = 512,
        pooling_dim: int = 4096,
        dropout: float = 0.2,
        obj_layers: int = 1,
        rel_layers: int = 1,
    ):
        super().__init__()
        _check_config(
            hidden_dim, dropout, FEATURE_DIM=feature_dim, NUM_CLASSES=num_classes,
            NUM_PREDICATES=num_predicates, EMBED_DIM=embed_dim, CONTEXT_HIDDEN_DIM=hidden_dim,
            CONTEXT_POOLING_DIM=pooling_dim, CONTEXT_OBJ_LAYER=obj_layers,
            CONTEXT_REL_LAYER=rel_layers,
        )  # fmt: skip
        self.feature_dim, self.num_classes, self.hidden = feature_dim, num_classes, hidden_dim
        self.obj_embed = class_embedding(num_classes, embed_dim, embed_file)
        self.pred_embed = class_embedding(num_classes, embed_dim, embed_file)
        self.pos_embed = position_embedding(128)
        self.score_net = TreeScoreNet(feature_dim, embed_dim, hidden_dim)
        d, e, h = feature_dim, embed_dim, hidden_dim
        self.obj_ctx = BiTreeLSTM(d + e + 128, h, obj_layers, dropout)
        self.decoder = TreeObjectDecoder(d + h, h, num_classes, e, embed_file, dropout)
        self.edge_ctx = BiTreeLSTM(e + d + h, h, rel_layers, dropout)
        self.post_emb = nn.Linear(h, 2 * h)
        self.post_cat = nn.Linear(2 * h, pooling_dim)
        self.union_proj = nn.Linear(d, pooling_dim) if d != pooling_dim else None
        self.ctx_compress = nn.Linear(pooling_dim, num_predicates + 1)
        nn.init.normal_(self.post_emb.weight, std=10.0 * (1.0 / h) ** 0.5)
        nn.init.zeros_(self.post_emb.bias)
        for layer in (self.post_cat, self.ctx_compress):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @classmethod
    def from_config(cls, cfg, feature_dim: int) -> dict:
        rel = cfg.MODEL.ROI_RELATION_HEAD
        return dict(
            feature_dim=feature_dim, num_classes=rel.NUM_CLASSES,
            num_predicates=rel.NUM_PREDICATES, embed_dim=rel.EMBED_DIM, embed_file=rel.EMBED_FILE,
            hidden_dim=rel.CONTEXT_HIDDEN_DIM, pooling_dim=rel.CONTEXT_POOLING_DIM,
            dropout=rel.CONTEXT_DROPOUT_RATE, obj_layers=rel.CONTEXT_OBJ_LAYER,
            rel_layers=rel.CONTEXT_REL_LAYER,
        )  # fmt: skip

    def forward(self, inputs: RelationInputs) -> RelationOutputs:
        self._check_inputs(inputs)
        x, num_objs = inputs.obj_features, inputs.num_objs
        objects = embed_objects(inputs, self.obj_embed, self.pos_embed)
        overlap = torch.cat([overlap_info(b, s) for b, s in zip(inputs.boxes, inputs.image_sizes)])
        score_logits = self.score_net(
            x, objects.label_embedding, objects.geometry, overlap, num_objs
        )
        tree = self._trees(score_logits, num_objs, x.device)

        obj_ctx = self.obj_ctx(objects.rep, tree)
        if objects.predcls:
            obj_preds = inputs.obj_labels
            obj_logits = onehot_logits(obj_preds, self.num_classes, x.dtype)
        else:
            obj_logits = self.decoder(torch.cat([x, obj_ctx], dim=1), tree)
            obj_preds = obj_logits[:, :-1].argmax(dim=1)
        edge_in = torch.cat([self.pred_embed(obj_preds), x, obj_ctx], dim=1)
        edge_ctx = self.edge_ctx(edge_in, tree)

        head_tail = self.post_emb(edge_ctx).view(-1, 2, self.hidden)
        pairs = inputs.global_pair_idxs()
        prod = torch.cat([head_tail[pairs[:, 0], 0], head_tail[pairs[:, 1], 1]], dim=1)
        union = inputs.union_features
        if self.union_proj is not None:
            union = self.union_proj(union)
        rel_logits = self.ctx_compress(self.post_cat(prod) * union)

        losses = {}
        if self.training and inputs.rel_binary is not None:
            losses["loss_vctree_binary"] = tree_binary_loss(score_logits, inputs.rel_binary)
        return RelationOutputs(obj_logits, obj_preds, rel_logits, losses)

    @staticmethod
    def _trees(score_logits, num_objs, device) -> TreeSchedule:
        """One device-to-host copy of all sigmoid scores, then the trees on the CPU."""
        flat = torch.cat([s.detach().float().sigmoid().flatten() for s in score_logits]).cpu()
        sizes = [n * n for n in num_objs]
        scores = [s.view(n, n).numpy() for s, n in zip(flat.split(sizes), num_objs)]
        return build_schedule(scores, device)

    def _check_inputs(self, inputs: RelationInputs) -> None:
        """:func:`check_inputs`, a non-empty batch and the (N_i, N_i) ``rel_binary`` targets."""
        if not inputs.boxes:
            raise ConfigValueError("VCTreePredictor: the batch has no images")
        check_inputs(inputs, self.feature_dim, self.num_classes, "VCTreePredictor")
        for i, (target, k) in enumerate(zip(inputs.rel_binary or [], inputs.num_objs)):
            if tuple(target.shape) != (k, k):
                raise ConfigValueError(
                    f"VCTreePredictor: RelationInputs.rel_binary of image {i} has shape "
                    f"{tuple(target.shape)}; expected ({k}, {k}) (its objects squared)"
                )


def _check_config(hidden: int, dropout: float, **positive: int) -> None:
    """``positive``: config key (under MODEL.ROI_RELATION_HEAD) -> value that must be >= 1."""
    key = "MODEL.ROI_RELATION_HEAD."
    for name, value in positive.items():
        if int(value) < 1:
            label = "feature_dim (object feature size)" if name == "FEATURE_DIM" else key + name
            raise ConfigValueError(f"VCTreePredictor: {label} must be >= 1, got {value}")
    if hidden % 2:
        msg = f"{key}CONTEXT_HIDDEN_DIM must be even (2 tree directions of half each), got {hidden}"
        raise ConfigValueError(f"VCTreePredictor: {msg}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigValueError(f"VCTreePredictor: {key}CONTEXT_DROPOUT_RATE must be in [0, 1)")
