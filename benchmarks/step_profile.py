"""Where a training step's time goes: ``--callback step_profile:StepProfiler`` on ``scripts/train_reasoning.py``.

Profiles optimizer steps ``start + 1 .. start + steps`` with ``torch.profiler`` (settings as JSON in the environment
variable ``STEP_PROFILE``, e.g. ``'{"start": 100, "steps": 20}'``; defaults below) and writes
``OUTPUT_DIR/step_profile.json`` and ``step_profile.txt``: wall milliseconds per step (the device synchronised at
both ends), device milliseconds per step (the kernels' own time), kernels per step, host-device synchronisations
per step (``.item()``-style reads and explicit synchronises), and the operators that cost the most host and
device time. A step whose device time is far below its wall time is bound by the host (Python, kernel launches,
synchronisations), not by the GPU.

For example, a run of a tiny model whose steps/s do not change between eager, compiled and CUDA graphs spends its
time somewhere other than the model's kernels::

    STEP_PROFILE='{"start": 200, "steps": 20}' PYTHONPATH=benchmarks:. python scripts/train_reasoning.py \\
        --task retrieval ... --callback step_profile:StepProfiler --output-dir /tmp/prof
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_json  # noqa: E402

DEFAULTS = {"start": 50, "steps": 20, "rows": 25}
SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _settings() -> dict[str, int]:
    given = json.loads(os.environ.get("STEP_PROFILE", "").strip() or "{}")
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"STEP_PROFILE: unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **given}
    if settings["steps"] < 1 or settings["start"] < 0:
        raise ValueError(f"STEP_PROFILE needs steps >= 1 and start >= 0, got {settings}")
    return settings


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def summarize(key_averages: Any, steps: int, wall_seconds: float, rows: int = 25) -> dict[str, Any]:
    """Per-step numbers from a profiler's ``key_averages()`` over ``steps`` steps that took ``wall_seconds``."""
    events = list(key_averages)
    device = [e for e in events if str(e.device_type).endswith("CUDA")]
    device_us = sum(e.self_device_time_total for e in events)
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    by_device = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:rows]
    return {
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall_seconds / steps,
        "device_ms_per_step": device_us / 1e3 / steps,
        "kernels_per_step": sum(e.count for e in device) / steps,
        "syncs_per_step": {name: e.count / steps for e in events for name in SYNC_OPS if e.key == name},
        "top_host_ms_per_step": [(e.key, e.count / steps, e.self_cpu_time_total / 1e3 / steps) for e in host],
        "top_device_ms_per_step": [
            (e.key, e.count / steps, e.self_device_time_total / 1e3 / steps)
            for e in by_device
            if e.self_device_time_total > 0
        ],
    }


class StepProfiler(TrainerCallback):
    """Profile ``steps`` optimizer steps after ``start`` (compilation and warm-up land before) and write the
    summary next to the run's other outputs."""

    def __init__(self, **settings: int) -> None:
        self.settings = {**_settings(), **settings}
        self.profiler: torch.profiler.profile | None = None
        self.summary: dict[str, Any] | None = None
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.profiler is None and self.summary is None and state.global_step == self.settings["start"]:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            _sync()
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step < self.settings["start"] + self.settings["steps"]:
            return
        _sync()
        wall = time.perf_counter() - self._t0
        self.profiler.__exit__(None, None, None)
        averages = self.profiler.key_averages()
        self.summary = summarize(averages, self.settings["steps"], wall, self.settings["rows"])
        self.summary["first_step"] = self.settings["start"] + 1
        if state.is_world_process_zero:
            out = Path(args.output_dir)
            write_json(out / "step_profile.json", self.summary)
            tables = [averages.table(sort_by="self_cpu_time_total", row_limit=self.settings["rows"])]
            if self.summary["top_device_ms_per_step"]:
                tables.append(averages.table(sort_by="self_device_time_total", row_limit=self.settings["rows"]))
            (out / "step_profile.txt").write_text("\n\n".join(tables) + "\n")
            s = self.summary
            print(
                f"[step_profile] steps {s['first_step']}..{s['first_step'] + s['steps'] - 1}: "
                f"wall {s['wall_ms_per_step']:.2f} ms/step, device {s['device_ms_per_step']:.2f} ms/step, "
                f"{s['kernels_per_step']:.0f} kernels/step, syncs/step {s['syncs_per_step']}",
                flush=True,
            )
        self.profiler = None
