"""Per-image matching of predicted triplets to ground-truth triplets (Scene-Graph-Benchmark rules).

A predicted triplet (subject box + class, predicate, object box + class) matches a ground-truth
triplet when the class triple is equal and both the subject and the object boxes reach the IoU
threshold. A prediction may match several GT triplets. Everything the recall metrics need from an
image is, for each GT triplet, the rank of the first prediction that matches it: GT triplet ``g``
is retrieved in the top K exactly when ``rank[g] < K``. Two rankings are matched:

* graph constraint: one triplet per pair, its argmax foreground predicate, ranked by the triplet
  score ``max_p rel_scores[p] * score_subject * score_object``; the first ``max_k`` are kept;
* no graph constraint: (pair, predicate) candidates ranked by
  ``rel_scores[p] * score_subject * score_object``: every foreground predicate of every pair (the
  benchmark), or each pair's best ``predicates_per_pair``
  (``TEST.RELATION.NO_GRAPH_PREDICATES_PER_PAIR``); the first ``num_candidates`` (the
  benchmark's 100) of the image are kept.

Ties keep the input order (pairs in output order, then predicates by id), so results are
deterministic.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sgg.evaluation.labels import check_predicate_ids

NO_MATCH = np.iinfo(np.int32).max  # rank of a GT triplet that no kept prediction matches


class ImageMatches(NamedTuple):
    """Match ranks of one image's GT triplets, in GT relation order.

    Attributes:
        rank: (R,) int32, 0-based graph-constrained rank of the first matching prediction, or
            :data:`NO_MATCH`.
        ng_rank: (R,) int32, the same for the no-graph-constraint ranking.
    """

    rank: np.ndarray
    ng_rank: np.ndarray


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Pairwise IoU of XYXY boxes.

    Args:
        boxes1: (N, 4) boxes.
        boxes2: (M, 4) boxes.
        plus_one: maskrcnn-benchmark's pixel convention, where a box covers ``x2 - x1 + 1``
            pixels (the benchmark's numbers); False gives detectron2's continuous IoU.

    Returns:
        (N, M) float64 IoU; 0 where the union is empty.
    """
    b1 = np.asarray(boxes1, dtype=np.float64)
    b2 = np.asarray(boxes2, dtype=np.float64)
    extra = 1.0 if plus_one else 0.0
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt + extra, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (b1[:, 2] - b1[:, 0] + extra) * (b1[:, 3] - b1[:, 1] + extra)
    area2 = (b2[:, 2] - b2[:, 0] + extra) * (b2[:, 3] - b2[:, 1] + extra)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def top_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest entries of a 1-D array, best first, ties by index.

    Equivalent to ``np.argsort(-scores, kind="stable")[:n]`` without sorting the whole array.
    """
    if scores.size > n:
        threshold = np.partition(scores, scores.size - n)[scores.size - n]
        above = np.flatnonzero(scores > threshold)
        ties = np.flatnonzero(scores == threshold)[: n - above.size]
        keep = np.sort(np.concatenate([above, ties]))
    else:
        keep = np.arange(scores.size)
    return keep[np.argsort(-scores[keep], kind="stable")]


def no_graph_candidates(
    fg_scores: np.ndarray,
    pair_scores: np.ndarray,
    num_candidates: int,
    predicates_per_pair: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ranked no-graph-constraint (pair, predicate) candidates of an image.

    Args:
        fg_scores: (M, P) foreground predicate scores (``rel_scores[:, 1:]``).
        pair_scores: (M,) subject score x object score.
        num_candidates: candidates kept, best first by ``fg_scores * pair_scores``.
        predicates_per_pair: only each pair's best this many predicates compete (ties: lower
            id, as the graph constraint's argmax); 0 or >= P = all.

    Returns:
        (T,) pair indices and (T,) predicate columns 0..P-1 (predicate id - 1), T <= num_candidates;
        ties by pair, then predicate id.
    """
    scores = fg_scores * pair_scores[:, None]
    num_preds = scores.shape[1]
    if not 0 < predicates_per_pair < num_preds:
        return np.divmod(top_indices(scores.ravel(), num_candidates), num_preds)
    # per pair, its best predicates back in id order, so ties still break by (pair, id)
    best = np.argsort(-fg_scores, axis=1, kind="stable")[:, :predicates_per_pair]
    preds = np.sort(best, axis=1).ravel()
    pairs = np.repeat(np.arange(len(scores)), predicates_per_pair)
    keep = top_indices(scores[pairs, preds], num_candidates)
    return pairs[keep], preds[keep]


