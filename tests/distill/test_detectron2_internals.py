"""The one place that relies on detectron2 internals refuses a detectron2 that changed them."""

from __future__ import annotations

import detectron2.engine.defaults as defaults
import pytest
from detectron2.checkpoint import DetectionCheckpointer

from distill.checkpoint import SafeCheckpointer
from distill.detectron2_internals import default_trainer_builds


def test_substitutes_are_called_inside_the_block_and_restored_after():
    built = []
    with default_trainer_builds(DetectionCheckpointer=lambda *a: built.append(a)):
        defaults.DetectionCheckpointer("model", "dir")
    assert built == [("model", "dir")]
    assert defaults.DetectionCheckpointer is DetectionCheckpointer


def test_a_part_detectron2_did_not_build_is_named():
    with pytest.raises(RuntimeError, match=r"did not call \['DetectionCheckpointer'\]"):
        with default_trainer_builds(DetectionCheckpointer=SafeCheckpointer):
            pass  # a DefaultTrainer.__init__ that builds its checkpointer another way
    assert defaults.DetectionCheckpointer is DetectionCheckpointer
    with pytest.raises(RuntimeError, match="no \\['Checkpointer'\\]"):
        with default_trainer_builds(Checkpointer=SafeCheckpointer):
            pass


def test_an_error_inside_the_block_restores_detectron2_and_propagates():
    with pytest.raises(ValueError, match="inside"):
        with default_trainer_builds(DetectionCheckpointer=SafeCheckpointer):
            raise ValueError("inside")
    assert defaults.DetectionCheckpointer is DetectionCheckpointer
