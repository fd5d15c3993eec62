"""retrieval_depth.py: depth search, resume, summary/fit/plot, chain positions, and one
tiny real run of the sweep and of the head-emergence mode."""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

rd = importlib.import_module("retrieval_depth")
probe = importlib.import_module("retrieval_probe")


def _args(tmp_path, *extra):
    return rd.parse_args(
        [
            "--ledger",
            str(tmp_path / "ledger.jsonl"),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out-dir",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            *extra,
        ]
    )


def _fake(need, calls, seed_extra=None):
    """A runner where (D, curriculum) passes from depth need[(D, curriculum)] (+ seed_extra[seed])."""
    lock = threading.Lock()

    def run(spec):
        with lock:
            calls.append((spec.hops, spec.curriculum, spec.layers, spec.seed))
        depth = need[(spec.hops, spec.curriculum)] + (seed_extra or {}).get(spec.seed, 0)
        ok = spec.layers >= depth
        return {
            "key": spec.key,
            "hops": spec.hops,
            "curriculum": spec.curriculum,
            "layers": spec.layers,
            "seed": spec.seed,
            "tag": spec.tag,
            "exact_match": 1.0 if ok else 0.1,
            "passed": ok,
            "wall_seconds": 1.0,
            "device": "cpu (fake)",
            "task_options": {"num_pairs": 8},
        }

    return run


def test_rules():
    assert [rd.start_depth(d) for d in (1, 2, 4, 8, 16)] == [1, 2, 2, 3, 4]
    assert rd.task_shape(1) == {"num_pairs": 8, "num_nodes": 64, "tokens": 19}
    assert rd.task_shape(16) == {"num_pairs": 32, "num_nodes": 68, "tokens": 67}
    # plan_next: start first; down while the lowest passes somewhere; up while the highest fails somewhere
    assert rd.plan_next({}, 3, 1, 8, 3) == [3]
    assert rd.plan_next({3: [True, True]}, 3, 1, 8, 3) == [3]  # a depth counts once every seed is in
    assert rd.plan_next({3: [True] * 3}, 3, 1, 8, 3) == [2]
    assert rd.plan_next({3: [True, False, True]}, 3, 1, 8, 3) == [2, 4]
    assert rd.plan_next({3: [True] * 3, 2: [False] * 3}, 3, 1, 8, 3) == []
    assert rd.plan_next({1: [True] * 3}, 1, 1, 8, 3) == []
    assert rd.plan_next({8: [False] * 3}, 8, 1, 8, 3) == []
    fails = {d: [False] * 3 for d in (4, 5, 6)}
    assert rd.plan_next(fails, 4, 1, 8, 3, give_up_after=3) == []
    assert rd.plan_next(fails, 4, 1, 8, 3, give_up_after=0) == [7]


def test_sweep_finds_smallest_depth_and_stops_early(tmp_path):
    args = _args(tmp_path, "--hops", "1,4,16", "--jobs", "3", "--give-up-after", "3")
    need = {(1, True): 2, (1, False): 2, (4, True): 2, (4, False): 3, (16, True): 6, (16, False): 99}
    calls = []
    ledger = rd.Ledger(args.ledger)
    counts = rd.sweep(args, _fake(need, calls, seed_extra={2: 1}), ledger, log=lambda s: None)
    assert counts["searches_unfinished"] == 0
    tried = {}
    for d, c, layers, seed in calls:
        tried.setdefault((d, c), set()).add(layers)
    # D=4 with curriculum: start 2 passes for seeds 0,1 -> try 1 (fails) and 3 (all pass) -> done
    assert tried[(4, True)] == {1, 2, 3}
    # D=16 with curriculum: start 4, up to 7 where seed 2 passes too; nothing above
    assert tried[(16, True)] == {4, 5, 6, 7}
    # never passes: give up after three depths with no passing seed
    assert tried[(16, False)] == {4, 5, 6}
    assert len(calls) == len(set(calls)) == len(ledger.records)
    summary = rd.summarize(list(ledger.records.values()), 3)
    rows = {(r["hops"], r["curriculum"]): r for r in summary["table"]}
    assert rows[(4, True)]["min_depth_any_seed"] == 2 and rows[(4, True)]["min_depth_all_seeds"] == 3
    assert rows[(4, False)]["min_depth_all_seeds"] == 4 and rows[(4, False)]["min_depth_any_seed"] == 3
    assert rows[(16, False)]["min_depth_all_seeds"] is None and rows[(16, False)]["depths_tried"] == [4, 5, 6]
    assert rows[(1, True)]["passes"] == {"1": "0/3", "2": "2/3", "3": "3/3"}
    # D = 1 has no easier instances: one search (curriculum on) serves both rows
    assert (1, False) not in tried and rows[(1, False)]["runs_shared_with_curriculum"] is True
    assert rows[(1, False)]["min_depth_all_seeds"] == 3
    assert rows[(1, False)]["tokens"] == rows[(1, True)]["tokens"] == 19  # the shared row's shape, not None

    # resume: a second sweep over the same ledger (reloaded from disk) runs nothing
    again = []
    counts = rd.sweep(args, _fake(need, again), rd.Ledger(args.ledger), log=lambda s: None)
    assert again == [] and counts.get("launched", 0) == 0


