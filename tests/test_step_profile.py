"""benchmarks/step_profile.py: a training step's time split into host, device and synchronisations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_step_profiler_on_the_training_script(tmp_path, monkeypatch):
    from test_train_script import TINY, _load_script

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("STEP_PROFILE", json.dumps({"start": 4, "steps": 3, "rows": 5}))
    out = tmp_path / "run"
    assert (
        _load_script().main(
            [
                *TINY,
                "--model",
                "llama-tiny",
                "--max-steps",
                "10",
                "--max-test",
                "4",
                "--callback",
                "step_profile:StepProfiler",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "step_profile.json").read_text())
    assert summary["first_step"] == 5 and summary["steps"] == 3
    assert summary["wall_ms_per_step"] > 0 and summary["device_ms_per_step"] == 0  # CPU: no kernels
    hosts = [name for name, _, _ in summary["top_host_ms_per_step"]]
    assert len(hosts) == 5 and all(isinstance(ms, float) for _, _, ms in summary["top_host_ms_per_step"])
    # the Trainer reads the loss back for logging every step here (--logging-steps 1): one .item() at least
    assert summary["syncs_per_step"].get("aten::_local_scalar_dense", 0) >= 1
    assert "Self CPU" in (out / "step_profile.txt").read_text()


def test_step_profile_settings_are_checked(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_profile
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setenv("STEP_PROFILE", '{"begin": 3}')
    with pytest.raises(ValueError, match="unknown settings"):
        step_profile.StepProfiler()
    monkeypatch.setenv("STEP_PROFILE", '{"steps": 0}')
    with pytest.raises(ValueError, match="steps >= 1"):
        step_profile.StepProfiler()
