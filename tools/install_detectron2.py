#!/usr/bin/env python3
"""Install detectron2 into the running interpreter from the package registry alone.

Run with the environment's own python (``make install`` does). Order of preference:

1. A detectron2 that already imports and passes the import check is kept, above all a source build
   with its compiled ops (``detectron2._C`` without ``IS_STANDIN``), e.g. on a GPU machine.
2. Otherwise the ``pb1-detectron2==0.6`` sdist (upstream v0.6 without its C++ sources) is
   downloaded, checked against its sha256, unpacked into a temporary directory, patched with the
   backports below (each edit asserts that its target text is present, so a changed sdist fails
   loudly) and installed with pip. No compiler is needed: the compiled module is replaced by a
   pure-Python stand-in whose ops raise an error naming the op.

The stand-in carries ``RECIPE_VERSION``; an install made by an older recipe is redone.
torch must already be installed (the sdist's unpatched setup.py imports it to report metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2==0.6"
SDIST_FILE = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
RECIPE_VERSION = 1

STANDIN_SOURCE = f'''"""Stand-in for detectron2's compiled extension (no C++/CUDA ops here).

This detectron2 was installed from the pb1-detectron2==0.6 sdist without building its extension.
Features that need the real compiled module: rotated boxes (box_iou_rotated, ROIAlignRotated,
nms_rotated), deformable convolution on CUDA, and COCOEvaluator(use_fast_impl=True) (the evaluator
falls back to pycocotools by itself). Build detectron2 from source to get them.
"""

IS_STANDIN = True
RECIPE_VERSION = {RECIPE_VERSION}


def get_compiler_version():
    return "not built (python stand-in)"


def get_cuda_version():
    return "not built (python stand-in)"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing_op(*args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{{name}} is not available: this detectron2 was installed without its "
            "C++/CUDA extension. Build detectron2 from source (with compiled ops) to use it."
        )

    missing_op.__name__ = name
    return missing_op
'''

IMPORT_CHECK = """
import detectron2, detectron2._C as C
import detectron2.evaluation, detectron2.modeling, detectron2.engine, detectron2.export
from detectron2 import model_zoo
model_zoo.get_config_file("COCO-Detection/fcos_R_50_FPN_1x.py")
standin = getattr(C, "IS_STANDIN", False)
print(detectron2.__version__, "standin" if standin else "compiled", getattr(C, "RECIPE_VERSION", 0))
"""

NUMPY_ALIAS_FILES = [
    "detectron2/evaluation/pascal_voc_evaluation.py",
    "detectron2/evaluation/sem_seg_evaluation.py",
    "detectron2/structures/masks.py",
    "detectron2/data/datasets/pascal_voc.py",
    "detectron2/data/build.py",
    "detectron2/utils/visualizer.py",
    "detectron2/utils/video_visualizer.py",
]
NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str)\b")


class RecipeError(RuntimeError):
    """The sdist does not look like the one this recipe was written for."""


def replace(root: Path, rel: str, old: str, new: str) -> None:
    """Replace every occurrence of ``old`` in ``root/rel``; fail if there is none."""
    path = root / rel
    text = path.read_text()
    if old not in text:
        raise RecipeError(f"{rel}: expected text not found: {old!r}")
    path.write_text(text.replace(old, new))


def sub(root: Path, rel: str, pattern: str, new: str) -> None:
    """Regex-replace in ``root/rel``; fail if the pattern does not match."""
    path = root / rel
    text, count = re.subn(pattern, new, path.read_text(), flags=re.MULTILINE)
    if count == 0:
        raise RecipeError(f"{rel}: expected pattern not found: {pattern!r}")
    path.write_text(text)


def edit_setup_py(root: Path) -> None:
    """Edit 1: no torch import, no C++ extension, configs as package data, two pins fixed."""
    sub(root, "setup.py", r"^import torch\n", "")
    sub(root, "setup.py", r"^from torch\.utils\.cpp_extension import[^\n]*\n", "")
    sub(root, "setup.py", r"^torch_ver = [^\n]*\n", "")
    sub(root, "setup.py", r"^assert torch_ver >= \[1, 8\][^\n]*\n", "")
    replace(
        root,
        "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()}',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}',
    )
    replace(root, "setup.py", '"black==21.4b2"', '"black"')
    replace(root, "setup.py", '"omegaconf>=2.1"', '"omegaconf>=2.1,<2.4"')
    sub(root, "setup.py", r"^\s*ext_modules=get_extensions\(\),\n", "")
    sub(root, "setup.py", r"^\s*cmdclass=\{\"build_ext\": [^\n]*\},\n", "")


def edit_standin(root: Path) -> None:
    """Edit 2: a pure-Python ``detectron2/_C.py`` whose ops fail with a clear message."""
    target = root / "detectron2/_C.py"
    if target.exists():
        raise RecipeError("detectron2/_C.py already exists in the sdist")
    target.write_text(STANDIN_SOURCE)


def edit_coco_evaluator(root: Path) -> None:
    """Edit 3: COCOEvaluator falls back to pycocotools when the compiled module is a stand-in."""
    sub(
        root,
        "detectron2/evaluation/coco_evaluation.py",
        r"^(\s*)self\._use_fast_impl = use_fast_impl\n",
        r"\1from detectron2 import _C\n"
        r"\1if getattr(_C, 'IS_STANDIN', False):\n"
        r"\1    use_fast_impl = False\n"
        r"\1self._use_fast_impl = use_fast_impl\n",
    )


def edit_pillow(root: Path) -> None:
    """Edit 4: Pillow >= 10 has no ``Image.LINEAR``."""
    replace(
        root,
        "detectron2/data/transforms/transform.py",
        "interp=Image.LINEAR",
        "interp=Image.BILINEAR",
    )


def edit_model_zoo(root: Path) -> None:
    """Edit 5: locate model-zoo configs next to model_zoo.py instead of through pkg_resources."""
    rel = "detectron2/model_zoo/model_zoo.py"
    sub(root, rel, r"^import pkg_resources\n", "")
    replace(
        root,
        rel,
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", '
        "config_path)\n    )",
        'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
    )


def edit_numpy_aliases(root: Path) -> None:
    """Edit 6: numpy >= 1.24 removed np.bool/int/float/str; numpy 2 changed copy=False."""
    for rel in NUMPY_ALIAS_FILES:
        sub(root, rel, NUMPY_ALIAS.pattern, r"\1")
    replace(root, "detectron2/layers/mask_ops.py", "np.array(mask, copy=False)", "np.asarray(mask)")


def edit_export(root: Path) -> None:
    """Edit 7: torch 2 wheels have no caffe2; keep detectron2.export importable without it."""
    replace(
        root,
        "detectron2/export/__init__.py",
        "from .api import *\n",
        "try:\n    from .api import *\n"
        "except ImportError:  # caffe2 is not part of torch 2\n    pass\n",
    )


def edit_lr_scheduler(root: Path) -> None:
    """Edit 8: torch 2 built-in schedulers derive from LRScheduler, not _LRScheduler."""
    replace(
        root,
        "detectron2/engine/hooks.py",
        "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
        "isinstance(self.scheduler, getattr(torch.optim.lr_scheduler, 'LRScheduler', "
        "torch.optim.lr_scheduler._LRScheduler))",
    )


def edit_random_sample(root: Path) -> None:
    """Edit 9: Python >= 3.11 random.sample rejects sets."""
    replace(
        root,
        "detectron2/data/common.py",
        "self._rng.sample(self._fallback_candidates, k=1)[0]",
        "self._rng.sample(sorted(self._fallback_candidates), k=1)[0]",
    )


def edit_groupnorm_probe(root: Path) -> None:
    """Edit 10: RetinaNetHead probes its norm with 1 channel, which GroupNorm(32, 1) rejects."""
    replace(
        root,
        "detectron2/modeling/meta_arch/retinanet.py",
        "get_norm(norm, 1)",
        "get_norm(norm, 32)",
    )


EDITS = [
    edit_setup_py,
    edit_standin,
    edit_coco_evaluator,
    edit_pillow,
    edit_model_zoo,
    edit_numpy_aliases,
    edit_export,
    edit_lr_scheduler,
    edit_random_sample,
    edit_groupnorm_probe,
]


def installed_detectron2() -> tuple[str, int] | None:
    """Return (kind, recipe version) of an importable, working detectron2, else None."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return None
    version, kind, recipe = proc.stdout.split()[-3:]
    print(f"detectron2 {version} ({kind}) passes the import check")
    return kind, int(recipe)


