"""``hf-growth verify SRC OUT``: check that a grown model computes what its source computes.

Loads both checkpoints (they must fit in memory), prints max |Δlogits| on a seeded random batch
(and on the prompt) and whether greedy text for ``--prompt`` matches. Exit status 0 when
max |Δlogits| <= ``--tolerance`` and the greedy text matches, 1 otherwise.
``--update-card`` writes the measured figure into OUT's model card (README.md).
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_PROMPT = "The capital of France is"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="compare a grown model with its source: max |Δlogits| and greedy text",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="the source model directory")
    parser.add_argument("out", help="the grown model directory")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt for the greedy-text check (default: %(default)r)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max |Δlogits| (default: %(default)g)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="dtype both models are compared in (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random comparison batch")
    parser.add_argument("--update-card", action="store_true", help="write the result into OUT/README.md")
    return parser


def _load(path: str, dtype: Any):
    import hf_growth  # noqa: F401  (registers the ResFormer Auto classes)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return model


def _tokenizer(*paths: str):
    from transformers import AutoTokenizer

    for path in paths:
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            continue
    return None


def _greedy(model, input_ids, max_new_tokens: int):
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0,
        )
    return out[0, input_ids.shape[1]:]


def verify_checkpoints(
    src: str,
    out: str,
    *,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 16,
    dtype: str = "float32",
    seed: int = 0,
    models: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Compare the models in ``src`` and ``out``; return ``{"max_logit_diff", "prompt_logit_diff",
    "greedy_match", "src_text", "out_text", "prompt"}``. ``models`` skips loading.

    >>> verify_checkpoints("small-model", "grown-model")["greedy_match"]  # doctest: +SKIP
    True
    """
    import torch

    from hf_growth.growth.verify import max_logit_diff, random_input_ids

    from pathlib import Path

    torch_dtype = getattr(torch, dtype)
    if models is None:
        for path in (src, out):
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    model_a, model_b = models if models is not None else (_load(src, torch_dtype), _load(out, torch_dtype))
    vocab = model_a.get_output_embeddings().weight.shape[0]
    diff = max_logit_diff(model_a, model_b, seed=seed)
    tokenizer = _tokenizer(src, out)
    if tokenizer is not None:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    else:  # no tokenizer: a seeded random prompt of token ids
        input_ids = random_input_ids(vocab, batch_size=1, seq_len=8, seed=seed + 1)
    prompt_diff = max_logit_diff(model_a, model_b, input_ids)
    tokens_a = _greedy(model_a, input_ids, max_new_tokens)
    tokens_b = _greedy(model_b, input_ids, max_new_tokens)

    def text(tokens):
        return tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else str(tokens.tolist())

    return {
        "max_logit_diff": max(diff, prompt_diff),
        "prompt_logit_diff": prompt_diff,
        "greedy_match": bool(torch.equal(tokens_a, tokens_b)),
        "src_text": text(tokens_a),
        "out_text": text(tokens_b),
        "prompt": prompt if tokenizer is not None else f"random token ids {input_ids[0].tolist()}",
        "dtype": dtype,
    }


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    result = verify_checkpoints(
        args.src, args.out, prompt=args.prompt, max_new_tokens=args.max_new_tokens, dtype=args.dtype, seed=args.seed
    )
    ok = result["max_logit_diff"] <= args.tolerance and result["greedy_match"]
    print(f"max |Δlogits|: {result['max_logit_diff']:.3g} (tolerance {args.tolerance:g}, {args.dtype})")
    print(f"prompt:        {result['prompt']!r}")
    print(f"source text:   {result['src_text']!r}")
    print(f"grown text:    {result['out_text']!r}")
    print(f"greedy text:   {'matches' if result['greedy_match'] else 'DIFFERS'}")
    if args.update_card:
        from transformers import AutoConfig

        import hf_growth  # noqa: F401
        from hf_growth.hub import guess_base_model, write_model_card

        config = AutoConfig.from_pretrained(args.out)
        path = write_model_card(args.out, config, base_model=guess_base_model(args.src, config), verification=result)
        print(f"model card:    {Path(path)}")
    if not ok:
        history = []
        try:
            history = json.loads((Path(args.out) / "config.json").read_text()).get("growth_history") or []
        except (OSError, ValueError):
            pass
        if any("stack" in json.dumps(step) for step in history):
            print("note: the plan has a `stack` step, which changes the function by design")
        print("verify: MISMATCH")
        return 1
    print("verify: OK")
    return 0
