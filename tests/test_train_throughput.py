"""benchmarks/train_throughput.py: the CPU smoke run writes a complete JSON with positive tokens/s."""

from __future__ import annotations

import json
from importlib import util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.compat  # the GPU machine runs it under transformers 5.17
def test_train_throughput_cpu_smoke(tmp_path):
    spec = util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    threads = torch.get_num_threads()
    try:
        assert module.main(["--cpu-smoke", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train_throughput" and result["cpu_smoke"] is True
    assert result["command"].endswith(f"--cpu-smoke --threads 1 --out {out}") and result["torch_threads"] == 1
    assert {"torch", "transformers", "accelerate"} <= set(result["versions"]) and result["device"]
    shape = result["shape"]
    assert shape["n_embd"] == 32 and shape["batch_size"] == 16 and shape["pauses"] == 2
    assert shape["tokens_per_step"] == shape["batch_size"] * shape["seq_len"] > 0
    assert set(result["runs"]) == {"raw", "script_seq_vcr", "script_plain"}
    for name, run in result["runs"].items():
        assert run["tokens_per_s"] > 0 and run["seq_len"] == shape["seq_len"], name
    for name in ("script_seq_vcr", "script_plain"):
        run = result["runs"][name]
        assert result["ratios"][name] == run["tokens_per_s"] / result["runs"]["raw"]["tokens_per_s"]
        assert "--data-on-device" in run["script_argv"] and "--cpu" in run["script_argv"]
    # the script ran with Seq-VCR (its logged terms) and without it
    assert "seq_vcr_variance" in result["runs"]["script_seq_vcr"]["last_log"]
    assert "seq_vcr_variance" not in result["runs"]["script_plain"]["last_log"]
    assert result["target"] == {"script_seq_vcr_vs_raw": 0.8, "met": None}  # judged on the GPU only


def test_device_slug():
    spec = util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert module.device_slug("NVIDIA H200") == "h200"
