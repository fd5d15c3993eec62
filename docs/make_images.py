"""Regenerate the example figures in docs/ (offline).

    .venv/bin/python docs/make_images.py smollm2    # entropy + values of SmolLM2-135M: ~1 min on 2 CPU cores
    .venv/bin/python docs/make_images.py heads      # head-emergence training run: ~3.5 min on one GPU
    .venv/bin/python docs/make_images.py            # both

- ``docs/analysis_entropy.png``: matrix entropy per layer of the embedded SmolLM2-135M on natural text vs the
  synthetic retrieval task's token sequences (collapse shows as lower entropy).
- ``docs/analysis_values.png``: value-residual statistics of SmolLM2-135M on natural text.
- ``docs/analysis_heads.png``: head emergence while a tiny 4-layer Llama (hidden 128, 4 heads) learns the
  synthetic retrieval task (1–2 hops, 8000 steps of batch 256) with transformers' ``Trainer`` and
  ``HeadEmergenceCallback``; the score is the attention from the query token x_0 to the pair ``x_0 x_1``.
The raw numbers are written next to each image as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from hf_growth.analysis import (  # noqa: E402
    HeadEmergenceCallback,
    layer_entropy,
    plot_head_emergence,
    plot_layer_entropy,
    plot_value_statistics,
    value_statistics,
)
from hf_growth.analysis.probes import retrieval_vocab_size, synthetic_retrieval  # noqa: E402
from hf_growth.commands.analyze import SAMPLE_TEXTS  # noqa: E402


def smollm2_images(out: Path = DOCS) -> None:
    from hf_growth._embedded import load_smollm2

    start = time.time()
    model, tokenizer = load_smollm2()
    print(f"loaded SmolLM2-135M in {time.time() - start:.0f} s")
    text = tokenizer(list(SAMPLE_TEXTS), return_tensors="pt", padding=True)
    retrieval = synthetic_retrieval(len(SAMPLE_TEXTS), num_pairs=12, num_nodes=26, hops=(1, 2, 3))
    # the retrieval task spelled with letters, as SmolLM2 would read it: "q w e r ... | a 3"
    letters = [
        " ".join(chr(97 + int(t)) if t < 26 else ("|" if t == 26 else str(int(t) - 26)) for t in row[:-1])
        for row in retrieval["input_ids"]
    ]
    task = tokenizer(letters, return_tensors="pt", padding=True)
    entropy = {
        "natural text": layer_entropy(model, text),
        "natural text, first token left out": layer_entropy(model, text, skip_tokens=1),
        "retrieval task (letters)": layer_entropy(model, task),
        "retrieval task, first token left out": layer_entropy(model, task, skip_tokens=1),
    }
    plot_layer_entropy(
        entropy, out / "analysis_entropy.png", title="SmolLM2-135M: matrix entropy of token representations per layer"
    )
    (out / "analysis_entropy.json").write_text(json.dumps({k: v.to_dict() for k, v in entropy.items()}, indent=1))
    stats = value_statistics(model, text)
    plot_value_statistics(
        {"SmolLM2-135M": stats},
        out / "analysis_values.png",
        title=f"SmolLM2-135M value residual statistics ({stats['num_sequences']} text sequences)",
    )
    (out / "analysis_values.json").write_text(json.dumps(stats, indent=1))
    for name, values in entropy.items():
        print(f"entropy {name}: " + " ".join(f"{x:.2f}" for x in values))
    for key in ("value_cos_to_first", "attention_entropy", "first_token_attention"):
        print(f"{key}: " + " ".join(f"{x:.2f}" for x in stats[key]))


def heads_image(
    steps: int = 8000,
    every: int = 250,
    seed: int = 0,
    *,
    hops=(1, 2),
    num_pairs: int = 5,
    num_nodes: int = 24,
    layers: int = 4,
    hidden: int = 128,
    lr: float = 5e-4,
    batch: int = 256,
    device: str = "cpu",
    out: Path = DOCS,
) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    hops = (hops,) if isinstance(hops, int) else tuple(hops)
    vocab = retrieval_vocab_size(num_nodes, max(hops))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    train = synthetic_retrieval(
        min(steps * batch, 200_000), num_pairs=num_pairs, num_nodes=num_nodes, hops=hops, seed=seed
    )
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(train["input_ids"], train["labels"])]
    probe = synthetic_retrieval(64, num_pairs=num_pairs, num_nodes=num_nodes, hops=max(hops), seed=seed + 1)
    # what matters for the first hop: from the query token x_0, attention to the pair "x_0 x_1" that it must
    # find among the distractor pairs (x_0's earlier occurrence, or the token after it)
    query_token = torch.zeros_like(probe["query_mask"])
    query_token[:, -3] = True
    first_pair = probe["first_hop_key"] | probe["first_hop_key"].roll(-1, dims=1)
    callback = HeadEmergenceCallback(probe["input_ids"], first_pair, query_mask=query_token, every=every)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=steps,
            learning_rate=lr,
            warmup_steps=50,
            weight_decay=0.0,
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            seed=seed,
            lr_scheduler_type="constant_with_warmup",
            disable_tqdm=True,
        )
        start = time.time()
        Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
        print(f"trained {steps} steps in {time.time() - start:.0f} s")
    model = model.cpu()
    with torch.no_grad():
        logits = model(probe["input_ids"]).logits[:, -2]
    accuracy = float((logits.argmax(-1) == probe["input_ids"][:, -1]).float().mean())
    print(f"probe accuracy ({max(hops)} hops): {accuracy:.2f}")
    hop_text = "–".join(str(h) for h in (min(hops), max(hops))) if len(hops) > 1 else str(hops[0])
    plot_head_emergence(
        callback,
        out / "analysis_heads.png",
        title=f"Head emergence: {layers}-layer Llama on synthetic {hop_text}-hop retrieval "
        f"(probe: {max(hops)} hops, accuracy {accuracy:.0%} at step {steps})\n"
        "score: attention from the query token x0 to the pair 'x0 x1' (the first hop)",
    )
    callback.save(out / "analysis_heads.json", include_maps=False)
    final = callback.scores[-1]
    for layer, row in enumerate(callback.emergence_steps()):
        print(f"layer {layer}: final score " + " ".join(f"{x:.2f}" for x in final[layer]) + f"; half-rise step {row}")
    return accuracy


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the analysis figures of docs/.")
    parser.add_argument("which", nargs="*", help="smollm2 and/or heads (default: both)")
    parser.add_argument("--out", type=Path, default=DOCS, help="output directory (default: docs/)")
    cli = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    which = set(cli.which) or {"smollm2", "heads"}
    if which - {"smollm2", "heads"}:
        parser.error(f"unknown figure(s): {sorted(which - {'smollm2', 'heads'})}")
    if "smollm2" in which:
        smollm2_images(cli.out)
    if "heads" in which:  # about 3.5 minutes on one GPU; on 2 CPU cores, much longer
        heads_image(device="cuda" if torch.cuda.is_available() else "cpu", out=cli.out)
