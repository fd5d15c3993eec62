"""Callbacks for ``scripts/train_reasoning.py --task retrieval`` (issue 12), given as ``--callback``.

- ``AccuracyMonitor``: every ``eval_every`` optimizer steps, the validation exact match under teacher forcing
  (every answer token and the EOS predicted by argmax; for this task's one-token answers this equals the
  script's greedy exact match) on the run's own validation split; stops training once it reaches ``stop_at``.
  Writes ``OUTPUT_DIR/monitor.json`` (the curve, the stop step).
- ``RetrievalHeads``: a :class:`hf_growth.analysis.heads.HeadEmergenceCallback` on a fixed probe batch of
  retrieval questions at the run's hop count; the per-head scalar is the attention mass on the positions of the
  query's chain (the pairs ``x_i x_{i+1}`` the answer follows, see :func:`chain_positions`). Writes
  ``OUTPUT_DIR/heads.json`` (scores, maps, emergence order).

Both read the task options of the run they are part of from the script's command line (``--num-pairs``,
``--hops``, ``--num-nodes``, ``--no-curriculum``, ``--validation-size``, ``--test-size``, ``--seed``, ``--pauses``,
``--output-dir``, ``--max-steps``), so they always see the run's task, and their own settings from a JSON object in
the environment variables ``RETRIEVAL_MONITOR`` / ``RETRIEVAL_HEADS``::

    RETRIEVAL_MONITOR='{"eval_every": 100, "stop_at": 0.995}' PYTHONPATH=research/retrieval_depth_vs_hops:benchmarks:. \\
        python scripts/train_reasoning.py --task retrieval --hops 4 --num-pairs 8 --num-nodes 64 --pauses 0 \\
        --no-seq-vcr --max-steps 3000 --callback retrieval_probe:AccuracyMonitor \\
        --callback retrieval_probe:RetrievalHeads --output-dir runs/r4

(the sweep in ``retrieval_depth.py`` puts this folder and ``benchmarks/`` on the runs' ``PYTHONPATH``.) Settings of ``RETRIEVAL_HEADS``: ``every`` (default ``max_steps // 30``), ``probe_size`` (64), ``query``
(``"last"``: the last question token, where the answer is predicted, attending to the chain; ``"chain"``: also
every chain token attending to the other chain links), ``threshold`` (``null``: the half-rise step),
``probe_seed`` (default run seed + 7919).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

from _common import write_json  # noqa: E402

from hf_growth.analysis.heads import HeadEmergenceCallback, first_reach  # noqa: E402
from hf_growth.tasks.retrieval import QUERY, SEPARATOR, retrieval_splits  # noqa: E402

__all__ = ["AccuracyMonitor", "RetrievalHeads", "chain_positions", "emergence_order", "run_options"]


# ----------------------------------------------------------------------------------------------- the task
def chain_positions(question: str) -> tuple[list[tuple[int, int]], str]:
    """Token positions of the links the answer follows: ``[(source_pos, target_pos)]`` per hop, and the node
    reached. Positions index the question's whitespace tokens (one token each with the task tokenizer).

    >>> chain_positions("4 9 7 1 9 3 1 8 | 2 4")
    ([(0, 1), (4, 5)], '3')
    >>> chain_positions("4 9 <sep> 7 1 <sep> 9 3 <sep> 1 8 <sep> | 2 4")   # pair separators are skipped
    ([(0, 1), (6, 7)], '3')
    """
    tokens = question.split()
    bar = tokens.index(QUERY)
    positions = [i for i, t in enumerate(tokens[:bar]) if t != SEPARATOR]
    links = [tokens[i] for i in positions]
    where = {links[i]: i for i in range(0, len(links) - 1, 2)}
    hops, node = int(tokens[bar + 1]), tokens[bar + 2]
    path = []
    for _ in range(hops):
        i = where[node]
        path.append((positions[i], positions[i + 1]))
        node = links[i + 1]
    return path, node


def run_options(argv: list[str] | None = None) -> dict[str, Any]:
    """The retrieval task options, seed, pauses, output dir and max steps of the train_reasoning command line
    (``sys.argv`` by default), with the task builder's defaults for options not given."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    defaults = {k: v.default for k, v in inspect.signature(retrieval_splits).parameters.items()}
    for name in ("num_pairs", "hops", "num_nodes", "train_size", "validation_size", "test_size"):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=defaults[name])
    p.add_argument("--no-curriculum", dest="curriculum", action="store_false", default=defaults["curriculum"])
    p.add_argument("--pair-separator", action="store_true", default=defaults["pair_separator"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pauses", type=int, default=2)
    p.add_argument("--output-dir", default="runs/reasoning")
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--task", default=None)
    known, _ = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.task not in (None, "retrieval"):
        raise ValueError(f"the retrieval callbacks need --task retrieval, got {known.task!r}")
    return vars(known)


def _settings(name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    given = json.loads(raw) if raw else {}
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"{name}: unknown settings {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _split(
    opts: dict[str, Any], split: str, size: int | None = None, seed: int | None = None, curriculum: bool | None = None
) -> dict[str, list[str]]:
    """One split of the run's task. Test and validation do not depend on the train size (drawn first, own
    generators), so ``train_size=0`` reproduces the run's validation split exactly. With ``size`` given, only
    ``split`` is drawn, ``size`` questions (a fresh sample for another ``seed``)."""
    sizes = {"train_size": 0, "validation_size": opts["validation_size"], "test_size": opts["test_size"]}
    if size is not None:
        sizes = {"train_size": 0, "validation_size": 0, "test_size": 0, f"{split}_size": size}
    splits = retrieval_splits(
        opts["num_pairs"],
        opts["hops"],
        opts["num_nodes"],
        opts["curriculum"] if curriculum is None else curriculum,
        opts["seed"] if seed is None else seed,
        **sizes,
        pair_separator=bool(opts.get("pair_separator", False)),
    )
    return splits[split]


def _pause(tokenizer, num: int):
    if num <= 0:
        return None
    from hf_growth.training.pause import pause_tokens_of

    return pause_tokens_of(tokenizer, num)


# ----------------------------------------------------------------------------------------------- accuracy
class AccuracyMonitor(TrainerCallback):
    """Validation exact match every ``eval_every`` steps; stop training at ``stop_at`` (``None``: never)."""

    DEFAULTS = {"eval_every": 100, "stop_at": 0.995, "val_size": 500, "batch": 512}

    def __init__(self, argv: list[str] | None = None, **settings: Any) -> None:
        self.opts = run_options(argv)
        self.settings = {**_settings("RETRIEVAL_MONITOR", self.DEFAULTS), **settings}
        self.history: list[tuple[int, float]] = []
        self.reached_step: int | None = None
        self.data: dict[str, torch.Tensor] | None = None

    def _prepare(self, tokenizer) -> None:
        from hf_growth.training.pause import encode_examples

        size = min(int(self.settings["val_size"]), int(self.opts["validation_size"]))
        split = _split(self.opts, "validation")
        q, a = split["question"][:size], split["answer"][:size]
        self.data = encode_examples(tokenizer, q, a, _pause(tokenizer, self.opts["pauses"]))

    @torch.no_grad()
    def evaluate(self, model) -> float:
        data = self.data
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        correct = 0
        try:
            for s in range(0, data["input_ids"].shape[0], int(self.settings["batch"])):
                ids = data["input_ids"][s : s + int(self.settings["batch"])].to(device)
                mask = data["attention_mask"][s : s + ids.shape[0]].to(device)
                labels = data["labels"][s : s + ids.shape[0]].to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]
                correct += int(((pred == target) | (target == -100)).all(1).sum())
        finally:
            model.train(was_training)
        return correct / data["input_ids"].shape[0]

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.data is None:
            self._prepare(processing_class)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = int(self.settings["eval_every"])
        if model is None or not every or state.global_step % every:
            return
        em = self.evaluate(model)
        self.history.append((int(state.global_step), round(em, 5)))
        stop_at = self.settings["stop_at"]
        if stop_at is not None and em >= float(stop_at):
            if self.reached_step is None:
                self.reached_step = int(state.global_step)
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        write_json(
            Path(args.output_dir) / "monitor.json",
            {
                "settings": self.settings,
                "val_size": int(self.data["input_ids"].shape[0]) if self.data else 0,
                "history": self.history,
                "reached_step": self.reached_step,
                "stop_step": int(state.global_step),
            },
            indent=None,
        )


# ----------------------------------------------------------------------------------------------- heads
def probe_batch(opts: dict[str, Any], tokenizer, size: int = 64, seed: int | None = None, query: str = "last"):
    """``(probe, important, query_mask, questions)`` for :class:`HeadEmergenceCallback`: ``size`` questions at
    the run's hop count (``D = hops``, no curriculum). ``important`` marks the chain's tokens (sources and targets
    of the ``D`` links the answer follows, and each link's closing ``<sep>`` when the questions have separators). ``query="last"``: ``important`` is ``(B, T)`` and ``query_mask``
    ``None`` (the last token, where the answer is predicted); ``query="chain"``: the chain tokens are queries too,
    each scored on the *other* chain links (``important`` ``(B, T, T)``), the last token on all of them."""
    if query not in ("last", "chain"):
        raise ValueError(f"query must be 'last' or 'chain', got {query!r}")
    seed = opts["seed"] + 7919 if seed is None else seed
    questions = _split(opts, "test", size=size, seed=seed, curriculum=False)["question"]
    pause = _pause(tokenizer, opts["pauses"])
    block = list(pause.block) if pause is not None else []
    rows = []
    for q in questions:
        ids = tokenizer.convert_tokens_to_ids(q.split())
        if tokenizer.unk_token_id in ids:
            raise ValueError(f"question {q!r} has tokens outside the tokenizer's vocabulary")
        rows.append(ids + block)
    ids = torch.tensor(rows, dtype=torch.long)
    batch, length = ids.shape
    chain = torch.zeros(batch, length, dtype=torch.bool)
    links = []
    for b, q in enumerate(questions):
        tokens = q.split()
        # a link's tokens: its source and target, and the <sep> that closes the pair (a pair-summary position the
        # model may read the link from) when the question has separators
        path = [(s, t, t + 1) if tokens[t + 1] == SEPARATOR else (s, t) for s, t in chain_positions(q)[0]]
        links.append(path)
        for pair in path:
            chain[b, list(pair)] = True
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if query == "last":
        return probe, chain, None, questions
    important = chain[:, None, :].expand(batch, length, length).clone()
    query_mask = torch.zeros(batch, length, dtype=torch.bool)
    query_mask[:, -1] = True
    for b, path in enumerate(links):
        for pair in path:
            query_mask[b, list(pair)] = True
            for pos in pair:
                important[b, pos, list(pair)] = False  # a link's own tokens do not count for its queries
    return probe, important, query_mask, questions


def settle_steps(
    scores: np.ndarray, steps: list[int], window: int = 5, min_change: float = 0.1
) -> list[list[int | None]]:
    """For ``scores`` ``(S, L, H)`` recorded at ``steps``: per layer and head, the first step from which the
    head's moving average (``window`` records, edges repeated) stays past the midpoint between its first score and
    its final one (the mean of the last ``window``), rising or falling; ``None`` for heads whose final score moved
    less than ``min_change`` from the first.

    Unlike :func:`first_reach`'s half-rise, an early spike or a head that rises and falls back does not count: the
    step is where the head settled into its trained role (a fall counts too: a head leaving the positions).

    >>> import numpy as np
    >>> curve = np.array([0.4, 0.9, 0.4, 0.4, 0.4, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8])  # a spike, then a rise
    >>> settle_steps(curve[:, None, None], list(range(0, 120, 10)), window=1)
    [[50]]
    """
    scores = np.asarray(scores, dtype=np.float64)
    window = max(1, min(int(window), scores.shape[0]))
    padded = np.pad(scores, ((window // 2, window - 1 - window // 2), (0, 0), (0, 0)), mode="edge")
    smooth = np.stack([padded[i : i + scores.shape[0]] for i in range(window)]).mean(0)
    first, final = scores[0], scores[-window:].mean(0)
    out: list[list[int | None]] = []
    for layer in range(scores.shape[1]):
        row: list[int | None] = []
        for head in range(scores.shape[2]):
            change = final[layer, head] - first[layer, head]
            if abs(change) < min_change:
                row.append(None)
                continue
            past = np.sign(change) * (smooth[:, layer, head] - (first[layer, head] + change / 2)) >= 0
            # the first record after which every record is past the midpoint (the last one always is)
            before = np.nonzero(~past)[0]
            index = int(before[-1]) + 1 if before.size else 0
            row.append(int(steps[index]) if index < len(steps) else None)
        out.append(row)
    return out


def emergence_order(
    scores: np.ndarray, steps: list[int], threshold: float | None = None, rule: str = "reach"
) -> dict[str, Any]:
    """Heads in the order of their emergence step, and the first such step per layer. ``scores``: ``(S, L, H)``
    recorded at ``steps``. ``rule="reach"``: the first step whose score reaches ``threshold`` (``None``: half of
    the head's rise, :func:`first_reach`); ``rule="settled"``: the step from which the smoothed score stays past
    half of its change from first to final, rises and falls (:func:`settle_steps`)."""
    scores = np.asarray(scores)
    if rule == "reach":
        reach = first_reach(scores, list(steps), threshold)
    elif rule == "settled":
        reach = settle_steps(scores, list(steps))
    else:
        raise ValueError(f"rule must be 'reach' or 'settled', got {rule!r}")
    first, final = scores[0], scores[-1]
    heads = sorted(
        ((step, layer, head) for layer, row in enumerate(reach) for head, step in enumerate(row) if step is not None),
        key=lambda t: (t[0], t[1], t[2]),
    )
    order = [
        {
            "layer": layer,
            "head": head,
            "step": step,
            "final_score": round(float(final[layer, head]), 4),
            "change": round(float(final[layer, head] - first[layer, head]), 4),
        }
        for step, layer, head in heads
    ]
    per_layer = {}
    for item in order:
        per_layer.setdefault(item["layer"], item["step"])
    layer_order = [layer for layer, _ in sorted(per_layer.items(), key=lambda kv: (kv[1], kv[0]))]

    def label(o):
        falls = ", falls" if rule == "settled" and o["change"] < 0 else ""
        return f"L{o['layer']}H{o['head']} (step {o['step']}{falls})"

    text = " -> ".join(label(o) for o in order) or "no head rose"
    return {
        "rule": rule,
        "threshold": threshold,
        "heads": order,
        "layer_first_step": {str(k): v for k, v in per_layer.items()},
        "layer_order": layer_order,
        "sentence": text,
    }


class RetrievalHeads(HeadEmergenceCallback):
    """:class:`HeadEmergenceCallback` whose probe (retrieval questions at the run's hop count) is built at train
    start from the run's own task options and tokenizer. Writes ``OUTPUT_DIR/heads.json`` at train end."""

    DEFAULTS = {
        "every": None,
        "probe_size": 64,
        "query": "last",
        "threshold": None,
        "probe_seed": None,
        "include_maps": True,
    }

    def __init__(self, argv: list[str] | None = None, **settings: Any) -> None:  # noqa: D107 - built lazily
        self.opts = run_options(argv)
        self.settings = {**_settings("RETRIEVAL_HEADS", self.DEFAULTS), **settings}
        if self.settings["every"] is None:
            self.settings["every"] = max(1, int(self.opts["max_steps"]) // 30) if self.opts["max_steps"] > 0 else 50
        self.steps, self.scores, self.maps = [], [], []
        self._built = False

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self._built:
            probe, important, query_mask, self.questions = probe_batch(
                self.opts,
                processing_class,
                int(self.settings["probe_size"]),
                self.settings["probe_seed"],
                self.settings["query"],
            )
            super().__init__(probe, important, query_mask=query_mask, every=int(self.settings["every"]))
            self._built = True
        return super().on_train_begin(args, state, control, model=model, **kwargs)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self._built and state.global_step not in self.steps:
            self.record(model, state.global_step)  # the final state too
        if not state.is_world_process_zero or not self.steps:
            return
        data = self.to_dict(include_maps=bool(self.settings["include_maps"]))
        data["settings"] = self.settings
        data["task"] = {k: self.opts[k] for k in ("num_pairs", "hops", "num_nodes", "curriculum", "seed")}
        data["map_question"] = self.questions[self.map_example]
        data["emergence"] = emergence_order(np.stack(self.scores), self.steps, self.settings["threshold"])
        write_json(Path(args.output_dir) / "heads.json", data, indent=None)
