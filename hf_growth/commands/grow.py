"""``hf-growth grow SRC PLAN.yaml OUT``: grow a model directory or a GGUF file in memory, print a before/after
table (parameters, shapes) and the measured max |Δlogits|, and save the result with ``save_pretrained``."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("grow", help="grow a model by a plan (function-preserving)", description=__doc__)
    parser.add_argument("src", help="model directory (config.json + safetensors) or a .gguf file")
    parser.add_argument("plan", help="growth plan: a YAML file with a list of one-key steps")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the free (random) new weights")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="load (and save) in this dtype (default: the checkpoint's; GGUF: float32)")
    parser.add_argument("--no-verify", action="store_true", help="skip the max |Δlogits| measurement")
    return parser


def load_source(src: str, dtype: str | None):
    """Load a model directory or a GGUF file as a causal LM (GGUF: de-quantised, no quantization_config)."""
    import os
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM

    import hf_growth  # noqa: F401  (registers ResFormer)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(src)
    torch_dtype = getattr(torch, dtype) if dtype else None
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch_dtype or torch.float32)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    else:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype or "auto")
    return model.eval()


def _table(before, after) -> str:
    rows = [("parameters", f"{sum(p.numel() for p in before.parameters()):,}",
             f"{sum(p.numel() for p in after.parameters()):,}")]
    old = {n: tuple(p.shape) for n, p in before.named_parameters()}
    for name, p in after.named_parameters():
        if old.get(name) != tuple(p.shape) and ".layers." not in name and ".h." not in name:
            rows.append((name, str(old.get(name, "-")), str(tuple(p.shape))))
    layer_names = [n for n in old if ".0." in n]
    for name in layer_names:
        new_name = name
        new = dict(after.named_parameters()).get(new_name)
        if new is not None and tuple(new.shape) != old[name]:
            rows.append((name.replace(".0.", ".*."), str(old[name]), str(tuple(new.shape))))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  {'before':>22}  {'after':>22}"]
    lines += [f"{a:{width}}  {b:>22}  {c:>22}" for a, b, c in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hf_growth.growth import grow_model
    from hf_growth.growth.plan import GrowthPlan
    from hf_growth.growth.verify import max_logit_diff

    plan = GrowthPlan.parse(Path(args.plan))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    model = load_source(args.src, args.dtype)
    grown = grow_model(model, plan, seed=args.seed)
    print(_table(model, grown))
    if not args.no_verify:
        diff = max_logit_diff(model, grown)
        grown.config.growth_history[-1].setdefault("max_logit_diff", diff)
        print(f"max |Δlogits| = {diff:.3g}")
    grown.save_pretrained(out)
    print(f"saved to {out}")
    return 0
