"""``hf-growth data NAME OUT [options]``: build a task dataset and write it with ``save_to_disk``.

hf-growth data multiplication data/mult4 --digits 4
hf-growth data retrieval data/ret --num-pairs 16 --hops 4 --train-size 100000
"""

from __future__ import annotations

import argparse

TASK_NAMES = ("multiplication", "arithmetic", "lis", "retrieval")

# option -> (type, help); only options given on the command line reach the builder
_OPTIONS = {
    "digits": (int, "multiplication: digits of both operands (default 4)"),
    "digits_a": (int, "multiplication: digits of the first operand"),
    "digits_b": (int, "multiplication: digits of the second operand"),
    "num_operators": (int, "arithmetic: operators per expression (default 5)"),
    "modulus": (int, "arithmetic: prime modulus (default 11)"),
    "length": (int, "lis: sequence length (default 50)"),
    "max_value": (int, "lis: values are < max_value (default 250)"),
    "num_pairs": (int, "retrieval: links per question (default 16)"),
    "hops": (int, "retrieval: hops D (default 4)"),
    "num_nodes": (int, "retrieval: node vocabulary size (default 64)"),
    "train_size": (int, "train examples (task default: 808000 multiplication, 200000 arithmetic/lis, 2^20 retrieval)"),
    "validation_size": (int, "validation examples (default 1000)"),
    "test_size": (int, "test examples (default 1000)"),
    "seed": (int, "random seed (default 0)"),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "data",
        help="build a reasoning task dataset (save_to_disk)",
        description="Build a deterministic train/validation/test DatasetDict and write it with save_to_disk.",
    )
    parser.add_argument("name", choices=TASK_NAMES, help="the task")
    parser.add_argument("out", help="output directory (must not exist unless --overwrite)")
    for name, (kind, text) in _OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    parser.add_argument(
        "--no-curriculum",
        dest="curriculum",
        action="store_false",
        default=None,
        help="retrieval: train at the full hop count only",
    )
    parser.add_argument(
        "--pair-separator",
        dest="pair_separator",
        action="store_true",
        default=None,
        help="retrieval: '<sep>' after every pair of a question",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a dataset written by save_to_disk (anything else is refused)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import inspect
    import time
    from pathlib import Path

    from hf_growth import tasks
    from hf_growth.growth.io.output_dir import atomic_output_dir, check_replaceable, why_not_replaceable_dataset

    out = Path(args.out)
    if out.exists() or out.is_symlink():  # refuse before building anything
        if not args.overwrite:
            raise FileExistsError(f"{args.out} exists: pass --overwrite to replace it")
        check_replaceable(out, why_not_replaceable_dataset, "a dataset written by save_to_disk")
    builder = tasks.TASKS[args.name][0]
    accepted = set(inspect.signature(builder).parameters)
    given = {
        k: getattr(args, k) for k in [*_OPTIONS, "curriculum", "pair_separator"] if getattr(args, k, None) is not None
    }
    wrong = sorted(set(given) - accepted)
    if wrong:
        raise ValueError(f"task {args.name!r} does not take {', '.join('--' + w.replace('_', '-') for w in wrong)}")
    start = time.perf_counter()
    ds = builder(**given)
    with atomic_output_dir(
        out, overwrite=args.overwrite, replaceable=why_not_replaceable_dataset, what="a dataset written by save_to_disk"
    ) as tmp:
        ds.save_to_disk(str(tmp))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in ds.items())
    print(f"wrote {args.name} ({sizes}) to {args.out} in {time.perf_counter() - start:.1f}s")
    print(f"example: {ds['train'][0]}")
    return 0
