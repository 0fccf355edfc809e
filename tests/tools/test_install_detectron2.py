"""The detectron2 installer's edits fail loudly, and the compiled-module stand-in behaves."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("installer", REPO / "tools/install_detectron2.py")
installer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(installer)


def test_edit_with_missing_target_fails(tmp_path):
    (tmp_path / "setup.py").write_text("import os\n")
    with pytest.raises(installer.RecipeError, match="setup.py: expected pattern not found"):
        installer.edit_setup_py(tmp_path)
    (tmp_path / "a.py").write_text("x = Image.LINEAR\n")
    with pytest.raises(installer.RecipeError, match="a.py: expected text not found"):
        installer.replace(tmp_path, "a.py", "Image.NEAREST", "Image.BILINEAR")


def test_numpy_alias_edit_keeps_sized_types(tmp_path):
    rel = "m.py"
    (tmp_path / rel).write_text("a = np.int(1) + np.float(2)\nb = np.int64(3)\nc = np.bool_\n")
    installer.sub(tmp_path, rel, installer.NUMPY_ALIAS.pattern, r"\1")
    assert (tmp_path / rel).read_text() == "a = int(1) + float(2)\nb = np.int64(3)\nc = np.bool_\n"


def test_standin_ops_fail_with_the_op_name():
    from detectron2 import _C

    if not getattr(_C, "IS_STANDIN", False):
        pytest.skip("detectron2 with compiled ops")
    assert "stand-in" in _C.get_compiler_version()
    with pytest.raises(NotImplementedError, match=r"detectron2\._C\.box_iou_rotated"):
        _C.box_iou_rotated(None, None)
    with pytest.raises(AttributeError):
        _C.__wrapped__  # noqa: B018  dunder names behave normally
