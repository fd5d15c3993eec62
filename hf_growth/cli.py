"""The ``hf-growth`` command line: ``hf-growth grow | verify | push | data | analyze | demo``.

Each sub-command lives in ``hf_growth/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; those modules import only argparse at module level so ``--help`` stays fast.

Exit status: what the command returns (0 success, 1 a failed check such as ``verify``'s), 2 for bad
input (one line on stderr), 130 when stopped by SIGINT (Ctrl-C) and 143 by SIGTERM: the signal is
raised as :class:`Interrupted` in the command, so every partial output is removed on the way out,
and one line on stderr says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

COMMANDS = ("demo", "grow", "verify", "push", "data", "analyze", "export")


class _Parser(argparse.ArgumentParser):
    """argparse with one line for a usage error (no usage block): ``hf-growth grow: error: ...``, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hf-growth",
        description="Grow pretrained transformers function-preservingly and train them to reason.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"hf_growth.commands.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: raised in the main thread so that clean-up code (``finally``, context
    managers such as :func:`~hf_growth.growth.io.atomic_output_dir`) runs before the program exits."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_raise_interrupted(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, the first of ``signums`` raises :class:`Interrupted`; later ones are ignored while the
    clean-up runs. The previous handlers come back afterwards. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with signals_raise_interrupted():
        try:
            return int(args._run(args) or 0)
        except Interrupted as stop:
            print(f"hf-growth {args.command}: stopped by {stop.signal_name}; partial output removed", file=sys.stderr)
            return stop.exit_code
        except KeyboardInterrupt:  # pragma: no cover - only if the handler could not be installed
            print(f"hf-growth {args.command}: stopped by SIGINT; partial output removed", file=sys.stderr)
            return 128 + signal.SIGINT
        except (ValueError, OSError) as error:  # bad input, missing or existing paths, a full disk
            print(f"hf-growth {args.command}: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
