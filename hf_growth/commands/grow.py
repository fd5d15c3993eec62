"""``hf-growth grow SRC PLAN.yaml OUT``: grow a model by a plan and save it with its model card.

A checkpoint directory (config.json + safetensors) is grown disk to disk, shard by shard (streaming:
memory stays at about one tensor, whatever the model's size). A ``.gguf`` file, or any source with
``--in-memory``, is loaded, grown in memory and saved with ``save_pretrained``. Either way it prints a
before/after table (parameters, changed shapes), writes ``README.md`` (the model card with the growth
lineage) and, with ``--verify`` (default for the in-memory path), the measured max |Δlogits| against the
source, also written into the card.

``--overwrite`` replaces OUT only if it is a model checkpoint or an earlier output of hf-growth. Exit
status: 0 done, 1 ``--verify`` measured a difference a function-preserving plan must not have (the
output is kept), 2 bad input (one line on stderr; nothing is written), 130 / 143 stopped by SIGINT /
SIGTERM (the partial output is removed).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "grow",
        help="grow a model by a plan (function-preserving)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src",
        help="model directory (config.json + safetensors), .gguf file, 'smollm2' or a Hub "
        "repository id (org/name: only the files growth needs are fetched)",
    )
    parser.add_argument("plan", help="growth plan: a YAML file with a list of one-key steps")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the free (random) new weights")
    parser.add_argument("--revision", default=None, help="a Hub id's branch, tag or commit (default: main)")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest output shard, e.g. 500MB, 2GiB or bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it exists and is a model checkpoint or an earlier output (only once growth succeeded)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no table (for scripts)")
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole model and grow it in memory (default only for .gguf sources)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="in memory: load (and save) in this dtype (default: the checkpoint's; GGUF: float32)",
    )
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify",
        action="store_true",
        default=None,
        help="after growing, load both models, measure max |Δlogits| and greedy text and write the "
        "figure into the model card (default for the in-memory path); exit 1 if a plan meant "
        "to preserve the function does not (tolerance 1e-4); on bad input nothing is left",
    )
    verify.add_argument("--no-verify", dest="verify", action="store_false", help="skip the measurement")
    return parser


def load_source(src: str, dtype: str | None, revision: str | None = None):
    """Load any model source (directory, ``.gguf`` file, ``smollm2``, Hub id: :func:`hf_growth.load_model`) as
    ``(causal LM, tokenizer or None)``; a GGUF file is de-quantised (float32 unless ``dtype``), without a
    quantization_config."""
    from hf_growth.growth.sources import load_model

    return load_model(src, dtype=dtype, revision=revision)


def shape_table(
    before: dict[str, tuple[int, ...]],
    after: dict[str, tuple[int, ...]],
    num_before: int | None = None,
    num_after: int | None = None,
) -> str:
    """A before/after table: parameter count, then every tensor whose shape changed (layer tensors folded
    into one ``layers.*`` row per role, new tensors shown with ``-`` before)."""
    import re

    def count(shapes: dict[str, tuple[int, ...]]) -> int:
        total = 0
        for shape in shapes.values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    layer = re.compile(r"\.(layers|h|blocks)\.\d+\.")
    rows = [
        (
            "parameters",
            f"{num_before if num_before is not None else count(before):,}",
            f"{num_after if num_after is not None else count(after):,}",
        )
    ]

    def layers(shapes: dict[str, tuple[int, ...]]) -> int:
        return len({m.group(0) for m in map(layer.search, shapes) if m})

    if layers(before) != layers(after):
        rows.append(("layers", str(layers(before)), str(layers(after))))
    old_patterns = {layer.sub(lambda m: f".{m.group(1)}.*.", n) for n in before}
    seen: set[tuple[str, str, str]] = set()
    for name, shape in after.items():
        old = before.get(name)
        if old is not None and tuple(old) == tuple(shape):
            continue
        key = layer.sub(lambda m: f".{m.group(1)}.*.", name)
        if old is None and key != name and key in old_patterns:
            continue  # a tensor of a new layer: the `layers` row and the old layers' rows say it
        old_text = str(tuple(old)) if old is not None else "-"
        row = (key, old_text, str(tuple(shape)))
        if key != name:  # one row per layer role and (old, new) shapes
            if (key, old_text, row[2]) in seen:
                continue
            seen.add((key, old_text, row[2]))
        rows.append(row)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'before':>22}  {'after':>22}"]
    lines += [f"{a:{width}}  {b:>22}  {c:>22}" for a, b, c in rows]
    return "\n".join(lines)


def _report_verification(result: dict, out, history: list | None) -> int:
    """Print a ``--verify`` result; 1 when a plan meant to preserve the function does not (the output is kept)."""
    from pathlib import Path

    from hf_growth.growth.verify import DEFAULT_TOLERANCE, changes_function_by_design, verification_passed

    random_ids = "" if result.get("tokenizer", True) else "; no tokenizer: greedy text on seeded random token ids"
    print(
        f"max |Δlogits| = {result['max_logit_diff']:.3g} (greedy text "
        f"{'matches' if result['greedy_match'] else 'DIFFERS'}{random_ids}; "
        f"written into {Path(out) / 'README.md'})"
    )
    if verification_passed(result, DEFAULT_TOLERANCE):
        return 0
    if changes_function_by_design(history):
        print("note: the plan has a `stack` or approximate step, which changes the function by design")
        return 0
    print(
        f"verify: MISMATCH: max |Δlogits| {result['max_logit_diff']:.3g} (tolerance {DEFAULT_TOLERANCE:g}), "
        f"greedy text {'matches' if result['greedy_match'] else 'differs'}; the output is kept in {out}"
    )
    return 1


def _streaming(args: argparse.Namespace, plan) -> int:
    import json
    from pathlib import Path

    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import grow_checkpoint

    if args.dtype:
        raise ValueError("--dtype needs --in-memory: streaming growth keeps the checkpoint's dtype")
    results: list[dict] = []
    out = grow_checkpoint(
        args.src,
        plan,
        args.out,
        seed=args.seed,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        quiet=args.quiet,
        verify=bool(args.verify),
        on_verified=results.append,
        base_model=getattr(args, "base_model", None),
    )
    if not args.quiet:
        src, grown = SafetensorsSource(args.src), SafetensorsSource(out)
        print(shape_table({n: src.shape(n) for n in src}, {n: grown.shape(n) for n in grown}))
    status = 0
    if results:
        history = json.loads((Path(out) / "config.json").read_text()).get("growth_history")
        status = _report_verification(results[0], out, history)
    if not args.quiet:
        print(f"saved to {out}")
    return status


def _in_memory(args: argparse.Namespace, plan) -> int:
    from pathlib import Path

    from hf_growth.growth import grow_model
    from hf_growth.growth.io import check_output_dir
    from hf_growth.growth.memory import save_grown
    from hf_growth.growth.verify import DEFAULT_TOLERANCE, changes_function_by_design, max_logit_diff

    src_path = Path(args.src)
    out = check_output_dir(args.out, src_path if src_path.is_dir() else None, overwrite=args.overwrite)
    model, tokenizer = load_source(args.src, args.dtype, getattr(args, "revision", None))
    grown = grow_model(model, plan, seed=args.seed)
    if not args.quiet:
        print(
            shape_table(
                {n: tuple(p.shape) for n, p in model.named_parameters()},
                {n: tuple(p.shape) for n, p in grown.named_parameters()},
                model.num_parameters(),
                grown.num_parameters(),
            )
        )
    verification = None
    status = 0
    if args.verify is None or args.verify:
        diff = max_logit_diff(model, grown)
        verification = {"max_logit_diff": diff, "measured_by": "hf-growth grow --verify"}
        print(f"max |Δlogits| = {diff:.3g}")
        if args.verify and diff > DEFAULT_TOLERANCE and not changes_function_by_design(grown.config.growth_history):
            print(
                f"verify: MISMATCH: max |Δlogits| {diff:.3g} (tolerance {DEFAULT_TOLERANCE:g}); the output is "
                f"kept in {out}"
            )
            status = 1
    save_grown(
        grown,
        out,
        source=model,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        verification=verification,
        tokenizer=tokenizer,
    )
    if not args.quiet:
        print(f"saved to {out}")
    return status


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hf_growth.growth.plan import GrowthPlan
    from hf_growth.growth.sources import resolve_source

    plan = GrowthPlan.parse(Path(args.plan))
    source = resolve_source(args.src, revision=args.revision)
    if args.in_memory or source.directory is None:
        return _in_memory(args, plan)
    if source.kind == "hub":  # stream straight from the cached snapshot; the card names the repository
        args.src, args.base_model = str(source.directory), source.name
    return _streaming(args, plan)
