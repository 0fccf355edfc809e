"""The per-run log set-up of processes that run several jobs one after another."""

import logging

from distill.launch import setup_run_logging


def test_each_run_logs_once_into_its_own_folder(tmp_path, capsys):
    # handlers of an earlier test (a trainer's detectron2 logger set-up) or of pytest's capture
    earlier = set(logging.getLogger("detectron2").handlers)
    first, second = tmp_path / "first", tmp_path / "second"
    setup_run_logging(str(first))
    logging.getLogger("distill.example").info("line of the first run")
    setup_run_logging(str(second))
    setup_run_logging(str(second))
    logging.getLogger("distill.example").info("line of the second run")
    for handler in logging.getLogger("distill").handlers:
        handler.flush()

    printed = capsys.readouterr().out
    assert printed.count("line of the first run") == 1
    assert printed.count("line of the second run") == 1
    assert "line of the second run" not in (first / "log.txt").read_text()
    assert "line of the second run" in (second / "log.txt").read_text()
    added = [h for h in logging.getLogger("detectron2").handlers if h not in earlier]
    assert len(added) == 2  # one console, one file: no handler kept from "first"
