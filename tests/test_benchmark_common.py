"""benchmarks/_common.py: what every benchmark and research script records (device, versions, command) and the
atomic JSON write."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_write_json_makes_parents_and_leaves_no_temporary_file(tmp_path):
    path = common.write_json(tmp_path / "a" / "b" / "result.json", {"x": [1, 2]}, indent=None)
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path):
    path = common.write_json(tmp_path / "result.json", {"old": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        common.write_json(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    common.write_json(path, {"new": Path("p")}, default=str)  # the caller can choose to stringify
    assert json.loads(path.read_text()) == {"new": "p"}


def test_command_line_quotes_arguments():
    assert (
        common.command_line("x.py", ["--label", "H200, <sep>", "--n", "3"])
        == "PYTHONPATH=. python benchmarks/x.py --label 'H200, <sep>' --n 3"
    )
    assert (
        common.command_line("x.py", [], pythonpath=".:benchmarks") == "PYTHONPATH=.:benchmarks python benchmarks/x.py"
    )
    # a script outside benchmarks/ is named by its path from the repository root
    assert common.command_line("research/q/x.py", ["--n", "3"]) == "PYTHONPATH=. python research/q/x.py --n 3"


def test_device_label_versions_and_slug():
    assert common.device_label("cpu").startswith("cpu (") and common.device_label("cpu").endswith(" cores)")
    assert set(common.versions("safetensors")) == {"python", "torch", "transformers", "safetensors"}
    assert common.device_slug("NVIDIA H200") == "h200" and common.device_slug("cpu") == "cpu"
