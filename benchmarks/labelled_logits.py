"""Training-step time and peak memory with logits only at the answer positions (``LabelledLogitsCollator``, the
default of ``scripts/train_reasoning.py``) vs logits at every position, same model, same batches, one run.

    PYTHONPATH=. python benchmarks/labelled_logits.py                        # SmolLM2-135M, 4x4 + 2 pauses, CPU
    PYTHONPATH=. python benchmarks/labelled_logits.py --batch-size 256 --bf16  # on a GPU

Writes ``benchmarks/results/labelled_logits[_<tag>].json`` (device, versions, the command, per-repeat times).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import command_line, device_label, versions, write_json  # noqa: E402


def _script():
    spec = importlib.util.spec_from_file_location("train_reasoning", ROOT / "scripts" / "train_reasoning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, optimizer, batches, device, bf16: bool) -> tuple[float, int | None]:
    """Mean seconds per training step over ``batches`` and the peak device memory (CUDA; else ``None``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    seconds = (time.perf_counter() - start) / len(batches)
    return seconds, (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--digits", type=int, default=4)
    p.add_argument("--pauses", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps per repeat and mode")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats of both modes (after one warm-up)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    script = _script()
    run_args = script.parse_args(
        [
            "--task",
            "multiplication",
            "--digits",
            str(args.digits),
            "--model",
            args.model,
            "--pauses",
            str(args.pauses),
            "--no-seq-vcr",
            "--train-size",
            str(args.batch_size * args.steps),
            "--validation-size",
            "8",
            "--test-size",
            "8",
        ]
    )
    _, model, _, _, train, _ = script.prepare(run_args)
    from hf_growth.training.data import LabelledLogitsCollator, collate_tensors, first_labelled_position

    model.to(device).train()
    train = train.to(device)
    first = first_labelled_position(train)
    modes = {"all_logits": collate_tensors, "labelled_logits": LabelledLogitsCollator(first)}
    idx = [list(range(i * args.batch_size, (i + 1) * args.batch_size)) for i in range(args.steps)]
    batches = {name: [collate(train.__getitems__(i)) for i in idx] for name, collate in modes.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times: dict[str, list[float]] = {name: [] for name in modes}
    memory: dict[str, int | None] = {}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up both modes
        for name in modes:
            seconds, peak = time_steps(model, optimizer, batches[name], device, args.bf16)
            if repeat:
                times[name].append(seconds)
                memory[name] = peak if memory.get(name) is None else max(memory[name], peak)
    length = train.tensors["input_ids"].shape[1]
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"{args.model}, {args.digits}x{args.digits} + {args.pauses} pauses, batch {args.batch_size}, "
        f"{length} positions, logits kept: {length - first + 1} ({device})"
    )
    print(f"{'mode':<18}{'ms/step':>10}{'peak MiB':>10}")
    for name in modes:
        mib = f"{memory[name] / 2**20:.0f}" if memory[name] is not None else "-"
        print(f"{name:<18}{1e3 * med[name]:>10.1f}{mib:>10}")
    ratio = med["all_logits"] / med["labelled_logits"]
    print(f"speed-up (all / labelled): {ratio:.3f}x")
    result = {
        "benchmark": "labelled_logits",
        "model": args.model,
        "digits": args.digits,
        "pauses": args.pauses,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "positions": length,
        "logits_kept": length - first + 1,
        "ms_per_step": {k: 1e3 * v for k, v in med.items()},
        "ms_per_step_repeats": times,
        "peak_memory_bytes": memory,
        "speedup": ratio,
        "device": device_label(device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "command": command_line("labelled_logits.py", argv),
    }
    write_json(
        args.out or ROOT / "benchmarks" / "results" / f"labelled_logits{'_' + args.tag if args.tag else ''}.json",
        result,
        announce=True,
    )
    return result


if __name__ == "__main__":
    main()
