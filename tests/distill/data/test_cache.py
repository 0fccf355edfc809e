"""Generated cache folders: written once, published whole, never half-written, readable, and a
complete copy that readers use is kept when a concurrent generator finishes later."""

from __future__ import annotations

import stat

import pytest

from distill.data.cache import DONE_MARKER, ensure_generated_folder, publish_folder


def writer(content: str, calls: list):
    def write(folder):
        calls.append(folder)
        assert not list(folder.iterdir())
        (folder / "image.png").write_text(content)

    return write


def test_generates_once_then_reuses_and_force_replaces(tmp_path):
    final, calls = tmp_path / "cache" / "data", []
    assert ensure_generated_folder(final, writer("first", calls)) == final
    assert (final / "image.png").read_text() == "first" and (final / DONE_MARKER).is_file()
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    assert calls[0].name.startswith(".data.tmp-") and calls[0].parent == final.parent
    ensure_generated_folder(final, writer("second", calls))
    assert len(calls) == 1 and (final / "image.png").read_text() == "first"
    ensure_generated_folder(final, writer("forced", calls), force=True)
    assert len(calls) == 2 and (final / "image.png").read_text() == "forced"
    assert [p.name for p in final.parent.iterdir()] == ["data"]  # no temporary folder left


def test_an_interrupted_generation_leaves_nothing(tmp_path):
    final = tmp_path / "data"

    def interrupted(folder):
        (folder / "image.png").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_generated_folder(final, interrupted)
    assert list(tmp_path.iterdir()) == []


def test_a_later_generator_keeps_the_complete_copy_readers_use(tmp_path):
    final, late, leftover = tmp_path / "data", tmp_path / "late", tmp_path / "leftover"
    for folder in (final, late, leftover):
        folder.mkdir()
        (folder / "image.png").write_text(folder.name)
    (final / DONE_MARKER).write_text("data")
    publish_folder(late, final)  # a concurrent process finishing second
    assert (final / "image.png").read_text() == "data"
    (final / DONE_MARKER).unlink()  # an interrupted, incomplete copy is replaced
    publish_folder(leftover, final)
    assert (final / "image.png").read_text() == "leftover" and (final / DONE_MARKER).is_file()
