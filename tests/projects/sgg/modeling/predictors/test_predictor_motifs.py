"""MotifPredictor and the shared predictor pieces (sgg.modeling.predictors.common)."""

from __future__ import annotations

import numpy as np
import pytest
import sgg.modeling.predictors.motifs  # noqa: F401  (registers MotifPredictor)
import torch
import torch.nn.functional as F
from predictor_inputs import EMBED, HIDDEN, MODES, POOL, C, D, P, make_inputs
from sgg.modeling.predictors.common import (
    PREDCLS_LOGIT,
    PairHead,
    left_to_right_order,
    onehot_logits,
    run_lstm,
)
from sgg.modeling.predictors.motifs import MotifPredictor
from sgg.modeling.predictors.registry import build_predictor
from torch import nn

from distill.config import get_distill_cfg
from distill.errors import ConfigValueError, MissingFileError


def make_model(seed=0, **overrides) -> MotifPredictor:
    torch.manual_seed(seed)
    kwargs = dict(
        feature_dim=D, num_classes=C, num_predicates=P, embed_dim=EMBED, hidden_dim=HIDDEN,
        pooling_dim=POOL, dropout=0.2, obj_layers=1, rel_layers=2,
    )  # fmt: skip
    kwargs.update(overrides)
    return MotifPredictor(**kwargs)


def small_cfg(**values):
    cfg = get_distill_cfg()
    head = cfg.MODEL.ROI_RELATION_HEAD
    head.NUM_CLASSES, head.NUM_PREDICATES, head.EMBED_DIM = C, P, EMBED
    head.CONTEXT_HIDDEN_DIM, head.CONTEXT_POOLING_DIM = HIDDEN, POOL
    for key, value in values.items():
        setattr(head, key, value)
    return cfg


def image_rows(per_image, num, image):
    start = sum(num[:image])
    return per_image[start : start + num[image]]


def test_left_to_right_order_hand_case():
    # image 0 centres x: 30, 10, 20 -> order 1, 2, 0; image 1 centres: 5, 1 -> 4, 3
    boxes = [
        torch.tensor([[20.0, 0, 40, 5], [0, 0, 20, 5], [15, 0, 25, 5]]),
        torch.tensor([[0.0, 0, 10, 5], [0, 0, 2, 5]]),
    ]
    perm, inv = left_to_right_order(boxes)
    assert perm.tolist() == [1, 2, 0, 4, 3]
    assert inv[perm].tolist() == list(range(5))


def test_onehot_logits_put_all_mass_on_label():
    labels = torch.tensor([2, 0, 7])
    logits = onehot_logits(labels, C, torch.float32)
    assert logits.shape == (3, C + 1)
    assert logits[torch.arange(3), labels].eq(PREDCLS_LOGIT).all()
    assert (logits == -PREDCLS_LOGIT).sum() == 3 * C
    assert F.cross_entropy(logits, labels).item() == 0.0


def test_run_lstm_equals_one_run_per_image():
    torch.manual_seed(0)
    lstm = nn.LSTM(5, 4, bidirectional=True)
    lengths = [3, 0, 1, 4]
    x = torch.randn(sum(lengths), 5)
    expected = [lstm(part[:, None])[0][:, 0] for part in x.split(lengths) if len(part)]
    torch.testing.assert_close(run_lstm(lstm, x, lengths), torch.cat(expected))


@pytest.mark.parametrize("pool", [D, 24])
def test_pair_head_matches_formula(pool):
    torch.manual_seed(0)
    head = PairHead(HIDDEN, pool, D, P)
    assert (head.up_dim is None) == (pool == D)
    ctx, union = torch.randn(5, HIDDEN), torch.randn(3, D)
    pairs = torch.tensor([[0, 1], [4, 2], [3, 0]])
    w = head.post_emb(ctx)
    prod = torch.cat([w[pairs[:, 0], :HIDDEN], w[pairs[:, 1], HIDDEN:]], dim=1)
    vis = union if pool == D else head.up_dim(union)
    expected = head.rel_compress(head.post_cat(prod) * vis)
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
    assert out.obj_preds.min() >= 0 and out.obj_preds.max() < C
    assert out.losses == {}


