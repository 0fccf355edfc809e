"""VCTree's trees: a maximum spanning tree per image from pairwise scores, its left-child /
right-sibling binary form, and bidirectional tree LSTMs run over a whole batch of trees.

The LSTMs are sequential along the tree, so they run level by level: every node of one binary
depth, across all images of the batch, is one batched step. The cost is one step per level of the
deepest binary tree (a star of n nodes becomes a chain of n levels), not one per node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


def max_spanning_tree(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prim's maximum spanning tree of one image's objects.

    The scores are symmetrised, ``(S + S^T) / 2``, and the diagonal is ignored. The root is the
    object with the highest mean score to the other objects (as SGB's VCTree, which roots the tree
    at the largest row mean of the score matrix); ties go to the lowest index.

    Args:
        scores: (N, N) pairwise scores, ``scores[i, j]`` for i related to j.

    Returns:
        parent: (N,) int64, each node's parent, -1 for the root.
        order: (N,) int64, the nodes in the order Prim adds them (root first); a node's children
            are ordered by it.
    """
    n = scores.shape[0]
    parent = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return parent, np.zeros(0, dtype=np.int64)
    sym = (scores + scores.T) / 2.0
    mean = (sym.sum(axis=1) - np.diag(sym)) / max(n - 1, 1)
    root = int(np.argmax(mean))
    in_tree = np.zeros(n, dtype=bool)
    in_tree[root] = True
    best, best_from = sym[root].copy(), np.full(n, root, dtype=np.int64)
    order = [root]
    for _ in range(n - 1):
        v = int(np.argmax(np.where(in_tree, -np.inf, best)))
        parent[v] = best_from[v]
        in_tree[v] = True
        order.append(v)
        better = sym[v] > best
        best_from[better] = v
        best = np.maximum(best, sym[v])
    return parent, np.asarray(order, dtype=np.int64)


