"""How a saved retrieval model answers questions of other sizes: accuracy per (number of pairs, D) (issue 12).

Before growing a model trained on one hop count into the members of a larger one (``retrieval_ensemble.py
--init-from``), ask what it already answers there: a D = 4 model (8 pairs, 27 tokens) meets 16 pairs (51 tokens) at
D = 8. For each ``--pairs`` count and each D in ``1..--hops`` it answers ``--n`` fresh questions of a chain of
``--hops`` links (``sample_retrieval_ids``, the training distribution, kept to the questions with exactly that D);
and, as a control for where the pairs sit, the training shape's questions with every position id moved right by
the extra tokens a larger count adds (RoPE attends by relative distance, so a shift alone changes nothing unless
the model uses absolute positions).

    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_transfer.py runs/passed/D4-cur-L6-s2 --trained-pairs 8 \
        --pairs 8,9,10,12,16 --hops 4 --name retrieval_transfer_D4L6s2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from _common import command_line, versions, write_json  # noqa: E402
from retrieval_depth import _ints  # noqa: E402
from retrieval_ensemble import TASK_FILE, number_ids  # noqa: E402


@torch.no_grad()
def accuracy(model, questions: torch.Tensor, answers: torch.Tensor, shift: int = 0) -> float:
    """Exact match of the argmax at the last position; position ids start at ``shift``."""
    if not len(answers):
        return float("nan")
    positions = torch.arange(questions.shape[1]).expand(len(questions), -1) + shift
    logits = model(questions, position_ids=positions).logits[:, -1]
    return round((logits.argmax(-1) == answers).float().mean().item(), 4)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a saved LlamaForCausalLM (retrieval_ensemble.py --save-passed)")
    p.add_argument("--pairs", type=_ints, default=[8, 16], help="pair counts to ask with, e.g. 8,12,16")
    p.add_argument("--hops", type=int, default=8, help="links per chain; D runs over 1..hops")
    p.add_argument(
        "--trained-pairs",
        type=int,
        default=None,
        help="the pair count the model was trained on "
        "(default: from the retrieval_task.json that --save-passed writes beside it)",
    )
    p.add_argument("--num-nodes", type=int, default=64)
    p.add_argument("--n", type=int, default=2000, help="questions per pair count (split over the D's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="research/retrieval_depth_vs_hops/results")
    p.add_argument("--name", default="retrieval_transfer")
    args = p.parse_args(argv)
    from retrieval_sampling import sample_retrieval_ids
    from transformers import LlamaForCausalLM

    from hf_growth import tasks
    from hf_growth.tasks.retrieval import QUERY, SEPARATOR

    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    task_file = Path(args.model) / TASK_FILE
    trained = args.trained_pairs or (json.loads(task_file.read_text())["num_pairs"] if task_file.is_file() else None)
    if trained is None:
        p.error(f"no {task_file}: pass --trained-pairs")
    tokenizer = tasks.build_tokenizer(max_number=256)
    token_ids = number_ids(tokenizer, args.num_nodes, args.hops)
    query_id, sep_id = tokenizer.convert_tokens_to_ids([QUERY, SEPARATOR])
    generator = torch.Generator().manual_seed(args.seed)

    def hops_of(questions: torch.Tensor) -> torch.Tensor:  # each question's D: the word before the start node
        return torch.tensor([int(t) for t in tokenizer.convert_ids_to_tokens(questions[:, -2].tolist())])

    rows = []
    for pairs in args.pairs:
        curriculum = torch.ones(args.n, dtype=torch.bool)  # D uniform in 1..hops, then grouped by D
        try:
            q, a = sample_retrieval_ids(
                args.n, pairs, args.hops, args.num_nodes, curriculum, token_ids, query_id, generator, sep_id
            )
        except ValueError as error:  # e.g. more pairs than --num-nodes can make distinct
            p.error(f"--pairs {pairs}: {error}")
        d = hops_of(q)
        by_d = {k: accuracy(model, q[d == k], a[d == k]) for k in range(1, args.hops + 1)}
        shift = 3 * (pairs - trained)
        row = {
            "pairs": pairs,
            "tokens": q.shape[1],
            "accuracy_by_D": by_d,
            "n_by_D": {k: int((d == k).sum()) for k in by_d},
        }
        if shift > 0:  # the trained shape moved right by the extra tokens: position alone
            qt, at = sample_retrieval_ids(
                args.n,
                trained,
                min(args.hops, trained),
                args.num_nodes,
                curriculum,
                token_ids,
                query_id,
                generator,
                sep_id,
            )
            dt = hops_of(qt)
            row["trained_shape_shifted"] = {
                "shift": shift,
                "accuracy_by_D": {
                    k: accuracy(model, qt[dt == k], at[dt == k], shift) for k in range(1, min(args.hops, trained) + 1)
                },
            }
        rows.append(row)
        shifted = row.get("trained_shape_shifted", {}).get("accuracy_by_D", {})
        print(
            f"{pairs:3d} pairs ({q.shape[1]} tokens): "
            + " ".join(f"D{k} {v:.3f}" for k, v in by_d.items())
            + (
                f" | {trained} pairs shifted by {shift}: " + " ".join(f"D{k} {v:.3f}" for k, v in shifted.items())
                if shifted
                else ""
            )
        )
    data = {
        "benchmark": "retrieval transfer to other sizes (issue 12)",
        "model": args.model,
        "trained_pairs": trained,
        "layers": model.config.num_hidden_layers,
        "hops": args.hops,
        "rows": rows,
        "device": "cpu",
        "versions": versions(),
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_transfer.py", argv),
    }
    write_json(Path(args.out_dir) / f"{args.name}.json", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
