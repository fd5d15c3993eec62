#!/usr/bin/env python
"""Training tokens/s of ``scripts/train_reasoning.py`` (``SeqVCRTrainer``) vs the raw compiled step (issue 11).

One process, one shape, measured in turn:

- **raw**: a plain HF model step, ``model(**batch).loss`` (cross-entropy inside the model), ``backward``, fused
  AdamW, ``torch.compile(model)``, bf16 autocast, the tokenised dataset on the device and batches gathered there
  (a random permutation made on the device): no Trainer, no Seq-VCR, no gradient clipping, no scheduler.
- **script, Seq-VCR on**: the script's own path, built with its functions (``parse_args``, ``prepare``,
  ``build_trainer``) and ``--data-on-device --torch-compile --bf16``, so the real ``SeqVCRTrainer`` loop runs
  (logging every ``--logging-steps``, gradient clipping, the linear scheduler, the Seq-VCR projection head).
- **script, Seq-VCR off** (``--no-plain`` skips it): the same with ``--no-seq-vcr``.

The model is the script's ``gpt2-small`` preset (n_embd 768, 12 layers, 12 heads, random init, the task's
word-level tokenizer); data the multiplication task with 2 pause tokens (default 4x4 digits), batch 1024.
Steps are timed after ``--warmup`` steps (compilation included there), with the device synchronised only at
the two ends of the window, so host work that overlaps GPU work is not counted twice. Tokens are
``batch x padded length`` per step for every run. ``--repeats N`` measures every run N times in rotated order and
reports medians (and the per-repeat ratios). On CUDA, ``--sync-steps`` further steps of each script run run under
``torch.cuda.set_sync_debug_mode("warn")`` and the JSON records the host synchronisations per step.

    PYTHONPATH=. python benchmarks/train_throughput.py       # GPU: benchmarks/results/train_throughput_<gpu>.json
    PYTHONPATH=. python benchmarks/train_throughput.py --cpu-smoke     # tiny shapes on the CPU in seconds, no file

Needs torch, transformers and accelerate only (no ``datasets``; hf-growth need not be installed).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from importlib import util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import command_line, device_label, device_slug, versions, write_json  # noqa: E402

TARGET = 0.8  # script (Seq-VCR on) / raw


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--digits", type=int, default=4)
    p.add_argument("--pauses", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--projection-dim", type=int, default=2048)
    p.add_argument("--seq-vcr-layers", default="last")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first, >= 1 (compilation happens here)")
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every run this many times, in rotated order; the table and ratios use medians",
    )
    p.add_argument(
        "--sync-steps",
        type=int,
        default=None,
        help="steps after the timed ones that count host syncs (CUDA only; default 5 there, 0 on CPU)",
    )
    p.add_argument("--logging-steps", type=int, default=50, help="the script's --logging-steps")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile both sides (default: on for CUDA, off on the CPU)",
    )
    p.add_argument("--compile-mode", default=None, help="torch.compile mode for both sides")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast on both sides (default: on for CUDA, off on the CPU)",
    )
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls (CUDA; the script's --tf32)")
    p.add_argument(
        "--plain", action=argparse.BooleanOptionalAction, default=True, help="also measure the script with --no-seq-vcr"
    )
    p.add_argument(
        "--script-args",
        default="",
        help="more train_reasoning.py options for the script runs, e.g. '--no-seq-vcr-compile'",
    )
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads")
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model and batch on the CPU, a few steps, no file unless --out"
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/train_throughput_<device>.json; none with --cpu-smoke)",
    )
    return p.parse_args(argv)


def load_script():
    """``scripts/train_reasoning.py`` as a module (the benchmark runs its functions, not a copy of them)."""
    spec = util.spec_from_file_location("train_reasoning", ROOT / "scripts" / "train_reasoning.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WindowTimer:
    """A ``TrainerCallback`` that times optimizer steps ``warmup+1 .. warmup+steps`` (device synchronised only at
    the two ends) and, on CUDA, counts host synchronisations over the ``sync_steps`` steps after them.
    ``warmup`` must be >= 1."""

    def __init__(self, warmup: int, steps: int, sync_steps: int, cuda: bool) -> None:
        from transformers import TrainerCallback

        self.warmup, self.steps, self.sync_steps, self.cuda = warmup, steps, sync_steps, cuda
        self.seconds: float | None = None
        self.syncs: int | None = None
        self._t0 = 0.0
        self._record = None
        self._caught: list = []
        timer = self

        class _Callback(TrainerCallback):
            # from the end of one optimizer step to the end of another: whole iterations (the batch fetch, which the
            # Trainer does before `on_step_begin`, and the logging after `on_step_end` included)
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == timer.warmup:
                    timer._sync()
                    timer._t0 = time.perf_counter()
                elif state.global_step == timer.warmup + timer.steps:
                    timer._sync()
                    timer.seconds = time.perf_counter() - timer._t0
                    if timer.sync_steps:
                        timer._start_counting()
                elif state.global_step == timer.warmup + timer.steps + timer.sync_steps and timer._record is not None:
                    timer._stop_counting()

        self.callback = _Callback()

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _start_counting(self) -> None:
        import torch

        self._sync()
        self._record = warnings.catch_warnings(record=True)
        self._caught = self._record.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def _stop_counting(self) -> None:
        import torch

        torch.cuda.set_sync_debug_mode("default")
        self._record.__exit__(None, None, None)
        self._record = None
        self.syncs = sum("synchronizing" in str(w.message) for w in self._caught)


def script_argv(opts, seq_vcr: bool, out_dir: str, train_size: int) -> list[str]:
    """The ``scripts/train_reasoning.py`` command line of a script run (also written to the JSON)."""
    argv = [
        "--task",
        "multiplication",
        "--digits",
        str(opts.digits),
        "--train-size",
        str(train_size),
        "--validation-size",
        "16",
        "--test-size",
        "16",
        "--model",
        "gpt2-small",
        "--config-overrides",
        f"n_embd={opts.n_embd},n_layer={opts.n_layer},n_head={opts.n_head}",
        "--pauses",
        str(opts.pauses),
        "--batch-size",
        str(opts.batch_size),
        "--logging-steps",
        str(opts.logging_steps),
        "--max-steps",
        str(opts.warmup + opts.steps + opts.sync_steps),
        "--seq-vcr-layers",
        opts.seq_vcr_layers,
        "--seq-vcr-projection-dim",
        str(opts.projection_dim),
        "--data-on-device",
        "--output-dir",
        out_dir,
        "--seq-vcr" if seq_vcr else "--no-seq-vcr",
    ]
    if opts.compile:
        argv.append("--torch-compile")
        if opts.compile_mode:
            argv += ["--torch-compile-mode", opts.compile_mode]
    if opts.bf16:
        argv.append("--bf16")
    if opts.tf32:
        argv.append("--tf32")
    if not opts.cuda:
        argv.append("--cpu")
    return argv + shlex.split(opts.script_args)


def run_script(script, opts, seq_vcr: bool, train_size: int) -> dict:
    """Train with the script's own trainer for ``warmup + steps (+ sync_steps)`` steps; tokens/s of the window."""
    import torch

    out_dir = tempfile.mkdtemp(prefix="train_throughput_")
    argv = script_argv(opts, seq_vcr, out_dir, train_size)
    args = script.parse_args(argv)
    torch.manual_seed(args.training.seed)
    _, model, tokenizer, _, train, valid = script.prepare(args)
    timer = WindowTimer(opts.warmup, opts.steps, opts.sync_steps, opts.cuda)
    trainer = script.build_trainer(args, model, tokenizer, train, valid, callbacks=[timer.callback])
    trainer.train()
    seq_len = train.tensors["input_ids"].shape[1]
    tokens = opts.batch_size * seq_len * opts.steps
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "script_argv": argv,
        "seq_len": seq_len,
        "timed_steps": opts.steps,
        "seconds": timer.seconds,
        "step_ms": 1e3 * timer.seconds / opts.steps,
        "tokens_per_s": tokens / timer.seconds,
        "host_syncs_per_step": None if timer.syncs is None else timer.syncs / opts.sync_steps,
        "sync_count_steps": [opts.warmup + opts.steps + 1, opts.warmup + opts.steps + opts.sync_steps]
        if timer.syncs is not None
        else None,
        "last_log": logs[-1] if logs else None,
        "optimizer": getattr(trainer.args.optim, "value", trainer.args.optim),
        "max_grad_norm": trainer.args.max_grad_norm,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if opts.cuda else None,
    }
    del trainer, model, train, valid
    return result


