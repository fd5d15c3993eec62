"""The smallest depth that solves the retrieval problem, vs the hop count D, with and without the implicit
curriculum (Mușat, arXiv 2411.12118, states depth >= log3(2D)), and the order in which heads emerge.

Every run is one ``scripts/train_reasoning.py --task retrieval`` subprocess (a Llama of ``--width``/``--heads``
and L layers from scratch, no pauses, no Seq-VCR) with the ``retrieval_probe:AccuracyMonitor`` callback, which
stops it once validation exact match reaches ``--stop-at`` (so easy configurations cost little). A run passes
when its held-out test exact match (the script's greedy answers) is >= ``--target`` (0.99). ``--jobs`` runs share
the machine (and its one GPU) as concurrent processes.

Input length: ``num_pairs = max(pairs_factor * D, min_pairs)`` links (default ``max(2D, 8)``: two chains of D
links, or 8 links for D < 4), question length ``2 * num_pairs + 3`` tokens; ``num_nodes = max(min_nodes,
2 * nodes_needed)`` with ``nodes_needed = num_pairs + ceil(num_pairs / D)`` (default 64; 68 for D = 16).

Depth search, per (D, curriculum), one depth at a time with all seeds (see :func:`plan_next`): start at
``clamp(ceil(log3(2D)))``; while the lowest depth tried has a passing seed, try one layer less (down to
``--min-layers``); while the highest depth tried has a failing seed, try one layer more (up to ``--max-layers``;
give up after ``--give-up-after`` consecutive depths where no seed passed). Depth is assumed monotone.
Reported per D: the smallest depth where *all* seeds pass and where *any* seed passes.

Resumable: every finished run appends its record to ``--ledger`` (JSON lines) and leaves its
``results.json`` / ``monitor.json`` in ``--runs-dir/<key>/``; runs found in either are skipped. ``--time-budget``
ends the sweep in time (in-flight runs are killed and rerun next time), so it can be split over several
10-minute GPU commands. Outputs: ``--out-dir/<name>.json`` and ``.png`` (table, fits, plot, every run record).

    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_depth.py --jobs 12 --time-budget 540 --out-dir out  # GPU
    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_depth.py --summarize-only                             # table + plot
    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_depth.py --emergence auto --out-dir out              # head emergence

Head emergence (``--emergence auto`` or ``D=8,layers=4,curriculum=on``): the chosen configuration is trained for
every seed with ``retrieval_probe:RetrievalHeads`` (attention on a fixed probe batch, scalar = attention mass of
the last question token on the chain's tokens); writes ``<name>.heads.json`` (scores, emergence order per seed)
and ``<name>.heads_s<seed>.png`` (:func:`hf_growth.analysis.plots.plot_head_emergence`) and prints the order.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = ROOT / "scripts" / "train_reasoning.py"
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

from _common import command_line, device_label, versions, write_json  # noqa: E402


# --------------------------------------------------------------------------------------------- rules
def paper_depth(d: float) -> float:
    """The paper's bound, log3(2D)."""
    return math.log(2 * d, 3)


def start_depth(d: int, lo: int = 1, hi: int = 8) -> int:
    return min(hi, max(lo, math.ceil(paper_depth(d) - 1e-9)))


def question_tokens(num_pairs: int, pair_separator: bool = False) -> int:
    """Tokens of a question: two per pair (three with ``<sep>``), then ``| D x0``."""
    return (3 if pair_separator else 2) * num_pairs + 3


def task_shape(
    d: int, pairs_factor: int = 2, min_pairs: int = 8, min_nodes: int = 64, pair_separator: bool = False
) -> dict[str, int]:
    """``num_pairs``, ``num_nodes`` and question length for hop count ``d`` (the input-length rule)."""
    pairs = max(pairs_factor * d, min_pairs, d)
    needed = pairs + math.ceil(pairs / d)  # chains of d links laid out in a row, one extra node per chain
    return {
        "num_pairs": pairs,
        "num_nodes": max(min_nodes, 2 * needed),
        "tokens": question_tokens(pairs, pair_separator),
    }


def shape_of(d: int, args: argparse.Namespace) -> dict[str, int]:
    """:func:`task_shape` with a sweep's options."""
    return task_shape(
        d, args.pairs_factor, args.min_pairs, args.min_nodes, bool(getattr(args, "pair_separator", False))
    )


def plan_next(
    done: dict[int, list[bool]], start: int, lo: int, hi: int, seeds: int, give_up_after: int = 0
) -> list[int]:
    """Depths to run next for one (D, curriculum) search; ``[]`` when it is finished.

    ``done``: depth -> pass flags of its finished seeds (a depth counts once all ``seeds`` are in). The depths
    tried form an interval around ``start``; below it we go down while its lowest depth has a passing seed, above
    it up while its highest depth has a failing seed (and the last ``give_up_after`` depths did not all fail)."""
    full = {depth: flags for depth, flags in done.items() if len(flags) >= seeds}
    if start not in full:
        return [start]
    low, high = start, start
    while low - 1 in full:
        low -= 1
    while high + 1 in full:
        high += 1
    out = []
    if any(full[low]) and low > lo:
        out.append(low - 1)
    if not all(full[high]) and high < hi:
        tail = [full[d] for d in range(high, max(start, high - give_up_after + 1) - 1, -1)]
        gave_up = give_up_after > 0 and len(tail) >= give_up_after and not any(any(f) for f in tail)
        if not gave_up:
            out.append(high + 1)
    return out


