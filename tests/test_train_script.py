"""scripts/train_reasoning.py end to end: single process, and DDP with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_reasoning.py"
TINY = ["--task", "multiplication", "--digits", "2", "--train-size", "256", "--validation-size", "32",
        "--test-size", "32", "--batch-size", "8", "--logging-steps", "1", "--seq-vcr-projection-dim", "64", "--cpu"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_script_single_process(tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("train_reasoning", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    assert module.main([*TINY, "--model", "gpt2-tiny", "--max-steps", "3", "--pauses", "2", "--output-dir", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert 0.0 <= result["exact_match"] <= 1.0 and result["num_test"] == 32
    assert result["global_steps"] == 3 and result["pauses"] == 2 and result["seq_vcr"] is True
    assert {"ce_loss", "seq_vcr_variance", "seq_vcr_covariance"} <= set(result["last_log"][0])
    # pauses and Seq-VCR off
    out2 = tmp_path / "plain"
    assert module.main([*TINY, "--model", "llama-tiny", "--max-steps", "2", "--pauses", "0", "--no-seq-vcr",
                        "--output-dir", str(out2)]) == 0
    result = json.loads((out2 / "results.json").read_text())
    assert result["pauses"] == 0 and "seq_vcr_variance" not in result["last_log"][0]
    with pytest.raises(SystemExit):
        module.main([*TINY, "--model", str(tmp_path / "missing"), "--output-dir", str(out2)])


def test_script_grows_during_training(tmp_path):
    """--midas-stages and --grow-at plug the growth callbacks into the script's Trainer."""
    from importlib import util

    spec = util.spec_from_file_location("train_reasoning", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plan = tmp_path / "plan.yaml"
    plan.write_text("- mlp_width: 192\n")
    common = [*TINY, "--model", "llama-tiny", "--max-steps", "6", "--pauses", "0", "--no-seq-vcr"]
    assert module.main([*common, "--output-dir", str(tmp_path / "plain")]) == 0
    assert module.main([*common, "--midas-stages", "2", "--midas-where", "top", "--grow-at", f"2={plan}",
                        "--output-dir", str(tmp_path / "grown")]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    grown = json.loads((tmp_path / "grown" / "results.json").read_text())
    assert plain["growth_history"] == []
    steps = sorted(next(iter(record["step"])) for record in grown["growth_history"])
    assert steps == ["mlp_width", "stack"], grown["growth_history"]
    assert grown["parameters"] > plain["parameters"] and grown["global_steps"] == 6
    with pytest.raises(SystemExit, match="STEP=PLAN"):
        module.main([*common, "--grow-at", "soon", "--output-dir", str(tmp_path / "bad")])


@pytest.mark.slow
def test_script_ddp_two_cpu_processes(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(SCRIPT), *TINY, "--model", "llama-tiny", "--max-steps", "3", "--output-dir", str(out)]
    _run(cmd, timeout=120)
    result = json.loads((out / "results.json").read_text())
    assert result["world_size"] == 2 and result["global_steps"] == 3
    log = result["last_log"][0]
    for key in ("ce_loss", "seq_vcr_variance", "seq_vcr_covariance"):
        assert key in log and log[key] == log[key] and abs(log[key]) < 1e6
