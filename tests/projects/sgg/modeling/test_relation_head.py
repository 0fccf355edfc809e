"""SceneGraphRCNN and its relation head in the three modes, with a minimal test predictor:
losses, frozen detector, output format and ranking, sampling, frequency bias, union masks,
label refinement and the box-head initialisation of the relation MLPs."""

from __future__ import annotations

import pytest
import sgg  # noqa: F401  (registration)
import torch
from conftest import make_batch, tiny_cfg
from sgg.modeling.frequency_bias import FrequencyBias, predicate_statistics
from sgg.modeling.inference import rank_relations, refine_labels_with_nms
from sgg.modeling.predictors import SGG_PREDICTOR_REGISTRY
from sgg.modeling.sampling import PairSampler, all_ordered_pairs
from sgg.modeling.structures import RelationInputs, RelationOutputs
from sgg.modeling.union_features import rectangle_masks
from torch import nn

C, P = 8, 6  # embedded object classes, test predicates


class LinearTestPredictor(nn.Module):
    """Linear object and pair classifiers: the smallest predictor of the interface."""

    def __init__(self, cfg, feature_dim):
        super().__init__()
        rel = cfg.MODEL.ROI_RELATION_HEAD
        self.obj = nn.Linear(feature_dim, rel.NUM_CLASSES + 1)
        self.rel = nn.Linear(3 * feature_dim, rel.NUM_PREDICATES + 1)

    def forward(self, inputs: RelationInputs) -> RelationOutputs:
        obj_logits = self.obj(inputs.obj_features)
        preds = obj_logits[:, :-1].argmax(dim=1)
        if inputs.mode == "predcls":
            preds = inputs.obj_labels
        pairs = inputs.global_pair_idxs()
        f = inputs.obj_features
        rel = self.rel(torch.cat([f[pairs[:, 0]], f[pairs[:, 1]], inputs.union_features], 1))
        return RelationOutputs(obj_logits, preds, rel)


if "LinearTestPredictor" not in SGG_PREDICTOR_REGISTRY:
    SGG_PREDICTOR_REGISTRY.register(LinearTestPredictor)

MODES = {"predcls": (True, True), "sgcls": (True, False), "sgdet": (False, False)}


def sgg_cfg(mode: str, *opts, freeze: bool = True):
    gt_box, gt_label = MODES[mode]
    return tiny_cfg(
        "faster_rcnn",
        "MODEL.META_ARCHITECTURE", "SceneGraphRCNN",
        "MODEL.ROI_HEADS.NUM_CLASSES", C,
        "MODEL.ROI_RELATION_HEAD.NUM_CLASSES", C,
        "MODEL.ROI_RELATION_HEAD.NUM_PREDICATES", P,
        "MODEL.ROI_RELATION_HEAD.PREDICTOR", "LinearTestPredictor",
        "MODEL.ROI_RELATION_HEAD.USE_GT_BOX", gt_box,
        "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL", gt_label,
        "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", 16,
        "MODEL.ROI_RELATION_HEAD.MAX_PROPOSALS_PER_IMAGE", 10,
        "MODEL.ROI_RELATION_HEAD.USE_FREQ_BIAS", False,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "DATASETS.TRAIN", (),
        *opts,
        freeze=freeze,
    )  # fmt: skip


def sgg_batch():
    batch = make_batch(2, boxes_per_image=(3, 2))
    for x, rels in zip(batch, ([[0, 1, 2], [0, 2, 5], [0, 1, 3]], [[1, 0, 1]]), strict=True):
        x["instances"].gt_classes = x["instances"].gt_classes % C
        x["relations"] = torch.tensor(rels)
        x["height"], x["width"] = 2 * x["image"].shape[1], 2 * x["image"].shape[2]
    return batch


def build(mode, *opts):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(sgg_cfg(mode, *opts))


@pytest.mark.parametrize("mode", list(MODES))
def test_training_step_trains_only_the_relation_head(mode):
    from detectron2.utils.events import EventStorage

    model = build(mode).train()
    assert not model.backbone.training and not model.roi_heads.training  # frozen detector
    with EventStorage(0):
        losses = model(sgg_batch())
    expected = {"loss_rel"} | ({"loss_refine_obj"} if mode != "predcls" else set())
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        if name.startswith(("backbone.", "proposal_generator.", "roi_heads.")):
            assert not p.requires_grad and p.grad is None, name
        elif name.startswith("relation_head.predictor.rel") or name.startswith(
            "relation_head.object_head"
        ):
            assert has_grad, name