def binary_tree(parent: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """Left-child / right-sibling form of a multi-branch tree.

    A node's left child is its first child (first in ``order``), its right child is its next
    sibling; the binary parent of a node is its multi-branch parent when it is a first child, else
    its previous sibling. The root has no right child.

    Args:
        parent: (N,) multi-branch parents (-1 = root); order: (N,) nodes, parents before children.

    Returns:
        left, right, bparent: (N,) int64 arrays, -1 where absent; depth: (N,) binary depth
        (root 0).
    """
    n = len(parent)
    left, right, bparent = (np.full(n, -1, dtype=np.int64) for _ in range(3))
    depth = np.zeros(n, dtype=np.int64)
    last_child = np.full(n, -1, dtype=np.int64)
    for v in order:
        p = parent[v]
        if p < 0:
            continue
        if last_child[p] < 0:
            left[p], bparent[v] = v, p
        else:
            right[last_child[p]], bparent[v] = v, last_child[p]
        depth[v] = depth[bparent[v]] + 1
        last_child[p] = v
    return left, right, bparent, depth


@dataclass
class TreeSchedule:
    """The binary forest of a batch, laid out by depth (level 0 = the roots of all images).

    Attributes:
        levels: per depth d, (L_d,) long global indices of the nodes at that depth.
        left_pos / right_pos: per depth d, (L_d,) positions of each node's left / right child
            in level d + 1, or ``L_{d+1}`` (a zero pad row) when absent.
        parent_pos: per depth d, (L_d,) positions of each node's binary parent in level d - 1
            (every node below depth 0 has one).
        order: (N,) long, the concatenation of the levels (node indices in level-major order).
        counts: the level sizes L_d.
        inverse: (N,) position of each node in ``order``.
        parents: per image, the multi-branch parent array of :func:`max_spanning_tree`.
    """

    levels: list[torch.Tensor]
    left_pos: list[torch.Tensor]
    right_pos: list[torch.Tensor]
    parent_pos: list[torch.Tensor]
    order: torch.Tensor
    counts: list[int]
    inverse: torch.Tensor
    parents: list[np.ndarray]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(N, ...) in node order -> per level (L_d, ...) blocks. Callers project all nodes at
        once and split the result: one matmul and, in backward, one scatter (indexing every
        level would scatter N rows per level; projecting per level accumulates the weight
        gradient per level)."""
        return x[self.order].split(self.counts)


def build_schedule(scores: list[np.ndarray], device: torch.device) -> TreeSchedule:
    """Trees of every image (``scores[i]`` is image i's (N_i, N_i) matrix) as one schedule."""
    parents, lefts, rights, bparents, depths, offset = [], [], [], [], [], 0
    for s in scores:
        parent, order = max_spanning_tree(s)
        left, right, bparent, depth = binary_tree(parent, order)
        parents.append(parent)
        depths.append(depth)
        for out, arr in ((lefts, left), (rights, right), (bparents, bparent)):
            out.append(np.where(arr >= 0, arr + offset, -1))
        offset += len(s)
    if offset == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return TreeSchedule([], [], [], [], empty, [], empty, parents)
    left, right, bparent, depth = (np.concatenate(a) for a in (lefts, rights, bparents, depths))
    node_order = np.lexsort((np.arange(offset), depth))
    counts = np.bincount(depth)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    inverse = np.empty(offset, dtype=np.int64)
    inverse[node_order] = np.arange(offset)
    pos = inverse - starts[depth]

    def child_pos(child: np.ndarray, d: int) -> torch.Tensor:
        pad = counts[d + 1] if d + 1 < len(counts) else 0
        return torch.as_tensor(np.where(child >= 0, pos[np.maximum(child, 0)], pad), device=device)

    levels, left_pos, right_pos, parent_pos = [], [], [], []
    for d in range(len(counts)):
        nodes = node_order[starts[d] : starts[d] + counts[d]]
        levels.append(torch.as_tensor(nodes, device=device))
        left_pos.append(child_pos(left[nodes], d))
        right_pos.append(child_pos(right[nodes], d))
        parent_pos.append(torch.as_tensor(pos[np.maximum(bparent[nodes], 0)], device=device))
    order_t, inverse_t = (torch.as_tensor(a, device=device) for a in (node_order, inverse))
    return TreeSchedule(
        levels, left_pos, right_pos, parent_pos, order_t, counts.tolist(), inverse_t, parents
    )


def _orthogonal_blocks(linear: nn.Linear, hidden: int) -> None:
    """Orthogonal init of each (hidden, in) gate block; zero bias."""
    with torch.no_grad():
        for block in linear.weight.split(hidden, dim=0):
            nn.init.orthogonal_(block)
        if linear.bias is not None:
            linear.bias.zero_()


def dropout_mask(rate: float, dim: int, ref: torch.Tensor, training: bool) -> torch.Tensor | None:
    """A (1, dim) inverted-dropout mask shared by all nodes of the batch, or None."""
    if not training or rate <= 0.0:
        return None
    keep = torch.full((1, dim), 1.0 - rate, device=ref.device, dtype=ref.dtype)
    return torch.bernoulli(keep) / (1.0 - rate)


class BottomUpTreeLSTM(nn.Module):
    """Leaves-to-root binary tree LSTM with a highway output (VCTree): each node reads its input
    and both children's (c, h); gates i, o, f_left, f_right, u and the highway gate r."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.x_gates = nn.Linear(in_dim, 6 * hidden)
        self.x_proj = nn.Linear(in_dim, hidden)
        self.h_gates = nn.Linear(2 * hidden, 6 * hidden)
        for layer in (self.x_gates, self.x_proj, self.h_gates):
            _orthogonal_blocks(layer, hidden)
        with torch.no_grad():
            self.h_gates.bias[2 * hidden : 4 * hidden].fill_(0.5)  # forget gates

    def forward(self, x: torch.Tensor, tree: TreeSchedule, mask: torch.Tensor | None):
        """(N, in_dim) node inputs -> (N, hidden) states, in node order."""
        gx, px = tree.split(self.x_gates(x)), tree.split(self.x_proj(x))
        zero = x.new_zeros(1, self.hidden)
        outs: list[torch.Tensor] = [zero[:0]] * len(tree.levels)
        c_next, h_next = zero, zero
        for d in reversed(range(len(tree.levels))):
            lp, rp = tree.left_pos[d], tree.right_pos[d]
            h_kids = torch.cat([h_next[lp], h_next[rp]], dim=1)
            i, o, fl, fr, u, r = (gx[d] + self.h_gates(h_kids)).chunk(6, dim=1)
            c = i.sigmoid() * u.tanh() + fl.sigmoid() * c_next[lp] + fr.sigmoid() * c_next[rp]
            h = _highway(o, c, r, px[d], mask)
            outs[d] = h
            c_next, h_next = torch.cat([c, zero]), torch.cat([h, zero])
        return _node_order(outs, tree, x)


class TopDownTreeLSTM(nn.Module):
    """Root-to-leaves binary tree LSTM with a highway output: each node reads its input and its
    binary parent's (c, h) (zeros at the roots); gates i, o, f, u and the highway gate r.

    ``extra_dim`` > 0 adds a per-level input computed during the pass (the object decoder's
    parent-label embedding): ``extra(d, parent_h)`` gives the (L_d, extra_dim) input of level d
    from the previous level's states (None at d = 0).
    """

    def __init__(self, in_dim: int, hidden: int, extra_dim: int = 0):
        super().__init__()
        self.hidden = hidden
        self.x_gates = nn.Linear(in_dim, 5 * hidden)
        self.x_proj = nn.Linear(in_dim, hidden)
        self.h_gates = nn.Linear(hidden, 5 * hidden)
        # The extra input has its own weights: slicing one big input matrix per level would
        # allocate a full-size weight gradient per level in backward.
        self.e_gates = nn.Linear(extra_dim, 5 * hidden, bias=False) if extra_dim else None
        self.e_proj = nn.Linear(extra_dim, hidden, bias=False) if extra_dim else None
        for layer in (self.x_gates, self.x_proj, self.h_gates, self.e_gates, self.e_proj):
            if layer is not None:
                _orthogonal_blocks(layer, hidden)
        with torch.no_grad():
            self.h_gates.bias[2 * hidden : 3 * hidden].fill_(1.0)  # forget gate

    def forward(
        self,
        x: torch.Tensor,
        tree: TreeSchedule,
        mask: torch.Tensor | None,
        extra: Callable[[int, torch.Tensor | None], torch.Tensor] | None = None,
    ):
        """(N, in_dim) node inputs -> (N, hidden) states, in node order."""
        gx, px = tree.split(self.x_gates(x)), tree.split(self.x_proj(x))
        outs: list[torch.Tensor] = [x.new_zeros(0, self.hidden)] * len(tree.levels)
        c_prev = h_prev = None
        for d in range(len(tree.levels)):
            g, p = gx[d], px[d]
            if extra is not None:
                e = extra(d, h_prev)
                g, p = g + self.e_gates(e), p + self.e_proj(e)
            if h_prev is None:
                c_par = h_par = x.new_zeros(len(g), self.hidden)
            else:
                c_par, h_par = c_prev[tree.parent_pos[d]], h_prev[tree.parent_pos[d]]
            i, o, f, u, r = (g + self.h_gates(h_par)).chunk(5, dim=1)
            c_prev = i.sigmoid() * u.tanh() + f.sigmoid() * c_par
            h_prev = outs[d] = _highway(o, c_prev, r, p, mask)
        return _node_order(outs, tree, x)


def _highway(o, c, r, projected, mask):
    """h = r * (sigmoid(o) * tanh(c)) + (1 - r) * projected input, then the dropout mask."""
    r = r.sigmoid()
    h = r * (o.sigmoid() * c.tanh()) + (1.0 - r) * projected
    return h if mask is None else h * mask


def _node_order(outs: list[torch.Tensor], tree: TreeSchedule, x: torch.Tensor) -> torch.Tensor:
    """Level-major states -> node order; (0, 0) for an empty batch (callers check N first)."""
    if not outs:
        return x.new_zeros(0, 0)
    return torch.cat(outs)[tree.inverse]


class BiTreeLSTM(nn.Module):
    """Stacked bidirectional tree LSTM: per layer, bottom-up and top-down passes of hidden / 2
    each, concatenated; (N, in_dim) -> (N, hidden). Dropout (a mask per direction, shared by the
    batch) is used only with more than one layer, as SGB."""

    def __init__(self, in_dim: int, hidden: int, num_layers: int, dropout: float):
        super().__init__()
        half = hidden // 2
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.up = nn.ModuleList(BottomUpTreeLSTM(d, half) for d in dims)
        self.down = nn.ModuleList(TopDownTreeLSTM(d, half) for d in dims)
        self.dropout = dropout if num_layers > 1 else 0.0
        self.hidden = hidden

    def forward(self, x: torch.Tensor, tree: TreeSchedule) -> torch.Tensor:
        if x.shape[0] == 0:
            return x.new_zeros(0, self.hidden)
        half = self.hidden // 2
        for up, down in zip(self.up, self.down):
            mask_up = dropout_mask(self.dropout, half, x, self.training)
            mask_down = dropout_mask(self.dropout, half, x, self.training)
            x = torch.cat([up(x, tree, mask_up), down(x, tree, mask_down)], dim=1)
        return x
