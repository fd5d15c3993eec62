"""Exact match of saved retrieval members on their seed's test split and on many fresh questions (issue 12).

A member passes at >= 99% of its seed's 1,000 test questions; one at 0.987 may be a 0.99 model or not. This
script loads members saved by ``retrieval_ensemble.py --save-passed`` (a ``LlamaForCausalLM`` with
``retrieval_task.json`` beside it), answers the same test split again (a check that it is the model and the
questions the sweep recorded) and ``--fresh`` new questions of the same distribution, and prints both with a 95%
Wilson interval. Float32 on the CPU; the sweep tested in bfloat16 on the GPU, so a few answers can differ.

    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_eval_saved.py runs/keep/D8-cur-L10-s1 --fresh 20000
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from _common import command_line, versions, write_json  # noqa: E402
from retrieval_ensemble import TASK_FILE, number_ids, split_ids  # noqa: E402


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n``."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def hits_of(model, questions: torch.Tensor, answers: torch.Tensor, chunk: int = 1000) -> int:
    """How many questions the model answers right (argmax of the logits at the last position)."""
    hits = 0
    for s in range(0, len(questions), chunk):
        logits = model(input_ids=questions[s : s + chunk], logits_to_keep=1).logits[:, -1]
        hits += int((logits.argmax(-1) == answers[s : s + chunk]).sum())
    return hits


def evaluate(path: Path, tokenizer, fresh: int, fresh_seed: int, test_size: int) -> dict[str, Any]:
    from retrieval_sampling import sample_retrieval_ids
    from transformers import LlamaForCausalLM

    from hf_growth.tasks.retrieval import QUERY, SEPARATOR, retrieval_splits

    task = json.loads((path / TASK_FILE).read_text())
    match = re.search(r"-s(\d+)$", path.name)
    if match is None:
        raise ValueError(f"{path.name}: expected a member directory named like D8-cur-L10-s1 (the seed is its suffix)")
    seed = int(match.group(1))
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    hops, pairs, nodes, sep = task["hops"], task["num_pairs"], task["num_nodes"], bool(task["pair_separator"])
    splits = retrieval_splits(
        pairs,
        hops,
        nodes,
        curriculum=False,
        seed=seed,
        train_size=0,  # the test split is
        validation_size=0,
        test_size=test_size,
        pair_separator=sep,
    )  # drawn first, on its own
    test_hits = hits_of(model, *split_ids(tokenizer, splits["test"]))
    token_ids = number_ids(tokenizer, nodes, hops)
    generator = torch.Generator().manual_seed(fresh_seed)
    fq, fa = sample_retrieval_ids(
        fresh,
        pairs,
        hops,
        nodes,
        False,
        token_ids,
        tokenizer.convert_tokens_to_ids(QUERY),
        generator,
        tokenizer.convert_tokens_to_ids(SEPARATOR) if sep else None,
    )
    fresh_hits = hits_of(model, fq, fa)
    return {
        "member": path.name,
        "seed": seed,
        "layers": model.config.num_hidden_layers,
        "task": task,
        "test": {"n": test_size, "exact_match": test_hits / test_size, "wilson95": wilson(test_hits, test_size)},
        "fresh": {
            "n": fresh,
            "seed": fresh_seed,
            "exact_match": fresh_hits / fresh,
            "wilson95": wilson(fresh_hits, fresh),
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "members", nargs="+", type=Path, help="saved member directories (D<D>-<cur|nocur>-L<layers>-s<seed>)"
    )
    p.add_argument("--fresh", type=int, default=20000, help="fresh questions per member")
    p.add_argument("--fresh-seed", type=int, default=12345)
    p.add_argument("--test-size", type=int, default=1000, help="as the sweep's")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_growth import tasks

    tokenizer = tasks.build_tokenizer(max_number=256)  # retrieval_ensemble.py's
    rows = [evaluate(m, tokenizer, args.fresh, args.fresh_seed, args.test_size) for m in args.members]
    print("| member | step saved | recorded test | test again (fp32) | fresh questions | fresh exact match (95% CI) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["fresh"]["wilson95"]
        print(
            f"| {r['member']} | {r['task'].get('step')} | {r['task'].get('exact_match')} | "
            f"{r['test']['exact_match']:.3f} | {r['fresh']['n']} | {r['fresh']['exact_match']:.4f} "
            f"({lo:.4f}-{hi:.4f}) |"
        )
    if args.out:
        out = {
            "benchmark": "retrieval_eval_saved",
            "label": args.label,
            "device": "cpu",
            "command": command_line("research/retrieval_depth_vs_hops/retrieval_eval_saved.py", argv),
            "versions": versions(),
            "members": rows,
        }
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
