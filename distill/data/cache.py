"""Generated folders in the cache (the embedded datasets), published atomically.

A folder is written under a temporary sibling name and renamed into place with a completion
marker, so readers only ever see a complete copy: an interrupted run leaves nothing partial, and
of concurrent processes generating the same (deterministic) content one copy wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

DONE_MARKER = "COMPLETE"


def ensure_generated_folder(
    final: Path, write: Callable[[Path], object], force: bool = False
) -> Path:
    """Generate the folder ``final`` with ``write`` unless a complete copy exists; return it.

    Args:
        final: The folder readers use; it holds :data:`DONE_MARKER` once complete.
        write: Called with an empty temporary folder (a sibling of ``final``) to fill; what
            it returns is ignored. What it raises propagates, the temporary folder deleted.
        force: Generate again and replace a complete copy.

    Returns:
        ``final``.
    """
    if (final / DONE_MARKER).is_file() and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable
    try:
        write(tmp)
        publish_folder(tmp, final, replace=force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def publish_folder(tmp: Path, final: Path, replace: bool = False) -> None:
    """Mark the generated folder ``tmp`` complete and rename it to ``final``.

    A complete copy already at ``final`` (written meanwhile by a concurrent process: identical)
    is kept and ``tmp`` left for the caller to delete, unless ``replace``; a leftover without
    the completion marker is moved aside and deleted first. Readers of a complete copy are never
    disturbed by a process that finishes later.
    """
    (tmp / DONE_MARKER).write_text(f"{final.name}\n")
    if final.exists():
        if (final / DONE_MARKER).is_file() and not replace:
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / DONE_MARKER).is_file():  # lost the race to a complete copy: fine
            raise
