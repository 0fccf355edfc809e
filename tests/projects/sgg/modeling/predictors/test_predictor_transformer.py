"""TransformerPredictor's own behaviour: attention within each image only (padded keys have no
weight), the config and its errors (the checks every predictor passes are in
test_predictors.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from predictor_inputs import EMBED, HIDDEN, POOL, C, D, P, make_inputs, make_predictor
from sgg.modeling.predictors.registry import build_predictor
from sgg.modeling.predictors.transformer import MultiHeadSelfAttention, TransformerPredictor

from distill.config import get_distill_cfg
from distill.errors import ConfigValueError


def make_model(seed=0, **overrides) -> TransformerPredictor:
    return make_predictor("transformer", seed, **overrides)


def small_cfg(**values):
    cfg = get_distill_cfg()
    head = cfg.MODEL.ROI_RELATION_HEAD
    head.PREDICTOR = "TransformerPredictor"
    head.NUM_CLASSES, head.NUM_PREDICATES, head.EMBED_DIM = C, P, EMBED
    head.CONTEXT_HIDDEN_DIM, head.CONTEXT_POOLING_DIM = HIDDEN, POOL
    tf = head.TRANSFORMER
    tf.NUM_HEAD, tf.KEY_DIM, tf.VAL_DIM, tf.INNER_DIM = 2, 8, 8, 24
    tf.OBJ_LAYER, tf.REL_LAYER = 1, 1
    for key, value in values.items():
        node, _, name = key.rpartition(".")
        setattr(tf if node else head, name, value)
    return cfg


def test_attention_hand_case_and_padding():
    """One head, identity projections: output = LayerNorm(x + softmax(x x^T / sqrt(d)) x);
    padded keys get zero weight."""
    attn = MultiHeadSelfAttention(4, 1, 4, 4, dropout=0.0).eval()
    with torch.no_grad():
        for layer in (attn.w_q, attn.w_k, attn.w_v, attn.fc):
            layer.weight.copy_(torch.eye(4))
            layer.bias.zero_()
    x = torch.tensor([[[1.0, 0, 2, 0], [0, 1, 0, 3], [5, 5, 5, 5]]])
    padding = torch.tensor([[False, False, True]])
    real = x[:, :2]
    weights = (real @ real.transpose(1, 2) / 2.0).softmax(dim=-1)
    expected = F.layer_norm(real + weights @ real, (4,))
    torch.testing.assert_close(attn(x, padding)[:, :2], expected)


def test_padding_does_not_change_an_image():
    """An image alone gives the same outputs as in a batch with a larger (padding) image."""
    model = make_model().eval()
    both = make_inputs(num_objs=(2, 6), mode="sgcls", labels=False)
    alone = make_inputs(num_objs=(2,), mode="sgcls", labels=False)
    alone.obj_features, alone.boxes = both.obj_features[:2], both.boxes[:1]
    alone.obj_det_logits, alone.union_features = both.obj_det_logits[:2], both.union_features[:2]
    out_both, out_alone = model(both), model(alone)
    torch.testing.assert_close(out_both.obj_logits[:2], out_alone.obj_logits)
    torch.testing.assert_close(out_both.rel_logits[:2], out_alone.rel_logits)


def test_build_from_config():
    model = build_predictor(small_cfg(), D)
    assert isinstance(model, TransformerPredictor) and model.out_obj is None  # PredCls config
    assert len(model.context_obj.layers) == 1 and model.pair_head.ctx_compress is not None
    with pytest.raises(ConfigValueError, match="built for PredCls"):
        model(make_inputs(mode="sgdet"))
    model = build_predictor(small_cfg(USE_GT_BOX=False, USE_GT_OBJECT_LABEL=False), D)
    assert model(make_inputs(mode="sgdet", labels=False)).rel_logits.shape == (18, P + 1)
    model = build_predictor(small_cfg(CONTEXT_POOLING_DIM=20), 24)  # union projected 24 -> 20
    assert model.pair_head.up_dim.in_features == 24 and model.pair_head.up_dim.out_features == 20


def test_bad_config_gives_clear_errors():
    with pytest.raises(ConfigValueError, match="TRANSFORMER.NUM_HEAD"):
        build_predictor(small_cfg(**{"TRANSFORMER.NUM_HEAD": 0}), D)
    with pytest.raises(ConfigValueError, match="TRANSFORMER.DROPOUT_RATE"):
        build_predictor(small_cfg(**{"TRANSFORMER.DROPOUT_RATE": -0.1}), D)
    with pytest.raises(ConfigValueError, match="CONTEXT_HIDDEN_DIM"):
        build_predictor(small_cfg(CONTEXT_HIDDEN_DIM=0), D)
