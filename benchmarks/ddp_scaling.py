#!/usr/bin/env python
"""Data-parallel scaling of ``scripts/train_reasoning.py``: tokens/s on 1 vs N processes (issue 10; target >= 1.8x
on 2 GPUs), with the growth callbacks on if asked, and a reload check of the final model.

The same command line runs once per process count (``--procs 1,2``), each launched as a fresh job:
``accelerate launch --config_file scripts/accelerate/{single_gpu,ddp,fsdp}.yaml`` (``--launcher accelerate``, the
GPU default) or ``python -m torch.distributed.run`` (``--launcher torchrun``; on CPUs with ``--cpu``: gloo).
``--batch-size`` is per device, so N processes train N times the tokens per step (weak scaling, as DDP is used).
:class:`StepClock` (passed to the script as ``--callback ddp_scaling:StepClock``) times optimizer steps
``warmup+1 .. warmup+steps`` on rank 0 (CUDA synchronised at both ends; every rank is in lock-step through the
gradient all-reduce); tokens/s = steps x tokens per step / seconds. Growth callbacks (``--script-args
'--midas-stages 2 ...'``) can fall in the timed window: the growth then counts, as it would in a real run.

    # 2 GPUs, DDP, Llama preset, Seq-VCR + 2 pauses, MIDAS growth in the middle of the run:
    python benchmarks/ddp_scaling.py --procs 1,2 --config ddp --script-args "--model llama-mini --midas-stages 2"
    # CPU check of the pipeline (gloo; numbers mean nothing on a shared 2-core machine):
    python benchmarks/ddp_scaling.py --procs 1,2 --launcher torchrun --cpu --steps 5 --warmup 2 --out /tmp/s.json

Writes ``benchmarks/results/ddp_scaling_<config>_<device>.json``: device, versions, every exact command, tokens/s
per process count, scaling and efficiency, the run's exact match, parameters before/after growth, and whether the
final model (``--save-final``) reloads with ``from_pretrained`` with the same parameter count.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_reasoning.py"
TARGET_2 = 1.8  # tokens/s on 2 GPUs over 1 GPU
#: NVLink multicast stays off on shared hosts (device README); kept in every launched job's environment
NCCL_SAFE = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class StepClock(TrainerCallback):
    """``TrainerCallback`` (import path ``ddp_scaling:StepClock``): rank 0 writes ``OUTPUT_DIR/step_clock.json``
    with the wall time of optimizer steps ``warmup+1 .. warmup+steps``; settings from the environment variable
    ``STEP_CLOCK`` (JSON: ``{"warmup": 10, "steps": 50}``)."""

    def __init__(self) -> None:
        settings = json.loads(os.environ.get("STEP_CLOCK", "{}"))
        self.warmup, self.steps = int(settings.get("warmup", 10)), int(settings.get("steps", 50))
        self.t0: float | None = None

    @staticmethod
    def _sync() -> None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()
        elif state.global_step == self.warmup + self.steps and self.t0 is not None:
            self._sync()
            seconds = time.perf_counter() - self.t0
            if state.is_world_process_zero:
                record = {
                    "warmup": self.warmup,
                    "steps": self.steps,
                    "seconds": seconds,
                    "world_size": args.world_size,
                    "per_device_batch": args.per_device_train_batch_size,
                    "grad_accum": args.gradient_accumulation_steps,
                }
                Path(args.output_dir, "step_clock.json").write_text(json.dumps(record) + "\n")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2", help="process counts to compare, e.g. '1,2'")
    p.add_argument("--config", default="ddp", choices=["ddp", "fsdp"], help="accelerate config for N > 1")
    p.add_argument("--launcher", default="accelerate", choices=["accelerate", "torchrun"])
    p.add_argument("--warmup", type=int, default=20, help="untimed optimizer steps first (compilation happens here)")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="per device")
    p.add_argument(
        "--script-args",
        default="--model llama-mini --task multiplication --digits 4",
        help="further train_reasoning.py options (model, task, growth flags, --bf16, ...)",
    )
    p.add_argument("--cpu", action="store_true", help="CPU processes (gloo), for checking the pipeline")
    p.add_argument("--runs-dir", default="runs/ddp_scaling")
    p.add_argument("--timeout", type=int, default=540, help="seconds per launched job")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ddp_scaling_<config>_<dev>.json)")
    return p.parse_args(argv)


def launch_command(opts, procs: int) -> list[str]:
    if opts.launcher == "torchrun":
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", port]
    config = "single_gpu" if procs == 1 else opts.config
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "scripts" / "accelerate" / f"{config}.yaml"),
        "--num_processes",
        str(procs),
    ]


def run_one(opts, procs: int) -> dict:
    out = Path(opts.runs_dir) / f"{opts.config}_{procs}"
    argv = [
        *shlex.split(opts.script_args),
        "--batch-size",
        str(opts.batch_size),
        "--max-steps",
        str(opts.warmup + opts.steps),
        "--logging-steps",
        str(max(1, opts.steps // 4)),
        "--callback",
        "ddp_scaling:StepClock",
        "--save-final",
        "--max-test",
        "200",
        "--output-dir",
        str(out),
    ]
    if opts.cpu:
        argv.append("--cpu")
    cmd = [*launch_command(opts, procs), str(SCRIPT), *argv]
    env = dict(
        os.environ,
        **NCCL_SAFE,
        STEP_CLOCK=json.dumps({"warmup": opts.warmup, "steps": opts.steps}),
        PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop("WORLD_SIZE", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=opts.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"{procs} process(es) failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    result = json.loads((out / "results.json").read_text())
    clock = json.loads((out / "step_clock.json").read_text())
    tokens_per_step = result["seq_len"] * clock["per_device_batch"] * clock["grad_accum"] * clock["world_size"]
    return {
        "procs": procs,
        "command": shlex.join(cmd),
        "world_size": result["world_size"],
        "tokens_per_step": tokens_per_step,
        "timed_steps": clock["steps"],
        "seconds": round(clock["seconds"], 4),
        "tokens_per_s": tokens_per_step * clock["steps"] / clock["seconds"],
        "wall_seconds": round(wall, 1),
        "exact_match": result["exact_match"],
        "num_test": result["num_test"],
        "parameters": result["parameters"],
        "growth_history": [
            {"step": r.get("step"), **{k: r[k] for k in ("midas_stage", "growth_callback_step") if k in r}}
            for r in result["growth_history"]
        ],
        "reload": check_reload(out / "final", result["parameters"]),
    }


def check_reload(path: Path, parameters: int) -> dict:
    """The final model reloads with ``from_pretrained``: same parameter count, finite logits."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path))
    count = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    return {
        "path": str(path),
        "parameters": count,
        "same_parameters": count == parameters,
        "finite_logits": bool(torch.isfinite(logits).all()),
    }