def run_raw(script, opts, train_size: int) -> dict:
    """The raw step on the script's model shape and tokenised data: forward + CE + backward + fused AdamW."""
    import torch

    args = script.parse_args(script_argv(opts, False, tempfile.gettempdir(), train_size))
    torch.manual_seed(args.training.seed)
    _, model, _, _, train, _ = script.prepare(args)
    device = torch.device("cuda" if opts.cuda else "cpu")
    model.to(device).train()
    data = {k: v.to(device) for k, v in train.tensors.items()}
    n, seq_len = data["input_ids"].shape
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.training.learning_rate, weight_decay=args.training.weight_decay, fused=True
    )
    forward = torch.compile(model, mode=opts.compile_mode) if opts.compile else model
    perm = torch.randperm(n, device=device)
    batches = n // opts.batch_size

    def step(i: int) -> None:
        idx = perm[(i % batches) * opts.batch_size : (i % batches + 1) * opts.batch_size]
        batch = {k: v.index_select(0, idx) for k, v in data.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(opts.bf16)):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(opts.warmup):
        step(i)
    if opts.cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(opts.warmup, opts.warmup + opts.steps):
        step(i)
    if opts.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {
        "seq_len": seq_len,
        "timed_steps": opts.steps,
        "seconds": seconds,
        "step_ms": 1e3 * seconds / opts.steps,
        "tokens_per_s": opts.batch_size * seq_len * opts.steps / seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": model.config.vocab_size,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if opts.cuda else None,
    }
    return result