@pytest.mark.parametrize("mode", list(MODES))
def test_inference_output_format_and_ranking(mode):
    model = build(mode).eval()
    batch = sgg_batch()
    with torch.no_grad():
        outputs = model(batch)
    for x, out in zip(batch, outputs, strict=True):
        inst = out["instances"]
        n = len(inst)
        assert inst.image_size == (x["height"], x["width"])
        if mode != "sgdet":
            assert n == len(x["instances"])
            torch.testing.assert_close(inst.pred_boxes.tensor, 2 * x["instances"].gt_boxes.tensor)
        if mode == "predcls":
            assert torch.equal(inst.pred_classes, x["instances"].gt_classes)
            assert torch.equal(inst.scores, torch.ones(n))
        pairs, scores, triplet = out["rel_pair_idxs"], out["rel_scores"], out["triplet_scores"]
        assert pairs.shape == (n * (n - 1), 2) and scores.shape == (n * (n - 1), P + 1)
        assert (pairs[:, 0] != pairs[:, 1]).all()
        assert len(set(map(tuple, pairs.tolist()))) == len(pairs)
        torch.testing.assert_close(scores.sum(1), torch.ones(len(scores)))
        assert (triplet[:-1] >= triplet[1:]).all()
        expected = scores[:, 1:].max(1).values * inst.scores[pairs[:, 0]] * inst.scores[pairs[:, 1]]
        torch.testing.assert_close(triplet, expected)


def test_sgcls_test_needs_gt_boxes():
    model = build("sgcls").eval()
    batch = sgg_batch()
    del batch[1]["instances"]
    with pytest.raises(KeyError, match="GT boxes"):
        model(batch)


def test_gt_box_sampler_limits_and_labels():
    torch.manual_seed(0)
    sampler = PairSampler(batch_size_per_image=10, positive_fraction=0.25)
    rels = torch.tensor([[0, 1, 3], [1, 2, 4], [2, 0, 1], [3, 1, 2]])
    (pairs,), (labels,) = sampler([5], [rels])
    assert len(pairs) == 10 and int((labels > 0).sum()) == 2  # 10 * 0.25 foreground at most
    gt = {tuple(r[:2]): int(r[2]) for r in rels.tolist()}
    for (s, o), lab in zip(pairs.tolist(), labels.tolist(), strict=True):
        assert s != o
        assert (lab == gt[(s, o)]) if lab else (s, o) not in gt
    (pairs,), (labels,) = PairSampler(100, 0.5)([3], [rels[:1]])
    assert len(pairs) == 6 and int((labels > 0).sum()) == 1  # every ordered pair of 3 objects


def test_detection_sampler_uses_matched_detections_only():
    torch.manual_seed(0)
    # detections 0, 1 stand for GT 0; detection 2 for GT 1; detection 3 matches nothing
    iou = torch.tensor([[0.9, 0.0], [0.6, 0.0], [0.0, 0.8], [0.3, 0.0]])
    sampler = PairSampler(20, 0.5, num_sample_per_gt_rel=4)
    (pairs,), (labels,) = sampler([4], [torch.tensor([[0, 1, 2]])], [iou])
    fg = {tuple(p) for p, lab in zip(pairs.tolist(), labels.tolist(), strict=True) if lab}
    assert fg == {(0, 2), (1, 2)} and set(labels[labels > 0].tolist()) == {2}
    assert all(3 not in p for p in pairs.tolist())  # unmatched detections make no pair
    assert len(pairs) == 6  # all ordered pairs of the three matched detections


def test_frequency_bias_statistics_hand_built():
    record = {
        "annotations": [{"bbox": [0, 0, 10, 10], "category_id": 0},
                        {"bbox": [5, 5, 15, 15], "category_id": 1},
                        {"bbox": [50, 50, 60, 60], "category_id": 1}],
        "relations": [[0, 1, 2], [0, 1, 2], [0, 2, 1]],
    }  # fmt: skip
    counts = predicate_statistics([record], 2, 3)
    assert counts[0, 1].tolist() == [2, 1, 2, 0]  # 1 overlapping pair + 1; two "2"; one "1"
    assert counts[1, 0].tolist() == [2, 0, 0, 0] and counts[1, 1].tolist() == [1, 0, 0, 0]
    bias = FrequencyBias(2, 3, counts)
    rows = bias(torch.tensor([0, 1]), torch.tensor([1, 1])).exp() - 1e-3
    torch.testing.assert_close(rows.sum(1), torch.ones(2))
    torch.testing.assert_close(rows[0], torch.tensor([0.4, 0.2, 0.4, 0.0]))


