"""The equal-everything comparison on the CPU: every run sees the same tokens and steps, and records what the
README reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]


def _train_module():
    spec = importlib.util.spec_from_file_location("resformer_vs_llama_train", HERE / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cosine_schedule_warms_up_then_decays_to_a_tenth():
    train = _train_module()
    lrs = [train.cosine_lr(step, 100, 1.0, 10) for step in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.slow
def test_cpu_smoke_runs_every_variant_on_the_same_tokens(tmp_path):
    train = _train_module()
    assert train.main(["--cpu-smoke", "--seeds", "0", "--variants", "none,learnable", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "resformer_vs_llama_s0_smoke.json").read_text())
    runs = {run["variant"]: run for run in record["runs"]}
    assert set(runs) == {"none", "learnable"}
    assert (
        runs["none"]["tokens"]
        == runs["learnable"]["tokens"]
        == record["tokens_per_run"]
        == runs["none"]["steps"] * 16 * 64
    )
    assert [p["step"] for p in runs["none"]["curve"]] == [p["step"] for p in runs["learnable"]["curve"]]
    # the same initial weights but for the value residual: the first validation losses are close, not equal
    first = runs["none"]["curve"][0]["val_loss"], runs["learnable"]["curve"][0]["val_loss"]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.5
    assert "lambdas" in runs["learnable"]["value_statistics"] and record["command"].startswith(
        "PYTHONPATH=. python research/resformer_vs_llama/train.py --cpu-smoke"
    )
