"""MotifPredictor's own behaviour: greedy decoding at test, teacher forcing in training, the
config and its errors, label embeddings from a file (the checks every predictor passes are in
test_predictors.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predictor_inputs import EMBED, HIDDEN, POOL, C, D, P, make_inputs, make_predictor
from sgg.modeling.predictors.common import left_to_right_order
from sgg.modeling.predictors.motifs import MotifPredictor
from sgg.modeling.predictors.registry import build_predictor

from distill.config import get_distill_cfg
from distill.errors import ConfigValueError, MissingFileError


def make_model(seed=0, **overrides) -> MotifPredictor:
    return make_predictor("motifs", seed, **overrides)


def small_cfg(**values):
    cfg = get_distill_cfg()
    head = cfg.MODEL.ROI_RELATION_HEAD
    head.NUM_CLASSES, head.NUM_PREDICATES, head.EMBED_DIM = C, P, EMBED
    head.CONTEXT_HIDDEN_DIM, head.CONTEXT_POOLING_DIM = HIDDEN, POOL
    for key, value in values.items():
        setattr(head, key, value)
    return cfg


def test_eval_decoding_is_greedy_and_train_is_teacher_forced():
    model = make_model()
    inputs = make_inputs(mode="sgdet")
    out = model.eval()(inputs)
    assert torch.equal(out.obj_preds, out.obj_logits[:, :C].argmax(dim=1))
    # training: GT labels are fed back and returned; background (C) takes the prediction
    inputs.obj_labels[[1, 5]] = C
    out = model.train()(inputs)
    keep = inputs.obj_labels != C
    assert torch.equal(out.obj_preds[keep], inputs.obj_labels[keep])
    assert torch.equal(out.obj_preds[~keep], out.obj_logits[~keep, :C].argmax(dim=1))


def test_teacher_forcing_changes_later_steps_only():
    """The decoder reads the previous label: changing one teacher label changes the logits of
    the object right after it (left to right) and not those before it."""
    model = make_model().train()
    model.decoder.dropout = 0.0
    inputs = make_inputs(num_objs=(4,), mode="sgcls")
    order = left_to_right_order(inputs.boxes)[0]
    base = model(inputs).obj_logits
    inputs.obj_labels[order[1]] = (inputs.obj_labels[order[1]] + 1) % C
    changed = model(inputs).obj_logits
    torch.testing.assert_close(changed[order[:2]], base[order[:2]])
    assert not torch.allclose(changed[order[2]], base[order[2]])


def test_build_from_config():
    model = build_predictor(small_cfg(PREDICTOR="MotifPredictor"), D)
    assert isinstance(model, MotifPredictor) and model.decoder is None  # PredCls config
    assert model.pair_head.up_dim is None
    with pytest.raises(ConfigValueError, match="built for PredCls"):
        model(make_inputs(mode="sgcls"))
    cfg = small_cfg(USE_GT_OBJECT_LABEL=False, CONTEXT_POOLING_DIM=20)
    model = build_predictor(cfg, D)
    assert model.decoder is not None and model.pair_head.up_dim.in_features == D
    assert model(make_inputs(mode="sgcls")).rel_logits.shape == (18, P + 1)


class Payload:
    """Unpickling it would run ``print``: a stand-in for code in a crafted file."""

    def __reduce__(self):
        return print, ("code ran",)


def test_bad_config_gives_clear_errors(tmp_path):
    with pytest.raises(ConfigValueError, match="CONTEXT_OBJ_LAYER"):
        build_predictor(small_cfg(CONTEXT_OBJ_LAYER=0), D)
    with pytest.raises(ConfigValueError, match="CONTEXT_DROPOUT_RATE"):
        build_predictor(small_cfg(CONTEXT_DROPOUT_RATE=1.0), D)
    with pytest.raises(MissingFileError, match="EMBED_FILE"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "glove.npy")), D)
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")  # a truncated array file
    with pytest.raises(ConfigValueError, match="EMBED_FILE: .*cut.npy' is not a readable"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "cut.npy")), D)
    torch.save({"vectors": Payload()}, tmp_path / "vec.pth")
    with pytest.raises(ConfigValueError, match="EMBED_FILE: .*vec.pth' holds a pickled"):
        build_predictor(small_cfg(EMBED_FILE=str(tmp_path / "vec.pth")), D)


def test_embed_file_initialises_all_label_embeddings(tmp_path):
    vectors = np.arange(C * EMBED, dtype=np.float32).reshape(C, EMBED)
    np.save(tmp_path / "vec.npy", vectors)
    model = build_predictor(
        small_cfg(EMBED_FILE=str(tmp_path / "vec.npy"), USE_GT_OBJECT_LABEL=False), D
    )
    expected = torch.from_numpy(vectors)
    torch.testing.assert_close(model.obj_embed1.weight.data, expected)
    torch.testing.assert_close(model.obj_embed2.weight.data, expected)
    torch.testing.assert_close(model.decoder.label_embed.weight.data[:C], expected)