def test_rectangle_masks_hand_built():
    subject = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    obj = torch.tensor([[10.0, 0.0, 20.0, 5.0]])  # union 20 x 10 -> grid cells 5 x 2.5 px
    masks = rectangle_masks(subject, obj, 4)
    assert masks[0, 0].tolist() == [[1, 1, 0, 0]] * 4
    assert masks[0, 1].tolist() == [[0, 0, 1, 1]] * 2 + [[0, 0, 0, 0]] * 2


def test_nms_refinement_moves_a_duplicate_to_its_next_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10, 10], [50, 50, 60, 60]])
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]))
    labels, scores = refine_labels_with_nms(boxes, logits, 0.5)
    assert labels.tolist() == [0, 1, 0]
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.3, 0.6]))


def test_rank_relations_orders_by_triplet_score():
    pairs = all_ordered_pairs(3, torch.device("cpu"))
    logits = torch.zeros(6, 4)
    logits[:, 2] = torch.arange(6.0)
    ranked, scores, triplet = rank_relations(pairs, logits, torch.tensor([1.0, 0.1, 1.0]))
    assert ranked[0].tolist() == [2, 0]  # pair 4 has the top predicate and two score-1 objects
    assert (triplet[:-1] >= triplet[1:]).all()


def test_relation_mlps_start_as_the_detectors_box_head(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from distill.export import plain_config

    torch.manual_seed(1)
    detector = build_model(plain_config(tiny_cfg("faster_rcnn", "MODEL.ROI_HEADS.NUM_CLASSES", C)))
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    model = build("predcls")
    DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    box_head = detector.roi_heads.box_head.state_dict()
    for head in (model.relation_head.object_head, model.relation_head.union.head):
        for k, v in head.state_dict().items():
            assert torch.equal(v, box_head[k]), k


def test_a_distiller_reads_predicate_logits_and_pair_labels():
    """DistillSceneGraphRCNN: a distiller recording the predictor and the sampler gets the
    predicate logits of exactly the sampled pairs and their labels; its loss trains the head."""
    import torch.nn.functional as F
    from detectron2.config import configurable
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import distill
    from distill import DISTILLER_REGISTRY, Distiller

    class PredicateKD(Distiller):
        config_node = "PREDICATE_KD"
        terms = {"ce": 1.0}
        needs = frozenset({"gt_instances"})

        @configurable
        def __init__(self, **kwargs):
            super().__init__(
                student_modules=("relation_head.predictor", "relation_head.sampler"), **kwargs
            )

        def forward(self, context):
            outputs = context.student_records["relation_head.predictor"]
            pairs, labels = context.student_records["relation_head.sampler"]
            assert outputs.rel_logits.shape == (sum(map(len, pairs)), P + 1)
            labels = torch.cat(labels)
            assert labels.max() <= P and (labels > 0).any()
            return {"loss_predicate_kd_ce": F.cross_entropy(outputs.rel_logits, labels)}

    DISTILLER_REGISTRY.register(PredicateKD)
    try:
        cfg = sgg_cfg("predcls", freeze=False)
        distill.add_distill_config(cfg)
        cfg.MODEL.META_ARCHITECTURE = "DistillSceneGraphRCNN"
        cfg.DISTILL.DISTILLERS = ["PredicateKD"]
        cfg.freeze()
        torch.manual_seed(0)
        model = build_model(cfg).train()
        with EventStorage(0):
            losses = model(sgg_batch())
        assert set(losses) == {"loss_rel", "loss_predicate_kd_ce"}
        assert torch.isfinite(losses["loss_predicate_kd_ce"])
        losses["loss_predicate_kd_ce"].backward()
        assert model.relation_head.predictor.rel.weight.grad.abs().sum() > 0
    finally:
        DISTILLER_REGISTRY._obj_map.pop("PredicateKD", None)
