"""MotifPredictor: Neural Motifs' context encoders and pair head (Zellers et al., CVPR'18), as
reimplemented by the Scene-Graph-Benchmark.

Per image, objects are read left to right (box centre x). A BiLSTM over [RoI feature ⊕ label
embedding ⊕ box embedding] gives the object context; in SGCls/SGDet an LSTM decoder then emits
the object labels in that order. A second BiLSTM over [predicted-label embedding ⊕ RoI feature ⊕
object context] gives the edge context, from which :class:`PairHead` scores every pair. Outputs
come back in the input order of the objects.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from torch import nn

from sgg.modeling.embeddings import class_embedding, position_embedding
from sgg.modeling.predictors.common import (
    PairHead,
    check_config,
    check_dropout,
    check_inputs,
    embed_objects,
    empty_outputs,
    foreground_argmax,
    left_to_right_order,
    onehot_logits,
    pad_per_image,
    run_lstm,
)
from sgg.modeling.predictors.registry import SGG_PREDICTOR_REGISTRY
from sgg.modeling.structures import RelationInputs, RelationOutputs

POS_DIM = 128  # box embedding width of the benchmark
POS_BN_MOMENTUM = 0.001  # the benchmark's Motifs box-embedding BatchNorm momentum


class ObjectDecoder(nn.Module):
    """LSTM emitting object labels one object after another, per image, all images at once.

    Each step reads the object's input and the embedding of the previous label (a learned start
    token first). The cell output passes a highway gate mixing it with a projection of the step
    input, and in training one dropout mask per sequence (shared by all steps) multiplies it
    before it is classified and fed back as the next hidden state, as the benchmark's decoder.
    Logits have C + 1 columns (background last); the emitted label is the foreground argmax.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        num_classes: int,
        embed_dim: int,
        dropout: float,
        embed_file: str = "",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        classes = class_embedding(num_classes, embed_dim, embed_file)
        self.label_embed = nn.Embedding(num_classes + 1, embed_dim)  # row C = start token
        with torch.no_grad():
            self.label_embed.weight[:num_classes].copy_(classes.weight)
        step_dim = input_dim + embed_dim
        self.cell = nn.LSTMCell(step_dim, hidden_dim)
        self.highway_gate = nn.Linear(step_dim + hidden_dim, hidden_dim)
        self.highway_proj = nn.Linear(step_dim, hidden_dim, bias=False)
        self.out_obj = nn.Linear(hidden_dim, num_classes + 1)

    def forward(
        self, x: torch.Tensor, lengths: list[int], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every image's sequence.

        Args:
            x: (N, F) flat image-major step inputs, each image in decoding order.
            lengths: objects per image.
            labels: (N,) teacher-forcing labels 0 .. C (C = background: that object feeds back
                its own prediction), or None for greedy decoding.

        Returns:
            logits (N, C + 1) and the fed-back labels (N,) long (the teacher labels where given).
        """
        padded, mask = pad_per_image(x, lengths)  # (B, L, F), (B, L)
        batch, steps, _ = padded.shape
        forced = None if labels is None else pad_per_image(labels[:, None], lengths)[0][..., 0]
        h = c = padded.new_zeros((batch, self.cell.hidden_size))
        previous = self.label_embed.weight[self.num_classes].expand(batch, -1)
        keep = None
        if self.training and self.dropout > 0:
            keep = torch.bernoulli(torch.full_like(h, 1 - self.dropout)) / (1 - self.dropout)
        all_logits, all_labels = [], []
        for t in range(steps):
            step = torch.cat([padded[:, t], previous], dim=1)
            h_cell, c = self.cell(step, (h, c))
            gate = torch.sigmoid(self.highway_gate(torch.cat([step, h], dim=1)))
            h = gate * h_cell + (1 - gate) * self.highway_proj(step)
            if keep is not None:
                h = h * keep
            logits = self.out_obj(h)
            label = foreground_argmax(logits)
            if forced is not None:
                label = torch.where(forced[:, t] == self.num_classes, label, forced[:, t])
            previous = self.label_embed(label)
            all_logits.append(logits)
            all_labels.append(label)
        return torch.stack(all_logits, dim=1)[mask], torch.stack(all_labels, dim=1)[mask]


@SGG_PREDICTOR_REGISTRY.register()
class MotifPredictor(nn.Module):
    """Neural Motifs predicate predictor (``MODEL.ROI_RELATION_HEAD.PREDICTOR = MotifPredictor``).

    PredCls: ``obj_preds`` are the GT labels and ``obj_logits`` are ±1000 one-hot logits
    (:func:`~sgg.modeling.predictors.common.onehot_logits`). SGCls/SGDet: the decoder's logits
    and labels; in training the decoder is teacher-forced with ``obj_labels`` (when given) and
    ``obj_preds`` are those labels (background proposals take the decoder's prediction), at test
    it decodes greedily. The detector logits are detached (the detector is frozen).
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
        dropout: float,
        obj_layers: int = 1,
        rel_layers: int = 1,
        embed_file: str = "",
        obj_classifier: bool = True,
    ):
        """
        Args:
            feature_dim: D, width of ``obj_features`` and ``union_features``.
            obj_classifier: build the object decoder (needed for SGCls/SGDet; a PredCls model
                leaves it out so that every parameter gets a gradient).
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
            CONTEXT_OBJ_LAYER=obj_layers,
            CONTEXT_REL_LAYER=rel_layers,
            feature_dim=feature_dim,
        )
        check_dropout(f"{key}.CONTEXT_DROPOUT_RATE", dropout)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.obj_embed1 = class_embedding(num_classes, embed_dim, embed_file)
        self.obj_embed2 = class_embedding(num_classes, embed_dim, embed_file)
        self.pos_embed = position_embedding(POS_DIM)
        self.pos_embed[1].momentum = POS_BN_MOMENTUM
        obj_dim = feature_dim + embed_dim + POS_DIM
        self.obj_ctx_rnn = nn.LSTM(
            obj_dim,
            hidden_dim,
            num_layers=obj_layers,
            dropout=dropout if obj_layers > 1 else 0.0,
            bidirectional=True,
        )
        self.lin_obj_h = nn.Linear(2 * hidden_dim, hidden_dim)
        self.decoder = None
        if obj_classifier:
            self.decoder = ObjectDecoder(
                obj_dim + hidden_dim, hidden_dim, num_classes, embed_dim, dropout, embed_file
            )
        self.edge_ctx_rnn = nn.LSTM(
            embed_dim + feature_dim + hidden_dim,
            hidden_dim,
            num_layers=rel_layers,
            dropout=dropout if rel_layers > 1 else 0.0,
            bidirectional=True,
        )
        self.lin_edge_h = nn.Linear(2 * hidden_dim, hidden_dim)
        self.pair_head = PairHead(hidden_dim, pooling_dim, feature_dim, num_predicates)

    @classmethod
    def from_config(cls, cfg, feature_dim: int) -> dict:
        head = cfg.MODEL.ROI_RELATION_HEAD
        return {
            "feature_dim": feature_dim,
            "num_classes": head.NUM_CLASSES,
            "num_predicates": head.NUM_PREDICATES,
            "embed_dim": head.EMBED_DIM,
            "embed_file": head.EMBED_FILE,
            "hidden_dim": head.CONTEXT_HIDDEN_DIM,
            "pooling_dim": head.CONTEXT_POOLING_DIM,
            "dropout": head.CONTEXT_DROPOUT_RATE,
            "obj_layers": head.CONTEXT_OBJ_LAYER,
            "rel_layers": head.CONTEXT_REL_LAYER,
            "obj_classifier": not (head.USE_GT_BOX and head.USE_GT_OBJECT_LABEL),
        }

    def forward(self, inputs: RelationInputs) -> RelationOutputs:
        """Object and predicate logits of a batch (see :class:`RelationOutputs`)."""
        name, classifier = "MotifPredictor", self.decoder is not None
        check_inputs(inputs, self.feature_dim, self.num_classes, name, classifier)
        feats, labels, lengths = inputs.obj_features, inputs.obj_labels, inputs.num_objs
        if sum(lengths) == 0:
            return empty_outputs(feats, self.num_classes, self.num_predicates)
        objects = embed_objects(inputs, self.obj_embed1, self.pos_embed)
        perm, inv_perm = left_to_right_order(inputs.boxes)
        obj_rep = objects.rep[perm]
        obj_ctx = self.lin_obj_h(run_lstm(self.obj_ctx_rnn, obj_rep, lengths))  # sorted order

        if objects.predcls:
            obj_preds, obj_logits = labels, onehot_logits(labels, self.num_classes, feats.dtype)
            sorted_preds = labels[perm]
        else:
            teacher = labels[perm] if self.training and labels is not None else None
            dec_logits, sorted_preds = self.decoder(
                torch.cat([obj_rep, obj_ctx], dim=1), lengths, teacher
            )
            obj_logits, obj_preds = dec_logits[inv_perm], sorted_preds[inv_perm]

        edge_rep = torch.cat([self.obj_embed2(sorted_preds), feats[perm], obj_ctx], dim=1)
        edge_ctx = self.lin_edge_h(run_lstm(self.edge_ctx_rnn, edge_rep, lengths))[inv_perm]
        rel_logits = self.pair_head(edge_ctx, inputs.union_features, inputs.global_pair_idxs())
        return RelationOutputs(obj_logits=obj_logits, obj_preds=obj_preds, rel_logits=rel_logits)
