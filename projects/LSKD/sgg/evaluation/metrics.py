"""Scene-graph recall metrics from per-image match ranks (Scene-Graph-Benchmark protocol).

For each K, with ``hit = rank < K`` per GT triplet (see :mod:`sgg.evaluation.matching`):

* ``R@K`` / ``ngR@K``: per image, matched GT / all GT; mean over images;
* ``mR@K`` / ``ng-mR@K``: per image and predicate c in its GT, matched / GT of class c; per
  predicate, the mean over the images containing it (an image average, not pooled counts); the
  sum over all P predicates divided by P, absent predicates counting 0;
* ``zR@K`` / ``ng-zR@K``: the same as R@K restricted to GT triplets whose (subject class, object
  class, predicate) never occurs in training, averaged over images with at least one of them;
* trade-off summaries: ``Mean`` = (R@50 + R@100 + mR@50 + mR@100) / 4, ``M@K`` = (R@K + mR@K) / 2,
  ``F@K`` = 2 R@K mR@K / (R@K + mR@K);
* ``mR@K_head/body/tail``: mean of the per-predicate recalls in each training-frequency group.

Images must have at least one GT relation (the evaluator skips the others). Every recall, summary
and group value that these functions return or accept is in **percent** (0-100), as the
evaluator reports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from distill.errors import ConfigValueError
from sgg.evaluation.labels import check_predicate_ids
from sgg.evaluation.matching import ImageMatches

GROUPS = ("head", "body", "tail")


@dataclass
class RecallResult:
    """Recalls of one evaluation.

    Attributes:
        scalars: metric name (``"R@50"``, ``"ng-mR@100"``, ``"zR@20"``, ...) -> percent (0-100);
            NaN when no image qualifies (no images; no image with a zero-shot triplet).
        per_predicate: ``"mR@K"`` / ``"ng-mR@K"`` -> (P,) recall of predicates 1..P in percent
            (0 where absent).
        predicate_images: (P,) number of evaluated images containing each predicate.
        num_images: images evaluated.
        num_zeroshot_images: images with at least one zero-shot GT triplet (0 without statistics).
    """

    scalars: dict[str, float] = field(default_factory=dict)
    per_predicate: dict[str, np.ndarray] = field(default_factory=dict)
    predicate_images: np.ndarray | None = None
    num_images: int = 0
    num_zeroshot_images: int = 0


def _mean_per_image(image: np.ndarray, hit: np.ndarray, num_images: int) -> tuple[float, int]:
    """Mean over images (that have entries) of the per-image hit fraction, and their count."""
    count = np.bincount(image, minlength=num_images)
    valid = count > 0
    if not valid.any():
        return float("nan"), 0
    hits = np.bincount(image, weights=hit, minlength=num_images)
    return float(np.mean(hits[valid] / count[valid])), int(valid.sum())


def compute_recalls(
    predicates: Sequence[np.ndarray],
    matches: Sequence[ImageMatches],
    num_predicates: int,
    topk: Sequence[int],
    zeroshot: Sequence[np.ndarray] | None = None,
) -> RecallResult:
    """R@K, ngR@K, mR@K, ng-mR@K (and zR@K, ng-zR@K) over a set of images, in percent.

    Args:
        predicates: per image, (R_i,) GT predicate ids 1..P, R_i >= 1.
        matches: per image, the :class:`ImageMatches` of the same R_i GT relations.
        num_predicates: P, the divisor of mR.
        topk: the K values.
        zeroshot: per image, (R_i,) bool, True for GT triplets unseen in training; None = no zR.

    Returns:
        The :class:`RecallResult` (percent).
    """
    num_images = len(predicates)
    sizes = [len(p) for p in predicates]
    same = [len(m.rank) for m in matches] == sizes == [len(m.ng_rank) for m in matches]
    if not same or (zeroshot is not None and [len(z) for z in zeroshot] != sizes):
        raise ConfigValueError("compute_recalls: predicates, matches and zeroshot differ in size")
    if num_images and min(sizes) == 0:
        raise ConfigValueError("compute_recalls: images without GT relations must be skipped")

    def flat(arrays, dtype):
        return np.concatenate(arrays).astype(dtype) if num_images else np.zeros(0, dtype)

    pred = flat(predicates, np.int64)
    check_predicate_ids(pred, num_predicates, "compute_recalls", "predicates")
    image = np.repeat(np.arange(num_images), sizes)
    ranks = {
        "": flat([m.rank for m in matches], np.int64),
        "ng": flat([m.ng_rank for m in matches], np.int64),
    }
    # (image, predicate) cells for mR: per-cell recall, then per-predicate mean over its images
    cells, cell_of = np.unique(image * (num_predicates + 1) + pred, return_inverse=True)
    cell_size = np.bincount(cell_of, minlength=len(cells))
    cell_pred = cells % (num_predicates + 1)
    images_per_pred = np.bincount(cell_pred, minlength=num_predicates + 1)[1:]
    zs = flat(zeroshot, bool) if zeroshot is not None else None

    result = RecallResult(predicate_images=images_per_pred, num_images=num_images)
    zero_shot = {}
    for prefix, rank in ranks.items():
        for k in topk:
            hit = (rank < k).astype(np.float64)
            dash = "-" if prefix else ""
            recall = _mean_per_image(image, hit, num_images)[0]
            result.scalars[f"{prefix}R@{k}"] = 100.0 * recall
            cell_recall = np.bincount(cell_of, weights=hit, minlength=len(cells)) / cell_size
            sums = np.bincount(cell_pred, weights=cell_recall, minlength=num_predicates + 1)[1:]
            per_pred = np.where(images_per_pred > 0, sums / np.maximum(images_per_pred, 1), 0.0)
            result.per_predicate[f"{prefix}{dash}mR@{k}"] = 100.0 * per_pred
            mean_recall = per_pred.sum() / num_predicates if num_images else float("nan")
            result.scalars[f"{prefix}{dash}mR@{k}"] = 100.0 * float(mean_recall)
            if zs is not None:
                zr, result.num_zeroshot_images = _mean_per_image(image[zs], hit[zs], num_images)
                zero_shot[f"{prefix}{dash}zR@{k}"] = 100.0 * zr
    result.scalars.update(zero_shot)
    return result


def summary_metrics(scalars: dict[str, float], topk: Sequence[int]) -> dict[str, float]:
    """Trade-off summaries of R and mR: ``Mean`` (needs K = 50 and 100), ``M@K``, ``F@K``.

    Args:
        scalars: ``R@K`` and ``mR@K`` in percent (as :func:`compute_recalls` returns them).
        topk: the K values.

    Returns:
        Summary name -> percent.
    """
    out = {}
    if 50 in topk and 100 in topk:
        out["Mean"] = (
            scalars["R@50"] + scalars["R@100"] + scalars["mR@50"] + scalars["mR@100"]
        ) / 4
    for k in topk:
        r, mr = scalars[f"R@{k}"], scalars[f"mR@{k}"]
        out[f"M@{k}"] = (r + mr) / 2
        out[f"F@{k}"] = 2 * r * mr / (r + mr) if r + mr > 0 else 0.0
    return out


def predicate_groups(
    train_counts: np.ndarray, head_min: int, tail_max: int
) -> dict[str, np.ndarray]:
    """Split predicates 1..P by their training instance counts.

    Args:
        train_counts: (P + 1,) training relations per predicate id (index 0 unused).
        head_min: head = count > head_min.
        tail_max: tail = count < tail_max; body = the rest.

    Returns:
        ``{"head": ids, "body": ids, "tail": ids}``, each a sorted int64 array of ids 1..P.
    """
    if tail_max > head_min + 1:
        raise ConfigValueError(
            f"TEST.RELATION.TAIL_MAX ({tail_max}) must not exceed HEAD_MIN + 1 ({head_min + 1})"
        )
    counts = np.asarray(train_counts)[1:]
    ids = np.arange(1, len(counts) + 1)
    head, tail = counts > head_min, counts < tail_max
    return {"head": ids[head], "body": ids[~head & ~tail], "tail": ids[tail]}


def group_mean_recalls(
    per_predicate: dict[str, np.ndarray], groups: dict[str, np.ndarray]
) -> dict[str, float]:
    """``mR@K_<group>``: the mean per-predicate recall (absent predicates 0) of each group.

    Args:
        per_predicate: :attr:`RecallResult.per_predicate`, (P,) recalls in percent.
        groups: :func:`predicate_groups`.

    Returns:
        ``"mR@K_head"`` etc. -> percent. Only the graph-constrained ``mR@K`` entries are grouped;
        an empty group gives NaN.
    """
    out = {}
    for name, recalls in per_predicate.items():
        if not name.startswith("mR@"):
            continue
        for group in GROUPS:
            ids = groups[group]
            out[f"{name}_{group}"] = float(recalls[ids - 1].mean()) if len(ids) else float("nan")
    return out


def triplet_keys(labels: np.ndarray, relations: np.ndarray) -> np.ndarray:
    """(R,) int64 keys of the (subject class, object class, predicate) triplets of an image.

    Args:
        labels: (N,) object classes 0..C-1 (C < 2**20).
        relations: (R, 3) (subject index, object index, predicate id < 2**20).
    """
    rel = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    lab = np.asarray(labels, dtype=np.int64)
    return (lab[rel[:, 0]] << 40) | (lab[rel[:, 1]] << 20) | rel[:, 2]


@dataclass
class TrainStatistics:
    """What the metrics need from the training split.

    Attributes:
        seen_triplets: sorted unique :func:`triplet_keys` of all training relations.
        predicate_counts: (P + 1,) training relations per predicate id (duplicates kept).
    """

    seen_triplets: np.ndarray
    predicate_counts: np.ndarray

    @classmethod
    def from_graphs(
        cls, graphs: Iterable[tuple[np.ndarray, np.ndarray]], num_predicates: int
    ) -> TrainStatistics:
        """Build from (labels (N,), relations (R, 3)) of every training image."""
        keys = [triplet_keys(labels, rels) for labels, rels in graphs]
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        preds = keys & ((1 << 20) - 1)
        check_predicate_ids(preds, num_predicates, "TrainStatistics", "training relations[:, 2]")
        counts = np.bincount(preds, minlength=num_predicates + 1)
        return cls(np.unique(keys), counts)

    def zeroshot_masks(self, keys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per image, (R_i,) bool: the triplet never occurs in training."""
        if not keys:
            return []
        unseen = ~np.isin(np.concatenate(keys), self.seen_triplets)
        return np.split(unseen, np.cumsum([len(k) for k in keys])[:-1])
