"""TransformerPredictor: shapes, set equivariance, per-image attention, gradients, config."""

from __future__ import annotations

import pytest
import sgg.modeling.predictors.transformer  # noqa: F401  (registers TransformerPredictor)
import torch
import torch.nn.functional as F
from predictor_inputs import EMBED, HIDDEN, MODES, POOL, C, D, P, make_inputs
from sgg.modeling.predictors.common import PairHead, onehot_logits
from sgg.modeling.predictors.registry import build_predictor
from sgg.modeling.predictors.transformer import MultiHeadSelfAttention, TransformerPredictor
from sgg.modeling.structures import RelationInputs

from distill.config import get_distill_cfg
from distill.errors import ConfigValueError


def make_model(seed=0, **overrides) -> TransformerPredictor:
    torch.manual_seed(seed)
    kwargs = dict(
        feature_dim=D, num_classes=C, num_predicates=P, embed_dim=EMBED, hidden_dim=HIDDEN,
        pooling_dim=POOL, obj_layers=2, rel_layers=1, num_heads=2, key_dim=8, val_dim=6,
        inner_dim=24, dropout=0.1,
    )  # fmt: skip
    kwargs.update(overrides)
    return TransformerPredictor(**kwargs)


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


def image_rows(per_image, num, image):
    start = sum(num[:image])
    return per_image[start : start + num[image]]


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


def test_pair_head_adds_ctx_compress():
    torch.manual_seed(0)
    head = PairHead(HIDDEN, POOL, D, P, ctx_compress=True)
    ctx, union, pairs = torch.randn(4, HIDDEN), torch.randn(2, D), torch.tensor([[0, 3], [2, 1]])
    w = head.post_emb(ctx)
    prod = torch.cat([w[pairs[:, 0], :HIDDEN], w[pairs[:, 1], HIDDEN:]], dim=1)
    expected = head.rel_compress(head.post_cat(prod) * union) + head.ctx_compress(prod)
    torch.testing.assert_close(head(ctx, union, pairs), expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_dtypes(mode, training):
    model = make_model().train(training)
    inputs = make_inputs(mode=mode, labels=training or mode == "predcls")
    out = model(inputs)
    n, m = sum(inputs.num_objs), sum(inputs.num_pairs)
    assert out.obj_logits.shape == (n, C + 1) and out.obj_logits.dtype == torch.float32
    assert out.obj_preds.shape == (n,) and out.obj_preds.dtype == torch.long
    assert out.rel_logits.shape == (m, P + 1) and out.rel_logits.dtype == torch.float32
    assert torch.isfinite(out.rel_logits).all() and torch.isfinite(out.obj_logits).all()
    assert out.losses == {}
    if mode != "predcls":  # foreground argmax of the classifier, in training too
        assert torch.equal(out.obj_preds, out.obj_logits[:, :C].argmax(dim=1))


def test_predcls_uses_gt_labels():
    inputs = make_inputs(mode="predcls")
    out = make_model().train()(inputs)
    assert torch.equal(out.obj_preds, inputs.obj_labels)
    assert torch.equal(out.obj_logits, onehot_logits(inputs.obj_labels, C, torch.float32))


@pytest.mark.parametrize("mode", MODES)
def test_permutation_equivariance(mode):
    model = make_model().eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    shuffle = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 2, 0]), torch.tensor([0])]
    perm = torch.cat([s + o for s, o in zip(shuffle, (0, 4, 7))])
    pair_perm = torch.cat([torch.randperm(12), torch.randperm(6) + 12])
    for i, s in enumerate(shuffle):
        where = torch.empty_like(s)
        where[s] = torch.arange(len(s))
        inputs.boxes[i] = inputs.boxes[i][s]
        inputs.pair_idxs[i] = where[inputs.pair_idxs[i]]
    inputs.pair_idxs[0] = inputs.pair_idxs[0][pair_perm[:12]]
    inputs.pair_idxs[1] = inputs.pair_idxs[1][pair_perm[12:] - 12]
    inputs.union_features = inputs.union_features.detach()[pair_perm]
    inputs.obj_features = inputs.obj_features.detach()[perm]
    inputs.obj_det_logits = inputs.obj_det_logits[perm]
    if inputs.obj_labels is not None:
        inputs.obj_labels = inputs.obj_labels[perm]
    out = model(inputs)
    torch.testing.assert_close(out.obj_logits, base.obj_logits[perm])
    assert torch.equal(out.obj_preds, base.obj_preds[perm])
    torch.testing.assert_close(out.rel_logits, base.rel_logits[pair_perm])


