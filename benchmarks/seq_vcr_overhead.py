#!/usr/bin/env python
"""Step time and peak memory of ``SeqVCRTrainer`` vs the plain ``Trainer`` (issue 7; target <= 1.05x both).

Same model (GPT-2 small's shape, random init), batch 32, sequence 64, one GPU, bf16 autocast, fused AdamW,
data already tokenised as tensors. Seq-VCR in its paper setting: last block, 2048-dim projection head,
per-position statistics. Each run trains a fresh model; its step time is the median over the measured steps
(after ``--warmup`` steps), with CUDA synchronised around every step; peak memory is
``torch.cuda.max_memory_allocated`` over the measured steps. The headline ratio is the median of the Seq-VCR
runs' step times over the median of the plain runs'.

The step is bound by the host CPU (Python and kernel launches: about 20 ms of GPU kernels in a ~45 ms step on
an H100), and the device machine's CPU speed drifts: the same trainer's per-run median moved by up to 15%
between runs of one process. Hence ``--repeats`` 6 by default, run in ABBA order (plain, Seq-VCR, Seq-VCR,
plain, ...) so that a drift hits both sides alike; ``pair_ratios`` in the JSON are the per-repeat ratios.

    PYTHONPATH=. python benchmarks/seq_vcr_overhead.py                    # GPU: writes benchmarks/results/...
    PYTHONPATH=. python benchmarks/seq_vcr_overhead.py --cpu-smoke        # tiny shapes on the CPU, no file

Needs torch, transformers and accelerate only (no ``datasets``, hf-growth need not be installed).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import command_line, device_label, versions, write_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--projection-dim", type=int, default=2048)
    p.add_argument("--layers", default="last")
    p.add_argument("--statistics", default="batch", choices=["batch", "batch_length"])
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/seq_vcr_overhead.json on GPU)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, a few steps, fp32")
    return p.parse_args(argv)


class StepTimer:
    def __init__(self, warmup: int, cuda: bool):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._sync()
                if state.global_step == warmup:
                    timer._reset_memory()
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer._sync()
                if state.global_step > warmup:
                    timer.times.append(time.perf_counter() - timer._t0)

        self.callback = _CB()
        self.cuda = cuda
        self.times: list[float] = []

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _reset_memory(self):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()


def run_once(kind: str, opts, smoke: bool) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    from hf_growth.training import SeqVCRConfig, SeqVCRTrainer
    from hf_growth.training.data import TensorDataset, collate_tensors

    cuda = torch.cuda.is_available() and not smoke
    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=128) if smoke else GPT2Config()
    model = GPT2LMHeadModel(config)
    total_steps = opts.warmup + opts.steps
    n = opts.batch_size * total_steps
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (n, opts.seq_len), generator=g)
    data = TensorDataset({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    args = SeqVCRConfig(
        output_dir="/tmp/seq_vcr_overhead",
        use_seq_vcr=kind == "seq_vcr",
        seq_vcr_projection_dim=opts.projection_dim,
        seq_vcr_layers=opts.layers,
        seq_vcr_statistics=opts.statistics,
        per_device_train_batch_size=opts.batch_size,
        max_steps=total_steps,
        learning_rate=1e-4,
        bf16=cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        disable_tqdm=True,
        seed=0,
    )
    timer = StepTimer(opts.warmup, cuda)
    cls = SeqVCRTrainer if kind == "seq_vcr" else Trainer
    trainer = cls(model=model, args=args, train_dataset=data, data_collator=collate_tensors, callbacks=[timer.callback])
    trainer.train()
    result = {
        "kind": kind,
        "median_step_s": statistics.median(timer.times),
        "mean_step_s": statistics.fmean(timer.times),
        "measured_steps": len(timer.times),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "tokens_per_s": opts.batch_size * opts.seq_len / statistics.median(timer.times),
    }
    if kind == "seq_vcr":
        logs = [h for h in trainer.state.log_history if "seq_vcr_variance" in h]
        result["final_log"] = logs[-1] if logs else None
    del trainer, model, data
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    opts = parse_args(argv)
    if opts.cpu_smoke:
        opts.batch_size, opts.seq_len, opts.warmup, opts.steps, opts.repeats = 8, 16, 2, 3, 1
        opts.projection_dim = min(opts.projection_dim, 128)
    import torch

    cuda = torch.cuda.is_available() and not opts.cpu_smoke
    if not cuda and not opts.cpu_smoke:
        raise SystemExit("no CUDA device: run on a GPU, or pass --cpu-smoke for the tiny CPU check")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    runs = []
    for rep in range(opts.repeats):
        for kind in ("plain", "seq_vcr") if rep % 2 == 0 else ("seq_vcr", "plain"):
            runs.append(run_once(kind, opts, opts.cpu_smoke))
            r = runs[-1]
            mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
            print(f"{kind:8s} median step {r['median_step_s'] * 1e3:8.2f} ms  peak {mem}", flush=True)

    def agg(kind, key):
        vals = [r[key] for r in runs if r["kind"] == kind and r[key] is not None]
        return statistics.median(vals) if vals else None

    plain_t, vcr_t = agg("plain", "median_step_s"), agg("seq_vcr", "median_step_s")
    plain_m, vcr_m = agg("plain", "peak_memory_bytes"), agg("seq_vcr", "peak_memory_bytes")
    time_ratio = vcr_t / plain_t
    medians = {kind: [r["median_step_s"] for r in runs if r["kind"] == kind] for kind in ("plain", "seq_vcr")}
    pair_ratios = [v / p for p, v in zip(medians["plain"], medians["seq_vcr"])]
    mem_ratio = None if not plain_m else vcr_m / plain_m
    print()
    print("| trainer       | step time (ms) | peak memory (MiB) |")
    print("|---------------|---------------:|------------------:|")
    fmt_m = lambda m: "-" if m is None else f"{m / 2**20:.0f}"  # noqa: E731
    print(f"| Trainer       | {plain_t * 1e3:14.2f} | {fmt_m(plain_m):>17} |")
    print(f"| SeqVCRTrainer | {vcr_t * 1e3:14.2f} | {fmt_m(vcr_m):>17} |")
    mem_text = "-" if mem_ratio is None else f"{mem_ratio:.3f}x"
    print(f"| ratio         | {time_ratio:13.3f}x | {mem_text:>17} |")
    print("per-repeat time ratios: " + " ".join(f"{r:.3f}" for r in pair_ratios))

    device = device_label("cuda" if cuda else "cpu")
    result = {
        "benchmark": "seq_vcr_overhead",
        "device": device,
        "cpu_smoke": opts.cpu_smoke,
        "versions": {**versions("accelerate"), "cuda": torch.version.cuda},
        "command": command_line("seq_vcr_overhead.py", argv),
        "settings": {
            "model": "gpt2-tiny" if opts.cpu_smoke else "gpt2-small shape (GPT2Config() defaults, 124M)",
            "batch_size": opts.batch_size,
            "seq_len": opts.seq_len,
            "warmup_steps": opts.warmup,
            "measured_steps": opts.steps,
            "repeats": opts.repeats,
            "bf16": cuda,
            "optimizer": "adamw_torch_fused" if cuda else "adamw_torch",
            "seq_vcr": {"layers": opts.layers, "projection_dim": opts.projection_dim, "statistics": opts.statistics},
        },
        "plain": {"median_step_s": plain_t, "peak_memory_bytes": plain_m},
        "seq_vcr": {"median_step_s": vcr_t, "peak_memory_bytes": vcr_m},
        "ratios": {"time": time_ratio, "memory": mem_ratio},
        "pair_ratios": {
            "time": pair_ratios,
            "median": statistics.median(pair_ratios),
            "min": min(pair_ratios),
            "max": max(pair_ratios),
        },
        "target": {
            "time": 1.05,
            "memory": 1.05,
            "met": bool(time_ratio <= 1.05 and (mem_ratio is None or mem_ratio <= 1.05)),
        },
        "runs": runs,
    }
    out = opts.out or (None if opts.cpu_smoke else str(ROOT / "benchmarks" / "results" / "seq_vcr_overhead.json"))
    if out:
        write_json(out, result, indent=2, default=str, announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