def _fresh(cuda: bool) -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.warmup < 1:
        raise SystemExit("--warmup must be >= 1")
    import torch

    opts.cuda = torch.cuda.is_available() and not (opts.cpu or opts.cpu_smoke)
    if opts.cpu_smoke:
        opts.n_embd, opts.n_layer, opts.n_head, opts.digits = 32, 2, 2, 2
        opts.batch_size, opts.projection_dim, opts.warmup, opts.steps = 16, 32, 2, 4
        opts.logging_steps = min(opts.logging_steps, 2)
    opts.compile = opts.cuda if opts.compile is None else opts.compile
    opts.bf16 = opts.cuda if opts.bf16 is None else opts.bf16
    opts.sync_steps = (5 if opts.cuda else 0) if opts.sync_steps is None else (opts.sync_steps if opts.cuda else 0)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.tf32 and opts.cuda:  # for both sides (the script's --tf32 sets the same flags)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    script = load_script()
    total = opts.warmup + opts.steps + opts.sync_steps
    train_size = opts.batch_size * total  # one epoch covers every step: no epoch boundary inside the window

    names = ["raw", "script_seq_vcr"] + (["script_plain"] if opts.plain else [])
    measure = {
        "raw": lambda: run_raw(script, opts, train_size),
        "script_seq_vcr": lambda: run_script(script, opts, True, train_size),
        "script_plain": lambda: run_script(script, opts, False, train_size),
    }
    repeats: dict[str, list[dict]] = {name: [] for name in names}
    for rep in range(opts.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotated: drift hits every run alike
            _fresh(opts.cuda)
            repeats[name].append(measure[name]())
    runs = {}
    for name, results in repeats.items():
        runs[name] = {
            **results[0],
            **{key: statistics.median(r[key] for r in results) for key in ("seconds", "step_ms", "tokens_per_s")},
        }
        if opts.repeats > 1:
            runs[name]["repeats"] = results
    raw = runs["raw"]["tokens_per_s"]
    ratios = {name: r["tokens_per_s"] / raw for name, r in runs.items() if name != "raw"}
    per_repeat = {
        name: [r["tokens_per_s"] / q["tokens_per_s"] for r, q in zip(repeats[name], repeats["raw"])] for name in ratios
    }
    print("| run | tokens/s | step (ms) | vs raw |")
    print("|---|---:|---:|---:|")
    for name, r in runs.items():
        ratio = "1.000" if name == "raw" else f"{ratios[name]:.3f}"
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.2f} | {ratio} |")
    if opts.repeats > 1:
        print(
            f"medians of {opts.repeats} repeats; per-repeat ratios: "
            + "; ".join(f"{name} " + " ".join(f"{x:.3f}" for x in xs) for name, xs in per_repeat.items())
        )
    for name, r in runs.items():
        if r.get("host_syncs_per_step") is not None:
            print(f"{name}: {r['host_syncs_per_step']:.2f} host syncs per step (steps {r['sync_count_steps']})")

    device = device_label("cuda" if opts.cuda else "cpu")
    result = {
        "benchmark": "train_throughput",
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_smoke": opts.cpu_smoke,
        "versions": {**versions("accelerate"), "cuda": torch.version.cuda},
        "command": command_line("train_throughput.py", argv),
        "shape": {
            "model": "gpt2-small preset",
            "n_embd": opts.n_embd,
            "n_layer": opts.n_layer,
            "n_head": opts.n_head,
            "vocab_size": runs["raw"]["vocab_size"],
            "parameters": runs["raw"]["parameters"],
            "task": f"multiplication {opts.digits}x{opts.digits}",
            "pauses": opts.pauses,
            "batch_size": opts.batch_size,
            "seq_len": runs["raw"]["seq_len"],
            "tokens_per_step": opts.batch_size * runs["raw"]["seq_len"],
            "seq_vcr": {"layers": opts.seq_vcr_layers, "projection_dim": opts.projection_dim},
        },
        "settings": {
            "compile": opts.compile,
            "compile_mode": opts.compile_mode,
            "bf16": opts.bf16,
            "tf32": opts.tf32,
            "warmup_steps": opts.warmup,
            "timed_steps": opts.steps,
            "sync_steps": opts.sync_steps,
            "repeats": opts.repeats,
            "logging_steps": opts.logging_steps,
            "train_size": train_size,
            "raw": "model(**batch).loss, backward, AdamW(fused=True), zero_grad(set_to_none=True)",
            "script": "SeqVCRTrainer via prepare/build_trainer: its optimizer (runs.*.optimizer), "
            "gradient clipping at max_grad_norm, linear schedule, logging",
        },
        "runs": runs,
        "ratios": ratios,
        "per_repeat_ratios": per_repeat,
        # the target is set for the GPT-2-small shape on an H100; a CPU run only checks that the benchmark works
        "target": {
            "script_seq_vcr_vs_raw": TARGET,
            "met": bool(ratios["script_seq_vcr"] >= TARGET) if opts.cuda else None,
        },
    }
    out = opts.out
    if out is None and not opts.cpu_smoke:
        out = str(
            ROOT / "benchmarks" / "results" / f"train_throughput_{'cpu' if not opts.cuda else device_slug(device)}.json"
        )
    if out:
        write_json(out, result, indent=2, default=str, announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