def main(argv=None) -> int:
    opts = parse_args(argv)
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import command_line, device_label, device_slug, versions, write_json

    counts = [int(x) for x in opts.procs.split(",")]
    runs = [run_one(opts, n) for n in counts]
    base = runs[0]["tokens_per_s"]
    for r in runs:
        r["scaling"] = r["tokens_per_s"] / base
        r["efficiency"] = r["scaling"] / (r["procs"] / runs[0]["procs"])
    cuda = torch.cuda.is_available() and not opts.cpu
    device = device_label("cuda" if cuda else "cpu")
    two = next((r for r in runs if r["procs"] == 2 * runs[0]["procs"]), None)
    report = {
        "benchmark": "ddp_scaling (issue 10)",
        "device": device,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "config": opts.config,
        "launcher": opts.launcher,
        "command": command_line("ddp_scaling.py", argv),
        "versions": versions(),
        "runs": runs,
        "target": {"scaling_2x": TARGET_2, "met": (two["scaling"] >= TARGET_2) if two and cuda else None},
    }
    print(f"{'procs':>5} {'tokens/s':>12} {'scaling':>8} {'efficiency':>10} {'exact match':>11} {'params':>10} reload")
    for r in runs:
        print(
            f"{r['procs']:>5} {r['tokens_per_s']:>12,.0f} {r['scaling']:>8.3f} {r['efficiency']:>10.3f} "
            f"{r['exact_match']:>11.3f} {r['parameters']:>10,} {r['reload']['same_parameters']}"
        )
    slug = device_slug(device) if cuda else "cpu"
    write_json(
        opts.out or ROOT / "benchmarks" / "results" / f"ddp_scaling_{opts.config}_{slug}.json",
        report,
        indent=2,
        announce=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