@pytest.mark.parametrize("mode", MODES)
def test_no_cross_image_leakage(mode):
    model = make_model().eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    g = torch.Generator().manual_seed(5)
    feats = inputs.obj_features.detach().clone()
    feats[4:7] = torch.randn(3, D, generator=g)
    inputs.obj_features = feats
    inputs.boxes[1] = inputs.boxes[1] + 3.0
    out = model(inputs)
    num, pairs = inputs.num_objs, inputs.num_pairs
    for field, counts in (("obj_logits", num), ("rel_logits", pairs)):
        new, old = getattr(out, field), getattr(base, field)
        torch.testing.assert_close(image_rows(new, counts, 0), image_rows(old, counts, 0))
        torch.testing.assert_close(image_rows(new, counts, 2), image_rows(old, counts, 2))
    new, old = image_rows(out.rel_logits, pairs, 1), image_rows(base.rel_logits, pairs, 1)
    assert not torch.allclose(new, old)


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


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_gradients_reach_parameters_and_features(mode):
    model = make_model(obj_classifier=mode != "predcls").train()
    inputs = make_inputs(num_objs=(4, 3), mode=mode)  # a 1-object image has no pair to learn
    out = model(inputs)
    loss = F.cross_entropy(out.rel_logits, torch.arange(len(out.rel_logits)) % (P + 1))
    if mode != "predcls":
        loss = loss + F.cross_entropy(out.obj_logits, inputs.obj_labels)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []
    assert inputs.obj_features.grad.abs().sum(dim=1).gt(0).all()
    assert inputs.union_features.grad.abs().sum(dim=1).gt(0).all()


def test_eval_is_deterministic_and_train_dropout_is_random():
    model = make_model()
    inputs = make_inputs(mode="sgcls", labels=False)
    a, b = model.eval()(inputs), model(inputs)
    assert torch.equal(a.rel_logits, b.rel_logits) and torch.equal(a.obj_logits, b.obj_logits)
    c, d = model.train()(inputs), model(inputs)
    assert not torch.equal(c.rel_logits, d.rel_logits)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("num_objs", [(1,), (1, 1), (3, 0, 1), (0,)])
def test_tiny_images(num_objs, training):
    model = make_model().train(training)
    for mode in MODES:
        out = model(make_inputs(num_objs=num_objs, mode=mode))
        assert out.obj_logits.shape == (sum(num_objs), C + 1)
        assert out.rel_logits.shape == (sum(n * (n - 1) for n in num_objs), P + 1)
        assert torch.isfinite(out.rel_logits).all() and torch.isfinite(out.obj_logits).all()


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


def test_bad_config_and_inputs_give_clear_errors():
    with pytest.raises(ConfigValueError, match="TRANSFORMER.NUM_HEAD"):
        build_predictor(small_cfg(**{"TRANSFORMER.NUM_HEAD": 0}), D)
    with pytest.raises(ConfigValueError, match="TRANSFORMER.DROPOUT_RATE"):
        build_predictor(small_cfg(**{"TRANSFORMER.DROPOUT_RATE": -0.1}), D)
    with pytest.raises(ConfigValueError, match="CONTEXT_HIDDEN_DIM"):
        build_predictor(small_cfg(CONTEXT_HIDDEN_DIM=0), D)
    model = make_model().eval()
    with pytest.raises(ConfigValueError, match="union_features"):
        model(_with(make_inputs(), union_features=torch.randn(18, D + 2)))
    with pytest.raises(ConfigValueError, match="obj_det_logits"):
        model(_with(make_inputs(), obj_det_logits=torch.randn(8, C)))
    with pytest.raises(ConfigValueError, match="obj_labels"):
        model(_with(make_inputs(), obj_labels=torch.full((8,), C)))  # background in PredCls


def _with(inputs: RelationInputs, **fields) -> RelationInputs:
    for name, value in fields.items():
        setattr(inputs, name, value)
    return inputs
