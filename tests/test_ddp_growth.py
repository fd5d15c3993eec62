"""Growth during a DDP run (two CPU processes, gloo): the callbacks rebuild the DDP wrapper around the grown model.

Without the rebuild the new parameters have no gradient all-reduce and the two ranks, which see different
batches, silently train apart; the probe below compares a checksum of every parameter across ranks at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_reasoning.py"

PROBE = textwrap.dedent(
    """
    import json, os

    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback


    class ParamProbe(TrainerCallback):
        '''Per rank: parameter count, a float64 checksum of every parameter, and the DDP wrapper's parameter
        count at the end of training.'''

        def on_train_end(self, args, state, control, model=None, **kwargs):
            rank = dist.get_rank() if dist.is_initialized() else 0
            params = list(model.parameters())
            checksum = float(sum(p.detach().double().abs().sum() + p.detach().double().sum() for p in params))
            record = {"rank": rank, "parameters": sum(p.numel() for p in params), "checksum": checksum,
                      "grad_norms": [float(p.grad.norm()) for p in params if p.grad is not None][:3]}
            with open(os.path.join(args.output_dir, f"probe_rank{rank}.json"), "w") as f:
                json.dump(record, f)
    """
)


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("growth", ["midas", "function_preserving"])
def test_growth_under_ddp_keeps_ranks_in_sync(tmp_path, growth):
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    out = tmp_path / "run"
    if growth == "midas":
        grow = ["--midas-stages", "2", "--midas-block-size", "1", "--config-overrides", "num_hidden_layers=3"]
    else:
        plan = tmp_path / "plan.yaml"
        # hidden_size too: the Seq-VCR projection head (on, 64 wide) must widen on both ranks
        plan.write_text("- mlp_width: 192\n- hidden_size: 128\n- num_layers: {to: 3, where: top}\n")
        grow = ["--grow-at", f"2={plan}"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        _free_port(),
        str(SCRIPT),
        "--task",
        "multiplication",
        "--digits",
        "2",
        "--train-size",
        "256",
        "--validation-size",
        "32",
        "--test-size",
        "32",
        "--max-test",
        "8",
        "--batch-size",
        "8",
        "--logging-steps",
        "1",
        "--seq-vcr-projection-dim",
        "64",
        "--pauses",
        "2",
        "--cpu",
        "--model",
        "llama-tiny",
        "--max-steps",
        "6",
        "--lr",
        "3e-3",
        "--callback",
        "ddp_probe:ParamProbe",
        *grow,
        "--output-dir",
        str(out),
    ]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    result = json.loads((out / "results.json").read_text())
    assert result["world_size"] == 2 and result["global_steps"] == 6
    assert len(result["growth_history"]) >= 1
    probes = [json.loads((out / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert probes[0]["parameters"] == probes[1]["parameters"] == result["parameters"]
    # identical weights on both ranks after 4 post-growth steps on different batches: gradients were all-reduced
    assert probes[0]["checksum"] == pytest.approx(probes[1]["checksum"], rel=1e-12, abs=0.0)
    assert probes[0]["grad_norms"] == pytest.approx(probes[1]["grad_norms"], rel=1e-9)


@pytest.mark.slow
def test_ddp_scaling_benchmark_pipeline(tmp_path):
    """benchmarks/ddp_scaling.py on CPU processes: 1 vs 2 ranks, MIDAS growth inside the run, the final model
    saved with --save-final reloads with from_pretrained at the grown size (the numbers mean nothing here)."""
    out = tmp_path / "scaling.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "ddp_scaling.py"),
        "--procs",
        "1,2",
        "--launcher",
        "torchrun",
        "--cpu",
        "--steps",
        "4",
        "--warmup",
        "2",
        "--batch-size",
        "8",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
        "--script-args",
        "--model llama-tiny --config-overrides num_hidden_layers=3 --task multiplication --digits 2 "
        "--train-size 256 --validation-size 32 --test-size 32 --seq-vcr-projection-dim 64 --midas-stages 2",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["procs"] for r in report["runs"]] == [1, 2] and [r["world_size"] for r in report["runs"]] == [1, 2]
    assert report["runs"][0]["scaling"] == 1.0 and report["target"]["met"] is None  # no verdict on a CPU
    for run in report["runs"]:
        assert run["tokens_per_s"] > 0 and run["timed_steps"] == 4
        assert [r.get("midas_stage") for r in run["growth_history"]] == [2]
        assert run["reload"]["same_parameters"] and run["reload"]["finite_logits"]
    assert report["runs"][1]["tokens_per_step"] == 2 * report["runs"][0]["tokens_per_step"]