def min_depths(done: dict[int, list[bool]]) -> dict[str, Any]:
    """Smallest depth where all / any seeds passed (depth assumed monotone), with what was tried."""
    tried = sorted(done)
    all_pass = [d for d in tried if done[d] and all(done[d])]
    any_pass = [d for d in tried if any(done[d])]
    return {
        "min_depth_all_seeds": all_pass[0] if all_pass else None,
        "min_depth_any_seed": any_pass[0] if any_pass else None,
        "depths_tried": tried,
        "passes": {str(d): f"{sum(done[d])}/{len(done[d])}" for d in tried},
        "monotone": all(all(done[b]) for a in all_pass for b in tried if b > a),
    }


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RunSpec:
    hops: int
    curriculum: bool
    layers: int
    seed: int
    tag: str  # hash of the shared training settings
    heads_probe: bool = False

    @property
    def key(self) -> str:
        kind = "heads-" if self.heads_probe else ""
        return f"{kind}D{self.hops}-{'cur' if self.curriculum else 'nocur'}-L{self.layers}-s{self.seed}-{self.tag}"


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings every run shares (their hash is the runs' tag: changing one reruns everything)."""
    extra = {"train_args": args.train_args} if args.train_args else {}
    if args.pair_separator:  # only when on: the tags of earlier runs stay valid
        extra["pair_separator"] = True
    return extra | {
        k: getattr(args, k)
        for k in (
            "width",
            "heads",
            "mlp",
            "batch_size",
            "lr",
            "warmup",
            "scheduler",
            "weight_decay",
            "max_steps",
            "train_size",
            "validation_size",
            "test_size",
            "pairs_factor",
            "min_pairs",
            "min_nodes",
            "stop_at",
            "eval_every",
            "bf16",
        )
    }


def tag_of(settings: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def device_name(args: argparse.Namespace) -> str:
    import torch

    return device_label("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")


def command_for(spec: RunSpec, args: argparse.Namespace, out_dir: Path, max_steps: int | None = None) -> list[str]:
    shape = shape_of(spec.hops, args)
    overrides = (
        f"num_hidden_layers={spec.layers},hidden_size={args.width},intermediate_size={args.mlp or 4 * args.width},"
        f"num_attention_heads={args.heads},num_key_value_heads={args.heads}"
    )
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--task",
        "retrieval",
        "--hops",
        str(spec.hops),
        "--num-pairs",
        str(shape["num_pairs"]),
        "--num-nodes",
        str(shape["num_nodes"]),
        "--train-size",
        str(args.train_size),
        "--validation-size",
        str(args.validation_size),
        "--test-size",
        str(args.test_size),
        "--model",
        "llama-mini",
        "--config-overrides",
        overrides,
        "--pauses",
        "0",
        "--no-seq-vcr",
        "--max-steps",
        str(max_steps or args.max_steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--warmup-steps",
        str(args.warmup),
        "--scheduler",
        args.scheduler,
        "--weight-decay",
        str(args.weight_decay),
        "--logging-steps",
        "500",
        "--eval-batch-size",
        "1000",
        "--seed",
        str(spec.seed),
        "--threads",
        str(args.threads),
        "--output-dir",
        str(out_dir),
        "--callback",
        "retrieval_probe:AccuracyMonitor",
    ]
    if not spec.curriculum:
        cmd.append("--no-curriculum")
    if args.pair_separator:
        cmd.append("--pair-separator")
    if spec.heads_probe:
        cmd += ["--callback", "retrieval_probe:RetrievalHeads"]
    if args.device == "cpu":
        cmd.append("--cpu")
    if args.bf16:
        cmd.append("--bf16")
    return cmd + shlex.split(args.train_args)


# --------------------------------------------------------------------------------------------- running
class Ledger:
    """Finished-run records: a JSON-lines file (appended under a lock) plus ``runs_dir/<key>/results.json``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.records[rec["key"]] = rec

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records[record["key"]] = record
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def record_from_dir(spec: RunSpec, out: Path, target: float) -> dict[str, Any] | None:
    """The record of a finished run from its output directory (``None`` if it has no results.json)."""
    res_path = out / "results.json"
    if not res_path.exists():
        return None
    res = json.loads(res_path.read_text())
    mon_path = out / "monitor.json"
    mon = json.loads(mon_path.read_text()) if mon_path.exists() else {}
    em = float(res["exact_match"])
    train_s = (res.get("seconds") or {}).get("train")
    return {
        "key": spec.key,
        "hops": spec.hops,
        "curriculum": spec.curriculum,
        "layers": spec.layers,
        "seed": spec.seed,
        "tag": spec.tag,
        "exact_match": em,
        "passed": em >= target,
        "num_test": res.get("num_test"),
        "global_steps": res.get("global_steps"),
        "reached_step": mon.get("reached_step"),
        "val_history": mon.get("history"),
        "eval_loss": res.get("eval_loss"),
        "train_loss": res.get("train_loss"),
        "parameters": res.get("parameters"),
        "seconds": res.get("seconds"),
        "task_options": res.get("task_options"),
        "steps_per_second": round(res["global_steps"] / train_s, 2) if train_s and res.get("global_steps") else None,
        "versions": res.get("versions"),
        "command": res.get("command"),
        "examples": (res.get("examples") or [])[:2],
    }


def subprocess_runner(args: argparse.Namespace, stop: threading.Event) -> Callable[[RunSpec], dict | None]:
    """``run(spec) -> record`` that trains one configuration in a subprocess (``None``: killed by ``stop``)."""
    runs_dir = Path(args.runs_dir).resolve()
    device = device_name(args)

    def run(spec: RunSpec, max_steps: int | None = None) -> dict[str, Any] | None:
        out = runs_dir / spec.key
        out.mkdir(parents=True, exist_ok=True)
        cmd = command_for(spec, args, out.relative_to(ROOT) if out.is_relative_to(ROOT) else out, max_steps)
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(args.threads),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(
                [str(HERE), str(ROOT / "benchmarks"), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        )
        env.pop("WORLD_SIZE", None)
        if spec.heads_probe:
            env["RETRIEVAL_MONITOR"] = json.dumps({"eval_every": args.eval_every, "stop_at": None})
            env["RETRIEVAL_HEADS"] = json.dumps(
                {
                    "every": args.emergence_every,
                    "probe_size": args.emergence_probe,
                    "query": args.emergence_query,
                    "threshold": args.emergence_threshold,
                }
            )
        else:
            env["RETRIEVAL_MONITOR"] = json.dumps({"eval_every": args.eval_every, "stop_at": args.stop_at})
        start = time.perf_counter()
        with (out / "log.txt").open("w") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            timed_out = False
            while proc.poll() is None:
                if stop.wait(0.5):
                    _kill(proc)
                    return None
                if time.perf_counter() - start > args.run_timeout:
                    _kill(proc)
                    timed_out = True
                    break
        wall = round(time.perf_counter() - start, 2)
        rec = record_from_dir(spec, out, args.target)
        if rec is None:  # a timed-out run counts as failed; a crash is not recorded (see sweep)
            tail = (out / "log.txt").read_text()[-2000:]
            rec = {
                "key": spec.key,
                "hops": spec.hops,
                "curriculum": spec.curriculum,
                "layers": spec.layers,
                "seed": spec.seed,
                "tag": spec.tag,
                "exact_match": None,
                "passed": False,
                "error": "timed out" if timed_out else f"exit code {proc.returncode}",
                "log_tail": tail,
            }
            if not timed_out:
                print(f"[retrieval_depth] {spec.key} failed (exit {proc.returncode}):\n{tail}", flush=True)
        rec.update(wall_seconds=wall, device=device, timed_out=timed_out, threads=args.threads, jobs=args.jobs)
        return rec

    return run


def _kill(proc: subprocess.Popen) -> None:
    """End one run we started: its own process group (start_new_session), then wait for it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def estimate_seconds(ledger: Ledger, spec: RunSpec) -> float | None:
    """Median wall time of finished runs like ``spec`` (same D and curriculum, else same D)."""
    for same in (
        lambda r: r["hops"] == spec.hops and r["curriculum"] == spec.curriculum,
        lambda r: r["hops"] == spec.hops,
    ):
        walls = [
            r["wall_seconds"]
            for r in ledger.records.values()
            if r.get("tag") == spec.tag and r.get("wall_seconds") and same(r)
        ]
        if walls:
            return statistics.median(walls)
    return None


def sweep(
    args: argparse.Namespace,
    runner: Callable[[RunSpec], dict | None],
    ledger: Ledger,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the depth searches with ``args.jobs`` concurrent ``runner`` calls; returns counts."""
    stop = stop or threading.Event()
    tag = tag_of(settings_of(args))
    curricula = {"both": [True, False], "on": [True], "off": [False]}[args.curriculum]
    # long runs first; D = 1 has no easier instances, so its curriculum is a no-op: run it once (as "on")
    searches = [
        (d, c)
        for d in sorted(args.hops, reverse=True)
        for c in curricula
        if not (d == 1 and not c and True in curricula)
    ]
    begin = time.monotonic()
    deadline = begin + args.time_budget if args.time_budget else None
    running: dict[cf.Future, RunSpec] = {}
    errored: set[str] = set()  # crashed runs: not recorded, not relaunched by this invocation
    too_late: set[str] = set()  # not launched: the time budget had too little left for them
    counts = Counter()

    def flags(d: int, c: bool) -> dict[int, list[bool]]:
        out: dict[int, list[bool]] = {}
        for seed in args.seeds:
            for layers in range(args.min_layers, args.max_layers + 1):
                rec = ledger.get(RunSpec(d, c, layers, seed, tag).key)
                if rec is not None:
                    out.setdefault(layers, []).append(bool(rec["passed"]))
        return out

    # runs that finished (results.json written) but are not in the ledger yet, e.g. after a kill
    if args.runs_dir:
        runs_dir = Path(args.runs_dir).resolve()
        for d, c in searches:
            for layers in range(args.min_layers, args.max_layers + 1):
                for seed in args.seeds:
                    spec = RunSpec(d, c, layers, seed, tag)
                    if ledger.get(spec.key) is None:
                        rec = record_from_dir(spec, runs_dir / spec.key, args.target)
                        if rec is not None:
                            ledger.add({**rec, "recovered": True})
                            counts["recovered"] += 1

    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while True:
            busy = {s.key for s in running.values()}
            wanted = []
            for d, c in searches:
                start = start_depth(d, args.min_layers, args.max_layers)
                for layers in plan_next(
                    flags(d, c), start, args.min_layers, args.max_layers, len(args.seeds), args.give_up_after
                ):
                    for seed in args.seeds:
                        spec = RunSpec(d, c, layers, seed, tag)
                        if ledger.get(spec.key) is None and spec.key not in busy and spec.key not in errored:
                            wanted.append(spec)
            if not wanted and not running:
                break
            for spec in wanted:
                if len(running) >= args.jobs:
                    break
                if deadline is not None:
                    left = deadline - time.monotonic()
                    guess = estimate_seconds(ledger, spec)
                    if left < (1.1 * guess if guess else args.min_remaining):
                        too_late.add(spec.key)
                        continue
                running[pool.submit(runner, spec)] = spec
                counts["launched"] += 1
                log(f"[retrieval_depth] start {spec.key} ({len(running)} running)")
            if not running:
                break
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            finished, _ = cf.wait(list(running), timeout=timeout, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                spec = running.pop(fut)
                rec = fut.result()
                if rec is None:
                    counts["killed"] += 1
                    continue
                if rec.get("error") and not rec.get("timed_out"):
                    errored.add(spec.key)
                    counts["errors"] += 1
                    continue
                ledger.add(rec)
                counts["finished"] += 1
                em = rec["exact_match"]
                log(
                    f"[retrieval_depth] done  {spec.key}: exact match {em if em is None else round(em, 4)}"
                    f" steps {rec.get('global_steps')} wall {rec.get('wall_seconds')} s"
                )
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()  # kill what is still running: rerun next time
                for fut in list(running):
                    fut.result()
                    counts["killed"] += 1
                running.clear()
                break
    pending = sum(
        len(
            plan_next(
                flags(d, c),
                start_depth(d, args.min_layers, args.max_layers),
                args.min_layers,
                args.max_layers,
                len(args.seeds),
                args.give_up_after,
            )
        )
        > 0
        for d, c in searches
    )
    counts["searches_unfinished"] = pending
    counts["not_launched_time"] = len(too_late - {k for k in too_late if ledger.get(k)})
    counts["seconds"] = round(time.monotonic() - begin, 1)
    return dict(counts)


# --------------------------------------------------------------------------------------------- summary
def fit_log(ds: list[float], depths: list[float]) -> dict[str, float] | None:
    """Least squares ``depth = a + b * log2(D)`` (needs two distinct D)."""
    import numpy as np

    if len(set(ds)) < 2:
        return None
    x, y = np.log2(np.asarray(ds, dtype=float)), np.asarray(depths, dtype=float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else 1.0
    return {
        "a": round(float(a), 4),
        "b_per_doubling": round(float(b), 4),
        "r2": round(r2, 4),
        "paper_b_per_doubling": round(math.log(2, 3), 4),
        "points": len(ds),
    }


def summarize(records: list[dict[str, Any]], seeds: int | None = None) -> dict[str, Any]:
    """Per (D, curriculum): the depth table and the fits, from finished-run records (one tag)."""
    groups: dict[tuple[int, bool], dict[int, list[bool]]] = {}
    ems: dict[tuple[int, bool], dict[int, list[float]]] = {}
    timeouts: Counter = Counter()
    for r in records:
        timeouts[(int(r["hops"]), bool(r["curriculum"]))] += bool(r.get("timed_out"))
        if r.get("heads_probe"):
            continue
        k = (int(r["hops"]), bool(r["curriculum"]))
        groups.setdefault(k, {}).setdefault(int(r["layers"]), []).append(bool(r["passed"]))
        ems.setdefault(k, {}).setdefault(int(r["layers"]), []).append(r["exact_match"])
    if (1, True) in groups and (1, False) not in groups:  # D = 1: the curriculum is a no-op, one search serves both
        groups[(1, False)], ems[(1, False)] = groups[(1, True)], ems[(1, True)]
        timeouts[(1, False)] = timeouts[(1, True)]
    table = []
    for (d, cur), done in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        shared = d == 1 and not cur and not any(r["hops"] == 1 and not r["curriculum"] for r in records)
        opts = (
            next(
                (
                    r.get("task_options")
                    for r in records
                    if (r["hops"], r["curriculum"]) == (d, cur or shared) and r.get("task_options")
                ),
                None,
            )
            or {}
        )
        row = {
            "hops": d,
            "curriculum": cur,
            "num_pairs": opts.get("num_pairs"),
            "tokens": question_tokens(opts["num_pairs"], bool(opts.get("pair_separator")))
            if opts.get("num_pairs")
            else None,
            "paper_log3_2D": round(paper_depth(d), 3),
            **min_depths(done),
            "timed_out_runs": timeouts[(d, cur)],
            "exact_match": {
                str(layers): [None if e is None else round(e, 4) for e in v]
                for layers, v in sorted(ems[(d, cur)].items())
            },
        }
        if seeds is not None:
            row["complete"] = all(len(v) >= seeds for v in done.values())
        row["runs_shared_with_curriculum"] = shared
        table.append(row)
    fits = {}
    for cur in (True, False):
        for crit in ("all_seeds", "any_seed"):
            pts = [
                (r["hops"], r[f"min_depth_{crit}"])
                for r in table
                if r["curriculum"] == cur and r[f"min_depth_{crit}"] is not None
            ]
            fits[f"{'curriculum' if cur else 'no_curriculum'}_{crit}"] = fit_log(
                [p[0] for p in pts], [p[1] for p in pts]
            )
    return {"table": table, "fits": fits}


def plot(summary: dict[str, Any], path: Path, max_layers: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    table = summary["table"]
    ds = sorted({r["hops"] for r in table}) or [1, 2]
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    grid = np.geomspace(min(ds), max(ds), 200) if len(ds) > 1 else np.array([ds[0] * 0.8, ds[0] * 1.25])
    ax.plot(grid, [paper_depth(d) for d in grid], "k--", lw=1.2, label="paper: log$_3$(2D)")
    ax.step(
        grid, [math.ceil(paper_depth(d) - 1e-9) for d in grid], "k:", lw=0.9, where="post", label="ceil(log$_3$(2D))"
    )
    style = {True: ("tab:blue", "curriculum"), False: ("tab:red", "no curriculum")}
    for cur, (color, name) in style.items():
        rows = [r for r in table if r["curriculum"] == cur]
        if not rows:
            continue
        offset = -0.06 if cur else 0.06
        for crit, marker, fill in (("all_seeds", "o", color), ("any_seed", "s", "none")):
            xs, ys, up = [], [], []
            for r in rows:
                v = r[f"min_depth_{crit}"]
                if v is None:
                    up.append((r["hops"], max(r.get("depths_tried") or [max_layers])))
                else:
                    xs.append(r["hops"] * (1 + offset))
                    ys.append(v + (0.08 if crit == "any_seed" else 0))
            label = f"{name}: min depth, {'all seeds' if crit == 'all_seeds' else 'any seed'} >= target"
            ax.plot(xs, ys, marker, color=color, mfc=fill, ms=8 if crit == "all_seeds" else 6, ls="none", label=label)
            if crit == "all_seeds" and up:
                ax.plot(
                    [u * (1 + offset) for u, _ in up],
                    [top + 0.45 for _, top in up],
                    "^",
                    color=color,
                    ms=8,
                    ls="none",
                    label=f"{name}: not reached up to the depth tried (marker above it)",
                )
            fit = summary["fits"].get(f"{'curriculum' if cur else 'no_curriculum'}_{crit}")
            if fit and crit == "all_seeds":
                ax.plot(
                    grid,
                    fit["a"] + fit["b_per_doubling"] * np.log2(grid),
                    "-",
                    color=color,
                    lw=1,
                    alpha=0.8,
                    label=f"{name} fit: {fit['a']:.2f} + {fit['b_per_doubling']:.2f} log$_2$D",
                )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ds)
    ax.set_xticklabels([str(d) for d in ds])
    ax.set_xlabel("hops D (input length grows with D)")
    ax.set_ylabel("layers")
    ax.set_ylim(0, max_layers + 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown_table(summary: dict[str, Any]) -> str:
    lines = [
        "| D | tokens | log3(2D) | curriculum | min depth (all seeds) | min depth (any seed) | passes per depth |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["table"]:
        above = f"> {max(r['depths_tried'])}"
        depth_all = above if r["min_depth_all_seeds"] is None else r["min_depth_all_seeds"]
        depth_any = above if r["min_depth_any_seed"] is None else r["min_depth_any_seed"]
        passes = ", ".join(f"L{k}: {v}" for k, v in r["passes"].items())
        lines.append(
            f"| {r['hops']} | {r.get('tokens')} | {r['paper_log3_2D']:.2f} | {'on' if r['curriculum'] else 'off'} "
            f"| {depth_all} | {depth_any} | {passes} |"
        )
    return "\n".join(lines)


def write_summary(args: argparse.Namespace, ledger: Ledger, argv: list[str], counts: dict | None) -> dict[str, Any]:
    tag = tag_of(settings_of(args))
    records = [r for r in ledger.records.values() if r.get("tag") == tag and not r.get("heads_probe")]
    if not records and ledger.records:
        common = Counter(r.get("tag") for r in ledger.records.values() if not r.get("heads_probe")).most_common(1)
        if common:
            print(
                f"[retrieval_depth] no runs with these settings (tag {tag}); summarising tag {common[0][0]}, "
                "the most common in the ledger"
            )
            tag = common[0][0]
            records = [r for r in ledger.records.values() if r.get("tag") == tag and not r.get("heads_probe")]
    records.sort(key=lambda r: (r["hops"], not r["curriculum"], r["layers"], r["seed"]))
    summary = summarize(records, len(args.seeds))
    devices = sorted({r.get("device", "?") for r in records})
    label = args.label or ("CPU pilot" if devices and all(d.startswith("cpu") for d in devices) else "")
    title = (
        f"{label + ': ' if label else ''}min depth for >= {args.target:.0%} test exact match "
        f"(width {args.width}, {args.heads} heads, {len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''})"
    )
    out = Path(args.out_dir)
    png = plot(summary, out / f"{args.name}.png", args.max_layers, title)
    data = {
        "benchmark": "retrieval_depth (issue 12)",
        "label": label,
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_depth.py", argv),
        "devices": devices,
        "summarised_on": device_name(args),
        "versions": versions(),
        "run_versions": sorted({json.dumps(r.get("versions"), sort_keys=True) for r in records}),
        "settings": settings_of(args),
        "tag": tag,
        "target": args.target,
        "rules": {
            "num_pairs": f"max({args.pairs_factor}*D, {args.min_pairs})",
            "num_nodes": f"max({args.min_nodes}, 2*(num_pairs + ceil(num_pairs/D)))",
            "question_tokens": "2*num_pairs + 3",
            "start_depth": "ceil(log3(2D))",
            "search": "down while the lowest depth tried has a passing seed; up while the highest has a "
            f"failing seed (give up after {args.give_up_after} depths with no passing seed)",
            "model": f"Llama, hidden {args.width}, {args.heads} heads, MLP {args.mlp or 4 * args.width}, RoPE",
            "shapes": {str(d): shape_of(d, args) for d in sorted({r["hops"] for r in records})},
        },
        "table": summary["table"],
        "fits": summary["fits"],
        "markdown": markdown_table(summary),
        "sweep_counts": counts,
        "plot": png.name,
        "gpu_seconds_of_runs": round(sum(r.get("wall_seconds") or 0 for r in records), 1),
        "runs": records,
    }
    write_json(out / f"{args.name}.json", data)
    print(data["markdown"])
    print(f"fits: {json.dumps(summary['fits'])}")
    print(f"wrote {out / (args.name + '.json')} and {png}")
    return data


# --------------------------------------------------------------------------------------------- emergence
def pick_emergence_config(text: str, ledger: Ledger, args: argparse.Namespace) -> tuple[int, int, bool]:
    if text != "auto":
        kv = dict(part.split("=", 1) for part in text.split(","))
        return int(kv["D"]), int(kv["layers"]), kv.get("curriculum", "on") in ("on", "1", "true", "yes")
    tag = tag_of(settings_of(args))
    summary = summarize([r for r in ledger.records.values() if r.get("tag") == tag])
    for cur in (True, False):
        rows = [r for r in summary["table"] if r["curriculum"] == cur and (r["min_depth_all_seeds"] or 0) >= 2]
        if rows:
            best = max(rows, key=lambda r: r["hops"])
            return best["hops"], best["min_depth_all_seeds"], cur
    raise SystemExit(
        "--emergence auto: no (D, curriculum) in the ledger passed with >= 2 layers; name one: "
        "--emergence D=8,layers=4,curriculum=on"
    )


def emergence(
    args: argparse.Namespace, ledger: Ledger, argv: list[str], runner: Callable[..., dict | None] | None = None
) -> dict[str, Any]:
    from hf_growth.analysis.plots import plot_head_emergence

    d, layers, cur = pick_emergence_config(args.emergence, ledger, args)
    tag = tag_of(settings_of(args))
    steps = args.emergence_steps
    if not steps:
        reached = [
            r.get("reached_step")
            for r in ledger.records.values()
            if r.get("tag") == tag
            and (r["hops"], r["layers"], r["curriculum"]) == (d, layers, cur)
            and r.get("reached_step")
        ]
        steps = min(args.max_steps, int(1.5 * max(reached))) if reached else args.max_steps
    if not args.emergence_every:
        args.emergence_every = max(1, steps // 30)
    stop = threading.Event()
    runner = runner or subprocess_runner(args, stop)
    specs = [RunSpec(d, cur, layers, seed, tag, heads_probe=True) for seed in args.seeds]
    print(
        f"[retrieval_depth] head emergence: D={d}, {layers} layers, curriculum {'on' if cur else 'off'}, "
        f"{steps} steps, recorded every {args.emergence_every}, seeds {list(args.seeds)}",
        flush=True,
    )
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        recs = list(pool.map(lambda s: runner(s, steps), specs))
    out = Path(args.out_dir)
    seeds_out = []
    for spec, rec in zip(specs, recs):
        heads_path = Path(args.runs_dir).resolve() / spec.key / "heads.json"
        if rec is None or rec.get("exact_match") is None or not heads_path.exists():
            seeds_out.append({"seed": spec.seed, "error": (rec or {}).get("error", "no heads.json")})
            continue
        data = json.loads(heads_path.read_text())
        png = out / f"{args.name}.heads_s{spec.seed}.png"
        plot_head_emergence(
            data,
            png,
            threshold=args.emergence_threshold,
            title=f"Retrieval D={d}, {layers} layers, seed {spec.seed}: test exact match {rec['exact_match']:.3f}",
        )
        em = data["emergence"]
        sentence = (
            f"seed {spec.seed}: heads reach {'half their rise' if em['threshold'] is None else em['threshold']}"
            f" in the order {em['sentence']}; layers in order {em['layer_order']}"
        )
        print(sentence, flush=True)
        seeds_out.append(
            {
                "seed": spec.seed,
                "exact_match": rec["exact_match"],
                "steps": data["steps"],
                "scores": data["scores"],
                "emergence": em,
                "sentence": sentence,
                "plot": png.name,
                "map_question": data.get("map_question"),
                "val_history": rec.get("val_history"),
                "wall_seconds": rec.get("wall_seconds"),
                "device": rec.get("device"),
            }
        )
    orders = [tuple(s["emergence"]["layer_order"]) for s in seeds_out if "emergence" in s]
    same = len(set(orders)) == 1 if orders else None
    print(f"layer order {'the same' if same else 'not the same'} across seeds: {[list(o) for o in orders]}")
    result = {
        "benchmark": "retrieval_depth head emergence (issue 12)",
        "label": args.label,
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_depth.py", argv),
        "config": {
            "hops": d,
            "layers": layers,
            "curriculum": cur,
            "steps": steps,
            "every": args.emergence_every,
            "probe_size": args.emergence_probe,
            "query": args.emergence_query,
            "threshold": args.emergence_threshold,
            **shape_of(d, args),
        },
        "settings": settings_of(args),
        "versions": versions(),
        "same_layer_order": same,
        "seeds": seeds_out,
    }
    write_json(out / f"{args.name}.heads.json", result)
    print(f"wrote {out / (args.name + '.heads.json')} and {len(orders)} plots")
    return result


def calibrate(
    args: argparse.Namespace, argv: list[str], runner: Callable[..., dict | None] | None = None
) -> dict[str, Any]:
    """Steps per second of one run alone and of J concurrent runs (``--calibrate 1,6,12``) on this machine, for
    planning the sweep: each wave trains J copies (seeds 100..) of ``--calibrate-config`` for
    ``--calibrate-steps`` steps with no early stop. Writes ``<name>.calibration.json``."""
    kv = dict(part.split("=", 1) for part in args.calibrate_config.split(","))
    d, layers = int(kv["D"]), int(kv["layers"])
    tag = "calib-" + tag_of(settings_of(args))
    args.stop_at = None  # the runner passes it to the monitor: never stop early
    runner = runner or subprocess_runner(args, threading.Event())
    waves = []
    result = {
        "benchmark": "retrieval_depth calibration (issue 12)",
        "device": device_name(args),
        "versions": versions(),
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_depth.py", argv),
        "config": {"hops": d, "layers": layers, "steps": args.calibrate_steps, **shape_of(d, args)},
        "settings": settings_of(args),
        "waves": waves,
    }
    path = Path(args.out_dir) / f"{args.name}.calibration.json"
    for jobs in args.calibrate:
        specs = [RunSpec(d, True, layers, 100 + i, f"{tag}-j{jobs}") for i in range(jobs)]
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            recs = list(pool.map(lambda s: runner(s, args.calibrate_steps), specs))
        wall = time.perf_counter() - start
        rates = [r["steps_per_second"] for r in recs if r and r.get("steps_per_second")]
        overhead = [r["wall_seconds"] - r["seconds"]["train"] for r in recs if r and r.get("seconds")]
        wave = {
            "jobs": jobs,
            "wall_seconds": round(wall, 1),
            "steps_per_second_per_run": round(statistics.mean(rates), 2) if rates else None,
            "aggregate_steps_per_second": round(sum(rates), 1) if rates else None,
            "overhead_seconds_per_run": round(statistics.mean(overhead), 1) if overhead else None,
            "errors": [r.get("error") for r in recs if r and r.get("error")],
        }
        waves.append(wave)
        print(f"[retrieval_depth] calibration D={d} L={layers}: {wave}", flush=True)
        write_json(path, result)  # after every wave: a command cut short keeps them
    print(f"wrote {path}")
    return result


# --------------------------------------------------------------------------------------------- cli
def _ints(text: str) -> list[int]:
    """``"1,2,4"`` or ranges ``"1-3,6"`` -> ``[1, 2, 3, 6]``."""
    out: list[int] = []
    for part in filter(str.strip, text.split(",")):
        lo, sep, hi = part.strip().partition("-")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out


def add_task_and_model_args(p: argparse.ArgumentParser) -> None:
    """The options both sweeps share: hop counts, curriculum, seeds, the model's shape and the task's size rules."""
    p.add_argument("--hops", type=_ints, default=[1, 2, 4, 8, 16], help="hop counts D, e.g. 1,2,4 or 1-4")
    p.add_argument("--curriculum", choices=["both", "on", "off"], default="both")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=0, help="MLP width (0 = 4 x width)")
    p.add_argument("--pairs-factor", type=int, default=2, help="num_pairs = max(pairs_factor * D, min_pairs)")
    p.add_argument("--min-pairs", type=int, default=8)
    p.add_argument("--min-nodes", type=int, default=64)
    p.add_argument(
        "--validation-size",
        type=int,
        default=2000,
        help="questions a run's stop (--stop-at) is judged on; with 500 the first lucky draw froze "
        "members at 0.982-0.989 test",
    )
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument(
        "--pair-separator",
        action="store_true",
        help="'<sep>' after every pair of the questions (hf_growth.tasks.retrieval: disambiguates chains)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_task_and_model_args(p)
    p.add_argument("--min-layers", type=int, default=1)
    p.add_argument("--max-layers", type=int, default=8)
    p.add_argument("--train-size", type=int, default=2**18)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--max-steps",
        default="10000",
        help="cap per run (runs stop early at --stop-at); 'auto': what fits in 80%% of --run-timeout at the "
        "per-run speed of the most concurrent wave that --calibration measured",
    )
    p.add_argument("--calibration", default="research/retrieval_depth_vs_hops/results/retrieval_depth.calibration.json")
    p.add_argument("--auto-max-steps", type=int, default=24000, help="upper end of --max-steps auto (the paper's 24k)")
    p.add_argument(
        "--auto-min-steps",
        type=int,
        default=6000,
        help="--max-steps auto refuses a cap below this: on the H100, D = 1 left the 1/num_pairs plateau "
        "only after 2.5-3.5k steps (one seed of three solved it, at 2.7k)",
    )
    p.add_argument("--eval-every", type=int, default=100, help="validation exact match every N steps")
    p.add_argument("--stop-at", type=float, default=0.995, help="stop a run when validation exact match reaches it")
    p.add_argument("--target", type=float, default=0.99, help="a run passes at this test exact match")
    p.add_argument(
        "--give-up-after",
        type=int,
        default=3,
        help="stop going up after this many depths in a row where no seed passed (0 = never)",
    )
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="concurrent runs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto")
    p.add_argument("--bf16", action="store_true")
    p.add_argument(
        "--train-args", default="", help="more train_reasoning.py flags for every run, e.g. --train-args='--tf32'"
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        default=500,
        help="wall seconds per run; a slower run counts as failed (keep it under one command's length)",
    )
    p.add_argument("--time-budget", type=float, default=0, help="end the sweep after this many seconds (0 = none)")
    p.add_argument(
        "--min-remaining",
        type=float,
        default=45,
        help="with --time-budget and no earlier run of the kind, launch only with this much time left",
    )
    p.add_argument("--ledger", default="research/retrieval_depth_vs_hops/results/retrieval_depth.runs.jsonl")
    p.add_argument("--runs-dir", default="runs/retrieval_depth")
    p.add_argument("--out-dir", default="research/retrieval_depth_vs_hops/results")
    p.add_argument("--name", default="retrieval_depth", help="output file stem")
    p.add_argument("--label", default="", help="e.g. 'CPU pilot'; default: 'CPU pilot' when every run was on a CPU")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--no-summary", action="store_true", help="skip the table and plot at the end")
    p.add_argument("--emergence", default="", help="'auto' or 'D=8,layers=4,curriculum=on': head emergence runs")
    p.add_argument("--emergence-steps", type=int, default=0, help="0 = 1.5 x the sweep's steps to the target")
    p.add_argument("--emergence-every", type=int, default=0, help="record every N steps (0 = steps // 30)")
    p.add_argument("--emergence-probe", type=int, default=64)
    p.add_argument("--emergence-query", choices=["last", "chain"], default="last")
    p.add_argument("--emergence-threshold", type=float, default=None, help="default: half of each head's rise")
    p.add_argument("--calibrate", type=_ints, default=[], help="e.g. 1,6,12: steps/s alone and with J concurrent runs")
    p.add_argument("--calibrate-config", default="D=16,layers=8")
    p.add_argument("--calibrate-steps", type=int, default=1000)
    args = p.parse_args(argv)
    if args.device == "cpu" or not _cuda():
        args.device = "cpu"
    if args.calibrate:
        args.max_steps = args.calibrate_steps
    elif args.max_steps != "auto":
        args.max_steps = int(args.max_steps)
    return args


def resolve_max_steps(args: argparse.Namespace) -> int:
    """``--max-steps auto``: the steps a run makes in 80% of ``--run-timeout`` (less its start-up and test time) at
    the per-run speed of the calibration's most concurrent wave (the sweep's situation), rounded down to 500, at
    most ``--auto-max-steps``; below ``--auto-min-steps`` it refuses (such runs cannot leave the plateau). It depends on the calibration file alone (not on ``--jobs``), so every slice,
    the emergence runs and ``--summarize-only`` get the same cap and hence the same run keys."""
    if args.max_steps != "auto":
        return int(args.max_steps)
    path = Path(args.calibration)
    if not path.exists():
        raise SystemExit(f"--max-steps auto needs a calibration file ({path}): run --calibrate first")
    waves = [w for w in json.loads(path.read_text())["waves"] if w.get("steps_per_second_per_run")]
    wave = max(waves, key=lambda w: w["jobs"])
    seconds = 0.8 * args.run_timeout - (wave.get("overhead_seconds_per_run") or 0)
    steps = int(seconds * wave["steps_per_second_per_run"]) // 500 * 500
    if steps < args.auto_min_steps:
        raise SystemExit(
            f"--max-steps auto: a run of the calibration's slowest wave ({wave['jobs']} concurrent runs at "
            f"{wave['steps_per_second_per_run']} steps/s each) makes only {steps} steps in 80% of --run-timeout "
            f"{args.run_timeout:g} s, below --auto-min-steps {args.auto_min_steps} (runs that short end on the "
            "plateau and prove nothing). Calibrate with fewer concurrent runs (--calibrate 1,4), a faster step "
            "(--train-args='--torch-compile --data-on-device'), or raise --run-timeout; or give --max-steps N"
        )
    args.max_steps = min(args.auto_max_steps, steps)
    print(f"[retrieval_depth] --max-steps auto: {args.max_steps} (calibration {path}: {wave})", flush=True)
    return args.max_steps


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ledger = Ledger(Path(args.ledger))
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if not args.calibrate:
        resolve_max_steps(args)
    if args.calibrate:
        calibrate(args, argv)
        return 0
    if args.emergence:
        emergence(args, ledger, argv)
        return 0
    counts = None
    if not args.summarize_only:
        stop = threading.Event()
        counts = sweep(args, subprocess_runner(args, stop), ledger, stop)
        print(f"[retrieval_depth] sweep: {counts}", flush=True)
    if not args.no_summary:
        write_summary(args, ledger, argv, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
