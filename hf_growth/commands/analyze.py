"""``hf-growth analyze entropy|values|heads MODEL ... --task TASK --out DIR``: the papers' measurements on a model.

MODEL is anything the other commands take: a checkpoint directory (``save_pretrained`` output), a ``.gguf`` file,
``smollm2`` for the embedded SmolLM2-135M, or a Hub repository id (from the local cache when HF_HUB_OFFLINE=1).
Prints a table (``--json``: the numbers as JSON instead), writes a PNG and the raw numbers (JSON + CSV) into DIR.
"""

from __future__ import annotations

import argparse

from . import parse_key_values

TASKS_HELP = (
    "inputs: 'text' (built-in English sentences, needs a tokenizer), 'retrieval' (synthetic chain retrieval, "
    "spelled with the tokenizer's letters or as raw token ids), 'random' (random token ids), or an "
    "hf_growth.tasks name such as 'multiplication' or 'tasks.retrieval' (question + answer strings)"
)

SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "In 1969, Apollo 11 landed on the Moon and Neil Armstrong became the first person to walk on it.",
    "To compute the derivative of a product, apply the product rule: (fg)' = f'g + fg'.",
    "She opened the old wooden box and found a stack of letters tied with a faded blue ribbon.",
    "The central bank raised interest rates by a quarter point to slow down rising inflation.",
    "Water boils at one hundred degrees Celsius at sea level, but at a lower temperature on mountains.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "The orchestra tuned their instruments as the audience slowly found their seats in the hall.",
    "Machine learning models learn patterns from data instead of following hand-written rules.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "He practised the piano every morning for three hours before going to school.",
    "A triangle whose sides measure 3, 4 and 5 units is a right triangle, since 9 + 16 = 25.",
    "The library will be closed on Monday for maintenance and will reopen on Tuesday at nine.",
    "Rainforests cover a small share of the Earth's surface but host more than half of its species.",
    "After the storm, the villagers worked together to repair the damaged bridge across the river.",
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze",
        help="representation entropy, value-residual statistics, attention heads of a model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=("entropy", "values", "heads"), help="which measurement")
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="checkpoint directory, .gguf file, 'smollm2' or Hub id (entropy/values: several are "
        "compared; heads: a directory with checkpoint-N sub-directories is read as a training run)",
    )
    parser.add_argument("--task", default="text", help=TASKS_HELP + " (default: text)")
    parser.add_argument("--out", required=True, help="output directory for the PNG, JSON and CSV")
    parser.add_argument("--num-examples", type=int, default=16, help="sequences to analyse (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate token sequences (default 128)")
    parser.add_argument("--hops", type=int, default=2, help="retrieval: chain length D (default 2)")
    parser.add_argument("--num-pairs", type=int, default=6, help="retrieval: pairs per sequence (default 6)")
    parser.add_argument("--center", action="store_true", help="entropy: centre each sequence's tokens first")
    parser.add_argument(
        "--skip-tokens",
        type=int,
        default=0,
        metavar="N",
        help="entropy: leave out each sequence's first N tokens (1: the attention-sink token, whose "
        "huge hidden state dominates the Gram matrix of pretrained LLMs)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="A,B,...",
        help="entropy/values: names of the models in the plot and files (default: their directory "
        "names, with parent directories where those alone are ambiguous)",
    )
    parser.add_argument(
        "--task-options",
        default="",
        metavar="K=V,...",
        help="options of an hf_growth.tasks task, e.g. 'digits=5' for 5x5 multiplication",
    )
    parser.add_argument(
        "--pauses",
        type=int,
        default=None,
        help="task inputs: pause tokens between question and answer, as the model was trained "
        "(default: the model config's num_pause_tokens, which scripts/train_reasoning.py "
        "records; else 0)",
    )
    parser.add_argument("--layers", help="heads: comma-separated layers whose maps are drawn (default all)")
    parser.add_argument("--heads", help="heads: comma-separated heads whose maps are drawn (default all)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the numbers as one JSON document instead of the table (they are always written "
        "to DIR/KIND.json too)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from hf_growth.analysis import plots

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.kind == "heads":
        return _run_heads(args, out, device)

    from hf_growth.analysis import layer_entropy, value_statistics

    results = {}
    for spec, label in zip(args.models, _labels(args.models, args.labels)):
        model, tokenizer = _load(spec, device)
        inputs = _inputs(args, model, tokenizer)
        batches = _split(inputs, args.batch_size)
        if args.kind == "entropy":
            results[label] = layer_entropy(model, batches, center=args.center, skip_tokens=args.skip_tokens)
        else:
            results[label] = value_statistics(model, batches)
        del model
    if args.kind == "entropy":
        data = {name: value.to_dict() for name, value in results.items()}
        columns = {f"{name} norm": list(v) for name, v in results.items()}
        columns.update({f"{name} raw": v.raw for name, v in results.items()})
        image = plots.plot_layer_entropy(
            results, out / "entropy.png", title=f"Matrix entropy per layer (task: {args.task})"
        )
    else:
        data = results
        columns = {}
        from hf_growth.analysis.values import STATISTICS

        for name, stats in results.items():
            for key in STATISTICS:
                columns[f"{name} {key}" if len(results) > 1 else key] = stats[key]
        image = plots.plot_value_statistics(
            results, out / "values.png", title=f"Value residual statistics per layer (task: {args.task})"
        )
    (out / f"{args.kind}.json").write_text(json.dumps(data, indent=1))
    _write_table(columns, out / f"{args.kind}.csv", show=not args.json and args.kind == "entropy")
    if args.json:
        print(json.dumps(data))
        return 0
    if args.kind == "values":
        print(values_report(results))
    print(f"wrote {image}, {out / f'{args.kind}.json'}, {out / f'{args.kind}.csv'}")
    return 0


#: (statistic, column header) of the values table; the full names are the CSV's and JSON's
VALUE_COLUMNS = (
    ("value_cos_to_first", "cos V0"),
    ("attention_entropy", "attn H"),
    ("first_token_attention", "sink attn"),
    ("first_token_value_norm", "|v| first"),
    ("value_norm_rest", "|v| rest"),
    ("first_token_hidden_norm", "|h| first"),
    ("hidden_norm_rest", "|h| rest"),
)


def values_report(results: dict) -> str:
    """``analyze values``' printed report: per model a table of the statistics by layer (short headers, a
    legend), then its learned value-residual λ by layer when it has any. Lines stay under 90 characters.

    >>> stats = {"layers": [0, 1], "value_cos_to_first": [1.0, 0.5], "attention_entropy": [1.2, 0.9],
    ...          "first_token_attention": [0.1, 0.8], "first_token_value_norm": [3.0, 2.0],
    ...          "value_norm_rest": [1.0, 1.0], "first_token_hidden_norm": [50.0, 900.0],
    ...          "hidden_norm_rest": [5.0, 6.0], "num_sequences": 4,
    ...          "lambdas": {"model.layers.1.self_attn.lambda_first": [0.25],
    ...                      "model.layers.1.self_attn.lambda_own": [1.0]}}
    >>> print(values_report({"tiny": stats}))  # doctest: +NORMALIZE_WHITESPACE
    tiny (4 sequences)
    layer     cos V0     attn H  sink attn  |v| first   |v| rest  |h| first   |h| rest
        0          1        1.2        0.1          3          1         50          5
        1        0.5        0.9        0.8          2          1        900          6
    tiny: learned value-residual λ
    layer  lambda_first  lambda_own
        1          0.25           1
    columns: cos V0 = value_cos_to_first, attn H = attention_entropy, sink attn = first_token_attention,
      |v| first = first_token_value_norm, |v| rest = value_norm_rest, |h| first = first_token_hidden_norm,
      |h| rest = hidden_norm_rest (full names in values.csv and values.json)
    """
    import re

    lines = []
    for name, stats in results.items():
        lines.append(f"{name} ({stats.get('num_sequences', '?')} sequences)")
        lines.append("layer  " + " ".join(f"{header:>10}" for _, header in VALUE_COLUMNS))
        for row, layer in enumerate(stats["layers"]):
            lines.append(f"{layer:>5}  " + " ".join(f"{stats[key][row]:>10.4g}" for key, _ in VALUE_COLUMNS))
        by_layer: dict[str, dict[str, str]] = {}
        for param, values in (stats.get("lambdas") or {}).items():
            match = re.search(r"(?:layers|h)\.(\d+)\.", param)
            values = list(values)
            text = (
                f"{values[0]:.4g}" if len(values) == 1 else f"{sum(values) / len(values):.4g} (mean of {len(values)})"
            )
            by_layer.setdefault(match.group(1) if match else "-", {})[param.rsplit(".", 1)[-1]] = text
        if by_layer:
            kinds = list(dict.fromkeys(kind for row in by_layer.values() for kind in row))
            widths = [max(12, len(kind), *(len(row.get(kind, "")) for row in by_layer.values())) for kind in kinds]
            lines.append(f"{name}: learned value-residual λ")
            lines.append("layer  " + "  ".join(f"{kind:>{w}}" for kind, w in zip(kinds, widths)))
            for layer, row in by_layer.items():
                lines.append(f"{layer:>5}  " + "  ".join(f"{row.get(kind, ''):>{w}}" for kind, w in zip(kinds, widths)))
    legend = [f"{header} = {key}" for key, header in VALUE_COLUMNS]
    text, line = [], "columns:"
    for i, item in enumerate(legend):
        piece = item + ("," if i < len(legend) - 1 else " (full names in values.csv and values.json)")
        if len(line) + 1 + len(piece) > 100:
            text.append(line)
            line = " "
        line += " " + piece
    text.append(line)
    return "\n".join(lines + text)


# --- heads -----------------------------------------------------------------------------------------
def _run_heads(args, out, device) -> int:
    import csv
    import re
    from pathlib import Path

    from hf_growth.analysis import HeadEmergenceCallback, plot_head_emergence

    if len(args.models) != 1:
        raise ValueError("analyze heads takes one MODEL (a model directory or a training output directory)")
    spec = args.models[0]
    checkpoints = []
    if spec != "smollm2" and Path(spec).is_dir():
        for child in Path(spec).iterdir():
            match = re.fullmatch(r"checkpoint-(\d+)", child.name)
            if match and child.is_dir():
                checkpoints.append((int(match.group(1)), str(child)))
    checkpoints = sorted(checkpoints) or [(0, spec)]
    callback = None
    for step, path in checkpoints:
        model, tokenizer = _load(path, device)
        if callback is None:
            probe = _heads_probe(args, model, tokenizer)
            callback = HeadEmergenceCallback(
                {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]},
                probe["important"],
                query_mask=probe["query_mask"],
                steps=[step for step, _ in checkpoints],
                layers=_ints(args.layers),
                heads=_ints(args.heads),
            )
        callback.record(model, step)
        del model
    callback.save(out / "heads.json")
    with open(out / "heads.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "layer", "head", "score"])
        for step, scores in zip(callback.steps, callback.scores):
            for layer, row in enumerate(scores):
                for head, score in enumerate(row):
                    writer.writerow([step, layer, head, f"{score:.6f}"])
    image = plot_head_emergence(
        callback, out / "heads.png", title=f"Attention mass on the positions that matter (task: {args.task})"
    )
    final = callback.scores[-1]
    print(f"attention mass on the positions that matter, step {callback.steps[-1]} (rows: layers, cols: heads)")
    print("layer " + " ".join(f"{'H' + str(h):>6}" for h in range(final.shape[1])))
    for layer, row in enumerate(final):
        print(f"{layer:>5} " + " ".join(f"{x:6.3f}" for x in row))
    print(f"wrote {image}, {out / 'heads.json'}, {out / 'heads.csv'}")
    return 0


def _heads_probe(args, model, tokenizer):

    if args.task == "retrieval":
        return _retrieval_inputs(args, model, tokenizer)
    if args.task in ("text", "random"):
        raise ValueError(
            "analyze heads needs a task that says which positions matter: use --task retrieval or an "
            "hf_growth.tasks name (answer positions attend to the question)"
        )
    questions, answers = _task_strings(args.task, args.num_examples, args.seed)
    if tokenizer is None:
        raise ValueError(f"--task {args.task} needs a tokenizer in the model directory")
    rows, important, queries = [], [], []
    for question, answer in zip(questions, answers):
        q = tokenizer(question, add_special_tokens=False)["input_ids"]
        a = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        ids = (q + a)[: args.max_length]
        rows.append(ids)
        important.append([True] * len(q) + [False] * len(a))
        queries.append([False] * (len(q) - 1) + [True] * len(a) + [False])  # positions that predict the answer
    return _pad(rows, important, queries, args.max_length)


def _pad(rows, important, queries, max_length):
    import torch

    width = min(max(len(r) for r in rows), max_length)
    out = {key: torch.zeros(len(rows), width, dtype=torch.long) for key in ("input_ids", "attention_mask")}
    out["important"] = torch.zeros(len(rows), width, dtype=torch.bool)
    out["query_mask"] = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (ids, imp, qm) in enumerate(zip(rows, important, queries)):
        n = min(len(ids), width)
        out["input_ids"][i, :n] = torch.tensor(ids[:n])
        out["attention_mask"][i, :n] = 1
        out["important"][i, :n] = torch.tensor(imp[:n])
        out["query_mask"][i, :n] = torch.tensor(qm[:n])
    return out


def _retrieval_inputs(args, model, tokenizer):
    """The synthetic retrieval task, as raw token ids (no tokenizer) or spelled with letters and digits."""
    import torch

    from hf_growth.analysis.probes import synthetic_retrieval

    num_nodes = 26 if tokenizer is not None else min(26, model.config.vocab_size - 1 - args.hops)
    if num_nodes < 2 * args.num_pairs + 1:
        raise ValueError(f"the vocabulary ({model.config.vocab_size}) is too small for {args.num_pairs} pairs")
    data = synthetic_retrieval(
        args.num_examples, num_pairs=args.num_pairs, num_nodes=num_nodes, hops=args.hops, seed=args.seed
    )
    ids = data["input_ids"][:, :-1]  # the target is what the model should predict: not part of the probe
    important, queries = data["important"][:, :-1], data["query_mask"][:, :-1]
    if tokenizer is None:
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "important": important, "query_mask": queries}
    spelling = _spelling(tokenizer, num_nodes, args.hops)
    if spelling is None:  # the tokenizer cannot tell the symbols apart: use the raw ids
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "important": important, "query_mask": queries}
    rows, imps, qms = [], [], []
    for row, imp, qm in zip(ids.tolist(), important.tolist(), queries.tolist()):
        tokens, tok_imp, tok_q = [], [], []
        for token, is_imp, is_q in zip(row, imp, qm):
            pieces = spelling[token]
            tokens += pieces
            tok_imp += [is_imp] * len(pieces)
            tok_q += [False] * (len(pieces) - 1) + [is_q]
        rows.append(tokens)
        imps.append(tok_imp)
        qms.append(tok_q)
    return _pad(rows, imps, qms, args.max_length)


