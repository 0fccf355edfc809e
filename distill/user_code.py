"""The one door for user code: ``--import MODULE_OR_FILE``, ``DISTILL.IMPORTS`` and the config
loader of every tool.

:func:`load_config` reads a YAML file with its ``_BASE_`` chain as a plain dict, imports what
``--import`` and ``DISTILL.IMPORTS`` (in the file or the overrides) list, and only when the file or
the overrides name something nothing has registered yet (a config key, a ``DISTILL.DISTILLERS``
name, a ``MODEL.META_ARCHITECTURE``, a dataset) imports the installed projects (entry-point group
``distill.projects``). Then it builds the config and merges the file and the overrides. A name
that is still unknown is one :class:`~distill.errors.ConfigKeyError` line.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from types import ModuleType

from detectron2.config import CfgNode

from distill.errors import ConfigKeyError, ConfigValueError, MissingFileError

PROJECT_GROUP = "distill.projects"
IMPORTS_KEY = "DISTILL.IMPORTS"
OVERRIDES = "the KEY VALUE overrides"
HOW_TO_IMPORT = (
    "if your own code defines it, load that module with --import MODULE_OR_FILE or list it in "
    "DISTILL.IMPORTS"
)

# Modules imported by import_user_code, in order: the resolved spec -> the module's name.
_user_modules: dict[str, str] = {}


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--import MODULE_OR_FILE`` option (repeatable) of every tool building a config."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module (dotted name) or a .py file before the config is built, e.g. one "
        "that registers a distiller; repeatable (the config's DISTILL.IMPORTS does the same)",
    )


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve(spec: str) -> str:
    """A file spec as an absolute path ("~" and $VARS expanded, relative to the current
    directory); a dotted module name as it is."""
    from distill.checkpoint import expand_path

    return os.path.abspath(expand_path(spec)) if _is_file(spec) else spec


def file_module_name(path: str) -> str:
    """The stable module name of the file at the absolute ``path``: its stem made an identifier
    plus a hash of the path, e.g. ``user_box_kd_1a2b3c4d``."""
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"user_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def import_user_code(spec: str, source: str = "--import") -> ModuleType:
    """Import a dotted module name or a ``.py`` file, once.

    A file is imported under :func:`file_module_name`; its folder is not put on ``sys.path``.

    Args:
        spec: ``package.module`` (found on ``sys.path``) or a path ending in ``.py``.
        source: where ``spec`` was given, for the error message.

    Raises:
        MissingFileError: no file at a file spec.
        ConfigKeyError: no module of that name on ``sys.path``.
    """
    spec = resolve(spec)
    if spec in _user_modules:
        return sys.modules[_user_modules[spec]]
    if _is_file(spec):
        if not os.path.isfile(spec):
            raise MissingFileError(f"{source}: no file at {spec!r}")
        name = file_module_name(spec)
        module = sys.modules.get(name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as e:
            parts = spec.split(".")
            if e.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
                raise  # a module that ``spec`` itself imports is missing
            raise ConfigKeyError(
                f"{source}: no module named {spec!r} on sys.path (give a file by its path, "
                "ending in .py)"
            ) from None
    _user_modules[spec] = module.__name__
    return module


def load_projects() -> list[str]:
    """Import every installed project (entry-point group ``distill.projects``); their names."""
    loaded = []
    for entry in entry_points(group=PROJECT_GROUP):
        entry.load()
        loaded.append(entry.name)
    return loaded


def user_modules() -> list[str]:
    """Names of the installed projects imported so far and of the modules imported by
    :func:`import_user_code`: the loggers a run sets up besides the core's."""
    projects = [e.value.split(":")[0] for e in entry_points(group=PROJECT_GROUP)]
    names = [name for name in projects if name in sys.modules] + list(_user_modules.values())
    return list(dict.fromkeys(names))


def _listed_imports(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise ConfigValueError(
            f"{where}: {IMPORTS_KEY} must be a list of module names or .py files, got {value!r}"
        )
    return list(value)


def _unknown_keys(data: dict, node: CfgNode, prefix: str = "") -> Iterable[str]:
    """Full names of the keys of ``data`` that ``node`` lacks (the first one of each branch)."""
    for key, value in data.items():
        if key not in node:
            yield prefix + key
        elif isinstance(value, dict) and isinstance(node[key], CfgNode):
            yield from _unknown_keys(value, node[key], f"{prefix}{key}.")


def _unknown_key_message(cfg: CfgNode, full_key: str, where: str) -> str:
    *parents, leaf = full_key.split(".")
    node = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, CfgNode) else None
    keys = list(node) if isinstance(node, CfgNode) else []
    close = difflib.get_close_matches(leaf, keys, n=3)
    hint = f" (close: {', '.join('.'.join([*parents, k]) for k in close)})" if close else ""
    return (
        f"{where}: unknown config key {full_key}{hint}: no installed project or imported module "
        f"adds it; {HOW_TO_IMPORT}"
    )


