"""``hf-growth verify SRC OUT``: check that a grown model computes what its source computes.

Loads both checkpoints (they must fit in memory), prints max |Δlogits| on a seeded random batch
(and on the prompt) and whether greedy text for ``--prompt`` matches; without tokenizer files in
SRC or OUT the prompt is a seeded random row of token ids, and it says so.
Exit status: 0 when max |Δlogits| <= ``--tolerance`` and the greedy text matches, 1 when not (the
figures are printed), 2 on bad input (a missing, truncated or pickle-only checkpoint, models with
different vocabularies), with one line on stderr.
``--update-card`` writes the measured figure into OUT's model card (README.md).
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_PROMPT = "The capital of France is"  # = hf_growth.growth.verify.DEFAULT_PROMPT (no torch import here)
DEFAULT_TOLERANCE = 1e-4  # = hf_growth.growth.verify.DEFAULT_TOLERANCE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify",
        help="compare a grown model with its source: max |Δlogits| and greedy text",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="the source model directory")
    parser.add_argument("out", help="the grown model directory")
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="prompt for the greedy-text check (default: %(default)r)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted max |Δlogits| (default: %(default)g)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "float64"],
        help="dtype both models are compared in (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random comparison batch")
    parser.add_argument("--update-card", action="store_true", help="write the result into OUT/README.md")
    return parser


def print_result(result: dict[str, Any], tolerance: float) -> None:
    """The figures of a verification, one per line (shared with ``hf-growth grow --verify``)."""
    print(f"max |Δlogits|: {result['max_logit_diff']:.3g} (tolerance {tolerance:g}, {result['dtype']})")
    if not result.get("tokenizer", True):
        print("no tokenizer in either directory: greedy text compared on seeded random token ids")
    print(f"prompt:        {result['prompt']!r}")
    print(f"source text:   {result['src_text']!r}")
    print(f"grown text:    {result['out_text']!r}")
    print(f"greedy text:   {'matches' if result['greedy_match'] else 'DIFFERS'}")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hf_growth.growth.verify import changes_function_by_design, verification_passed, verify_checkpoints

    result = verify_checkpoints(
        args.src, args.out, prompt=args.prompt, max_new_tokens=args.max_new_tokens, dtype=args.dtype, seed=args.seed
    )
    print_result(result, args.tolerance)
    if args.update_card:
        from transformers import AutoConfig

        import hf_growth  # noqa: F401
        from hf_growth.hub import guess_base_model, write_model_card

        config = AutoConfig.from_pretrained(args.out)
        result["measured_by"] = "hf-growth verify"
        path = write_model_card(args.out, config, base_model=guess_base_model(args.src, config), verification=result)
        print(f"model card:    {Path(path)}")
    if not verification_passed(result, args.tolerance):
        try:
            history = json.loads((Path(args.out) / "config.json").read_text()).get("growth_history") or []
        except (OSError, ValueError, AttributeError):
            history = []
        if changes_function_by_design(history):
            print("note: the plan has a `stack` or approximate step, which changes the function by design")
        print("verify: MISMATCH")
        return 1
    print("verify: OK")
    return 0
