"""What every predicate predictor (Motifs, VCTree, Transformer) does alike: output shapes and
dtypes in the three modes, GT labels in PredCls, outputs that follow the order of the objects and
pairs, no mixing of images, gradients, dropout only in training, tiny images, and one clear error
per bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from predictor_inputs import MODES, PREDICTORS, C, D, P, make_inputs, make_predictor
from sgg.modeling.predictors.common import onehot_logits

from distill.errors import ConfigValueError

OWN_LOSSES = {"vctree": {"loss_vctree_binary"}}  # training with rel_binary targets


@pytest.fixture(params=list(PREDICTORS))
def name(request) -> str:
    return request.param


def image_rows(per_image, num, image):
    start = sum(num[:image])
    return per_image[start : start + num[image]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_dtypes(name, mode, training):
    model = make_predictor(name).train(training)
    inputs = make_inputs(mode=mode, labels=training or mode == "predcls", binary=training)
    out = model(inputs)
    n, m = sum(inputs.num_objs), sum(inputs.num_pairs)
    assert out.obj_logits.shape == (n, C + 1) and out.obj_logits.dtype == torch.float32
    assert out.obj_preds.shape == (n,) and out.obj_preds.dtype == torch.long
    assert out.rel_logits.shape == (m, P + 1) and out.rel_logits.dtype == torch.float32
    assert torch.isfinite(out.rel_logits).all() and torch.isfinite(out.obj_logits).all()
    assert out.obj_preds.min() >= 0 and out.obj_preds.max() < C
    assert set(out.losses) == (OWN_LOSSES.get(name, set()) if training else set())
    assert all(torch.isfinite(loss) for loss in out.losses.values())
    if mode != "predcls" and not (training and name == "motifs"):  # Motifs: teacher-forced
        assert torch.equal(out.obj_preds, out.obj_logits[:, :C].argmax(dim=1))


@pytest.mark.parametrize("training", [True, False])
def test_predcls_uses_gt_labels(name, training):
    inputs = make_inputs(mode="predcls", binary=training)
    out = make_predictor(name).train(training)(inputs)
    assert torch.equal(out.obj_preds, inputs.obj_labels)
    assert torch.equal(out.obj_logits, onehot_logits(inputs.obj_labels, C, torch.float32))


@pytest.mark.parametrize("mode", MODES)
def test_outputs_follow_the_order_of_objects_and_pairs(name, mode):
    """Shuffling each image's objects (renaming its pairs) and the pairs permutes the outputs
    alike: the object order of the input does not matter."""
    model = make_predictor(name).eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    shuffle = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 2, 0]), torch.tensor([0])]
    perm = torch.cat([s + o for s, o in zip(shuffle, (0, 4, 7))])
    pair_perm = torch.cat([torch.randperm(12), torch.randperm(6) + 12])
    for i, s in enumerate(shuffle):
        where = torch.empty_like(s)
        where[s] = torch.arange(len(s))
        inputs.boxes[i] = inputs.boxes[i][s]
        inputs.pair_idxs[i] = where[inputs.pair_idxs[i]]
    inputs.pair_idxs[0] = inputs.pair_idxs[0][pair_perm[:12]]
    inputs.pair_idxs[1] = inputs.pair_idxs[1][pair_perm[12:] - 12]
    inputs.union_features = inputs.union_features.detach()[pair_perm]
    inputs.obj_features = inputs.obj_features.detach()[perm]
    inputs.obj_det_logits = inputs.obj_det_logits[perm]
    if inputs.obj_labels is not None:
        inputs.obj_labels = inputs.obj_labels[perm]
    out = model(inputs)
    torch.testing.assert_close(out.obj_logits, base.obj_logits[perm], atol=1e-5, rtol=1e-5)
    assert torch.equal(out.obj_preds, base.obj_preds[perm])
    torch.testing.assert_close(out.rel_logits, base.rel_logits[pair_perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_no_cross_image_leakage(name, mode):
    model = make_predictor(name).eval()
    inputs = make_inputs(mode=mode, labels=mode == "predcls")
    base = model(inputs)
    g = torch.Generator().manual_seed(5)
    feats = inputs.obj_features.detach().clone()
    feats[4:7] = torch.randn(3, D, generator=g)
    inputs.obj_features = feats
    inputs.boxes[1] = inputs.boxes[1].flip(0) + 3.0
    inputs.union_features = inputs.union_features.detach().clone()
    inputs.union_features[12:18] += 1.0
    out = model(inputs)
    num, pairs = inputs.num_objs, inputs.num_pairs
    for field, counts in (("obj_logits", num), ("rel_logits", pairs)):
        new, old = getattr(out, field), getattr(base, field)
        torch.testing.assert_close(image_rows(new, counts, 0), image_rows(old, counts, 0))
        torch.testing.assert_close(image_rows(new, counts, 2), image_rows(old, counts, 2))
    new, old = image_rows(out.rel_logits, pairs, 1), image_rows(base.rel_logits, pairs, 1)
    assert not torch.allclose(new, old)


@pytest.mark.parametrize("mode", ["predcls", "sgcls"])
def test_gradients_reach_parameters_and_features(name, mode):
    model = make_predictor(
        name, **({} if name == "vctree" else {"obj_classifier": mode != "predcls"})
    )
    inputs = make_inputs(num_objs=(4, 3), mode=mode, binary=True)  # 1 object: no pair to learn
    out = model.train()(inputs)
    loss = F.cross_entropy(out.rel_logits, torch.arange(len(out.rel_logits)) % (P + 1))
    if mode != "predcls":
        loss = loss + F.cross_entropy(out.obj_logits, inputs.obj_labels)
    (loss + sum(out.losses.values())).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    # VCTree always builds its object decoder; PredCls does not run it
    assert missing == [] or (name, mode) == ("vctree", "predcls")
    assert all(n.startswith("decoder.") for n in missing)
    assert inputs.obj_features.grad.abs().sum(dim=1).gt(0).all()
    assert inputs.union_features.grad.abs().sum(dim=1).gt(0).all()


def test_eval_is_deterministic_and_train_dropout_is_random(name):
    model = make_predictor(name)
    inputs = make_inputs(mode="sgcls", labels=False)
    a, b = model.eval()(inputs), model(inputs)
    assert torch.equal(a.rel_logits, b.rel_logits) and torch.equal(a.obj_logits, b.obj_logits)
    inputs = make_inputs(mode="sgcls")
    c, d = model.train()(inputs), model(inputs)
    assert not torch.equal(c.rel_logits, d.rel_logits)
    assert not torch.equal(c.obj_logits, d.obj_logits)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("num_objs", [(1,), (1, 1), (3, 0, 1), (0, 2), (0,)])
def test_tiny_images(name, num_objs, training):
    model = make_predictor(name).train(training)
    for mode in MODES:
        out = model(make_inputs(num_objs=num_objs, mode=mode, binary=training))
        assert out.obj_logits.shape == (sum(num_objs), C + 1)
        assert out.rel_logits.shape == (sum(n * (n - 1) for n in num_objs), P + 1)
        assert torch.isfinite(out.rel_logits).all() and torch.isfinite(out.obj_logits).all()
        assert set(out.losses) == (OWN_LOSSES.get(name, set()) if training else set())


def test_image_with_objects_but_no_pairs(name):
    inputs = make_inputs(num_objs=(3, 2), mode="sgcls")
    inputs.pair_idxs[1] = inputs.pair_idxs[1][:0]
    inputs.union_features = inputs.union_features.detach()[:6]
    out = make_predictor(name).eval()(inputs)
    assert out.rel_logits.shape == (6, P + 1) and out.obj_logits.shape == (5, C + 1)


BAD_INPUTS = [  # field, its broken value (from good inputs), the message after "RelationInputs."
    ("obj_features", lambda i: i.obj_features[:, 1:], "obj_features has shape"),
    ("union_features", lambda i: i.union_features[:-1], "union_features has shape"),
    ("obj_det_logits", lambda i: i.obj_det_logits[:, 1:], "obj_det_logits has shape"),
    ("pair_idxs", lambda i: [p + k for k, p in enumerate(i.pair_idxs)], r"pair_idxs\[1\] indexes"),
    ("obj_labels", lambda i: None, "obj_labels is required in predcls"),
    ("obj_labels", lambda i: torch.full_like(i.obj_labels, C), r"obj_labels must be \(8,\) long"),
    ("mode", lambda i: "detect", "mode 'detect' is not one of"),
]


@pytest.mark.parametrize("field, broken, match", BAD_INPUTS, ids=[b[2] for b in BAD_INPUTS])
def test_bad_inputs_are_clear_errors(name, field, broken, match):
    model, inputs = make_predictor(name), make_inputs()
    setattr(inputs, field, broken(inputs))
    with pytest.raises(ConfigValueError, match=rf"^{type(model).__name__}: RelationInputs.{match}"):
        model(inputs)