def test_resume_skips_finished_and_recovers_run_dirs(tmp_path):
    args = _args(tmp_path, "--hops", "2", "--curriculum", "on", "--seeds", "0", "--jobs", "1")
    tag = rd.tag_of(rd.settings_of(args))
    ledger = rd.Ledger(args.ledger)
    # depth 2 (the start) finished in an earlier command, in the ledger
    ledger.add(
        {
            "key": rd.RunSpec(2, True, 2, 0, tag).key,
            "hops": 2,
            "curriculum": True,
            "layers": 2,
            "seed": 0,
            "tag": tag,
            "exact_match": 1.0,
            "passed": True,
            "wall_seconds": 5.0,
        }
    )
    # depth 1 finished but only its results.json made it (the command was killed before the ledger line)
    spec = rd.RunSpec(2, True, 1, 0, tag)
    run_dir = Path(args.runs_dir) / spec.key
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"exact_match": 0.5, "global_steps": 7}))
    calls = []
    counts = rd.sweep(args, _fake({(2, True): 2}, calls), ledger, log=lambda s: None)
    assert calls == [] and counts["recovered"] == 1
    assert ledger.get(spec.key)["passed"] is False and ledger.get(spec.key)["global_steps"] == 7


def test_time_budget_kills_and_records_nothing(tmp_path):
    args = _args(
        tmp_path,
        "--hops",
        "1",
        "--curriculum",
        "on",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--time-budget",
        "0.5",
        "--min-remaining",
        "0",
    )
    stop = threading.Event()

    def slow(spec):
        stop.wait(30)
        return None  # killed

    counts = rd.sweep(args, slow, rd.Ledger(args.ledger), stop, log=lambda s: None)
    assert counts["killed"] == 2 and counts["searches_unfinished"] == 1
    assert not Path(args.ledger).exists()


def test_summary_fit_and_plot(tmp_path):
    args = _args(tmp_path, "--hops", "1,2,4,8,16", "--name", "synthetic", "--label", "synthetic")
    tag = rd.tag_of(rd.settings_of(args))
    ledger = rd.Ledger(args.ledger)
    for i, d in enumerate((1, 2, 4, 8, 16)):
        for cur in (True, False):
            need = 1 + i if cur else 2 + 2 * i  # curriculum: 1 + log2 D exactly
            for layers in (need - 1, need) if need <= 8 else (7, 8):
                if layers < 1:
                    continue
                for seed in range(3):
                    ledger.add(
                        {
                            "key": rd.RunSpec(d, cur, layers, seed, tag).key,
                            "hops": d,
                            "curriculum": cur,
                            "layers": layers,
                            "seed": seed,
                            "tag": tag,
                            "passed": layers >= need,
                            "exact_match": 1.0 if layers >= need else 0.2,
                            "wall_seconds": 2.0,
                            "device": "NVIDIA H100 (synthetic)",
                            "task_options": {"num_pairs": max(2 * d, 8)},
                        }
                    )
    data = rd.write_summary(args, ledger, ["--summarize-only"], None)
    out = Path(args.out_dir)
    assert (out / "synthetic.png").stat().st_size > 10_000
    saved = json.loads((out / "synthetic.json").read_text())
    assert {"command", "devices", "versions", "table", "fits", "runs", "rules", "settings", "markdown"} <= set(saved)
    assert saved["devices"] == ["NVIDIA H100 (synthetic)"] and len(saved["runs"]) == len(ledger.records)
    fit = data["fits"]["curriculum_all_seeds"]
    assert fit["a"] == pytest.approx(1.0) and fit["b_per_doubling"] == pytest.approx(1.0) and fit["r2"] == 1.0
    rows = {(r["hops"], r["curriculum"]): r for r in saved["table"]}
    assert rows[(16, True)]["min_depth_all_seeds"] == 5 and rows[(16, True)]["tokens"] == 67
    assert rows[(16, False)]["min_depth_all_seeds"] is None  # needs 10 > 8 layers: not reached
    assert rd.fit_log([4], [2]) is None