@pytest.mark.parametrize("training", [True, False])
def test_predcls_uses_gt_labels(training):
    inputs = make_inputs(mode="predcls")
    out = make_model().train(training)(inputs)
    assert torch.equal(out.obj_preds, inputs.obj_labels)
    assert torch.equal(out.obj_logits, onehot_logits(inputs.obj_labels, C, torch.float32))


def test_eval_decoding_is_greedy_and_train_is_teacher_forced():
    model = make_model()
    inputs = make_inputs(mode="sgdet")
    out = model.eval()(inputs)
    assert torch.equal(out.obj_preds, out.obj_logits[:, :C].argmax(dim=1))
    # training: GT labels are fed back and returned; background (C) takes the prediction
    inputs.obj_labels[[1, 5]] = C
    out = model.train()(inputs)
    keep = inputs.obj_labels != C
    assert torch.equal(out.obj_preds[keep], inputs.obj_labels[keep])
    assert torch.equal(out.obj_preds[~keep], out.obj_logits[~keep, :C].argmax(dim=1))


def test_teacher_forcing_changes_later_steps_only():
    """The decoder reads the previous label: changing one teacher label changes the logits of
    the object right after it (left to right) and not those before it."""
    model = make_model().train()
    model.decoder.dropout = 0.0
    inputs = make_inputs(num_objs=(4,), mode="sgcls")
    order = left_to_right_order(inputs.boxes)[0]
    base = model(inputs).obj_logits
    inputs.obj_labels[order[1]] = (inputs.obj_labels[order[1]] + 1) % C
    changed = model(inputs).obj_logits
    torch.testing.assert_close(changed[order[:2]], base[order[:2]])
    assert not torch.allclose(changed[order[2]], base[order[2]])


@pytest.mark.parametrize("mode", MODES)
def test_object_order_within_image_does_not_matter(mode):
    model = make_model().eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    shuffle = torch.tensor([2, 0, 3, 1])  # image 0's objects; images 1, 2 unchanged
    perm = torch.cat([shuffle, torch.arange(4, 8)])
    where = torch.empty_like(shuffle)
    where[shuffle] = torch.arange(4)  # new position of old object i
    inputs.boxes[0] = inputs.boxes[0][shuffle]
    inputs.pair_idxs[0] = where[inputs.pair_idxs[0]]
    inputs.obj_features = inputs.obj_features.detach()[perm]
    inputs.obj_det_logits = inputs.obj_det_logits[perm]
    if inputs.obj_labels is not None:
        inputs.obj_labels = inputs.obj_labels[perm]
    out = model(inputs)
    torch.testing.assert_close(out.obj_logits, base.obj_logits[perm])
    assert torch.equal(out.obj_preds, base.obj_preds[perm])
    torch.testing.assert_close(out.rel_logits, base.rel_logits)  # same pairs, same row order


@pytest.mark.parametrize("mode", MODES)
def test_no_cross_image_leakage(mode):
    model = make_model().eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    g = torch.Generator().manual_seed(5)
    feats = inputs.obj_features.detach().clone()
    feats[4:7] = torch.randn(3, D, generator=g)
    inputs.obj_features = feats
    inputs.boxes[1] = inputs.boxes[1].flip(0) + 3.0
    out = model(inputs)
    num, pairs = inputs.num_objs, inputs.num_pairs
    for field, counts in (("obj_logits", num), ("rel_logits", pairs)):
        new, old = getattr(out, field), getattr(base, field)
        torch.testing.assert_close(image_rows(new, counts, 0), image_rows(old, counts, 0))
        torch.testing.assert_close(image_rows(new, counts, 2), image_rows(old, counts, 2))
    new, old = image_rows(out.rel_logits, pairs, 1), image_rows(base.rel_logits, pairs, 1)
    assert not torch.allclose(new, old)


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
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
    inputs = make_inputs(mode="sgcls")
    c, d = model.train()(inputs), model(inputs)
    assert not torch.equal(c.obj_logits, d.obj_logits)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("num_objs", [(1,), (1, 1), (3, 0, 1), (0,)])
