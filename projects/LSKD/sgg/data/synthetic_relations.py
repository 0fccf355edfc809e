"""The relations of the "vgsynth" dataset: a complete ground truth from geometry, drawing order
and class pairs (:func:`true_predicates`), and a simulated annotator that writes part of it
(:func:`annotate_relations`).

The truth is nested like Visual Genome's labels: "lying on" and "painted on" imply "on", "on"
implies "in front of", "over" implies "above", "with" implies "near", "wearing" implies "behind".
The annotator prefers the generic head predicates when several are true, leaves some true pairs
unannotated and now and then writes a second predicate on a pair. This gives the phenomena LS-KD
targets: a long-tailed predicate distribution, pairs where several predicates are true but one is
annotated, and unannotated true relations.
"""

from __future__ import annotations

import numpy as np

from distill.data import EMBEDDED_CLASSES

# fmt: off
SYNTH_PREDICATES = ("above", "behind", "covering", "has", "holding", "in", "in front of",
                    "lying on", "near", "on", "over", "painted on", "under", "wearing", "with")
# The annotator. _PREFERENCE: relative chance that a true predicate is the one written for its
# pair (generic labels win, as in VG). _WRITE: chance that a pair is annotated at all, by the
# predicate chosen (_DEFAULT_WRITE for the others). _SECOND: chance of also writing a second true
# predicate on a written pair.
_PREFERENCE = {"near": 10, "on": 10, "above": 8, "has": 8, "in": 6, "under": 4, "behind": 3,
               "in front of": 2, "holding": 2, "with": 1, "over": 1, "covering": 1,
               "lying on": 1, "painted on": 1, "wearing": 1}
_WRITE = {"near": 0.45, "on": 0.9, "behind": 0.45, "above": 0.8, "has": 0.8, "in": 0.8,
          "under": 0.5}
# fmt: on
_DEFAULT_WRITE = 0.6
_SECOND = 0.2


def true_predicates(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The complete predicate ground truth of one image.

    Args:
        boxes: (N, 4) XYXY pixels, in drawing order (later objects occlude earlier ones).
        classes: (N,) embedded class indices 0..7.

    Returns:
        (N, N, P) bool, ``[s, o, p - 1]`` = predicate id ``p`` holds for subject ``s`` and
        object ``o``; the diagonal is False.
    """
    x1, y1, x2, y2 = (boxes[:, k, None].astype(np.float64) for k in range(4))  # (N, 1) each
    w, h = x2 - x1, y2 - y1
    area = w * h
    ix = np.minimum(x2, x2.T) - np.maximum(x1, x1.T)  # overlap lengths; negative = gap
    iy = np.minimum(y2, y2.T) - np.maximum(y1, y1.T)
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    overlap = inter > 0
    order = np.arange(len(boxes))
    later = order[:, None] > order[None]  # subject drawn after (in front of) the object
    smaller = area <= area.T
    inside = (inter >= 0.85 * area) & (area.T >= 2 * area)  # subject's box within the object's
    gap = np.maximum(np.maximum(-ix, -iy), 0)
    above = (
        (ix >= 0.3 * np.minimum(w, w.T))
        & (y2 <= y1.T + 0.25 * h.T)
        & (y1 + y2 < y1.T + y2.T)
        & (y1.T - y2 <= 2 * np.maximum(h, h.T))
    )
    name = np.array(EMBEDDED_CLASSES)[classes]
    subj = {c: (name == c)[:, None] for c in EMBEDDED_CLASSES}
    obj = {c: (name == c)[None] for c in EMBEDDED_CLASSES}
    t = {
        "in front of": overlap & later,
        "behind": overlap & ~later,
        "in": inside,
        "has": inside.T,
        "above": above,
        "under": above.T,
        "near": ~overlap & (gap <= np.sqrt(np.maximum(area, area.T))),
    }
    t["on"] = t["in front of"] & smaller
    t["covering"] = t["in front of"] & (inter >= 0.3 * area.T)
    t["over"] = above & (x1 <= x1.T) & (x2 >= x2.T)
    t["lying on"] = t["on"] & subj["capsule"]
    t["painted on"] = t["on"] & subj["star"]
    t["wearing"] = t["behind"] & ~smaller & obj["ring"] & ~subj["ring"]
    t["holding"] = overlap & subj["cross"] & ~smaller.T
    t["with"] = t["near"] & (name[:, None] == name[None])
    truth = np.stack([t[p] for p in SYNTH_PREDICATES], axis=-1)
    truth[order, order] = False
    return truth


def _sample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row of ``weights`` (K, P), with probability proportional to the weight."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), weights.shape[1] - 1)


def annotate_relations(
    truth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulates the annotator on one image's complete truth (see the module docstring).

    Args:
        truth: (N, N, P) bool from :func:`true_predicates`.

    Returns:
        ``(annotated, missing_pair, other_predicate)``, each int64 (K, 3) rows (subject, object,
        predicate id 1..P): the written relations (pair-major, a second predicate right after the
        first), the true relations of pairs left without any annotation, and the true predicates
        not written on annotated pairs.
    """
    preference = np.array([_PREFERENCE[p] for p in SYNTH_PREDICATES], dtype=np.float64)
    write = np.array([_WRITE.get(p, _DEFAULT_WRITE) for p in SYNTH_PREDICATES])
    subj, obj = np.nonzero(truth.any(axis=-1))
    true = truth[subj, obj]  # (K, P)
    first = _sample(true * preference, rng)
    written = rng.random(len(subj)) < write[first]
    if len(subj) and not written.any():  # annotators describe at least one relation per image
        written[rng.integers(len(subj))] = True
    rest = true.copy()
    rest[np.arange(len(subj)), first] = False
    second = _sample(rest * preference, rng)
    add_second = written & rest.any(axis=1) & (rng.random(len(subj)) < _SECOND)
    chosen = np.zeros_like(true)
    chosen[np.flatnonzero(written), first[written]] = True
    chosen[np.flatnonzero(add_second), second[add_second]] = True
    pair = np.stack([subj, obj], axis=1)
    rows = np.concatenate([pair[written], first[written, None] + 1], axis=1)
    extra = np.concatenate([pair[add_second], second[add_second, None] + 1], axis=1)
    position = np.concatenate([np.flatnonzero(written), np.flatnonzero(add_second)])
    annotated = np.concatenate([rows, extra])[np.argsort(position, kind="stable")]

    def triplets(mask: np.ndarray) -> np.ndarray:
        k, p = np.nonzero(mask)
        return np.stack([subj[k], obj[k], p + 1], axis=1).astype(np.int64)

    missing = triplets(true & ~written[:, None])
    other = triplets(true & ~chosen & written[:, None])
    return annotated.astype(np.int64), missing, other
