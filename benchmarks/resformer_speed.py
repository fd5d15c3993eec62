"""ResFormer / SVFormer vs LlamaForCausalLM: training throughput, peak memory, KV-cache bytes, decode speed.

One GPU, bf16 weights, SDPA attention, the same shape, batch and data for Llama and every value-residual
variant (identity, constant, learnable, learnable_plus, sparse, svformer), in one run:

    PYTHONPATH=. python benchmarks/resformer_speed.py              # GPU, ~125M and ~350M shapes (a few minutes)
    PYTHONPATH=. python benchmarks/resformer_speed.py --repeats 3  # median of 3 interleaved runs per model
    PYTHONPATH=. python benchmarks/resformer_speed.py --smoke      # CPU smoke test with a tiny shape, seconds

Prints a table with ratios vs Llama and writes JSON (device, versions, exact command) to
benchmarks/results/resformer_speed.json (``--smoke``: resformer_speed_tiny.json; ``--output`` overrides).
Targets: training tokens/s >= 0.98x Llama and peak memory <= 1.02x for every variant, SVFormer KV cache <= 0.55x.
"sparse" mixes in the last 3/8 of the layers (the paper's layers 6-8 of 8).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, device_label, versions, write_json  # noqa: E402

SHAPES = {
    # name: (layers, hidden, intermediate, heads, kv heads)
    "125M": dict(num_hidden_layers=12, hidden_size=768, intermediate_size=2048, num_attention_heads=12),
    "350M": dict(num_hidden_layers=24, hidden_size=1024, intermediate_size=2560, num_attention_heads=16),
}
TINY_SHAPES = {"tiny": dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128, num_attention_heads=4)}
MODELS = ("llama", "identity", "constant", "learnable", "learnable_plus", "sparse", "svformer")


def sparse_layers(num_layers: int) -> list[int]:
    """The last 3/8 of the layers (at least one), 0-indexed: [5, 6, 7] for 8 layers."""
    count = max(1, round(3 * num_layers / 8))
    return list(range(num_layers - count, num_layers))


def build(model: str, shape: dict, vocab: int, max_pos: int, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_growth.resformer.configuration_resformer import ResFormerConfig
    from hf_growth.resformer.modeling_resformer import ResFormerForCausalLM

    common = dict(
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **shape,
    )
    if model == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    else:
        layers = sparse_layers(shape["num_hidden_layers"]) if model == "sparse" else None
        config = ResFormerConfig(value_residual=model, value_residual_layers=layers, **common)
        cls = ResFormerForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        return cls._from_config(config, attn_implementation="sdpa", dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(model, batch: int, seq: int, steps: int, warmup: int, vocab: int, device: torch.device) -> dict:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device="cpu").manual_seed(0)
    data = torch.randint(0, vocab, (warmup + steps, batch, seq), generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        loss = model(data[step], labels=data[step]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del optimizer
    return dict(tokens_per_s=batch * seq * steps / seconds, peak_memory_bytes=peak, final_loss=loss.item())


def saved_activation_bytes(model, batch: int, seq: int, vocab: int, device: torch.device) -> int:
    """Bytes of the distinct storages autograd saves for one training step's backward, parameters excluded
    (device-independent, so the CPU smoke run shows it too)."""
    model.train()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


@torch.no_grad()
def decode_speed(model, batch: int, context: int, new_tokens: int, vocab: int, device: torch.device) -> dict:
    from hf_growth.resformer.modeling_resformer import _CACHE_NAME, kv_cache_bytes

    model.eval()
    ids = torch.randint(0, vocab, (batch, context), generator=torch.Generator().manual_seed(0)).to(device)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, _CACHE_NAME)
    cache_bytes = kv_cache_bytes(cache)
    token = out.logits[:, -1:].argmax(-1)
    sync(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(token, use_cache=True, logits_to_keep=1, **{_CACHE_NAME: cache})
        cache = getattr(out, _CACHE_NAME)
        token = out.logits[:, -1:].argmax(-1)
    sync(device)
    seconds = time.perf_counter() - start
    return dict(
        kv_cache_bytes=cache_bytes, decode_tokens_per_s=batch * new_tokens / seconds, context=context, batch=batch
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", "--tiny", dest="smoke", action="store_true", help="CPU smoke test, tiny shape")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models to run (llama, the baseline, is always included)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per model, interleaved across models; the table shows the median",
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=None, help="training batch (sequences)")
    parser.add_argument("--seq", type=int, default=None, help="training sequence length")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--context", type=int, default=None, help="decode context length")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import transformers

    if args.smoke:
        device, dtype, shapes, vocab = torch.device("cpu"), torch.float32, TINY_SHAPES, 256
        batch, seq, steps, warmup = args.batch or 2, args.seq or 32, args.steps or 2, 1
        context, decode_batch, new_tokens = args.context or 64, 2, 4
        output = args.output or Path("benchmarks/results/resformer_speed_tiny.json")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU: run with --smoke for a CPU smoke test")
        device, dtype, shapes, vocab = torch.device("cuda", 0), torch.bfloat16, SHAPES, 32000
        batch, seq, steps, warmup = args.batch or 16, args.seq or 1024, args.steps or 30, 5
        context, decode_batch, new_tokens = args.context or 8192, 4, 64
        output = args.output or Path("benchmarks/results/resformer_speed.json")
        torch.backends.cuda.matmul.allow_tf32 = True

    result = dict(
        device=device_label(device),
        versions=versions(),
        command=command_line("resformer_speed.py", argv),
        settings=dict(
            dtype=str(dtype),
            attn_implementation="sdpa",
            batch=batch,
            seq=seq,
            steps=steps,
            warmup=warmup,
            vocab=vocab,
            decode_context=context,
            decode_batch=decode_batch,
            decode_new_tokens=new_tokens,
        ),
        training=[],
        decode={},
    )
    models = ["llama", *(m for m in MODELS if m in args.models and m != "llama")]
    result["settings"]["repeats"] = args.repeats
    started = time.perf_counter()
    for shape_name, shape in shapes.items():
        runs: dict[str, list[dict]] = {name: [] for name in models}
        parameters: dict[str, int] = {}
        fused: dict[str, int] = {}
        saved: dict[str, int] = {}
        for _ in range(args.repeats):  # interleaved, so that a drift of the device's clock hits every model alike
            for name in models:
                model = build(name, shape, vocab, context + new_tokens + 8, device, dtype)
                parameters[name] = sum(p.numel() for p in model.parameters())
                # mixing layers that run v_proj + mixing as one ValueResidualProjection (the rest: plain formula)
                fused[name] = sum(
                    bool(getattr(getattr(layer, "self_attn", None), "fuses_value_projection", lambda: False)())
                    for layer in model.model.layers
                )
                runs[name].append(train_speed(model, batch, seq, steps, warmup, vocab, device))
                if name not in saved:
                    saved[name] = saved_activation_bytes(model, batch, seq, vocab, device)
                del model
                free(device)
        for name in models:
            median = sorted(runs[name], key=lambda r: r["tokens_per_s"])[(len(runs[name]) - 1) // 2]
            result["training"].append(
                dict(
                    shape=shape_name,
                    model=name,
                    parameters=parameters[name],
                    fused_layers=fused[name],
                    saved_activation_bytes=saved[name],
                    **median,
                    tokens_per_s_runs=[r["tokens_per_s"] for r in runs[name]],
                )
            )
        if shape_name == list(shapes)[-1]:
            for name in ("llama", "svformer"):
                if name in models:
                    model = build(name, shape, vocab, context + new_tokens + 8, device, dtype)
                    result["decode"][name] = dict(
                        shape=shape_name, **decode_speed(model, decode_batch, context, new_tokens, vocab, device)
                    )
                    del model
                    free(device)
    result["seconds"] = time.perf_counter() - started

    # ratios vs Llama and the targets
    base = {r["shape"]: r for r in result["training"] if r["model"] == "llama"}
    for row in result["training"]:
        ref = base[row["shape"]]
        row["tokens_per_s_ratio"] = row["tokens_per_s"] / ref["tokens_per_s"]
        peak, ref_peak = row["peak_memory_bytes"], ref["peak_memory_bytes"]
        row["peak_memory_ratio"] = peak / ref_peak if ref_peak else None
        row["saved_activation_ratio"] = row["saved_activation_bytes"] / ref["saved_activation_bytes"]
    if {"llama", "svformer"} <= set(result["decode"]):
        sv, ll = result["decode"]["svformer"], result["decode"]["llama"]
        sv["kv_cache_ratio"] = sv["kv_cache_bytes"] / ll["kv_cache_bytes"]
        sv["decode_tokens_per_s_ratio"] = sv["decode_tokens_per_s"] / ll["decode_tokens_per_s"]
    result["targets"] = dict(
        training_throughput_ge_0_98=all(r["tokens_per_s_ratio"] >= 0.98 for r in result["training"]),
        peak_memory_le_1_02=all((r["peak_memory_ratio"] or 0) <= 1.02 for r in result["training"]),
        svformer_kv_cache_le_0_55=result["decode"].get("svformer", {}).get("kv_cache_ratio", 1.0) <= 0.55,
    )

    print(f"device: {result['device']}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"training: batch {batch} x seq {seq}, {steps} steps, {dtype}, sdpa, median of {args.repeats} run(s)")
    print(
        f"{'shape':<6} {'model':<14} {'params':>12} {'tokens/s':>12} {'ratio':>6} {'peak MiB':>10} {'ratio':>6} "
        f"{'saved MiB':>10} {'ratio':>6}"
    )
    for r in result["training"]:
        peak = f"{r['peak_memory_bytes'] / 2**20:10.0f}" if r["peak_memory_bytes"] else f"{'n/a':>10}"
        mem_ratio = f"{r['peak_memory_ratio']:6.3f}" if r["peak_memory_ratio"] else f"{'n/a':>6}"
        print(
            f"{r['shape']:<6} {r['model']:<14} {r['parameters']:>12,} {r['tokens_per_s']:>12,.0f} "
            f"{r['tokens_per_s_ratio']:6.3f} {peak} {mem_ratio} {r['saved_activation_bytes'] / 2**20:10.1f} "
            f"{r['saved_activation_ratio']:6.3f}"
        )
    print(f"decode: context {context}, batch {decode_batch}, {new_tokens} new tokens")
    print(f"{'model':<10} {'KV cache MiB':>13} {'ratio':>6} {'tokens/s':>10} {'ratio':>6}")
    for name, d in result["decode"].items():
        print(
            f"{name:<10} {d['kv_cache_bytes'] / 2**20:>13.1f} {d.get('kv_cache_ratio', 1.0):6.3f} "
            f"{d['decode_tokens_per_s']:>10,.1f} {d.get('decode_tokens_per_s_ratio', 1.0):6.3f}"
        )
    print("targets:", result["targets"], f"({result['seconds']:.0f} s)")

    write_json(output, result, indent=2, announce=True)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, if PYTHONPATH is not set
    main()