def _first_unknown(cfg: CfgNode, data: dict, opts: list, config_file: str) -> str | None:
    """The error message of the first name in the file or ``opts`` that nothing registered."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from distill.registry import DISTILLER_REGISTRY

    overrides = dict(zip(opts[0::2], opts[1::2], strict=True))
    distill_node = data.get("DISTILL") if isinstance(data.get("DISTILL"), dict) else {}
    model_node = data.get("MODEL") if isinstance(data.get("MODEL"), dict) else {}
    distillers = CfgNode._decode_cfg_value(
        overrides.get("DISTILL.DISTILLERS", distill_node.get("DISTILLERS", []))
    )
    where = OVERRIDES if "DISTILL.DISTILLERS" in overrides else config_file
    for name in distillers if isinstance(distillers, list | tuple) else []:
        if name not in DISTILLER_REGISTRY:
            known = ", ".join(sorted(n for n, _ in DISTILLER_REGISTRY))
            return (
                f"{where}: DISTILL.DISTILLERS: unknown distiller {name!r} (registered: {known}); "
                f"{HOW_TO_IMPORT}"
            )
    key = "MODEL.META_ARCHITECTURE"
    arch = CfgNode._decode_cfg_value(
        overrides.get(key, model_node.get("META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE))
    )
    if arch not in META_ARCH_REGISTRY:
        where = OVERRIDES if key in overrides else config_file
        return f"{where}: {key}: unknown meta-architecture {arch!r}; {HOW_TO_IMPORT}"
    for full_key in _unknown_keys(data, cfg):
        return _unknown_key_message(cfg, full_key, config_file)
    for full_key in overrides:
        node, parts = cfg, full_key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                return _unknown_key_message(cfg, ".".join(parts[: i + 1]), OVERRIDES)
            node = node[part]
    return None


def _unregistered_datasets(data: dict, overrides: dict) -> list[str]:
    """Names in ``DATASETS.TRAIN`` / ``TEST`` that detectron2's DatasetCatalog does not hold
    (a project may register them; ``check_datasets`` names any left when the run starts)."""
    from detectron2.data import DatasetCatalog

    node = data.get("DATASETS") if isinstance(data.get("DATASETS"), dict) else {}
    names = []
    for split in ("TRAIN", "TEST"):
        value = CfgNode._decode_cfg_value(overrides.get(f"DATASETS.{split}", node.get(split, ())))
        names += [value] if isinstance(value, str) else list(value or ())
    return [name for name in names if name not in DatasetCatalog]


def load_config(config_file: str, opts: Sequence = (), imports: Sequence[str] = ()) -> CfgNode:
    """detectron2's defaults + every registered key, ``config_file``, then ``opts``.

    Before the config is built, the modules of ``imports`` (``--import``), of ``DISTILL.IMPORTS``
    in the file (its ``_BASE_`` chain included) and of ``DISTILL.IMPORTS`` in ``opts`` are
    imported, and the installed projects when the file or ``opts`` name a config key, distiller,
    meta-architecture or dataset that nothing registered. All imported specs (files as absolute
    paths) end up in ``DISTILL.IMPORTS``, so the written config of a run loads again as it is.

    Args:
        config_file: a detectron2 YAML config file.
        opts: ``KEY VALUE`` overrides, as a flat sequence.
        imports: module names or ``.py`` files to import first.

    Returns:
        The config, not frozen.

    Raises:
        MissingFileError: no file at ``config_file`` or at an imported file spec.
        ConfigKeyError: a config key, distiller or meta-architecture that nothing registered
            (after importing the installed projects), or a module that does not exist.
        ConfigValueError: odd ``opts`` or a ``DISTILL.IMPORTS`` that is not a list of strings.
    """
    from distill.config import get_distill_cfg

    if not os.path.isfile(config_file):
        raise MissingFileError(f"no config file at {os.path.abspath(config_file)!r}")
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigValueError(f"config overrides come as KEY VALUE pairs; got {opts!r}")
    data = CfgNode.load_yaml_with_base(config_file, allow_unsafe=True)
    in_file = (data.get("DISTILL") or {}).get("IMPORTS") if isinstance(data, dict) else None
    overrides = dict(zip(opts[0::2], opts[1::2], strict=True))
    in_opts = CfgNode._decode_cfg_value(overrides.get(IMPORTS_KEY))
    specs = [
        *((s, "--import") for s in imports),
        *((s, f"{IMPORTS_KEY} in {config_file}") for s in _listed_imports(in_file, config_file)),
        *((s, f"{IMPORTS_KEY} in {OVERRIDES}") for s in _listed_imports(in_opts, OVERRIDES)),
    ]
    for spec, source in specs:
        import_user_code(spec, source)

    cfg = get_distill_cfg()
    unknown = _first_unknown(cfg, data, opts, config_file)
    if unknown is not None or _unregistered_datasets(data, overrides):
        load_projects()
        cfg = get_distill_cfg()
        problem = _first_unknown(cfg, data, opts, config_file)
        if problem is not None:
            raise ConfigKeyError(problem)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    cfg.DISTILL.IMPORTS = list(dict.fromkeys(resolve(spec) for spec, _ in specs))
    return cfg