# pip >= 24 refuses to read the sdist's metadata (its [all] extra names a direct URL), so the
# download step runs under this pip, installed into the temporary directory.
DOWNLOAD_PIP = "pip==23.2.1"


def pip(*args: str, pythonpath: str | None = None) -> None:
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install_from_sdist(no_cache: bool) -> None:
    cache = ["--no-cache-dir"] if no_cache else []
    with tempfile.TemporaryDirectory(prefix="detectron2-sdist-") as tmp:
        tmp_path = Path(tmp)
        download_pip = str(tmp_path / "download-pip")
        pip("install", "-q", *cache, "--target", download_pip, DOWNLOAD_PIP)
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", *cache,
            "-d", tmp, SDIST_NAME, pythonpath=download_pip)  # fmt: skip
        archive = tmp_path / SDIST_FILE
        if not archive.exists():
            raise RecipeError(f"pip did not produce {SDIST_FILE} in {tmp}")
        digest = sha256(archive)
        if digest != SDIST_SHA256:
            raise RecipeError(f"{SDIST_FILE}: sha256 {digest} != expected {SDIST_SHA256}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path, filter="data")
        root = tmp_path / SDIST_FILE.removesuffix(".tar.gz")
        for edit in EDITS:
            edit(root)
            print(f"applied {edit.__name__}")
        pip("install", *cache, str(root))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if one works")
    parser.add_argument("--no-cache-dir", action="store_true", help="bypass pip's cache")
    args = parser.parse_args()

    found = None if args.force else installed_detectron2()
    if found is not None and (found[0] == "compiled" or found[1] == RECIPE_VERSION):
        print("keeping the installed detectron2")
        return 0
    if found is not None:
        print(
            f"installed stand-in comes from recipe {found[1]}; reinstalling with {RECIPE_VERSION}"
        )
    try:
        install_from_sdist(args.no_cache_dir)
    except RecipeError as e:
        print(f"ERROR: detectron2 recipe failed: {e}", file=sys.stderr)
        return 1
    if installed_detectron2() is None:
        print("ERROR: detectron2 installed but fails the import check", file=sys.stderr)
        subprocess.run([sys.executable, "-c", IMPORT_CHECK], check=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