def test_chain_positions_follow_the_links():
    from hf_growth.tasks.retrieval import retrieval_splits, solve

    for hops, pairs, cur, sep in ((1, 8, True, False), (3, 8, True, False), (4, 8, False, True), (16, 32, True, True)):
        s = retrieval_splits(
            num_pairs=pairs,
            hops=hops,
            num_nodes=80,
            curriculum=cur,
            train_size=200,
            validation_size=5,
            test_size=5,
            seed=hops,
            pair_separator=sep,
        )
        for q, a in zip(s["train"]["question"], s["train"]["answer"]):
            path, end = probe.chain_positions(q)
            tokens = q.split()
            assert all(tokens[i] != "<sep>" for link in path for i in link)
            assert end == solve(q) == a and len(path) == int(tokens[-2])
            assert tokens[path[0][0]] == tokens[-1]  # starts at the query node x0
            for (_, dst), (src, _) in zip(path, path[1:]):
                assert tokens[dst] == tokens[src]  # each link starts where the last ended


def test_probe_batch_masks_and_emergence_order():
    from hf_growth.tasks import build_tokenizer

    tok = build_tokenizer()
    opts = probe.run_options(
        ["--task", "retrieval", "--hops", "3", "--num-pairs", "8", "--num-nodes", "64", "--seed", "1", "--pauses", "0"]
    )
    ids, important, query_mask, questions = probe.probe_batch(opts, tok, size=5)
    assert ids["input_ids"].shape == (5, 19) and query_mask is None
    assert important.sum(1).tolist() == [6] * 5  # 3 links, 2 tokens each
    assert all(q.split()[-2] == "3" for q in questions)  # hop count, then the query node
    _, imp3, qmask, _ = probe.probe_batch(opts, tok, size=5, query="chain")
    assert imp3.shape == (5, 19, 19) and qmask.sum(1).tolist() == [7] * 5
    assert (imp3[qmask].sum(-1) >= 4).all()  # every chain query sees the other links
    sep_opts = probe.run_options(
        [
            "--task",
            "retrieval",
            "--hops",
            "3",
            "--num-pairs",
            "8",
            "--num-nodes",
            "64",
            "--seed",
            "1",
            "--pauses",
            "0",
            "--pair-separator",
        ]
    )
    ids, important, _, questions = probe.probe_batch(sep_opts, tok, size=5)
    assert ids["input_ids"].shape == (5, 27) and important.sum(1).tolist() == [9] * 5  # + each link's <sep>
    for row, q in zip(important, questions):
        marked = [q.split()[i] for i in row.nonzero().flatten().tolist()]
        assert marked.count("<sep>") == 3 and marked[2::3] == ["<sep>"] * 3
    scores = np.zeros((4, 2, 2))
    scores[2:, 1, 0] = 0.9  # L1H0 rises at step 20
    scores[3:, 0, 1] = 0.8  # L0H1 at step 30
    order = probe.emergence_order(scores, [0, 10, 20, 30])
    assert [(h["layer"], h["head"], h["step"]) for h in order["heads"]] == [(1, 0, 20), (0, 1, 30)]
    assert order["layer_order"] == [1, 0] and "L1H0 (step 20) -> L0H1 (step 30)" in order["sentence"]
    scores[1:, 0, 0] = -0.5  # L0H0 leaves the chain at step 10: the settled rule counts falls
    settled = probe.emergence_order(scores, [0, 10, 20, 30], rule="settled")
    assert [(h["layer"], h["head"], h["step"]) for h in settled["heads"]][0] == (0, 0, 10)
    assert settled["heads"][0]["change"] == -0.5 and "L0H0 (step 10, falls)" in settled["sentence"]
    with pytest.raises(ValueError, match="rule must be"):
        probe.emergence_order(scores, [0, 10, 20, 30], rule="max")