def _spelling(tokenizer, num_nodes, hops):
    """Token ids for each retrieval symbol: nodes as letters (else numbers), ``SEP`` as ``|``, hop counts as
    digits; ``None`` when the tokenizer maps two symbols to the same ids (e.g. a word-level unknown token)."""
    for nodes in ([chr(97 + i) for i in range(num_nodes)], [str(i) for i in range(num_nodes)]):
        symbols = [*nodes, "|", *(f"hop{k}" if nodes[0] == "0" else str(k) for k in range(1, hops + 1))]
        spelled = [tuple(tokenizer(" " + x, add_special_tokens=False)["input_ids"]) for x in symbols]
        if all(spelled[:num_nodes]) and len(set(spelled[:num_nodes])) == num_nodes and all(spelled):
            return [list(x) for x in spelled]
    return None


# --- inputs for entropy / values --------------------------------------------------------------------
def _inputs(args, model, tokenizer):
    import torch

    if args.task == "random":
        generator = torch.Generator().manual_seed(args.seed)
        length = min(args.max_length, 64)
        ids = torch.randint(0, model.config.vocab_size, (args.num_examples, length), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if args.task == "retrieval":
        data = _retrieval_inputs(args, model, tokenizer)
        return {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}
    if tokenizer is None:
        raise ValueError(
            f"--task {args.task} needs a tokenizer in the model directory; use --task random or "
            "--task retrieval for a model without one"
        )
    if args.task == "text":
        texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(args.num_examples)]
    else:
        questions, answers = _task_strings(
            args.task, args.num_examples, args.seed, parse_key_values(args.task_options, "--task-options")
        )
        pauses = args.pauses if args.pauses is not None else getattr(model.config, "num_pause_tokens", 0) or 0
        if pauses > 0:  # the layout the model was trained on: question, pause block, answer, EOS
            from hf_growth.training.pause import encode_examples, pause_tokens_of

            encoded = encode_examples(tokenizer, questions, answers, pause_tokens_of(tokenizer, pauses))
            return {
                "input_ids": encoded["input_ids"][:, : args.max_length],
                "attention_mask": encoded["attention_mask"][:, : args.max_length],
            }
        texts = [f"{q} {a}" for q, a in zip(questions, answers)]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=args.max_length)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _task_strings(name, n, seed, options=None):
    """``n`` test questions and answers of an ``hf_growth.tasks`` task (``tasks.NAME`` or plain ``NAME``)."""
    name = name.removeprefix("tasks.")
    try:
        from hf_growth import tasks
    except ImportError as error:  # pragma: no cover - the tasks module is part of the package
        raise ValueError(f"unknown task {name!r}: {TASKS_HELP}") from error
    if name not in getattr(tasks, "TASKS", {}):
        raise ValueError(f"unknown task {name!r}: {TASKS_HELP} ({', '.join(sorted(getattr(tasks, 'TASKS', {})))})")
    try:
        splits = tasks.build(
            name, as_datasets=False, seed=seed, train_size=n, validation_size=n, test_size=n, **(options or {})
        )
    except TypeError as error:  # an option the task does not take
        raise ValueError(f"--task-options for {name!r}: {error}") from error
    test = splits["test"]
    return list(test["question"])[:n], list(test["answer"])[:n]


