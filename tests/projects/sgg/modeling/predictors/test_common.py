"""The pieces the predictors share (sgg.modeling.predictors.common): the object representation
every forward starts from, BatchNorm on one box, left-to-right order, per-image LSTM runs, the
PredCls logits and the pair head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from predictor_inputs import HIDDEN, POOL, C, D, P, make_inputs
from sgg.modeling.embeddings import box_geometry, position_embedding
from sgg.modeling.predictors.common import (
    PREDCLS_LOGIT,
    PairHead,
    batchnorm_safe,
    embed_objects,
    left_to_right_order,
    onehot_logits,
    run_lstm,
)
from torch import nn


@pytest.mark.parametrize("mode", ["predcls", "sgdet"])
def test_embed_objects_concatenates_features_labels_and_boxes(mode):
    torch.manual_seed(0)
    inputs = make_inputs(mode=mode)
    inputs.obj_det_logits.requires_grad_()
    label_embed, box_embed = nn.Embedding(C, 5), position_embedding(7).eval()
    objects = embed_objects(inputs, label_embed, box_embed)
    if mode == "predcls":
        labels = label_embed(inputs.obj_labels)
    else:  # the detector's foreground softmax, background column dropped
        labels = inputs.obj_det_logits.softmax(dim=1)[:, :C] @ label_embed.weight
    geometry = torch.cat([box_geometry(b, s) for b, s in zip(inputs.boxes, inputs.image_sizes)])
    assert objects.predcls == (mode == "predcls")
    torch.testing.assert_close(objects.label_embedding, labels)
    torch.testing.assert_close(objects.geometry, geometry)
    expected = torch.cat([inputs.obj_features, labels, box_embed(geometry)], dim=1)
    torch.testing.assert_close(objects.rep, expected)
    assert objects.rep.shape == (8, D + 5 + 7)
    objects.rep.sum().backward()
    assert inputs.obj_det_logits.grad is None  # the frozen detector gets no gradient
    assert inputs.obj_features.grad.eq(1).all()


def test_batchnorm_safe_uses_running_statistics_for_one_row():
    torch.manual_seed(0)
    module = position_embedding(4).train()
    norm = module[1]
    row = torch.rand(1, 9)
    torch.testing.assert_close(batchnorm_safe(module, row), module.eval()(row))
    assert module.train().training and norm.training and norm.num_batches_tracked == 0
    batch = torch.rand(3, 9)
    torch.testing.assert_close(batchnorm_safe(module, batch), module(batch))
    assert norm.num_batches_tracked == 2  # two training batches of 3 rows update the statistics


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


def test_pair_head_adds_ctx_compress():
    torch.manual_seed(0)
    head = PairHead(HIDDEN, POOL, D, P, ctx_compress=True)
    ctx, union, pairs = torch.randn(4, HIDDEN), torch.randn(2, D), torch.tensor([[0, 3], [2, 1]])
    w = head.post_emb(ctx)
    prod = torch.cat([w[pairs[:, 0], :HIDDEN], w[pairs[:, 1], HIDDEN:]], dim=1)
    expected = head.rel_compress(head.post_cat(prod) * union) + head.ctx_compress(prod)
    torch.testing.assert_close(head(ctx, union, pairs), expected)
