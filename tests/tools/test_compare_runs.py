"""tools/compare_runs.py: several configs x seeds, a markdown AP table, finished runs reused."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import REPO, TINY_OPTS

OPTS = [str(x) if not isinstance(x, tuple) else str(x).replace(" ", "") for x in TINY_OPTS]


def load_tool():
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "tools/compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_configs_table_and_resume(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    configs = [str(REPO / "configs/embedded/retinanet_R18_small.yaml"),
               str(REPO / "projects/LGD/configs/embedded/retinanet_R18_lgd.yaml")]  # fmt: skip
    argv = ["compare_runs.py", "--configs", *configs, "--seeds", "3",
            "--output-dir", str(tmp_path), *OPTS, "SOLVER.MAX_ITER", "1",
            "TEST.DETECTIONS_PER_IMAGE", "10"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    tool.main()
    table = (tmp_path / "table.md").read_text()
    assert table.count("| retinanet_R18_small |") == 2  # the run and the mean
    assert table.count("| retinanet_R18_lgd |") == 2
    record = json.loads((tmp_path / "retinanet_R18_lgd/seed3/results.json").read_text())
    assert set(record) >= {"AP", "AP50", "AP75", "minutes"}
    record["AP"] = 99.0  # a finished run is read back, not trained again
    (tmp_path / "retinanet_R18_lgd/seed3/results.json").write_text(json.dumps(record))
    capsys.readouterr()
    tool.main()
    assert "| retinanet_R18_lgd | 3 | 99.0 |" in capsys.readouterr().out
