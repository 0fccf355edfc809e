"""The door for user code: --import / DISTILL.IMPORTS, project discovery by the config loader, and
one-line errors for names that nothing registered."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, write_user_distiller

from distill import DISTILLER_REGISTRY
from distill import user_code as uc
from distill.errors import ConfigKeyError, MissingFileError

SMALL = str(REPO / "configs/embedded/faster_rcnn_R18_small.yaml")


def is_test_module(name: str) -> bool:
    return name.startswith(("user_", "uc_pkg"))


@pytest.fixture(autouse=True)
def forget_user_code():
    """Each test imports its own files: drop their modules and distillers afterwards (installed
    projects imported meanwhile stay, registered, as in any process)."""
    imported = dict(uc._user_modules)
    yield
    for name in [n for n in sys.modules if is_test_module(n)]:
        del sys.modules[name]
    uc._user_modules.clear()
    uc._user_modules.update(imported)
    for name, cls in list(DISTILLER_REGISTRY):
        if is_test_module(cls.__module__):
            del DISTILLER_REGISTRY._obj_map[name]


def test_import_by_module_name(tmp_path, monkeypatch):
    package = tmp_path / "uc_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    write_user_distiller(package / "kd.py", "ModuleKD", "MODULE_KD")
    (package / "broken.py").write_text("import uc_pkg_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    module = uc.import_user_code("uc_pkg.kd")
    assert module is sys.modules["uc_pkg.kd"] is uc.import_user_code("uc_pkg.kd")
    assert "ModuleKD" in DISTILLER_REGISTRY
    assert "uc_pkg.kd" in uc.user_modules()
    with pytest.raises(ConfigKeyError, match=r"^--import: no module named 'uc_pkg.nope' on sys"):
        uc.import_user_code("uc_pkg.nope")
    with pytest.raises(ModuleNotFoundError, match="uc_pkg_missing_dependency"):
        uc.import_user_code("uc_pkg.broken")  # the module's own failing import is not hidden


def test_import_by_file_once_under_a_stable_name(tmp_path, monkeypatch):
    path = write_user_distiller(tmp_path / "outside" / "my-kd.py", "FileKD", "FILE_KD")
    with path.open("a") as f:
        f.write(f"open({str(tmp_path / 'executions')!r}, 'a').write('x')\n")
    monkeypatch.chdir(path.parent)

    module = uc.import_user_code("my-kd.py")  # relative to the current directory
    assert uc.import_user_code(str(path)) is module
    assert (tmp_path / "executions").read_text() == "x"  # executed once
    assert module.__name__ == uc.file_module_name(str(path)) == module.logger.name
    assert module.__name__.startswith("user_my_kd_") and module.__name__ in uc.user_modules()
    assert str(path.parent) not in sys.path
    with pytest.raises(MissingFileError, match=r"^DISTILL.IMPORTS in x.yaml: no file at '/"):
        uc.import_user_code("absent.py", "DISTILL.IMPORTS in x.yaml")


def test_distill_imports_in_a_yaml_and_in_its_base(tmp_path):
    kd = write_user_distiller(tmp_path / "kd.py", "YamlKD", "YAML_KD")
    base = tmp_path / "base.yaml"
    base.write_text(
        f'_BASE_: "{SMALL}"\nDISTILL:\n  IMPORTS: ["{kd}"]\n  DISTILLERS: ["YamlKD"]\n'
        "YAML_KD:\n  LEVEL: p4\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nOUTPUT_DIR: "somewhere"\n')

    cfg = uc.load_config(str(child))
    assert cfg.YAML_KD.LEVEL == "p4" and list(cfg.DISTILL.DISTILLERS) == ["YamlKD"]
    assert cfg.DISTILL.IMPORTS == [str(kd)]  # written with the run's config, loads again
    assert uc.load_config(str(base), ["YAML_KD.LEVEL", "p5"]).YAML_KD.LEVEL == "p5"


def test_distill_imports_in_the_overrides_and_import_argument_add_up(tmp_path):
    first = write_user_distiller(tmp_path / "first.py", "FirstKD", "FIRST_KD")
    second = write_user_distiller(tmp_path / "second.py", "SecondKD", "SECOND_KD")
    opts = ["DISTILL.IMPORTS", f"['{second}']", "DISTILL.DISTILLERS", "['FirstKD', 'SecondKD']"]
    cfg = uc.load_config(SMALL, opts, imports=[str(first)])
    assert cfg.DISTILL.IMPORTS == [str(first), str(second)]
    assert "FIRST_KD" in cfg and "SECOND_KD" in cfg


@pytest.mark.parametrize(
    "yaml, opts, message",
    [
        ("NOT_A_NODE:\n  X: 1\n", [], r"{file}: unknown config key NOT_A_NODE: no installed"),
        ("MODEL:\n  RESNETS:\n    DEPTHH: 34\n", [],
         r"unknown config key MODEL.RESNETS.DEPTHH \(close: MODEL.RESNETS.DEPTH\)"),
        ("DISTILL:\n  DISTILLERS: [NoSuchKD]\n", [],
         r"{file}: DISTILL.DISTILLERS: unknown distiller 'NoSuchKD' \(registered: .*FeatureKD"),
        ("", ["MODEL.META_ARCHITECTURE", "NoSuchArch"],
         r"^the KEY VALUE overrides: MODEL.META_ARCHITECTURE: unknown meta-architecture "
         r"'NoSuchArch'"),
    ],
)  # fmt: skip
def test_what_nothing_registered_is_one_config_key_error(tmp_path, yaml, opts, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{SMALL}"\n{yaml}')
    with pytest.raises(ConfigKeyError) as e:
        uc.load_config(str(path), opts)
    text = str(e.value)
    assert len(text.splitlines()) == 1
    assert re.search(message.format(file=re.escape(str(path))), text), text
    assert "--import MODULE_OR_FILE" in text and "DISTILL.IMPORTS" in text


def test_a_plain_detector_config_imports_no_project():
    """Projects are imported when a config names what they register, not otherwise."""
    code = (
        "import sys\n"
        "from distill.user_code import load_config\n"
        "small = 'configs/embedded/faster_rcnn_R18_small.yaml'\n"
        "load_config(small)\n"
        "print(sorted(m for m in ('lgd', 'dsig', 'sgg') if m in sys.modules))\n"
        "load_config(small, ['DATASETS.TEST', ('vgsynth_val',)])\n"  # the scene-graph project's
        "print(sorted(m for m in ('lgd', 'dsig', 'sgg') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["[]", "['dsig', 'lgd', 'sgg']"]


def test_run_logging_covers_the_imported_user_modules(tmp_path):
    from distill.launch import setup_run_logging

    module = uc.import_user_code(str(write_user_distiller(tmp_path / "kd.py", "LogKD", "LOG_KD")))
    setup_run_logging(str(tmp_path / "run"))
    logging.getLogger(module.__name__).warning("a line of the user's module")
    for handler in logging.getLogger(module.__name__).handlers:
        handler.flush()
    assert "a line of the user's module" in (tmp_path / "run" / "log.txt").read_text()