@pytest.mark.slow
def test_tiny_real_sweep_and_emergence(tmp_path):
    """One real 4-step run through scripts/train_reasoning.py, then the head-emergence mode (one seed)."""
    common = [
        "--hops",
        "1",
        "--min-layers",
        "1",
        "--max-layers",
        "1",
        "--seeds",
        "0",
        "--curriculum",
        "on",
        "--width",
        "32",
        "--heads",
        "2",
        "--batch-size",
        "16",
        "--train-size",
        "256",
        "--validation-size",
        "32",
        "--test-size",
        "32",
        "--eval-every",
        "2",
        "--jobs",
        "1",
        "--device",
        "cpu",
        "--ledger",
        str(tmp_path / "ledger.jsonl"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--out-dir",
        str(tmp_path / "out"),
        "--name",
        "tiny",
    ]
    assert rd.main([*common, "--max-steps", "4"]) == 0
    record = json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[0])
    assert record["global_steps"] == 4 and record["num_test"] == 32 and not record.get("error")
    assert [h[0] for h in record["val_history"]] == [2, 4] and record["device"].startswith("cpu")
    summary = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert summary["label"] == "CPU pilot" and summary["runs"][0]["key"] == record["key"]

    assert (
        rd.main(
            [
                *common,
                "--max-steps",
                "4",
                "--emergence",
                "D=1,layers=1,curriculum=on",
                "--emergence-steps",
                "4",
                "--emergence-every",
                "2",
                "--emergence-probe",
                "8",
            ]
        )
        == 0
    )
    heads = json.loads((tmp_path / "out" / "tiny.heads.json").read_text())
    seed = heads["seeds"][0]
    assert seed["steps"] == [0, 2, 4] and np.asarray(seed["scores"]).shape == (3, 1, 2)
    assert (tmp_path / "out" / "tiny.heads_s0.png").stat().st_size > 10_000
    assert "sentence" in seed and heads["config"]["tokens"] == 19


