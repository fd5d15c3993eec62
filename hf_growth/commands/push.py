"""``hf-growth push PATH REPO_ID``: upload a saved grown model (with its model card) to the Hub."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="upload a grown model directory to the Hugging Face Hub",
        description=__doc__ + "\nWrites README.md (the model card with the growth lineage) first if it is missing.",
    )
    parser.add_argument("path", help="the saved grown model directory")
    parser.add_argument("repo_id", help="the Hub repository, e.g. you/grown-smollm2")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private",
        dest="private",
        action="store_const",
        const=True,
        default=None,
        help="create the repository as private (an existing repository keeps its visibility)",
    )
    visibility.add_argument(
        "--public",
        dest="private",
        action="store_const",
        const=False,
        help="create the repository as public (default: your account's default, usually public)",
    )
    parser.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` stored)")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print what would be uploaded and upload nothing")
    return parser


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hf_growth.hub import _check_pushable, files_to_upload, push_grown

    root = Path(args.path)
    files = files_to_upload(root)
    _check_pushable(root, files)
    if args.dry_run:
        total = 0
        print(f"would upload {root} to {args.repo_id}" + (f" (branch {args.revision})" if args.revision else "") + ":")
        for name in files:
            size = (root / name).stat().st_size
            total += size
            print(f"  {name}  ({size:,} bytes)")
        if "README.md" not in files:
            print("  README.md  (model card, written before upload)")
        print(f"{len(files)} files, {total:,} bytes")
        print(
            f"if {args.repo_id} is new, it will be {_visibility(args.private)}; an existing repository keeps its "
            "visibility"
        )
        return 0
    result = push_grown(
        root,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(result.visibility())
    if (
        not result.created
        and args.private is not None
        and result.private is not None
        and result.private != args.private
    ):
        print(
            f"note: {'--private' if args.private else '--public'} does not change an existing repository; "
            f"change it in the repository's settings on the Hub"
        )
    print(f"pushed {root} to {args.repo_id}: {result.commit_url}")
    return 0


def _visibility(private: bool | None) -> str:
    if private is None:
        return (
            "created with your account's default visibility (public unless your organisation says otherwise; "
            "pass --private or --public)"
        )
    return "private (--private)" if private else "public (--public)"
