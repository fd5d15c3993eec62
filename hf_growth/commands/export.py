"""``hf-growth export SRC OUT``: save a model source as a checkpoint directory.

SRC is anything the other commands take: a checkpoint directory, a ``.gguf`` file, the embedded model's name
(``smollm2``) or a Hub repository id (from the local cache when HF_HUB_OFFLINE=1). OUT gets safetensors
weights, ``config.json``, the generation config and the tokenizer (and the model card of a grown model),
written atomically: into a temporary directory next to OUT, renamed at the end.

  hf-growth export smollm2 smollm2-135m     # the embedded SmolLM2-135M as a directory to grow, train or push

From Python: ``model, tokenizer = hf_growth.load_model("smollm2")`` then ``model.save_pretrained(OUT)`` and
``tokenizer.save_pretrained(OUT)``.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="save a model (e.g. the embedded smollm2) as a checkpoint directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="checkpoint directory, .gguf file, 'smollm2' or a Hub repository id")
    parser.add_argument("out", help="output directory")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="save in this dtype (default: the source's; GGUF and smollm2: float32)",
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest output shard, e.g. 500MB, 2GiB or bytes (default: %(default)s)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (only once saving succeeded)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from hf_growth.growth.sources import export_model

    out = export_model(
        args.src, args.out, dtype=args.dtype, overwrite=args.overwrite, max_shard_size=args.max_shard_size
    )
    print(f"saved {args.src} to {out}")
    return 0
