"""VCTreePredictor's own parts (sgg.modeling.predictors.vctree) and its trees (vctree_tree):
spanning and binary trees, the tree LSTMs, the pair-score loss, overlap features, the config and
its errors (the checks every predictor passes are in test_predictors.py)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from predictor_inputs import EMBED, HIDDEN, C, D, P, make_inputs, make_predictor
from sgg.modeling.predictors import vctree as vc
from sgg.modeling.predictors import vctree_tree as vt
from sgg.modeling.predictors.registry import build_predictor

from distill.config import get_distill_cfg
from distill.errors import ConfigValueError


def make_model(seed=0, **overrides) -> vc.VCTreePredictor:
    return make_predictor("vctree", seed, **overrides)


def is_spanning_tree(n: int, edges) -> bool:
    """n - 1 edges and a connected graph (Laplacian rank n - 1)."""
    lap = np.zeros((n, n))
    for a, b in edges:
        lap[[a, b], [a, b]] += 1
        lap[[a, b], [b, a]] -= 1
    return len(edges) == n - 1 and np.linalg.matrix_rank(lap) == n - 1


def test_max_spanning_tree_is_a_maximal_spanning_tree():
    rng = np.random.default_rng(0)
    all_edges = list(itertools.combinations(range(4), 2))
    candidates = [t for t in itertools.combinations(all_edges, 3) if is_spanning_tree(4, t)]
    assert len(candidates) == 16  # Cayley: 4^(4-2) spanning trees
    for _ in range(20):
        scores = rng.random((4, 4))
        sym = (scores + scores.T) / 2
        parent, order = vt.max_spanning_tree(scores)
        edges = [(v, int(parent[v])) for v in range(4) if parent[v] >= 0]
        assert is_spanning_tree(4, edges)
        best = max(sum(sym[a, b] for a, b in t) for t in candidates)
        assert sum(sym[a, b] for a, b in edges) == pytest.approx(best)
        # root: the largest mean score to the other objects; Prim order starts there
        means = (sym.sum(1) - np.diag(sym)) / 3
        assert parent[order[0]] == -1 and order[0] == int(np.argmax(means))
    for n in (0, 1, 2, 9):
        parent, order = vt.max_spanning_tree(rng.random((n, n)))
        edges = [(v, int(parent[v])) for v in range(n) if parent[v] >= 0]
        assert is_spanning_tree(n, edges) or n == 0
        assert sorted(order.tolist()) == list(range(n))
        position = {int(v): k for k, v in enumerate(order)}
        assert all(position[p] < position[v] for v, p in edges)  # parents come first
    # Hand-built: symmetrised strong edges 2-0 (0.8), 2-1 (0.6), 1-3 (0.4); 2 has the top mean.
    s = np.full((4, 4), 0.1)
    s[2, 0], s[0, 2], s[2, 1], s[1, 2], s[1, 3], s[3, 1] = 0.9, 0.7, 0.6, 0.6, 0.5, 0.3
    parent, order = vt.max_spanning_tree(s)
    assert parent.tolist() == [2, 2, -1, 1] and order.tolist() == [2, 0, 1, 3]


def test_binary_tree_conversion():
    # Multi-branch tree: 0 -> children 3, 1 (added in that order); 3 -> children 2, 4.
    parent, order = np.array([-1, 0, 3, 0, 3]), np.array([0, 3, 2, 1, 4])
    left, right, bparent, depth = vt.binary_tree(parent, order)
    assert left.tolist() == [3, -1, -1, 2, -1]  # first child
    assert right.tolist() == [-1, -1, 4, 1, -1]  # next sibling
    assert bparent.tolist() == [-1, 3, 3, 0, 2] and depth.tolist() == [0, 2, 2, 1, 3]
    rng = np.random.default_rng(2)
    for n in (1, 3, 8, 12):
        parent, order = vt.max_spanning_tree(rng.random((n, n)))
        left, right, bparent, depth = vt.binary_tree(parent, order)
        for p in range(n):  # left child, then its right chain = the children in Prim order
            chain, k = [], left[p]
            while k >= 0:
                chain.append(int(k))
                k = right[k]
            assert chain == [int(v) for v in order if parent[v] == p]
        root = order[0]
        assert right[root] == bparent[root] == -1 and (bparent >= 0).sum() == n - 1
        assert (depth[bparent >= 0] == depth[bparent[bparent >= 0]] + 1).all()


def test_schedule_layout_covers_every_node_within_its_image():
    sizes, rng = [5, 1, 0, 4], np.random.default_rng(3)
    scores = [rng.random((n, n)) for n in sizes]
    tree = vt.build_schedule(scores, torch.device("cpu"))
    flat = torch.cat(tree.levels)
    assert sorted(flat.tolist()) == list(range(10)) and torch.equal(flat, tree.order)
    assert torch.equal(flat[tree.inverse], torch.arange(10))
    offsets = np.cumsum([0] + sizes)
    left, right, bparent = (np.full(10, -1) for _ in range(3))
    for s, o in zip(scores, offsets):
        arrays = vt.binary_tree(*vt.max_spanning_tree(s))[:3]
        for glob, local in zip((left, right, bparent), arrays):
            glob[o : o + len(s)] = np.where(local >= 0, local + o, -1)
    assert tree.levels[0].tolist() == np.flatnonzero(bparent < 0).tolist()  # one root per image
    for d, nodes in enumerate(tree.levels):
        nodes = nodes.numpy()
        nxt = torch.cat(tree.levels[d + 1 : d + 2] + [torch.tensor([-1])])  # -1: the pad row
        assert nxt[tree.left_pos[d]].tolist() == left[nodes].tolist()
        assert nxt[tree.right_pos[d]].tolist() == right[nodes].tolist()
        if d:
            assert tree.levels[d - 1][tree.parent_pos[d]].tolist() == bparent[nodes].tolist()


def test_tree_lstms_match_node_by_node_reference():
    torch.manual_seed(0)
    scores = np.random.default_rng(4).random((9, 9))
    parent, order = vt.max_spanning_tree(scores)
    left, right, bparent, depth = vt.binary_tree(parent, order)
    assert depth.max() >= 2
    tree = vt.build_schedule([np.zeros((0, 0)), scores], torch.device("cpu"))
    x, zero, ups, downs = torch.randn(9, 6), (torch.zeros(4), torch.zeros(4)), {}, {}
    up, down = vt.BottomUpTreeLSTM(6, 4), vt.TopDownTreeLSTM(6, 4)
    for v in reversed(order.tolist()):  # children come after their binary parent in Prim order
        (cl, hl), (cr, hr) = (ups[k] if k >= 0 else zero for k in (left[v], right[v]))
        i, o, fl, fr, u, r = (up.x_gates(x[v]) + up.h_gates(torch.cat([hl, hr]))).chunk(6)
        c = i.sigmoid() * u.tanh() + fl.sigmoid() * cl + fr.sigmoid() * cr
        ups[v] = (c, r.sigmoid() * o.sigmoid() * c.tanh() + (1 - r.sigmoid()) * up.x_proj(x[v]))
    for v in order.tolist():
        cp, hp = downs[bparent[v]] if bparent[v] >= 0 else zero
        i, o, f, u, r = (down.x_gates(x[v]) + down.h_gates(hp)).chunk(5)
        c = i.sigmoid() * u.tanh() + f.sigmoid() * cp
        downs[v] = (c, r.sigmoid() * o.sigmoid() * c.tanh() + (1 - r.sigmoid()) * down.x_proj(x[v]))
    for cell, ref in ((up, ups), (down, downs)):
        expected = torch.stack([ref[v][1] for v in range(9)])
        assert torch.allclose(cell(x, tree, None), expected, atol=1e-6)


def test_binary_loss_hand_computed():
    logits = [torch.tensor([[5.0, 2.0], [-1.0, 7.0]]), torch.zeros(1, 1), torch.zeros(3, 3)]
    targets = [torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.ones(1, 1), torch.eye(3)]
    # image 0: pairs (0,1) target 1 logit 2, (1,0) target 0 logit -1; image 2: 6 pairs at 0
    expected = ((np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2 + np.log(2.0)) / 2
    assert float(vc.tree_binary_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(vc.tree_binary_loss([torch.zeros(1, 1)], [torch.ones(1, 1)])) == 0.0

    # through the predictor: a constant pair logit b gives softplus(-b) / softplus(b) terms
    model = make_model().train()
    with torch.no_grad():
        model.score_net.pair.weight.zero_(), model.score_net.pair.bias.fill_(0.5)
    inputs, b, per_image = make_inputs((4, 3, 1), binary=True), torch.tensor(0.5), []
    for target in inputs.rel_binary[:2]:  # the 1-object image has no pair
        off = target[~torch.eye(len(target), dtype=torch.bool)]
        pos = off.sum()
        per_image.append((pos * F.softplus(-b) + (len(off) - pos) * F.softplus(b)) / len(off))
    loss = model(inputs).losses["loss_vctree_binary"]
    assert float(loss) == pytest.approx(float(sum(per_image) / 2), rel=1e-5)
    assert model(make_inputs((4, 3, 1))).losses == {}  # training without targets: no loss


def test_gradients_reach_score_net_and_context_encoders():
    model = make_model().train()
    out = model(make_inputs(mode="sgcls", binary=True))
    out.losses["loss_vctree_binary"].backward(retain_graph=True)
    for p in (model.score_net.pair.weight, model.score_net.score_pre.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    context = [model.obj_ctx.up[0].x_gates.weight, model.edge_ctx.down[1].h_gates.weight]
    assert all(p.grad is None for p in context)  # the tree is discrete: no path from the loss
    model.zero_grad()
    (out.rel_logits.square().sum() + out.obj_logits.square().sum()).backward()
    for p in context + [model.decoder.lstm.e_gates.weight, model.post_emb.weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.score_net.pair.weight.grad is None  # score inputs are detached


def test_overlap_info_hand_case():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [50.0, 50.0, 60.0, 60.0]])
    info, iou = vc.overlap_info(boxes, (100, 100)), 25.0 / 175.0  # 0 and 1 share a 5x5 square
    assert torch.allclose(info[0], torch.tensor([1.0, 25 / 1e4, iou, 25 / 1e4, iou, 100 / 1e4]))
    assert torch.allclose(info[2], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 100 / 1e4]))


def sgg_cfg(**rel):
    cfg = get_distill_cfg()
    for key, value in dict(rel, PREDICTOR="VCTreePredictor").items():
        setattr(cfg.MODEL.ROI_RELATION_HEAD, key, value)
    return cfg


def test_registry_builds_from_config():
    cfg = sgg_cfg(NUM_CLASSES=C, NUM_PREDICATES=P, EMBED_DIM=EMBED, CONTEXT_HIDDEN_DIM=HIDDEN,
                  CONTEXT_POOLING_DIM=D, CONTEXT_OBJ_LAYER=2)  # fmt: skip
    model = build_predictor(cfg, D)
    assert isinstance(model, vc.VCTreePredictor) and model.union_proj is None
    assert len(model.obj_ctx.up) == 2 and len(model.edge_ctx.up) == 1
    assert model.ctx_compress.out_features == P + 1 and model.decoder.out.out_features == C + 1
    assert model.eval()(make_inputs(mode="sgcls", labels=False)).rel_logits.shape == (18, P + 1)


BAD = [  # key, value, expected message
    ("CONTEXT_HIDDEN_DIM", 15, "CONTEXT_HIDDEN_DIM must be even"),
    ("CONTEXT_DROPOUT_RATE", 1.0, "CONTEXT_DROPOUT_RATE"), ("NUM_PREDICATES", 0, "NUM_PREDICATES"),
    ("CONTEXT_REL_LAYER", 0, "CONTEXT_REL_LAYER"),
]  # fmt: skip


@pytest.mark.parametrize("key, value, match", BAD)
def test_bad_config_is_a_clear_error(key, value, match):
    with pytest.raises(ConfigValueError, match=match):
        build_predictor(sgg_cfg(NUM_CLASSES=C, **{key: value}), D)


def test_bad_targets_and_empty_batches_are_clear_errors():
    model, good = make_model(), make_inputs(binary=True)
    bad = {
        r"rel_binary of image 1 has shape \(2, 2\); expected \(3, 3\)": dict(
            rel_binary=[torch.zeros(k, k) for k in (4, 2, 1)]
        ),
        "the batch has no images": dict(boxes=[], image_sizes=[], pair_idxs=[]),
    }
    for match, fields in bad.items():
        with pytest.raises(ConfigValueError, match=f"^VCTreePredictor: .*{match}"):
            model(replace(good, **fields))
