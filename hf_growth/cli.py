"""The ``hf-growth`` command line: ``hf-growth grow | verify | push | data | analyze | demo``.

Each sub-command lives in ``hf_growth/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; those modules import only argparse at module level so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("demo", "grow", "verify", "push", "data", "analyze", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-growth",
        description="Grow pretrained transformers function-preservingly and train them to reason.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"hf_growth.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as error:  # bad input, missing or existing paths, a full disk
        print(f"hf-growth {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
