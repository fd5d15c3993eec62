"""Minimum depth against the hop count D over several sweeps' ledgers: one table, plot and JSON (issue 12).

Each call of ``retrieval_ensemble.py`` writes its own table, for the D's it ran. The depth-vs-D answer pools the
ledgers of one setting: the records of ``--ledgers`` that match it (``--pair-separator``, the staged curriculum or
none -- the uniform mixture is another arm --, the task's default number of pairs for its D; D = 1 has no
curriculum, and ``--d1-any`` also takes D = 1 runs without ``<sep>``), and for each (D, curriculum, layers, seed)
**the run given the most steps** (its schedule if it finished or passed, what it made if it was cut off before
passing; a later ledger wins a tie). Shorter runs of the same configuration are
listed in the JSON (``superseded``), never counted. Then the sweep's own table, log fit and plot
(``retrieval_depth.summarize`` / ``plot``). A cut-off run (``timed_out``) counts as not passed; the table says how
many there are. Members started from a saved model (``retrieval_ensemble.py --init-from``) are another arm:
left out, or with ``--grown`` the only ones pooled. Members of one shape are pooled (``--width``, ``--heads``;
records from before the sweep wrote ``model`` are the default 128 wide, 4 heads).

    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_depth_vs_d.py   # the committed H200 ledgers
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

from _common import command_line, write_json  # noqa: E402
from retrieval_depth import Ledger, markdown_table, plot, summarize, task_shape  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_LEDGERS = [  # oldest first: D = 1, then D = 2, D = 4 and D = 8 runs
    "retrieval_ensemble_h200.runs.jsonl",
    "retrieval_ensemble_sep_h200.runs.jsonl",
    "retrieval_ensemble_staged_h200.runs.jsonl",
    "retrieval_ensemble_staged_h200_D2L4.runs.jsonl",
    "retrieval_ensemble_staged_h200_D2_heads.runs.jsonl",
    "retrieval_ensemble_staged_h200_D4.runs.jsonl",
    "retrieval_ensemble_staged_h200_D4_long.runs.jsonl",
    "retrieval_ensemble_staged_h200_D4_L45.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8.runs.jsonl",
    "retrieval_ensemble_staged_h200_D4_L6_try1.runs.jsonl",
    "retrieval_ensemble_staged_h200_D4_L6_save.runs.jsonl",
    "retrieval_ensemble_staged_h200_D1_p8_source.runs.jsonl",
    "retrieval_ensemble_staged_h200_D1_p16_from_p8.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8_grown.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8_grown_rollback.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8_grown_newest50.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8_grown_raisecheck.runs.jsonl",
    "retrieval_ensemble_staged_h200_D2_val2000.runs.jsonl",
    "retrieval_ensemble_staged_h200_D1_p8_source_s14.runs.jsonl",
    "retrieval_ensemble_staged_h200_D1_p16_from_p8_s14.runs.jsonl",
    "retrieval_ensemble_staged_h200_D8_grown_w256.runs.jsonl",
]


def steps_of(record: dict[str, Any]) -> int:
    """The steps a run was given: its schedule's length if it finished or passed (a member that reached the stop
    early, or passed when it was cut off, was given what it needed), the steps it made if it was cut off before
    passing (a censored run: it says "not yet", not "no"; a per-process run: its last step)."""
    ens = record.get("ensemble") or {}
    made = int(ens.get("steps") or record.get("global_steps") or 0)
    return made if record.get("timed_out") and not record.get("passed") else int(ens.get("schedule_steps") or made)


DEFAULT_MODEL = {"width": 128, "heads": 4, "mlp": 512}  # every record written before records carried "model"


def in_setting(
    record: dict[str, Any],
    separator: bool = True,
    d1_any: bool = True,
    grown: bool = False,
    width: int = DEFAULT_MODEL["width"],
    heads: int = DEFAULT_MODEL["heads"],
) -> bool:
    """Whether a record belongs to the pooled setting (see the module docstring)."""
    opts = record.get("task_options") or {}
    if bool(record.get("init_from")) != grown:  # members started from a saved model are another arm
        return False
    model = record.get("model") or DEFAULT_MODEL
    if (model["width"], model["heads"]) != (width, heads):  # the minimum depth is per member shape
        return False
    hops = int(record["hops"])
    if record.get("heads_probe") or opts.get("num_pairs") != task_shape(hops, pair_separator=separator)["num_pairs"]:
        return False
    if hops == 1:
        return d1_any or bool(opts.get("pair_separator")) == separator
    if bool(opts.get("pair_separator")) != separator:
        return False
    return not record["curriculum"] or opts.get("curriculum_kind") == "staged"


def pool(sources: list[tuple[str, list[dict[str, Any]]]], **setting) -> tuple[list[dict], list[dict]]:
    """The chosen records (the longest run per configuration, a later source on a tie) and the superseded ones,
    each with its ``source`` added. ``sources``: (name, records) in order, one record per key (a ``Ledger``'s)."""
    chosen: dict[tuple, dict[str, Any]] = {}
    superseded = []
    for name, records in sources:
        for r in records:
            if not in_setting(r, **setting):
                continue
            r = {**r, "source": name}
            config = (int(r["hops"]), bool(r["curriculum"]), int(r["layers"]), int(r["seed"]))
            old = chosen.get(config)
            if old is not None and steps_of(old) > steps_of(r):
                superseded.append(r)
                continue
            if old is not None:
                superseded.append(old)
            chosen[config] = r
    order = sorted(chosen)
    return [chosen[c] for c in order], superseded


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ledgers",
        default=",".join(DEFAULT_LEDGERS),
        help="comma-separated ledger files, oldest first (relative ones under --results)",
    )
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--no-separator", dest="separator", action="store_false", help="pool the runs without <sep>")
    p.add_argument(
        "--d1-any",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="D = 1 runs count with or without <sep> (it changes the question's length only)",
    )
    p.add_argument(
        "--grown",
        action="store_true",
        help="pool the grown arm (members started from saved models, --init-from) instead of from scratch",
    )
    p.add_argument("--width", type=int, default=DEFAULT_MODEL["width"], help="pool the members of this width ...")
    p.add_argument("--heads", type=int, default=DEFAULT_MODEL["heads"], help="... and this many heads")
    p.add_argument("--seeds", type=int, default=3, help="seeds a configuration needs to be complete")
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--name", default="retrieval_depth_vs_D")
    p.add_argument("--label", default="H200, <sep>, staged curriculum")
    args = p.parse_args(argv)
    results = Path(args.results)
    sources = []
    for item in filter(None, (s.strip() for s in args.ledgers.split(","))):
        path = Path(item) if Path(item).is_absolute() or Path(item).exists() else results / item
        if not path.is_file():
            raise SystemExit(f"no ledger at {path}")
        sources.append((path.name, list(Ledger(path).records.values())))
    records, superseded = pool(
        sources, separator=args.separator, d1_any=args.d1_any, grown=args.grown, width=args.width, heads=args.heads
    )
    if not records:
        raise SystemExit("no record of the ledgers matches the setting")
    result = summarize(records, args.seeds)
    out = Path(args.out_dir)
    max_layers = max(int(r["layers"]) for r in records)
    title = (
        f"{args.label}: min depth for >= {args.target:.0%} test exact match, pooled ledgers "
        f"(per configuration the run given the most steps, {args.seeds} seeds)"
    )
    png = plot(result, out / f"{args.name}.png", max_layers, title)
    brief = ("hops", "curriculum", "layers", "seed", "exact_match", "passed", "timed_out", "source", "key", "init_from")
    data = {
        "benchmark": "retrieval minimum depth vs D, pooled ledgers (issue 12)",
        "label": args.label,
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_depth_vs_d.py", argv),
        "rule": "per (D, curriculum, layers, seed) the run given the most steps (schedule if finished or passed, steps "
        "made if cut off before passing); a cut-off run counts as not passed",
        "setting": {
            "pair_separator": args.separator,
            "d1_any": args.d1_any,
            "curriculum": "staged or none",
            "arm": "grown (--init-from)" if args.grown else "from scratch",
            "width": args.width,
            "heads": args.heads,
        },
        "sources": [name for name, _ in sources],
        "table": result["table"],
        "fits": result["fits"],
        "markdown": markdown_table(result),
        "plot": png.name,
        "runs": [
            {
                **{k: r.get(k) for k in brief},
                "steps": steps_of(r),
                "devices": r.get("device"),
                "curriculum_stages": r.get("curriculum_stages"),
            }
            for r in records
        ],
        "superseded": [{**{k: r.get(k) for k in brief}, "steps": steps_of(r)} for r in superseded],
    }
    write_json(out / f"{args.name}.json", data)
    print(data["markdown"])
    print(f"fits: {json.dumps(result['fits'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