def test_tiny_images(num_objs, training):
    model = make_model().train(training)
    for mode in MODES:
        out = model(make_inputs(num_objs=num_objs, mode=mode))
        assert out.obj_logits.shape == (sum(num_objs), C + 1)
        assert out.rel_logits.shape == (sum(n * (n - 1) for n in num_objs), P + 1)
        assert torch.isfinite(out.rel_logits).all()


def test_image_with_objects_but_no_pairs():
    inputs = make_inputs(num_objs=(3, 2), mode="sgcls")
    inputs.pair_idxs[1] = inputs.pair_idxs[1][:0]
    inputs.union_features = inputs.union_features.detach()[:6]
    out = make_model().eval()(inputs)
    assert out.rel_logits.shape == (6, P + 1) and out.obj_logits.shape == (5, C + 1)


def test_build_from_config():
    model = build_predictor(small_cfg(PREDICTOR="MotifPredictor"), D)
    assert isinstance(model, MotifPredictor) and model.decoder is None  # PredCls config
    assert model.pair_head.up_dim is None
    with pytest.raises(ConfigValueError, match="built for PredCls"):
        model(make_inputs(mode="sgcls"))
    cfg = small_cfg(USE_GT_OBJECT_LABEL=False, CONTEXT_POOLING_DIM=20)
    model = build_predictor(cfg, D)
    assert model.decoder is not None and model.pair_head.up_dim.in_features == D
    assert model(make_inputs(mode="sgcls")).rel_logits.shape == (18, P + 1)


class Payload:
    """Unpickling it would run ``print``: a stand-in for code in a crafted file."""

    def __reduce__(self):
        return print, ("code ran",)


def test_bad_config_and_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ConfigValueError, match="CONTEXT_OBJ_LAYER"):
        build_predictor(small_cfg(CONTEXT_OBJ_LAYER=0), D)
    with pytest.raises(ConfigValueError, match="CONTEXT_DROPOUT_RATE"):
        build_predictor(small_cfg(CONTEXT_DROPOUT_RATE=1.0), D)
    with pytest.raises(MissingFileError, match="EMBED_FILE"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "glove.npy")), D)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")  # a truncated array file
    with pytest.raises(ConfigValueError, match="EMBED_FILE: .*cut.npy' is not a readable"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "cut.npy")), D)
    torch.save({"vectors": Payload()}, tmp_path / "vec.pth")
    with pytest.raises(ConfigValueError, match="EMBED_FILE: .*vec.pth' holds a pickled"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "vec.pth")), D)
    model = make_model().eval()
    with pytest.raises(ConfigValueError, match="obj_features"):
        make_model(feature_dim=D + 1)(make_inputs())
    with pytest.raises(ConfigValueError, match="union_features"):
        bad = make_inputs()
        bad.union_features = bad.union_features[:-1]
        model(bad)
    with pytest.raises(ConfigValueError, match=r"pair_idxs\[1\]"):
        bad = make_inputs()
        bad.pair_idxs[1] = bad.pair_idxs[1] + 1
        model(bad)
    with pytest.raises(ConfigValueError, match="obj_labels is required"):
        model(make_inputs(labels=False))
    with pytest.raises(ConfigValueError, match="mode"):
        model(make_inputs(mode="detection"))


def test_embed_file_initialises_all_label_embeddings(tmp_path):
    vectors = np.arange(C * EMBED, dtype=np.float32).reshape(C, EMBED)
    np.save(tmp_path / "vec.npy", vectors)
    model = build_predictor(
        small_cfg(EMBED_FILE=str(tmp_path / "vec.npy"), USE_GT_OBJECT_LABEL=False), D
    )
    expected = torch.from_numpy(vectors)
    torch.testing.assert_close(model.obj_embed1.weight.data, expected)
    torch.testing.assert_close(model.obj_embed2.weight.data, expected)
    torch.testing.assert_close(model.decoder.label_embed.weight.data[:C], expected)
