"""Relation graphs: edge matrix properties, node/edge loss invariants, background mining."""

from __future__ import annotations

import math

import pytest
import torch

from distill.modules import ObjectGroups
from distill.modules.relation_graph import (
    adaptive_background_weight,
    background_cross_entropy,
    cosine_edge_matrix,
    edge_loss,
    mine_background,
    node_loss,
)


def nodes(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, 7, 7, generator=g), torch.randn(n, 16, 7, 7, generator=g)


@pytest.mark.parametrize("similarity", ["instance", "channel"])
def test_edge_matrix_symmetric_unit_diagonal_bounded(similarity):
    x, _ = nodes()
    e = cosine_edge_matrix(x, similarity)
    assert e.shape == (20, 20)
    assert (e - e.t()).abs().max() <= 1e-6
    assert torch.allclose(e.diagonal(), torch.ones(20), atol=1e-6)
    assert e.min() >= -1 - 1e-6 and e.max() <= 1 + 1e-6
    flat = x.flatten(1)
    expected = torch.cosine_similarity(flat[2], flat[5], dim=0)
    assert math.isclose(float(cosine_edge_matrix(x)[2, 5]), float(expected), abs_tol=1e-6)


def test_losses_vanish_for_identical_nodes():
    s, _ = nodes()
    groups = ObjectGroups(torch.tensor([0] * 12 + [1] * 8), 2)
    assert node_loss(s, s.clone(), groups) == 0
    assert edge_loss(s, s.clone(), groups) < 1e-12


def test_edge_loss_is_scale_invariant_node_loss_is_not():
    s, t = nodes()
    groups = ObjectGroups(torch.tensor([0] * 12 + [1] * 8), 2)
    scale = torch.rand(20, 1, 1, 1) + 0.1
    assert torch.allclose(edge_loss(s * scale, t, groups), edge_loss(s, t, groups), atol=1e-6)
    assert torch.allclose(edge_loss(-s, t, groups), edge_loss(s, t, groups), atol=1e-6)
    assert not torch.allclose(node_loss(s * scale, t, groups), node_loss(s, t, groups))


def test_same_permutation_on_both_sides_changes_nothing():
    s, t = nodes()
    groups = ObjectGroups(torch.tensor([0] * 12 + [1] * 8), 2)
    perm = torch.cat([torch.randperm(12), 12 + torch.randperm(8)])
    for loss in (node_loss, edge_loss):
        assert torch.allclose(loss(s[perm], t[perm], groups), loss(s, t, groups), atol=1e-6)
    one_side = edge_loss(s[perm], t, groups)
    assert not torch.allclose(one_side, edge_loss(s, t, groups))


def test_nodes_may_come_in_any_image_order():
    s, t = nodes()
    index = torch.tensor([0] * 12 + [1] * 8)
    shuffle = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    sorted_groups, shuffled = ObjectGroups(index, 2), ObjectGroups(index[shuffle], 2)
    for loss in (node_loss, edge_loss):
        expected = loss(s, t, sorted_groups)
        assert torch.allclose(loss(s[shuffle], t[shuffle], shuffled), expected, atol=1e-6)


def test_losses_are_sums_of_per_image_means():
    s, t = nodes(12)
    one = ObjectGroups(torch.zeros(12, dtype=torch.long), 1)
    two = ObjectGroups(torch.tensor([0] * 12 + [1] * 12), 2)
    doubled_s, doubled_t = torch.cat([s, s]), torch.cat([t, t])
    for loss in (node_loss, edge_loss):
        assert torch.allclose(loss(doubled_s, doubled_t, two), 2 * loss(s, t, one), atol=1e-6)
    expected = 0.5 * (cosine_edge_matrix(t) - cosine_edge_matrix(s)).pow(2).mean()
    assert torch.allclose(edge_loss(s, t, one), expected, atol=1e-7)
    assert torch.allclose(node_loss(s, t, one), (s - t).pow(2).mean())
    assert edge_loss(s, t, one) < 0.5 * 4 * (12 * 12 - 12) / (12 * 12)


def test_image_without_nodes_and_empty_batch_are_zero():
    s, t = nodes(5)
    groups = ObjectGroups(torch.zeros(5, dtype=torch.long), 3)  # images 1 and 2 have no nodes
    assert torch.isfinite(edge_loss(s, t, groups)) and torch.isfinite(node_loss(s, t, groups))
    empty = ObjectGroups(torch.zeros(0, dtype=torch.long), 2)
    z = torch.zeros(0, 16, 7, 7, requires_grad=True)
    for loss in (node_loss, edge_loss):
        value = loss(z, z.detach(), empty)
        assert value == 0
        value.backward()


def test_gradients_reach_the_student_only():
    s, t = nodes()
    s.requires_grad_(), t.requires_grad_()
    groups = ObjectGroups(torch.tensor([0] * 12 + [1] * 8), 2)
    (edge_loss(s, t, groups) + node_loss(s, t, groups)).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None


def test_background_mining_rule_and_monotonicity():
    logits = torch.randn(200, 9, generator=torch.Generator().manual_seed(3)) * 3
    ce = background_cross_entropy(logits)
    p_bg = logits.softmax(dim=1)[:, -1]
    assert torch.allclose(ce, -p_bg.log(), atol=1e-5)
    kept = mine_background(logits, 0.6)
    assert torch.equal(kept, ce >= 0.6) and 0 < kept.sum() < 200
    assert (p_bg[kept] <= math.exp(-0.6) + 1e-6).all() and (p_bg[~kept] > math.exp(-0.6)).all()
    previous = kept
    for threshold in (0.8, 1.0, 2.0, 5.0):
        now = mine_background(logits, threshold)
        assert not (now & ~previous).any()  # a higher threshold only removes nodes
        previous = now


def test_adaptive_background_weight():
    w = adaptive_background_weight(torch.tensor([128, 3, 5]), torch.tensor([384, 509, 0]), 7.5)
    assert torch.allclose(w, torch.tensor([2.5, 7.5 * 3 / 509, 0.0]))
