"""Pieces shared by the Motifs, VCTree and Transformer predictors.

- the start of every ``forward``: input checks (:func:`check_inputs`) and the object
  representation [RoI feature ⊕ label embedding ⊕ box embedding] (:func:`embed_objects`);
- config checks (:func:`check_config`, :func:`check_dropout`);
- the PredCls object logits (:func:`onehot_logits`) and foreground argmax;
- left-to-right object order per image and per-image padding / LSTM runs, so that sequence
  models see each image as one sequence and never mix images;
- the pair head :class:`PairHead` (``post_emb`` -> head/tail, ``post_cat`` × union feature,
  ``rel_compress``, optionally ``ctx_compress``), as in the Scene-Graph-Benchmark predictors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence, pad_sequence

from distill.errors import ConfigValueError
from sgg.config import MODES
from sgg.modeling.embeddings import box_geometry, soft_label_embedding
from sgg.modeling.structures import RelationInputs, RelationOutputs

# PredCls object logits: +PREDCLS_LOGIT at the GT class, -PREDCLS_LOGIT elsewhere (the benchmark's
# ``to_onehot`` fill); softmax puts all mass on the GT label and CE against it is exactly 0.
PREDCLS_LOGIT = 1000.0


def check_config(prefix: str, **values: float) -> None:
    """Raise :class:`ConfigValueError` naming ``prefix.KEY`` for any value < 1 (sizes, layers)."""
    for key, value in values.items():
        if value < 1:
            raise ConfigValueError(f"{prefix}.{key} must be >= 1, got {value}")


def check_dropout(key: str, value: float) -> None:
    """Raise :class:`ConfigValueError` unless ``0 <= value < 1``."""
    if not 0.0 <= value < 1.0:
        raise ConfigValueError(f"{key} must be in [0, 1), got {value}")


def check_inputs(
    inputs: RelationInputs, feature_dim: int, num_classes: int, name: str, classifier: bool = True
) -> None:
    """Check shapes, mode, labels and pair indices of ``inputs`` against the predictor.

    Args:
        classifier: whether the predictor has an object classifier; one built without it
            (for PredCls) refuses the other modes.

    Raises:
        ConfigValueError: naming the field (and image) at fault.
    """
    if inputs.mode not in MODES:
        raise ConfigValueError(f"{name}: RelationInputs.mode {inputs.mode!r} is not one of {MODES}")
    if inputs.mode != "predcls" and not classifier:
        raise ConfigValueError(
            f"{name} was built for PredCls (no object classifier) but got mode {inputs.mode!r}; "
            "build it with USE_GT_OBJECT_LABEL False"
        )
    num_images = len(inputs.boxes)
    if len(inputs.image_sizes) != num_images or len(inputs.pair_idxs) != num_images:
        raise ConfigValueError(
            f"{name}: RelationInputs has {num_images} boxes, {len(inputs.image_sizes)} "
            f"image_sizes and {len(inputs.pair_idxs)} pair_idxs entries; they must match"
        )
    n, m = sum(inputs.num_objs), sum(inputs.num_pairs)
    expected = {
        "obj_features": (inputs.obj_features, (n, feature_dim)),
        "union_features": (inputs.union_features, (m, feature_dim)),
        "obj_det_logits": (inputs.obj_det_logits, (n, num_classes + 1)),
    }
    for field, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ConfigValueError(
                f"{name}: RelationInputs.{field} has shape {tuple(tensor.shape)}; expected {shape} "
                f"(N objects, M pairs, feature_dim {feature_dim}, NUM_CLASSES {num_classes})"
            )
    labels = inputs.obj_labels
    if labels is None and inputs.mode == "predcls":
        raise ConfigValueError(f"{name}: RelationInputs.obj_labels is required in predcls mode")
    if labels is not None:
        top = num_classes - 1 if inputs.mode == "predcls" else num_classes
        if tuple(labels.shape) != (n,) or (n and (labels.min() < 0 or labels.max() > top)):
            raise ConfigValueError(
                f"{name}: RelationInputs.obj_labels must be ({n},) long in 0..{top} "
                f"({inputs.mode}), got shape {tuple(labels.shape)}"
            )
    for i, pairs in enumerate(inputs.pair_idxs):
        if pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ConfigValueError(
                f"{name}: RelationInputs.pair_idxs[{i}] has shape {tuple(pairs.shape)}; "
                "expected (M_i, 2)"
            )
    if m:
        pairs = torch.cat(list(inputs.pair_idxs))
        bound = torch.repeat_interleave(
            torch.tensor(inputs.num_objs, device=pairs.device),
            torch.tensor(inputs.num_pairs, device=pairs.device),
        )
        bad = ((pairs < 0) | (pairs >= bound[:, None])).any(dim=1)
        if bad.any():
            image = int(image_index(inputs.num_pairs, pairs.device)[bad][0])
            raise ConfigValueError(
                f"{name}: RelationInputs.pair_idxs[{image}] indexes outside the image's "
                f"{inputs.num_objs[image]} objects"
            )


def empty_outputs(feats: torch.Tensor, num_classes: int, num_predicates: int) -> RelationOutputs:
    """Outputs of a batch without objects (hence without pairs)."""
    return RelationOutputs(
        obj_logits=feats.new_zeros((0, num_classes + 1)),
        obj_preds=torch.zeros(0, dtype=torch.long, device=feats.device),
        rel_logits=feats.new_zeros((0, num_predicates + 1)),
    )


def onehot_logits(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, C + 1) logits with +PREDCLS_LOGIT at ``labels`` and -PREDCLS_LOGIT elsewhere."""
    logits = torch.full(
        (len(labels), num_classes + 1), -PREDCLS_LOGIT, dtype=dtype, device=labels.device
    )
    return logits.scatter(1, labels[:, None], PREDCLS_LOGIT)