def _first_match_rank(
    cand_pairs: np.ndarray,
    cand_preds: np.ndarray,
    pair_idxs: np.ndarray,
    obj_ok: np.ndarray,
    gt_rels: np.ndarray,
) -> np.ndarray:
    """(R,) rank of the first candidate matching each GT relation.

    Args:
        cand_pairs: (T,) ranked candidate pair indices into ``pair_idxs``.
        cand_preds: (T,) their predicate ids 1..P.
        pair_idxs: (M, 2) (subject, object) indices into the predicted objects.
        obj_ok: (K, N) predicted object k can stand for GT object n (same class, IoU >= thr).
        gt_rels: (R, 3) (subject, object, predicate) GT relations.
    """
    subj = pair_idxs[cand_pairs, 0][:, None]
    obj = pair_idxs[cand_pairs, 1][:, None]
    match = (
        (cand_preds[:, None] == gt_rels[None, :, 2])
        & obj_ok[subj, gt_rels[None, :, 0]]
        & obj_ok[obj, gt_rels[None, :, 1]]
    )  # (T, R)
    first = match.argmax(axis=0)
    return np.where(match.any(axis=0), first, NO_MATCH).astype(np.int32)


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_rels: np.ndarray,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    obj_scores: np.ndarray,
    pair_idxs: np.ndarray,
    rel_scores: np.ndarray,
    max_k: int = 100,
    num_candidates: int = 100,
    predicates_per_pair: int = 0,
    iou_threshold: float = 0.5,
    iou_plus_one: bool = True,
) -> ImageMatches:
    """Match one image's predicted scene graph to its GT relations.

    Inputs are numpy arrays, assumed valid (the evaluator checks GT and model outputs, object
    classes included); GT predicate ids outside 1..P are refused here too, since they would
    silently never match.

    Args:
        gt_boxes: (N, 4) XYXY GT boxes, original pixels.
        gt_labels: (N,) GT classes 0..C-1.
        gt_rels: (R, 3) GT relations (subject, object, predicate 1..P), all kept.
        pred_boxes: (K, 4) XYXY predicted boxes, original pixels.
        pred_labels: (K,) predicted classes 0..C-1.
        obj_scores: (K,) predicted object scores (1 in PredCls).
        pair_idxs: (M, 2) (subject, object) indices into the K predicted objects.
        rel_scores: (M, P + 1) predicate scores, column 0 = background (never predicted).
        max_k: graph-constrained triplets kept (the largest K of R@K).
        num_candidates: (pair, predicate) candidates kept without graph constraint, over all
            pairs (the benchmark's 100; ngR@K for K above it equals ngR@num_candidates).
        predicates_per_pair: no graph constraint: the candidate predicates of each pair, its
            best ones; 0 (the benchmark) = all P. 1 gives the graph-constrained ranking.
        iou_threshold: subject and object IoU must both reach it.
        iou_plus_one: the +1-pixel IoU convention (see :func:`box_iou`).

    Returns:
        The :class:`ImageMatches` of the R GT relations.
    """
    check_predicate_ids(gt_rels[:, 2], rel_scores.shape[1] - 1, "match_image", "gt_rels[:, 2]")
    if len(pair_idxs) == 0:  # the evaluator skips such images; here nothing is retrieved
        none = np.full(len(gt_rels), NO_MATCH, dtype=np.int32)
        return ImageMatches(none, none.copy())
    obj_ok = (box_iou(pred_boxes, gt_boxes, iou_plus_one) >= iou_threshold) & (
        pred_labels[:, None] == gt_labels[None, :]
    )  # (K, N)
    fg = rel_scores[:, 1:]
    pair_scores = obj_scores[pair_idxs[:, 0]] * obj_scores[pair_idxs[:, 1]]  # (M,)

    best = fg.argmax(axis=1)
    triplet_scores = fg[np.arange(len(fg)), best] * pair_scores
    order = top_indices(triplet_scores, max_k)
    rank = _first_match_rank(order, best[order] + 1, pair_idxs, obj_ok, gt_rels)

    ng_pairs, ng_preds = no_graph_candidates(fg, pair_scores, num_candidates, predicates_per_pair)
    ng_rank = _first_match_rank(ng_pairs, ng_preds + 1, pair_idxs, obj_ok, gt_rels)
    return ImageMatches(rank, ng_rank)