def _split(inputs, batch_size):
    n = inputs["input_ids"].shape[0]
    return [{key: value[i : i + batch_size] for key, value in inputs.items()} for i in range(0, n, batch_size)]


def _load(spec, device):
    """Any model source (:func:`hf_growth.load_model`), in float32 on ``device``."""
    from hf_growth.growth.sources import load_model

    return load_model(spec, dtype="float32", device=device)


def _labels(specs, given=None):
    """Legend names: ``--labels`` as given, else each model's directory name, extended by parent directories
    until the names differ (``runs/plain/final`` and ``runs/pause/final`` -> ``plain/final``, ``pause/final``)."""
    from pathlib import Path

    if given:
        labels = [x.strip() for x in given.split(",")]
        if len(labels) != len(specs) or len(set(labels)) != len(labels) or not all(labels):
            raise SystemExit(f"--labels needs {len(specs)} distinct non-empty names, one per model; got {given!r}")
        return labels
    parts = [("SmolLM2-135M",) if spec == "smollm2" else Path(spec).resolve().parts for spec in specs]
    distinct, depth = set(parts), 1
    while len({p[-depth:] for p in distinct}) < len(distinct):
        depth += 1
    labels = ["/".join(p[-depth:]) for p in parts]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same model named twice
        seen[label] = seen.get(label, 0) + 1
        labels[i] = label if seen[label] == 1 else f"{label} ({seen[label]})"
    return labels


def _ints(text):
    return None if not text else [int(x) for x in text.split(",") if x.strip()]


def _write_table(columns, path, show: bool = True) -> None:
    import csv

    names = list(columns)
    rows = max(len(v) for v in columns.values())
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", *names])
        for layer in range(rows):
            writer.writerow([layer, *(f"{columns[n][layer]:.6g}" if layer < len(columns[n]) else "" for n in names)])
    if not show:
        return
    widths = [max(12, len(n)) for n in names]
    print("layer  " + "  ".join(n.rjust(w) for n, w in zip(names, widths)))
    for layer in range(rows):
        cells = [
            f"{columns[n][layer]:.4f}".rjust(w) if layer < len(columns[n]) else " " * w for n, w in zip(names, widths)
        ]
        print(f"{layer:>5}  " + "  ".join(cells))