def foreground_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(N,) argmax over the foreground columns of (N, C + 1) logits (background last)."""
    return logits[:, :-1].argmax(dim=1)


def image_index(lengths: list[int], device: torch.device) -> torch.Tensor:
    """(N,) the image of each object of a flat image-major batch."""
    counts = torch.tensor(lengths, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)


def left_to_right_order(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The Motifs object order: per image, by box centre x ascending; images stay in order.

    Args:
        boxes: per image, (N_i, 4) XYXY boxes.

    Returns:
        perm: (N,) flat indices; ``x[perm]`` is image-major, each image sorted left to right
            (ties keep the input order).
        inv_perm: (N,) its inverse; ``y[inv_perm]`` restores the input order.
    """
    flat = torch.cat(list(boxes)).float()
    centre_x = 0.5 * (flat[:, 0] + flat[:, 2])
    images = image_index([len(b) for b in boxes], flat.device)
    perm = torch.argsort(centre_x, stable=True)
    perm = perm[torch.argsort(images[perm], stable=True)]
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(len(perm), device=perm.device)
    return perm, inv_perm


def pad_per_image(x: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat image-major (N, F) -> zero-padded (B, L, F) and its (B, L) bool validity mask.

    ``padded[mask]`` gives back ``x``.
    """
    padded = pad_sequence(list(x.split(lengths)), batch_first=True)
    steps = torch.arange(padded.shape[1], device=x.device)
    mask = steps[None] < torch.tensor(lengths, device=x.device)[:, None]
    return padded, mask


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Run ``lstm`` (batch_first=False, any direction) over each image as one sequence.

    Args:
        x: (N, F) flat image-major inputs in sequence order within each image.
        lengths: objects per image (zeros allowed).

    Returns:
        (N, H · directions) outputs in the order of ``x``.
    """
    pieces = [p for p in x.split(lengths) if len(p)]
    if not pieces:
        return x.new_zeros((0, lstm.hidden_size * (2 if lstm.bidirectional else 1)))
    out, out_lengths = pad_packed_sequence(lstm(pack_sequence(pieces, enforce_sorted=False))[0])
    steps = torch.arange(out.shape[0])
    mask = steps[None] < out_lengths[:, None]  # (B', L), B' non-empty images
    return out.transpose(0, 1)[mask.to(out.device)]


def batchnorm_safe(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; a BatchNorm in ``module`` cannot take batch statistics of fewer than 2
    rows, so such a training batch uses the running statistics instead of failing."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not (module.training and norms and len(x) < 2):
        return module(x)
    for norm in norms:
        norm.eval()
    try:
        return module(x)
    finally:
        for norm in norms:
            norm.train()


@dataclass
class ObjectInputs:
    """The objects of a batch as every predictor's context encoder starts from them, in the
    input order (flat, image-major).

    Attributes:
        predcls: the GT labels are given (PredCls) and the predictor does not classify objects.
        label_embedding: (N, E) embedding of the GT labels (PredCls), else of the detector's
            foreground softmax (detached: the detector is frozen).
        geometry: (N, 9) box geometry (:func:`~sgg.modeling.embeddings.box_geometry`), float.
        rep: (N, D + E + B) [RoI feature ⊕ label embedding ⊕ box embedding], in the features'
            dtype.
    """

    predcls: bool
    label_embedding: torch.Tensor
    geometry: torch.Tensor
    rep: torch.Tensor


def embed_objects(
    inputs: RelationInputs, label_embed: nn.Embedding, box_embed: nn.Module
) -> ObjectInputs:
    """The shared start of a predictor's forward, after :func:`check_inputs`.

    Args:
        inputs: a checked batch with at least one image.
        label_embed: (C, E) class embedding.
        box_embed: maps the (N, 9) geometry to (N, B) (BatchNorm-safe for one box, see
            :func:`batchnorm_safe`).
    """
    predcls = inputs.mode == "predcls"
    feats = inputs.obj_features
    embed = soft_label_embedding(
        label_embed, inputs.obj_det_logits.detach(), inputs.obj_labels if predcls else None
    )
    geometry = torch.cat([box_geometry(b, s) for b, s in zip(inputs.boxes, inputs.image_sizes)])
    boxes = batchnorm_safe(box_embed, geometry)
    rep = torch.cat([feats, embed.to(feats.dtype), boxes.to(feats.dtype)], dim=1)
    return ObjectInputs(predcls, embed, geometry, rep)


class PairHead(nn.Module):
    """Predicate logits of pairs from per-object edge contexts and union features.

    ``post_emb`` maps each object's context (H) to head and tail halves (2H); a pair (s, o) is
    ``[head_s ; tail_o]`` (2H), ``post_cat`` maps it to the pooling size and it multiplies the
    union feature (projected by ``up_dim`` when its width D differs from the pooling size);
    ``rel_compress`` gives P + 1 logits. With ``ctx_compress`` (Transformer) a linear map of the
    2H pair vector is added. Initialisation as the benchmark: ``post_emb`` N(0, 10/sqrt(H)),
    the rest Xavier-uniform, zero biases.
    """

    def __init__(
        self,
        hidden_dim: int,
        pooling_dim: int,
        feature_dim: int,
        num_predicates: int,
        ctx_compress: bool = False,
    ):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.post_emb = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.post_cat = nn.Linear(2 * hidden_dim, pooling_dim)
        self.rel_compress = nn.Linear(pooling_dim, num_predicates + 1)
        self.up_dim = nn.Linear(feature_dim, pooling_dim) if feature_dim != pooling_dim else None
        self.ctx_compress = nn.Linear(2 * hidden_dim, num_predicates + 1) if ctx_compress else None
        nn.init.normal_(self.post_emb.weight, std=10.0 * hidden_dim**-0.5)
        nn.init.zeros_(self.post_emb.bias)
        for layer in (self.post_cat, self.rel_compress, self.up_dim, self.ctx_compress):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(
        self, edge_ctx: torch.Tensor, union_features: torch.Tensor, pairs: torch.Tensor
    ) -> torch.Tensor:
        """(M, P + 1) logits.

        Args:
            edge_ctx: (N, H) edge context of every object of the batch.
            union_features: (M, D) union feature of each pair.
            pairs: (M, 2) long (subject, object) indices into the N objects.
        """
        head, tail = self.post_emb(edge_ctx).split(self.hidden_dim, dim=1)
        prod = torch.cat([head[pairs[:, 0]], tail[pairs[:, 1]]], dim=1)
        union = union_features if self.up_dim is None else self.up_dim(union_features)
        logits = self.rel_compress(self.post_cat(prod) * union)
        if self.ctx_compress is not None:
            logits = logits + self.ctx_compress(prod)
        return logits