def test_auto_max_steps_from_calibration(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text(
        json.dumps(
            {
                "waves": [
                    {"jobs": 1, "steps_per_second_per_run": 100.0, "overhead_seconds_per_run": 10.0},
                    {"jobs": 14, "steps_per_second_per_run": 20.0, "overhead_seconds_per_run": 30.0},
                ]
            }
        )
    )
    args = _args(tmp_path, "--max-steps", "auto", "--calibration", str(cal), "--jobs", "12", "--run-timeout", "500")
    assert rd.resolve_max_steps(args) == 7000 and args.max_steps == 7000  # (0.8 * 500 - 30) * 20 = 7400, per 500
    cal.write_text(json.dumps({"waves": [{"jobs": 1, "steps_per_second_per_run": 100.0}]}))
    fast = _args(tmp_path, "--max-steps", "auto", "--calibration", str(cal), "--jobs", "1")
    assert rd.resolve_max_steps(fast) == 24000  # 40000 capped at the paper's 24k
    assert rd.resolve_max_steps(_args(tmp_path, "--max-steps", "3000")) == 3000
    # the H100 calibration of 2026-11-25 (14 runs at 6.6 steps/s, 33 s start-up) gave 2,000 steps: refused
    cal.write_text(
        json.dumps({"waves": [{"jobs": 14, "steps_per_second_per_run": 6.6, "overhead_seconds_per_run": 33.1}]})
    )
    with pytest.raises(SystemExit, match="below --auto-min-steps 6000"):
        rd.resolve_max_steps(_args(tmp_path, "--max-steps", "auto", "--calibration", str(cal)))


def test_calibration_keeps_finished_waves_when_cut_short(tmp_path):
    """The calibration file is written after every wave: on the H100 a wave of 8 ran past the command's limit and
    took the finished waves of 1 and 4 with it (the file was written only at the end)."""
    calls = []

    def runner(spec, steps):
        calls.append((spec.seed, steps))
        if len(calls) > 1:  # the second wave is cut off
            raise KeyboardInterrupt
        return {"steps_per_second": 36.75, "wall_seconds": 82.0, "seconds": {"train": 54.4}}

    args = _args(
        tmp_path, "--calibrate", "1,4", "--calibrate-steps", "2000", "--name", "cal", "--out-dir", str(tmp_path / "out")
    )
    (tmp_path / "out").mkdir()
    with pytest.raises(KeyboardInterrupt):
        rd.calibrate(args, ["--calibrate", "1,4"], runner=runner)
    saved = json.loads((tmp_path / "out" / "cal.calibration.json").read_text())
    assert [w["jobs"] for w in saved["waves"]] == [1] and calls[0] == (100, 2000)
    wave = saved["waves"][0]
    assert wave["steps_per_second_per_run"] == 36.75 and wave["overhead_seconds_per_run"] == pytest.approx(27.6)
    assert saved["config"]["hops"] == 16 and saved["config"]["steps"] == 2000


def test_pair_separator_option_reaches_the_runs_and_keeps_old_tags(tmp_path):
    plain, sep = _args(tmp_path), _args(tmp_path, "--pair-separator")
    assert "pair_separator" not in rd.settings_of(plain)  # the tags of runs made before the option stay valid
    assert rd.tag_of(rd.settings_of(plain)) != rd.tag_of(rd.settings_of(sep))
    spec = rd.RunSpec(hops=2, curriculum=True, layers=2, seed=0, tag="t")
    assert "--pair-separator" in rd.command_for(spec, sep, tmp_path)
    assert "--pair-separator" not in rd.command_for(spec, plain, tmp_path)
    assert rd.shape_of(2, sep)["tokens"] == 3 * 8 + 3 and rd.shape_of(2, plain)["tokens"] == 2 * 8 + 3
    opts = probe.run_options(["--task", "retrieval", "--hops", "2", "--num-pairs", "8", "--pair-separator"])
    assert opts["pair_separator"] and all("<sep>" in q for q in probe._split(opts, "validation")["question"])


@pytest.mark.slow
def test_tiny_real_run_with_pair_separator(tmp_path):
    """The flag travels through scripts/train_reasoning.py: its results record it and the question length."""
    assert (
        rd.main(
            [
                "--hops",
                "2",
                "--min-layers",
                "1",
                "--max-layers",
                "1",
                "--seeds",
                "0",
                "--curriculum",
                "on",
                "--width",
                "16",
                "--heads",
                "2",
                "--batch-size",
                "8",
                "--train-size",
                "64",
                "--validation-size",
                "16",
                "--test-size",
                "16",
                "--eval-every",
                "2",
                "--jobs",
                "1",
                "--device",
                "cpu",
                "--pair-separator",
                "--max-steps",
                "2",
                "--give-up-after",
                "1",
                "--ledger",
                str(tmp_path / "ledger.jsonl"),
                "--runs-dir",
                str(tmp_path / "runs"),
                "--out-dir",
                str(tmp_path / "out"),
                "--name",
                "tiny",
                "--min-layers",
                "1",
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "ledger.jsonl").read_text().splitlines()[0])
    assert record["task_options"]["pair_separator"] is True and not record.get("error")
    assert json.loads((tmp_path / "out" / "tiny.json").read_text())["table"][0]["tokens"] == 3 * 8 + 3


def _record(
    hops,
    layers,
    seed,
    passed,
    *,
    source_steps,
    schedule=None,
    timed_out=False,
    cur=True,
    staged=True,
    sep=True,
    pairs=8,
    tag="t",
):
    opts = {
        "num_pairs": pairs,
        "hops": hops,
        "curriculum": cur,
        **({"pair_separator": True} if sep else {}),
        **({"curriculum_kind": "staged"} if staged and cur else {}),
    }
    return {
        "key": f"D{hops}-{cur}-L{layers}-s{seed}-{tag}",
        "tag": tag,
        "hops": hops,
        "curriculum": cur,
        "layers": layers,
        "seed": seed,
        "passed": passed,
        "exact_match": 0.995 if passed else 0.5,
        "timed_out": timed_out,
        "task_options": opts,
        "ensemble": {"steps": source_steps, "schedule_steps": schedule or source_steps},
    }


def test_depth_vs_d_pools_the_run_given_most_steps(tmp_path):
    """retrieval_depth_vs_d: per (D, curriculum, layers, seed) the run given the most steps counts (a finished or
    passed run counts its whole schedule, a run cut off before passing the steps it made); other settings, other
    member shapes and the grown arm are left out; table, fit, plot."""
    vs = importlib.import_module("retrieval_depth_vs_d")
    old = [_record(2, 3, s, False, source_steps=10_000, tag="old") for s in range(3)]
    old += [_record(2, 4, s, s > 0, source_steps=10_000, tag="old") for s in range(3)]
    old += [_record(2, 2, s, False, source_steps=10_000, staged=False, tag="mix") for s in range(3)]  # mixture
    old += [_record(2, 2, s, True, source_steps=99_000, pairs=4, tag="small") for s in range(3)]  # another size
    new = [_record(2, 3, s, True, source_steps=5_000, schedule=60_000, tag="new") for s in range(3)]  # stopped early
    new += [_record(2, 4, s, False, source_steps=20_000, schedule=60_000, timed_out=True, tag="cut") for s in range(3)]
    new += [_record(4, 6, s, True, source_steps=30_000, tag="new") for s in range(3)]
    old += [_record(4, 6, 1, True, source_steps=27_000, schedule=80_000, timed_out=True, tag="cut-pass")]
    new += [_record(4, 6, 1, False, source_steps=35_000, schedule=80_000, timed_out=True, tag="cut-fail")]
    grown = [
        {**_record(4, 5, s, True, source_steps=40_000, tag="grown"), "init_from": "p/D2-s{seed}"} for s in range(3)
    ]
    new += grown  # another arm: left out of the pool from scratch, the only ones with --grown
    wide = {"width": 256, "heads": 8, "mlp": 1024}  # another member shape: pooled only when asked for
    new += [{**_record(4, 6, s, False, source_steps=90_000, tag="wide"), "model": wide} for s in range(3)]
    new[0]["model"] = {**vs.DEFAULT_MODEL}  # written by today's sweep at the default shape: pooled as before
    for name, recs in (("a.jsonl", old), ("b.jsonl", new)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    ledgers = [(n, list(rd.Ledger(tmp_path / n).records.values())) for n in ("a.jsonl", "b.jsonl")]
    chosen, superseded = vs.pool(ledgers)
    by = {(r["hops"], r["layers"], r["seed"]): r for r in chosen}
    assert sorted(by) == [(2, 3, s) for s in range(3)] + [(2, 4, s) for s in range(3)] + [(4, 6, s) for s in range(3)]
    assert all(by[(2, 3, s)]["source"] == "b.jsonl" for s in range(3))  # 60k schedule beats 10k steps
    assert all(by[(2, 4, s)]["source"] == "b.jsonl" for s in range(3))  # cut at 20k beats a finished 10k
    assert by[(4, 6, 1)]["tag"] == "cut-pass"  # passed when cut off: its schedule; cut off before passing: 35k
    assert len(superseded) == 8
    assert vs.main(["--ledgers", "a.jsonl,b.jsonl", "--results", str(tmp_path), "--out-dir", str(tmp_path / "o")]) == 0
    data = json.loads((tmp_path / "o" / "retrieval_depth_vs_D.json").read_text())
    rows = {r["hops"]: r for r in data["table"]}
    assert rows[2]["min_depth_all_seeds"] == 3 and rows[2]["passes"] == {"3": "3/3", "4": "0/3"}
    assert rows[2]["timed_out_runs"] == 3 and rows[4]["min_depth_all_seeds"] == 6
    assert data["fits"]["curriculum_all_seeds"]["b_per_doubling"] == pytest.approx(3.0)
    assert (tmp_path / "o" / "retrieval_depth_vs_D.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no record"):
        vs.main(["--ledgers", "a.jsonl", "--results", str(tmp_path), "--no-separator", "--out-dir", str(tmp_path)])
    assert [(r["hops"], r["layers"]) for r in vs.pool(ledgers, grown=True)[0]] == [(4, 5)] * 3
    assert [(r["tag"], r["seed"]) for r in vs.pool(ledgers, width=256, heads=8)[0]] == [("wide", s) for s in range(3)]
    assert vs.pool(ledgers, width=256)[0] == []  # 256 wide with 4 heads: no such members
    assert (
        vs.main(
            ["--ledgers", "a.jsonl,b.jsonl", "--results", str(tmp_path), "--out-dir", str(tmp_path / "g"), "--grown"]
        )
        == 0
    )
    data = json.loads((tmp_path / "g" / "retrieval_depth_vs_D.json").read_text())
    assert [(r["hops"], r["min_depth_all_seeds"]) for r in data["table"]] == [(4, 5)]
    assert data["setting"]["arm"] == "grown (--init-from)" and data["runs"][0]["init_from"] == "p/D2-s{seed}"


def test_transfer_accuracy_per_pairs_and_d(tmp_path):
    """retrieval_transfer: a saved model's exact match per (pair count, D), grouped by each question's D, and the
    training shape with shifted position ids (a RoPE Llama answers the same: relative positions only)."""
    import torch
    from retrieval_sampling import sample_retrieval_ids
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_growth import tasks
    from hf_growth.tasks.retrieval import QUERY, SEPARATOR

    tr = importlib.import_module("retrieval_transfer")
    tokenizer = tasks.build_tokenizer(max_number=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    model.save_pretrained(tmp_path / "m")
    ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(k) for k in range(16)]))
    q, a = sample_retrieval_ids(
        64,
        4,
        2,
        16,
        True,
        ids,
        *tokenizer.convert_tokens_to_ids([QUERY]),
        separator_id=tokenizer.convert_tokens_to_ids(SEPARATOR),
    )
    a = model(q).logits[:, -1].argmax(-1)  # answers the model gives: accuracy 1 at any shift
    a[:16] = (a[:16] + 1) % 16  # and a quarter wrong
    assert tr.accuracy(model, q, a) == tr.accuracy(model, q, a, shift=9) == 0.75
    argv = [
        str(tmp_path / "m"),
        "--trained-pairs",
        "3",
        "--pairs",
        "3,4",
        "--hops",
        "2",
        "--num-nodes",
        "16",
        "--n",
        "100",
        "--out-dir",
        str(tmp_path),
        "--name",
        "t",
    ]
    assert tr.main(argv) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    rows = {r["pairs"]: r for r in data["rows"]}
    assert rows[3]["tokens"] == 12 and rows[4]["tokens"] == 15 and "trained_shape_shifted" not in rows[3]
    assert sum(rows[4]["n_by_D"].values()) == 100 and set(rows[4]["accuracy_by_D"]) == {"1", "2"}
    assert rows[4]["trained_shape_shifted"]["shift"] == 3 and data["trained_pairs"] == 3
    with pytest.raises(SystemExit):  # the training pair count is needed: given, or beside the model
        tr.main(argv[:1] + argv[3:])
    (tmp_path / "m" / "retrieval_task.json").write_text(json.dumps({"num_pairs": 2}))
    assert tr.main(argv[:1] + argv[3:]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["trained_pairs"] == 2
    with pytest.raises(SystemExit):  # more pairs than the nodes can make distinct: a usage error, not a traceback
        tr.main([*argv[:1], *argv[3:], "--pairs", "12"])


def test_settle_steps_ignores_spikes_and_counts_falls():
    from hf_growth.analysis.heads import first_reach

    steps = list(range(0, 120, 10))
    curves = np.full((12, 1, 4), 0.4)
    curves[1, 0, 0] = 0.9  # head 0: an early spike, then a real rise at step 50
    curves[5:, 0, 0] = 0.8
    curves[3:, 0, 1] = 0.0  # head 1: falls at step 30 (leaves the positions)
    curves[6:, 0, 2] = 0.45  # head 2: moves by 0.05 < min_change
    curves[2:7, 0, 3] = 0.9  # head 3: rises and falls back
    assert probe.settle_steps(curves, steps, window=1) == [[50, 30, None, None]]
    assert first_reach(curves, steps, None)[0][0] == 10  # the half-rise rule takes the spike
    # smoothing moves the step by less than the window, and the edges do not invent a change
    smooth = probe.settle_steps(curves, steps, window=3)
    assert abs(smooth[0][0] - 50) <= 10 and abs(smooth[0][1] - 30) <= 10 and smooth[0][2:] == [None, None]
