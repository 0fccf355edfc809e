"""TransformerPredictor: the Scene-Graph-Benchmark Transformer context (by J. Shi; the
"SG-Transformer" of CogTree).

Object encoder: self-attention layers over [RoI feature ⊕ label embedding ⊕ box embedding]
(linearly projected to the hidden size) within each image; an object classifier on its output
in SGCls/SGDet. Edge encoder: more layers over [RoI feature ⊕ object context ⊕ predicted-label
embedding]. Pair head: ``rel_compress(post_cat(prod) * union) + ctx_compress(prod)``. Images are
padded to one length and attention never crosses images (padded keys are masked), so objects
are an unordered set: outputs are equivariant to the order objects come in.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from torch import nn

from sgg.modeling.embeddings import class_embedding
from sgg.modeling.predictors.common import (
    PairHead,
    check_config,
    check_dropout,
    check_inputs,
    embed_objects,
    empty_outputs,
    foreground_argmax,
    onehot_logits,
    pad_per_image,
)
from sgg.modeling.predictors.registry import SGG_PREDICTOR_REGISTRY
from sgg.modeling.structures import RelationInputs, RelationOutputs

BOX_DIM = 128  # box embedding width of the benchmark


class MultiHeadSelfAttention(nn.Module):
    """Post-norm multi-head self-attention with separate key (d_k) and value (d_v) head sizes.

    ``LayerNorm(x + Dropout(fc(heads)))``; keys at padded positions get zero weight. Init as the
    benchmark: q/k/v N(0, sqrt(2 / (d_model + d_head))), ``fc`` Xavier-normal.
    """

    def __init__(self, d_model: int, num_heads: int, key_dim: int, val_dim: int, dropout: float):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, val_dim
        self.w_q = nn.Linear(d_model, num_heads * key_dim)
        self.w_k = nn.Linear(d_model, num_heads * key_dim)
        self.w_v = nn.Linear(d_model, num_heads * val_dim)
        for layer, dim in ((self.w_q, key_dim), (self.w_k, key_dim), (self.w_v, val_dim)):
            nn.init.normal_(layer.weight, std=(2.0 / (d_model + dim)) ** 0.5)
        self.fc = nn.Linear(num_heads * val_dim, d_model)
        nn.init.xavier_normal_(self.fc.weight)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model); ``padding`` (B, L) is True at padded positions."""
        batch, length, _ = x.shape
        q = self.w_q(x).view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)
        k = self.w_k(x).view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)
        v = self.w_v(x).view(batch, length, self.num_heads, self.val_dim).transpose(1, 2)
        scores = q @ k.transpose(2, 3) * self.key_dim**-0.5  # (B, heads, L, L)
        # A finite fill keeps rows of all-padding (empty) images finite instead of NaN.
        scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = self.attn_dropout(scores.softmax(dim=-1))
        heads = (attn @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.norm(x + self.dropout(self.fc(heads)))


class EncoderLayer(nn.Module):
    """Self-attention then a post-norm ReLU feed-forward block (d_model -> inner -> d_model)."""

    def __init__(
        self,
        d_model: int,
        inner_dim: int,
        num_heads: int,
        key_dim: int,
        val_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.attention = MultiHeadSelfAttention(d_model, num_heads, key_dim, val_dim, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, inner_dim),
            nn.ReLU(inplace=True),
            nn.Linear(inner_dim, d_model),
            nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, padding)
        return self.norm(x + self.ffn(x))


class ImageSetEncoder(nn.Module):
    """A stack of :class:`EncoderLayer` run on each image's objects as one padded set."""

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        inner_dim: int,
        num_heads: int,
        key_dim: int,
        val_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, inner_dim, num_heads, key_dim, val_dim, dropout)
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(N, d_model) flat image-major -> (N, d_model), attention within each image only."""
        padded, valid = pad_per_image(x, lengths)
        for layer in self.layers:
            padded = layer(padded, ~valid)
        return padded[valid]


@SGG_PREDICTOR_REGISTRY.register()
class TransformerPredictor(nn.Module):
    """Transformer predicate predictor (``PREDICTOR = TransformerPredictor``).

    PredCls: ``obj_preds`` are the GT labels, ``obj_logits`` ±1000 one-hot logits. SGCls/SGDet:
    ``obj_logits`` from the object classifier and ``obj_preds`` their foreground argmax, in
    training too (as the benchmark). The box embedding is the benchmark Transformer's own,
    Linear(9, 32) -> ReLU -> Dropout -> Linear(32, 128) -> ReLU -> Dropout (no BatchNorm), with
    TRANSFORMER.DROPOUT_RATE. The detector logits are detached (the detector is frozen).
    """

    @configurable
    def __init__(
        self,
        *,
        feature_dim: int,
        num_classes: int,
        num_predicates: int,
        embed_dim: int,
        hidden_dim: int,
        pooling_dim: int,
        obj_layers: int = 4,
        rel_layers: int = 2,
        num_heads: int = 8,
        key_dim: int = 64,
        val_dim: int = 64,
        inner_dim: int = 2048,
        dropout: float = 0.1,
        embed_file: str = "",
        obj_classifier: bool = True,
    ):
        """
        Args:
            feature_dim: D, width of ``obj_features`` and ``union_features``.
            obj_classifier: build the object classifier (SGCls/SGDet); a PredCls model leaves
                it out so that every parameter gets a gradient.
        """
        super().__init__()
        key = "MODEL.ROI_RELATION_HEAD"
        check_config(
            key,
            NUM_CLASSES=num_classes,
            NUM_PREDICATES=num_predicates,
            EMBED_DIM=embed_dim,
            CONTEXT_HIDDEN_DIM=hidden_dim,
            CONTEXT_POOLING_DIM=pooling_dim,
            feature_dim=feature_dim,
        )
        check_config(
            f"{key}.TRANSFORMER",
            OBJ_LAYER=obj_layers,
            REL_LAYER=rel_layers,
            NUM_HEAD=num_heads,
            KEY_DIM=key_dim,
            VAL_DIM=val_dim,
            INNER_DIM=inner_dim,
        )
        check_dropout(f"{key}.TRANSFORMER.DROPOUT_RATE", dropout)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.obj_embed1 = class_embedding(num_classes, embed_dim, embed_file)
        self.obj_embed2 = class_embedding(num_classes, embed_dim, embed_file)
        self.bbox_embed = nn.Sequential(
            nn.Linear(9, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(32, BOX_DIM),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        encoder = (hidden_dim, inner_dim, num_heads, key_dim, val_dim, dropout)
        self.lin_obj = nn.Linear(feature_dim + embed_dim + BOX_DIM, hidden_dim)
        self.context_obj = ImageSetEncoder(obj_layers, *encoder)
        self.out_obj = nn.Linear(hidden_dim, num_classes + 1) if obj_classifier else None
        self.lin_edge = nn.Linear(embed_dim + hidden_dim + feature_dim, hidden_dim)
        self.context_edge = ImageSetEncoder(rel_layers, *encoder)
        self.pair_head = PairHead(
            hidden_dim, pooling_dim, feature_dim, num_predicates, ctx_compress=True
        )

    @classmethod
    def from_config(cls, cfg, feature_dim: int) -> dict:
        head = cfg.MODEL.ROI_RELATION_HEAD
        tf = head.TRANSFORMER
        return {
            "feature_dim": feature_dim,
            "num_classes": head.NUM_CLASSES,
            "num_predicates": head.NUM_PREDICATES,
            "embed_dim": head.EMBED_DIM,
            "embed_file": head.EMBED_FILE,
            "hidden_dim": head.CONTEXT_HIDDEN_DIM,
            "pooling_dim": head.CONTEXT_POOLING_DIM,
            "obj_layers": tf.OBJ_LAYER,
            "rel_layers": tf.REL_LAYER,
            "num_heads": tf.NUM_HEAD,
            "key_dim": tf.KEY_DIM,
            "val_dim": tf.VAL_DIM,
            "inner_dim": tf.INNER_DIM,
            "dropout": tf.DROPOUT_RATE,
            "obj_classifier": not (head.USE_GT_BOX and head.USE_GT_OBJECT_LABEL),
        }

    def forward(self, inputs: RelationInputs) -> RelationOutputs:
        """Object and predicate logits of a batch (see :class:`RelationOutputs`)."""
        name, classifier = "TransformerPredictor", self.out_obj is not None
        check_inputs(inputs, self.feature_dim, self.num_classes, name, classifier)
        feats, labels, lengths = inputs.obj_features, inputs.obj_labels, inputs.num_objs
        if sum(lengths) == 0:
            return empty_outputs(feats, self.num_classes, self.num_predicates)
        objects = embed_objects(inputs, self.obj_embed1, self.bbox_embed)
        obj_ctx = self.context_obj(self.lin_obj(objects.rep), lengths)
        if objects.predcls:
            obj_preds, obj_logits = labels, onehot_logits(labels, self.num_classes, feats.dtype)
        else:
            obj_logits = self.out_obj(obj_ctx)
            obj_preds = foreground_argmax(obj_logits)
        edge_rep = torch.cat([feats, obj_ctx, self.obj_embed2(obj_preds)], dim=1)
        edge_ctx = self.context_edge(self.lin_edge(edge_rep), lengths)
        rel_logits = self.pair_head(edge_ctx, inputs.union_features, inputs.global_pair_idxs())
        return RelationOutputs(obj_logits=obj_logits, obj_preds=obj_preds, rel_logits=rel_logits)
