"""ResFormer vs Llama at equal everything: validation loss of the same shape, tokens, schedule and seeds.

Every variant is a :class:`hf_growth.ResFormerForCausalLM`; ``value_residual="none"`` is a plain Llama (the same
code path with the value residual off), so the only difference between the runs is the value residual. The
corpus is the one of ``research/midas_stacking_flops``: the Python sources of the installed packages, split by package,
tokenized with a byte-level BPE trained on the training split. Each run sees the same sequences in the same order.

    # one GPU: the paper's 82M shape (8 layers, hidden 512, MLP 1792, 8 heads), 4 variants, seed 0
    PYTHONPATH=. python research/resformer_vs_llama/train.py --seeds 0 --out-dir research/resformer_vs_llama/results
    PYTHONPATH=. python research/resformer_vs_llama/train.py --cpu-smoke --out-dir /tmp/rvl   # < 1 min on CPU

Writes ``<out>/resformer_vs_llama_s<seed>.json`` (per run: validation-loss curve, final loss, tokens/s, the first
layer's value statistics of the trained model), with device, versions and the exact command.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import command_line, device_label, versions, write_json  # noqa: E402

from hf_growth import ResFormerConfig, ResFormerForCausalLM  # noqa: E402
from hf_growth.analysis.values import value_statistics  # noqa: E402

VARIANTS = ("none", "identity", "learnable", "svformer")
#: the paper's 82M shape (papers.md section 2)
SHAPE_82M = dict(num_hidden_layers=8, hidden_size=512, intermediate_size=1792, num_attention_heads=8)


def _corpus_module() -> Any:
    """The MIDAS experiment's corpus helpers (read_corpus, load_tokenizer, to_sequences)."""
    path = ROOT / "research" / "midas_stacking_flops" / "midas_schedule.py"
    if not path.is_file():
        path = ROOT / "benchmarks" / "midas_schedule.py"
    spec = importlib.util.spec_from_file_location("midas_schedule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * peak`` (the paper's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: torch.Tensor, batch: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(val), batch):
        rows = val[start : start + batch].to(device, torch.long)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = _loss(model, rows)
        total += float(loss) * len(rows)
        count += len(rows)
    model.train()
    return total / count


def _loss(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=rows[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten())


def step_seconds(train: torch.Tensor, vocab: int, args: Any, device: torch.device, steps: int = 8) -> float:
    """Seconds per training step of the baseline (``value_residual="none"``), after two warm-up steps."""
    config = ResFormerConfig(
        vocab_size=vocab,
        max_position_embeddings=args.seq_len,
        value_residual="none",
        tie_word_embeddings=False,
        **args.shape,
    )
    model = ResFormerForCausalLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=device.type == "cuda")
    rows = train[: args.batch].to(device, torch.long)
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _loss(model, rows).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def train_one(
    variant: str, seed: int, train: torch.Tensor, val: torch.Tensor, vocab: int, args: Any, device: torch.device
) -> dict[str, Any]:
    torch.manual_seed(seed)
    config = ResFormerConfig(
        vocab_size=vocab,
        max_position_embeddings=args.seq_len,
        value_residual=variant,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        **args.shape,
    )
    config._attn_implementation = "sdpa"
    model = ResFormerForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    steps = len(train) // args.batch
    warmup = max(1, int(args.warmup * steps))
    curve, tokens = [], 0
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234))  # same for every run
    start = time.perf_counter()
    train_time = 0.0
    for step in range(steps):
        if step % args.eval_every == 0:
            curve.append({"step": step, "tokens": tokens, "val_loss": validation_loss(model, val, args.batch, device)})
            print(
                f"  {variant:>9} s{seed} step {step:5d} tokens {tokens / 1e6:7.1f}M val {curve[-1]['val_loss']:.4f}",
                flush=True,
            )
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, args.lr, warmup)
        rows = train[order[step * args.batch : (step + 1) * args.batch]].to(device, torch.long, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = _loss(model, rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda" and step % 50 == 0:
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        tokens += rows.numel() - len(rows)
    final = validation_loss(model, val, args.batch, device)
    curve.append({"step": steps, "tokens": tokens, "val_loss": final})
    print(f"  {variant:>9} s{seed} final val {final:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    probe = [
        val[i : i + args.batch, :-1].to(device, torch.long) for i in range(0, min(len(val), 4 * args.batch), args.batch)
    ]
    model.float()
    stats = value_statistics(model, [{"input_ids": p} for p in probe])
    return {
        "variant": variant,
        "seed": seed,
        "parameters": params,
        "steps": steps,
        "tokens": tokens,
        "final_val_loss": final,
        "curve": curve,
        "train_tokens_per_s": tokens / max(train_time, 1e-9),
        "value_statistics": stats,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--tokens", type=float, default=40e6, help="training tokens per run")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64, help="sequences per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--val-sequences", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="fit every run into this many seconds in all: the same step count for each, from the "
        "baseline's measured step time (fewer tokens than --tokens if need be)",
    )
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes and data on the CPU")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    args.shape = dict(SHAPE_82M)
    corpus_mb = None
    if args.cpu_smoke:
        args.shape = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4)
        args.tokens, args.seq_len, args.batch, args.vocab_size = 16 * 64 * 40, 64, 16, 512
        args.val_sequences, args.eval_every, corpus_mb = 32, 10, 1.0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    corpus_lib = _corpus_module()
    t0 = time.perf_counter()
    corpus = corpus_lib.read_corpus(int((corpus_mb or max(50.0, args.tokens * 3.5 / 1e6 * 1.1)) * 1e6))
    encode, tok_desc, vocab, eos = corpus_lib.load_tokenizer("bpe", corpus["texts"]["train"], args.vocab_size)
    train = corpus_lib.to_sequences(encode, corpus["texts"]["train"], eos, args.seq_len, int(args.tokens * 1.02))
    train = train[: int(args.tokens) // args.seq_len]  # to_sequences stops at a chunk boundary past max_tokens
    val = corpus_lib.to_sequences(
        encode, corpus["texts"]["validation"], eos, args.seq_len, args.val_sequences * (args.seq_len + 1)
    )[: args.val_sequences]
    print(
        f"data: {len(train)} train / {len(val)} validation sequences of {args.seq_len + 1} tokens, {tok_desc} "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    seeds, variants = [int(s) for s in args.seeds.split(",")], args.variants.split(",")
    if args.time_budget_s:  # the same steps for every run, as many as the budget allows at the baseline's speed
        step_s = step_seconds(train, vocab, args, device)
        steps = int(args.time_budget_s / (len(seeds) * len(variants)) / (step_s * 1.2))
        train = train[: max(1, min(len(train) // args.batch, steps)) * args.batch]
        print(
            f"budget {args.time_budget_s:.0f} s: {step_s * 1e3:.0f} ms a step -> {len(train) // args.batch} steps "
            f"({len(train) * args.seq_len / 1e6:.1f}M tokens) per run",
            flush=True,
        )
    out_dir = Path(args.out_dir)
    for seed in seeds:
        runs = [train_one(v, seed, train, val, vocab, args, device) for v in variants]
        record = {
            "benchmark": "resformer_vs_llama",
            "device": device_label(device),
            "versions": versions(),
            "command": command_line("research/resformer_vs_llama/train.py", argv),
            "shape": args.shape,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "tokens_per_run": (len(train) // args.batch) * args.batch * args.seq_len,
            "lr": args.lr,
            "warmup": args.warmup,
            "weight_decay": args.weight_decay,
            "tokenizer": tok_desc,
            "vocab": vocab,
            "corpus": {
                "train_packages": len(corpus["packages"]["train"]),
                "validation_packages": len(corpus["packages"]["validation"]),
            },
            "runs": runs,
        }
        suffix = "_smoke" if args.cpu_smoke else ""
        write_json(out_dir / f"resformer_vs_llama_s{seed}{suffix}.json", record)
        for run in runs:
            print(
                f"{run['variant']:>9} seed {seed}: final validation loss {run['final_val_loss']:.4f}, "
                f"{run['train_tokens_per_s'] / 1e3:.0f}k tokens/s, {run['parameters'] / 1e6:.1f}M parameters"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
