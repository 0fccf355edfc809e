"""Seeded synthetic scene graphs and model outputs, for benchmarking and testing the evaluator.

Ground truth: 10-25 objects and 5-20 relations per image, predicates drawn from a long-tailed
distribution, about one relation in five a second predicate on an already related pair (as the
test split keeps). Predictions mimic a detector + relation head: jittered GT boxes (IoU around
the 0.5 threshold), some wrong labels, extra boxes, ``num_pairs`` ordered pairs that include
most GT pairs, full (P + 1)-way softmax scores leaning towards the GT predicate, sorted by
triplet score as the model outputs them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from detectron2.structures import Boxes, BoxMode, Instances


def synthetic_dataset(
    num_images: int,
    num_classes: int = 150,
    num_predicates: int = 50,
    seed: int = 0,
    image_size: tuple[int, int] = (600, 800),
) -> list[dict[str, Any]]:
    """Scene-graph dataset dicts (the ``sgg`` loaders' format) with image ids 0..num_images-1."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    pred_prob = 1.0 / np.arange(1, num_predicates + 1) ** 1.5
    pred_prob /= pred_prob.sum()
    class_prob = 1.0 / np.arange(1, num_classes + 1)
    class_prob /= class_prob.sum()
    records = []
    for image_id in range(num_images):
        n = int(rng.integers(10, 26))
        xy = rng.uniform(0, [w - 40, h - 40], size=(n, 2))
        wh = rng.uniform(20, [w / 2, h / 2], size=(n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])], axis=1).round(1)
        labels = rng.choice(num_classes, size=n, p=class_prob)
        r = int(rng.integers(5, 21))
        subj = rng.integers(0, n, size=r)
        obj = (subj + rng.integers(1, n, size=r)) % n  # never the subject itself
        dup = rng.random(r) < 0.2  # a second predicate on the previous relation's pair
        dup[0] = False
        subj[dup], obj[dup] = subj[np.flatnonzero(dup) - 1], obj[np.flatnonzero(dup) - 1]
        preds = rng.choice(np.arange(1, num_predicates + 1), size=r, p=pred_prob)
        records.append(
            {
                "file_name": f"synthetic_{image_id}.jpg",
                "image_id": image_id,
                "height": h,
                "width": w,
                "annotations": [
                    {"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                    for b, c in zip(boxes, labels)
                ],
                "relations": np.stack([subj, obj, preds], axis=1).astype(np.int64),
            }
        )
    return records


def synthetic_output(
    record: dict[str, Any],
    rng: np.random.Generator,
    num_classes: int = 150,
    num_predicates: int = 50,
    num_pairs: int = 100,
) -> dict[str, Any]:
    """A plausible SGDet-style model output for one dataset dict (torch tensors, CPU)."""
    gt_boxes = np.array([a["bbox"] for a in record["annotations"]], dtype=np.float64)
    gt_labels = np.array([a["category_id"] for a in record["annotations"]])
    n, extra = len(gt_boxes), int(rng.integers(0, 6))
    size = np.tile(gt_boxes[:, 2:] - gt_boxes[:, :2], 2)
    boxes = gt_boxes + rng.normal(0, 0.12, size=(n, 4)) * size
    boxes = np.concatenate([boxes, gt_boxes[rng.integers(0, n, extra)] + 15.0])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = np.concatenate([gt_labels, rng.integers(0, num_classes, extra)])
    wrong = rng.random(n + extra) < 0.15
    labels[wrong] = rng.integers(0, num_classes, wrong.sum())
    scores = rng.uniform(0.3, 1.0, n + extra)

    k = n + extra
    all_pairs = np.stack(np.nonzero(~np.eye(k, dtype=bool)), axis=1)
    gt_pairs = np.unique(record["relations"][:, :2], axis=0)
    gt_pairs = gt_pairs[rng.random(len(gt_pairs)) < 0.8]
    rest = rng.permutation(len(all_pairs))[:num_pairs]
    pairs = np.unique(np.concatenate([gt_pairs, all_pairs[rest]]), axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:num_pairs]]

    logits = rng.normal(0, 1.5, size=(len(pairs), num_predicates + 1))
    logits[:, 0] += 1.0
    rels = record["relations"]
    hits = (pairs[:, None, 0] == rels[None, :, 0]) & (pairs[:, None, 1] == rels[None, :, 1])
    pi, ri = np.nonzero(hits)
    logits[pi, rels[ri, 2]] += rng.uniform(0, 8, len(pi))
    rel_scores = np.exp(logits - logits.max(1, keepdims=True))
    rel_scores /= rel_scores.sum(1, keepdims=True)
    triplet = rel_scores[:, 1:].max(1) * scores[pairs[:, 0]] * scores[pairs[:, 1]]
    order = np.argsort(-triplet, kind="stable")

    inst = Instances((record["height"], record["width"]))
    inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(labels, dtype=torch.long)
    return {
        "instances": inst,
        "rel_pair_idxs": torch.as_tensor(pairs[order], dtype=torch.long),
        "rel_scores": torch.as_tensor(rel_scores[order], dtype=torch.float32),
    }
