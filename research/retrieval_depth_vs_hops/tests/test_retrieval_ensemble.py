"""retrieval_ensemble.py (issue 12 with every run of a hop count in one LlamaEnsemble): a tiny real
sweep on the CPU, its files, freezing finished members, resuming from the ledger, and the schedule."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ens_sweep = importlib.import_module("retrieval_ensemble")

TINY = [
    "--cpu",
    "--threads",
    "1",
    "--no-compile",
    "--no-bf16",
    "--hops",
    "1,2",
    "--depths",
    "1-2",
    "--seeds",
    "0,1",
    "--width",
    "16",
    "--heads",
    "2",
    "--batch-size",
    "8",
    "--max-steps",
    "30",
    "--eval-every",
    "10",
    "--validation-size",
    "16",
    "--test-size",
    "16",
    "--heads-probe",
    "4",
    "--warmup",
    "5",
]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_tiny_sweep_files_freezing_and_resume(tmp_path, capsys):
    ledger, out = tmp_path / "runs.jsonl", tmp_path / "out"
    # every member reaches --stop-at 0 at the first check (step 10): frozen, tested, dropped; --target 0 passes all
    argv = [*TINY, "--stop-at", "0", "--target", "0", "--ledger", str(ledger), "--out-dir", str(out), "--name", "t"]
    assert ens_sweep.main(argv) == 0
    records = _records(ledger)
    assert len(records) == 4 + 8  # D = 1: one curriculum (a no-op there); D = 2: both; 2 depths x 2 seeds each
    assert all(r["reached_step"] == 10 and r["global_steps"] == 10 and r["passed"] for r in records)
    assert {(r["hops"], r["curriculum"], r["layers"], r["seed"]) for r in records} >= {
        (2, False, 2, 1),
        (1, True, 1, 0),
    }
    summary = json.loads((out / "t.json").read_text())
    assert [row["min_depth_all_seeds"] for row in summary["table"]] == [1, 1, 1, 1]
    assert (out / "t.png").stat().st_size > 0
    heads = json.loads((out / "t.D2.heads.json").read_text())
    first = heads[next(iter(heads))]
    assert first["steps"] == [0, 10] and len(first["scores"][0]) in (1, 2)  # (depth, heads) per recorded step
    assert (out / "t.D2.heads_s0.png").exists() and (out / "t.D2.heads_s1.png").exists()
    assert "same over seeds" in capsys.readouterr().out
    # a second call finds every member in the ledger and trains nothing
    assert ens_sweep.main(argv) == 0
    assert len(_records(ledger)) == len(records)


@pytest.mark.slow
def test_members_that_never_reach_the_threshold_train_to_the_end(tmp_path):
    ledger = tmp_path / "runs.jsonl"
    argv = [
        *TINY,
        "--hops",
        "2",
        "--depths",
        "2",
        "--seeds",
        "0",
        "--curriculum",
        "off",
        "--stop-at",
        "1.01",
        "--heads-every",
        "-1",
        "--ledger",
        str(ledger),
        "--out-dir",
        str(tmp_path / "out"),
        "--name",
        "t",
    ]
    assert ens_sweep.main(argv) == 0
    (record,) = _records(ledger)
    assert record["reached_step"] is None and record["global_steps"] == 30 and not record["timed_out"]
    assert [s for s, _ in record["val_history"]] == [10, 20, 30]
    assert 0.0 <= record["exact_match"] <= 1.0 and record["task_options"]["num_pairs"] == 8


def test_schedule_is_transformers_linear_with_warmup():
    from transformers import get_linear_schedule_with_warmup

    args = ens_sweep.parse_args(["--lr", "0.01", "--warmup", "10", "--max-steps", "100"])
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    schedule = get_linear_schedule_with_warmup(opt, 10, 100)
    for step in range(100):
        assert ens_sweep.lr_at(step, args, 100) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        schedule.step()


def test_keys_and_tag_follow_the_settings():
    a = ens_sweep.parse_args([])
    b = ens_sweep.parse_args(["--lr", "3e-3"])
    tag_a = ens_sweep.tag_of(ens_sweep.settings_of(a))
    assert tag_a != ens_sweep.tag_of(ens_sweep.settings_of(b))
    assert ens_sweep.member_key(4, False, 3, 2, tag_a) == f"D4-nocur-L3-s2-{tag_a}"
    assert ens_sweep.parse_args(["--depths", "1-3,6"]).depths == [1, 2, 3, 6]


@pytest.mark.slow
def test_pair_separator_sweep(tmp_path):
    ledger, out = tmp_path / "runs.jsonl", tmp_path / "out"
    argv = [
        *TINY,
        "--hops",
        "2",
        "--depths",
        "1",
        "--seeds",
        "0",
        "--curriculum",
        "on",
        "--max-steps",
        "10",
        "--pair-separator",
        "--ledger",
        str(ledger),
        "--out-dir",
        str(out),
        "--name",
        "t",
    ]
    assert ens_sweep.main(argv) == 0
    (record,) = _records(ledger)
    assert record["task_options"]["pair_separator"] is True
    assert json.loads((out / "t.json").read_text())["table"][0]["tokens"] == 3 * 8 + 3
    heads = json.loads((out / "t.D2.heads.json").read_text())
    assert len(next(iter(heads.values()))["steps"]) == 2  # steps 0 and 10: the probe built with separators


@pytest.mark.slow
def test_staged_curriculum_raises_each_members_largest_hop(tmp_path, monkeypatch):
    """--curriculum-kind staged: a curriculum member starts at D = 1 and k goes up by one at an eval whose mean
    training loss is below --advance-below; members without curriculum stay at D = hops; tags keep the kind."""
    seen = []
    real = ens_sweep.TaskData.sample

    def spy(self, curriculum, batch, generator, max_hops=None):
        seen.append(None if max_hops is None else max_hops.tolist())
        return real(self, curriculum, batch, generator, max_hops)

    monkeypatch.setattr(ens_sweep.TaskData, "sample", spy)
    ledger = tmp_path / "runs.jsonl"
    argv = [
        *TINY,
        "--hops",
        "4",
        "--depths",
        "1",
        "--seeds",
        "0",
        "--stop-at",
        "1.01",
        "--heads-every",
        "-1",
        "--curriculum-kind",
        "staged",
        "--advance-below",
        "100",
        "--ledger",
        str(ledger),
        "--out-dir",
        str(tmp_path / "out"),
        "--name",
        "t",
    ]
    assert ens_sweep.main(argv) == 0
    records = {r["curriculum"]: r for r in _records(ledger)}
    assert records[True]["curriculum_stages"] == [[0, 1], [10, 2], [20, 3], [30, 4]]
    assert records[True]["task_options"]["curriculum_kind"] == "staged" and "curriculum_stages" not in records[False]
    assert seen[0] == [1, 4] and seen[10] == [2, 4] and seen[29] == [3, 4]  # members: (curriculum, no curriculum)
    mixture = ens_sweep.tag_of(ens_sweep.settings_of(ens_sweep.parse_args([])))
    assert records[True]["tag"] != mixture


def test_newest_share_asks_for_the_current_largest_hop_more_often(tmp_path, monkeypatch):
    """--newest-share P: that fraction of a staged member's batch asks for its current k (here at k = 3: 0.5 + 0.5 / 3
    of the questions against 1 / 3 without); another tag; it needs a staged curriculum."""
    shares = {}
    real = ens_sweep.TaskData.sample

    def spy(self, curriculum, batch, generator, max_hops=None):
        q, a = real(self, curriculum, batch, generator, max_hops)
        if max_hops is not None and int(max_hops[0]) == 3:  # member 0 (curriculum) at k = 3
            hop_ids = q[0, :, -2]
            shares.setdefault(self.newest_share, []).extend((hop_ids == self.token_ids[3]).tolist())
        return q, a

    monkeypatch.setattr(ens_sweep.TaskData, "sample", spy)
    tags = set()
    for extra in ([], ["--newest-share", "0.5"]):
        ledger = tmp_path / f"runs{len(extra)}.jsonl"
        assert (
            ens_sweep.main(
                [
                    *TINY,
                    "--hops",
                    "4",
                    "--depths",
                    "1",
                    "--seeds",
                    "0",
                    "--stop-at",
                    "1.01",
                    "--heads-every",
                    "-1",
                    "--curriculum-kind",
                    "staged",
                    "--advance-below",
                    "100",
                    "--batch-size",
                    "64",
                    "--ledger",
                    str(ledger),
                    "--out-dir",
                    str(tmp_path / "out"),
                    "--name",
                    "t",
                    *extra,
                ]
            )
            == 0
        )
        tags |= {r["tag"] for r in _records(ledger)}
    plain, newest = (sum(shares[k]) / len(shares[k]) for k in (0.0, 0.5))
    assert len(shares[0.5]) == 640 and abs(plain - 1 / 3) < 0.06 and abs(newest - 2 / 3) < 0.06  # 3 sigma: 0.056
    assert len(tags) == 2  # a sweep with --newest-share is another setting
    with pytest.raises(SystemExit):
        ens_sweep.parse_args(["--newest-share", "0.5"])  # the mixture curriculum has no current k


@pytest.mark.slow
def test_checkpoint_resume_equals_one_uninterrupted_call(tmp_path):
    """--checkpoint-dir + a call cut short (--steps-per-call): the next call resumes weights, moments, sampler,
    curriculum stage, curves and head records, and ends exactly where one uninterrupted call ends."""

    def sweep(name, *extra):
        ledger = tmp_path / f"{name}.jsonl"
        argv = [
            *TINY,
            "--hops",
            "2",
            "--depths",
            "1,2",
            "--seeds",
            "0",
            "--curriculum",
            "on",
            "--stop-at",
            "1.01",
            "--curriculum-kind",
            "staged",
            "--advance-below",
            "100",
            "--max-steps",
            "40",
            "--pair-separator",
            "--ledger",
            str(ledger),
            "--out-dir",
            str(tmp_path / name),
            "--name",
            "t",
            *extra,
        ]
        return argv, ledger

    argv, ledger = sweep("whole")
    assert ens_sweep.main(argv) == 0
    whole = _records(ledger)
    ckpt = tmp_path / "ckpt"
    argv, ledger = sweep("split", "--checkpoint-dir", str(ckpt), "--steps-per-call", "25")
    assert ens_sweep.main(argv) == 0
    first = _records(ledger)
    assert all(r["timed_out"] and r["global_steps"] == 25 for r in first)
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".safetensors"]
    assert ens_sweep.main(argv) == 0  # resumes at step 25, ends at 40, removes the checkpoint
    assert list(ckpt.iterdir()) == []
    split = {r["key"]: r for r in _records(ledger) if not r["timed_out"]}
    assert len(split) == len(whole) == 2
    # a resumed call's rates are its own steps over its own time
    assert {r["ensemble"]["first_step"] for r in first} == {0}
    assert {s["ensemble"]["first_step"] for s in split.values()} == {25}
    for r in whole:
        s = split[r["key"]]
        assert s["global_steps"] == r["global_steps"] == 40
        assert s["val_history"] == r["val_history"] and s["train_loss_history"] == r["train_loss_history"]
        assert s["exact_match"] == r["exact_match"] and s["curriculum_stages"] == r["curriculum_stages"]
    heads_whole = json.loads((tmp_path / "whole" / "t.D2.heads.json").read_text())
    heads_split = json.loads((tmp_path / "split" / "t.D2.heads.json").read_text())
    assert heads_whole == heads_split
    # a checkpoint written for other members is refused, not silently reused
    assert ens_sweep.main([*argv, "--ledger", str(tmp_path / "again.jsonl")]) == 0
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".safetensors"]
    other = [*argv]
    other[len(other) - other[::-1].index("--depths")] = "1"  # the last --depths is the one that counts
    with pytest.raises(ValueError, match="delete it to start over"):
        ens_sweep.main([*other, "--ledger", str(tmp_path / "other.jsonl")])


def test_emergence_plots_fall_back_to_the_smallest_depth_with_a_passing_seed(tmp_path):
    import numpy as np

    class Heads:  # what write_heads reads from a HeadRecorder: rising scores, no maps
        def record_of(self, i):
            steps = [0, 100, 200, 300]
            scores = np.stack([np.full((2, 2), 0.1 + 0.25 * k) for k in range(4)])
            return {"steps": steps, "scores": scores, "maps": [], "map_layers": [], "map_heads": []}

    members = [(depth, True, seed) for depth in (2, 3, 4) for seed in (0, 1)]
    passed = {(2, 0): False, (2, 1): False, (3, 0): False, (3, 1): True, (4, 0): True, (4, 1): False}
    records = [{"key": f"k{i}", "passed": passed[(d, s)]} for i, (d, _, s) in enumerate(members)]
    args = ens_sweep.parse_args(["--seeds", "0,1", "--name", "t"])
    lines = ens_sweep.write_heads(2, records, Heads(), members, args, tmp_path)
    assert "plots for the smallest with a passing seed" in lines[0]
    assert (tmp_path / "t.D2.heads_s0.png").exists() and (tmp_path / "t.D2.heads_s1.png").exists()
    assert any(line.startswith("D=2 L3 cur seed 1") for line in lines)
    records = [{**r, "passed": False} for r in records]
    (tmp_path / "t.D2.heads_s0.png").unlink()
    assert ens_sweep.write_heads(2, records, Heads(), members, args, tmp_path) == [
        "D=2: no member passed; no emergence plot"
    ]
    assert not (tmp_path / "t.D2.heads_s0.png").exists()


def test_ensemble_step_benchmark_writes_its_table(tmp_path, capsys):
    """ensemble_step.py (the step's speed, ours vs the old loop) runs on the CPU and records each variant."""
    bench = importlib.import_module("ensemble_step")
    out = tmp_path / "step.json"
    argv = [
        "--cpu",
        "--threads",
        "1",
        "--no-compile",
        "--no-bf16",
        "--hops",
        "2",
        "--depths",
        "1,2",
        "--seeds",
        "0",
        "--width",
        "16",
        "--heads",
        "2",
        "--batch-size",
        "4",
        "--pair-separator",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--variants",
        "eager-sync,eager,graphs",
        "--output",
        str(out),
    ]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert [row["key"] for row in result["rows"]] == ["eager-sync", "eager"]  # graphs need CUDA: skipped, said so
    assert result["rows"][0]["speedup_vs_first"] == 1.0 and result["members"] == 2 and result["tokens"] == 3 * 8 + 3
    assert all(len(row["all_ms_per_step"]) == 2 and row["ms_per_step"] > 0 for row in result["rows"])
    assert "graphs: skipped" in capsys.readouterr().out


def test_init_from_grows_saved_models_function_preserving(tmp_path):
    """grown_ensemble: each member starts from its seed's saved model grown by new top layers (grow_model), so its
    logits equal the source model's; a member shallower or narrower than its source, or another vocabulary, is
    refused."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    sources = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        sources[seed] = LlamaForCausalLM(config).eval()
        sources[seed].save_pretrained(tmp_path / f"src-s{seed}")
    deep = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 4, "max_position_embeddings": 128})
    members = [(2, True, 0), (3, True, 1), (4, True, 0)]
    ens = ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), members, deep)
    ids = torch.randint(0, 40, (3, 2, 9))
    with torch.no_grad():
        logits = ens(ids)
        for m, (_, _, seed) in enumerate(members):
            torch.testing.assert_close(logits[m], sources[seed](ids[m]).logits, rtol=1e-5, atol=1e-5)
    assert ens.depths == [2, 3, 4] and not hasattr(ens.config, "growth_history")  # per source, not shared
    with pytest.raises(ValueError, match="would drop some"):
        ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), [(1, True, 0)], deep)
    with pytest.raises(FileNotFoundError, match="no saved model for seed 2"):
        ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), [(2, True, 2)], deep)
    narrow = LlamaConfig(**{**deep.to_dict(), "hidden_size": 8})
    with pytest.raises(ValueError, match="hidden_size is 16, the sweep's members have 8: growing never removes"):
        ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), members, narrow)
    other_vocab = LlamaConfig(**{**deep.to_dict(), "vocab_size": 41})
    with pytest.raises(ValueError, match="vocab_size is 40, the sweep's members have 41"):
        ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), members, other_vocab)
    task = {"hops": 1, "num_pairs": 8, "num_nodes": 64, "tokens": 27, "pair_separator": True}
    for seed in (0, 1):
        (tmp_path / f"src-s{seed}" / ens_sweep.TASK_FILE).write_text(json.dumps(task))
    assert ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), members, deep, {**task, "hops": 4}).depths == [
        2,
        3,
        4,
    ]
    with pytest.raises(ValueError, match="trained with num_pairs = 8, this sweep's questions have 16"):
        ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), members, deep, {**task, "num_pairs": 16})


@pytest.mark.parametrize("heads", [4, 2])  # 4: more heads of the same size; 2: the same heads, each twice as large
def test_init_from_grows_a_source_to_a_wider_member_function_preserving(tmp_path, heads):
    """A source narrower than the sweep's members (--width / --heads / --mlp) is grown to their shape (MLP width,
    heads or head size, residual width, then top layers) and still computes what it computed; every widened weight
    gets a gradient at once (the new top block's inputs only once its zero output projections have moved)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    source = LlamaForCausalLM(small).eval()
    source.save_pretrained(tmp_path / "src-s0")
    wide = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
    )
    steps = [next(iter(step)) for step in ens_sweep.growth_plan(source.config, wide)]
    assert steps == ["mlp_width", "num_heads" if heads == 4 else "head_dim", "hidden_size", "num_layers"]
    ens = ens_sweep.grown_ensemble(str(tmp_path / "src-s{seed}"), [(3, True, 0)], wide)
    ids = torch.randint(0, 40, (1, 2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ens(ids)[0], source(ids[0]).logits, rtol=1e-5, atol=1e-5)
    ens(ids).logsumexp(-1).sum().backward()
    still = {name for name, p in ens.named_parameters() if p.grad is None or not p.grad.abs().sum()}
    # only the new top block's inputs wait one step (its output projections start at zero); the widened weights train
    assert still == {"layers.2.input_norm", "layers.2.qkv", "layers.2.post_norm", "layers.2.gate_up"}


def test_save_passed_fails_before_training_without_its_imports(tmp_path, monkeypatch):
    """A missing dependency of saving (e.g. pydantic on a bare GPU image) stops the call at once, not at the
    first member that passes (which lost a whole GPU call once)."""
    monkeypatch.setitem(sys.modules, "hf_growth.growth.io", None)
    argv = [
        *TINY,
        "--hops",
        "1",
        "--depths",
        "1",
        "--seeds",
        "0",
        "--ledger",
        str(tmp_path / "a.jsonl"),
        "--out-dir",
        str(tmp_path / "a"),
        "--save-passed",
        str(tmp_path / "passed"),
    ]
    with pytest.raises(ImportError):
        ens_sweep.main(argv)
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.slow
def test_save_passed_then_init_from_them(tmp_path):
    """--save-passed writes every passing member as a LlamaForCausalLM (reloadable); --init-from starts a deeper
    sweep from them (another tag: its records never mix with from-scratch ones)."""
    from transformers import LlamaForCausalLM

    saved = tmp_path / "passed"
    argv = [
        *TINY,
        "--hops",
        "1",
        "--depths",
        "1",
        "--seeds",
        "0,1",
        "--target",
        "0",
        "--ledger",
        str(tmp_path / "a.jsonl"),
        "--out-dir",
        str(tmp_path / "a"),
        "--save-passed",
        str(saved),
    ]
    assert ens_sweep.main(argv) == 0
    assert sorted(p.name for p in saved.iterdir()) == ["D1-cur-L1-s0", "D1-cur-L1-s1"]
    model = LlamaForCausalLM.from_pretrained(saved / "D1-cur-L1-s0")
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 16
    trained = json.loads((saved / "D1-cur-L1-s0" / ens_sweep.TASK_FILE).read_text())
    assert trained["hops"] == 1 and trained["tokens"] == 2 * trained["num_pairs"] + 3  # no <sep> in TINY
    argv = [
        *TINY,
        "--hops",
        "1",
        "--depths",
        "2,3",
        "--seeds",
        "0,1",
        "--ledger",
        str(tmp_path / "b.jsonl"),
        "--out-dir",
        str(tmp_path / "b"),
        "--init-from",
        str(saved / "D1-cur-L1-s{seed}"),
    ]
    assert ens_sweep.main(argv) == 0
    first, grown = _records(tmp_path / "a.jsonl"), _records(tmp_path / "b.jsonl")
    assert sorted((r["layers"], r["seed"]) for r in grown) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert {r["tag"] for r in grown}.isdisjoint({r["tag"] for r in first})
    assert all(r["init_from"] == str(saved / "D1-cur-L1-s{seed}") for r in grown)  # the pooled table tells the arms
    assert not any("init_from" in r for r in first)
    assert all(r["model"] == {"width": 16, "heads": 2, "mlp": 64} for r in first + grown)  # the pool's member shape
    argv = [
        *argv[:-6],
        "--ledger",
        str(tmp_path / "c.jsonl"),
        "--out-dir",
        str(tmp_path / "c"),
        "--init-from",
        str(saved / "D1-cur-L1-s{seed}"),
        "--pair-separator",
    ]  # another input than the sources'
    with pytest.raises(ValueError, match="pair_separator = False, this sweep's questions have True"):
        ens_sweep.main(argv)
    assert ens_sweep.main([*argv, "--init-from-other-input"]) == 0  # a length curriculum, asked for


def _guarded_window(guard, param, step, losses, raise_stage=(), old=None):
    """One eval window as the sweep runs it: an update (differing per window), then the guard's check of each
    member's window loss (and loss below its stage, ``old``), the stage raises, the rollback of those that spiked
    and the snapshots' turn."""
    param.grad = torch.ones_like(param) * step
    guard.opt.step()
    spiked = [i for i, loss in enumerate(losses) if guard.spiked(i, loss, None if old is None else old[i])]
    for i in raise_stage:
        guard.stage_raised(i, guard.level[i] + 1)
    if spiked:
        guard.roll_back(spiked, spiked)
    guard.next_window(step, spiked)
    return spiked


def test_spike_guard_goes_back_to_the_window_before_the_spike():
    """A spike whose onset lifts one window by less than DELTA (1.0 -> 1.6) and the next by more (3.0) goes back to
    the weights and moments at the start of the onset window, not of the spiking one (which already carries the
    damage: going there left two H200 members stuck); the next window is compared with the loss before the onset,
    a second spike goes back to the same state, the other member is untouched; the window after a stage raise is
    compared on its questions below the new stage only (not at all without their loss), and a spike there goes
    back to the stage before the raise, with the weights."""
    from llama_ensemble import MemberAdamW

    p, q = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2, 3))  # q: without the guard
    opt, plain = MemberAdamW([p], lr=0.1), MemberAdamW([q], lr=0.1)
    guard = ens_sweep.SpikeGuard(opt, 2, delta=1.0, factor=0.5)
    weights = {}  # step -> both members' weights at that step

    def window(step, losses, raise_stage=(), old=None):
        q.grad = torch.ones_like(q) * step  # the same update without the guard
        plain.step()
        spiked = _guarded_window(guard, p, step, losses, raise_stage, old)
        weights[step] = p.detach().clone()
        return spiked

    weights[0] = p.detach().clone()
    assert window(10, [1.0, 1.0]) == [] and window(20, [1.6, 1.0]) == []  # onset: +0.6 is no spike
    assert window(30, [3.0, 1.2]) == [0]
    assert torch.equal(p[0], weights[10][0]) and not torch.equal(p[0], weights[20][0])  # back to step 10, not 20
    assert opt.factor.tolist() == [0.5, 1.0] and guard.reference[0] == 1.0 and guard.steps[0] == [10, 10]
    assert window(40, [2.5, 1.2]) == [0]  # compared with 1.0 (before the onset), not 1.6: back to step 10 again
    assert torch.equal(p[0], weights[10][0]) and opt.factor.tolist() == [0.25, 1.0]
    assert window(50, [1.1, 1.2]) == [] and guard.steps[0] == [10, 50]
    assert window(60, [0.05, 0.1], raise_stage=[0]) == [] and (guard.level[0], guard.fresh[0]) == (2, True)
    assert window(70, [1.5, 0.1]) == [] and not guard.fresh[0]  # after a raise, without the loss below it: free
    assert window(80, [2.8, 0.1]) == [0] and torch.equal(p[0], weights[60][0])  # back to the raise
    # the window it went back to was the first at stage 2: the next one is again, compared as it was (with 0.05)
    assert (guard.reference[0], guard.fresh[0], guard.level[0]) == (0.05, True, 2)
    assert window(90, [2.9, 0.1], old=[1.0, None]) == [] and guard.reference[0] == 2.9  # 1.0 <= 0.05 + 1: kept
    assert window(100, [0.08, 0.1], raise_stage=[0]) == [] and guard.level[0] == 3
    assert window(110, [4.1, 0.1], old=[3.9, None]) == [0]  # the raise wrecked D <= 2: back before it, stage 2
    assert torch.equal(p[0], weights[90][0]) and (guard.level[0], guard.fresh[0], guard.reference[0]) == (2, False, 2.9)
    assert guard.compared[0] == 3.9 and guard.levels[0] == [2, 2] and guard.steps[0] == [90, 90]
    lenient = ens_sweep.SpikeGuard(opt, 2, delta=1.0, factor=0.5, raise_delta=4.0)  # the window after a raise only
    lenient.reference[0] = lenient.reference[1] = 0.1
    lenient.stage_raised(0, 2)
    assert not lenient.spiked(0, 5.0, old_loss=3.9) and lenient.spiked(1, 1.2)
    assert torch.equal(p[1], q[1])  # the other member trained as without the guard
    # a spike in the second window goes back to before the first step: initial weights, zero moments
    r = torch.nn.Parameter(torch.ones(2, 3))
    fresh_opt = MemberAdamW([r], lr=0.1)
    early = ens_sweep.SpikeGuard(fresh_opt, 2, delta=1.0, factor=0.5)
    assert _guarded_window(early, r, 10, [1.0, 1.0]) == [] and _guarded_window(early, r, 20, [3.0, 1.0]) == [0]
    assert torch.equal(r[0], torch.ones(3)) and not torch.equal(r[1], torch.ones(3))
    assert all(float(v[0].abs().sum()) == 0 for v in fresh_opt.state[r].values())
    assert all(torch.equal(early.previous[0][k][0], early.current[0][k][0]) for k in early.current[0])
    # a checkpoint's copy of the guard, loaded into a fresh one, has the same states and references
    references, tensors = guard.state([0, 1], [0, 1])
    fresh = ens_sweep.SpikeGuard(opt, 2, delta=1.0, factor=0.5)
    fresh.load({int(k): v for k, v in json.loads(json.dumps(references)).items()}, tensors)
    assert fresh.reference == guard.reference and fresh.earlier == guard.earlier and fresh.steps == guard.steps
    assert (fresh.level, fresh.levels, fresh.fresh, fresh.fresh_at) == (
        guard.level,
        guard.levels,
        guard.fresh,
        guard.fresh_at,
    )
    for a, b in zip(fresh.previous + fresh.current, guard.previous + guard.current):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_raise_that_wrecks_the_questions_below_it_goes_back_with_its_stage(tmp_path, monkeypatch):
    """--rollback-spikes with a staged curriculum: the window after a raise is compared on its questions below the
    new stage. Every answer's loss + 10 in steps 21-30 (right after the raise to stage 3 at step 20): rolled back at
    step 30 to the weights of step 10 and stage 2 (the state the window before had), the stage is raised again at
    step 40; without the wreck nothing is rolled back; a checkpointed split in the window after the rollback ends
    where one call ends; with --raise-delta 20 the wreck is let through."""
    real, calls = torch.nn.functional.cross_entropy, {"n": 0}

    def wrecked(logits, labels, *args, **kwargs):  # each step: the trained loss, then the loss below the stage
        calls["n"] += 1
        return real(logits, labels, *args, **kwargs) + (10.0 if 21 <= (calls["n"] + 1) // 2 <= 30 else 0.0)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", wrecked)

    def sweep(name, first_step=0, *extra):
        calls["n"] = 2 * first_step
        ledger = tmp_path / f"{name}.jsonl"
        assert (
            ens_sweep.main(
                [
                    *TINY,
                    "--hops",
                    "3",
                    "--depths",
                    "1",
                    "--seeds",
                    "0",
                    "--curriculum",
                    "on",
                    "--curriculum-kind",
                    "staged",
                    "--advance-below",
                    "100",
                    "--stop-at",
                    "1.01",
                    "--heads-every",
                    "-1",
                    "--max-steps",
                    "50",
                    "--rollback-spikes",
                    "2",
                    "--ledger",
                    str(ledger),
                    "--out-dir",
                    str(tmp_path / name),
                    "--name",
                    "t",
                    *extra,
                ]
            )
            == 0
        )
        return _records(ledger)[-1]  # the last call's

    whole = sweep("whole")
    history = whole["train_loss_history"]
    ((step, reference, compared, factor, back_to),) = whole["rollbacks"]
    assert (step, reference, factor, back_to) == (30, history[1][1], 0.5, 10) and compared > reference + 2
    assert whole["curriculum_stages"] == [[0, 1], [10, 2], [20, 3], [30, 2], [40, 3]]
    # every window after a raise (and after going back to one) is checked: 20, 40 and 50 kept, 30 not
    checks = whole["raise_checks"]
    assert [c[0] for c in checks] == [20, 30, 40, 50] and checks[1][1:] == [reference, compared]
    assert [c[1] for c in checks] == [history[0][1], history[1][1], history[0][1], history[3][1]]
    lenient = sweep("lenient", 0, "--raise-delta", "20")  # the wreck (+10) is within what a raise may do here
    assert lenient["rollbacks"] == [] and lenient["curriculum_stages"] == [[0, 1], [10, 2], [20, 3]]
    assert [c[0] for c in lenient["raise_checks"]] == [20, 30] and lenient["tag"] != whole["tag"]
    calm = sweep("calm", 1000)  # the same sweep without the wreck
    assert calm["rollbacks"] == [] and calm["curriculum_stages"] == [[0, 1], [10, 2], [20, 3]]
    split = ["--checkpoint-dir", str(tmp_path / "ck"), "--steps-per-call", "35"]
    assert sweep("split", 0, *split)["timed_out"]
    resumed = sweep("split", 35, *split)
    for key in ("rollbacks", "raise_checks", "curriculum_stages", "train_loss_history", "exact_match"):
        assert resumed[key] == whole[key]


def test_save_at_least_keeps_members_that_did_not_pass(tmp_path):
    """--save-at-least EM saves members below the target too (a plateau a later call can start from), with their
    test exact match and step beside them; without it only passing members are saved; it needs --save-passed."""
    argv = [*TINY, "--hops", "1", "--depths", "1", "--seeds", "0", "--max-steps", "10", "--save-passed"]
    assert (
        ens_sweep.main(
            [*argv, str(tmp_path / "none"), "--ledger", str(tmp_path / "a.jsonl"), "--out-dir", str(tmp_path / "a")]
        )
        == 0
    )
    record = _records(tmp_path / "a.jsonl")[0]
    assert not record["passed"] and not (tmp_path / "none").exists()
    assert (
        ens_sweep.main(
            [
                *argv,
                str(tmp_path / "all"),
                "--save-at-least",
                "0",
                "--ledger",
                str(tmp_path / "b.jsonl"),
                "--out-dir",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "all" / "D1-cur-L1-s0" / ens_sweep.TASK_FILE).read_text())
    assert saved["exact_match"] == _records(tmp_path / "b.jsonl")[0]["exact_match"] == record["exact_match"]
    assert saved["step"] == 10 and saved["num_pairs"] == record["task_options"]["num_pairs"]
    with pytest.raises(SystemExit):
        ens_sweep.parse_args(["--save-at-least", "0.5"])


@pytest.mark.slow
def test_rollback_spikes_restores_the_member_and_lowers_its_learning_rate(tmp_path, monkeypatch):
    """--rollback-spikes in the sweep: seed 0's reported loss + 3 in steps 11-20 (an onset, below DELTA = 5), + 100
    in steps 21-30 (a spike), + 50 in steps 31-40: rolled back at step 30 to its step-10 weights with its learning
    rate halved, and at step 40 (compared with the window before the onset) to the same weights; the other member
    is untouched; the rollbacks are in the record and survive a checkpointed split of the call in the spiking
    window (which ends where one uninterrupted call ends); the window after a stage raise is not compared."""
    import llama_ensemble as ensemble

    real, counter = ensemble.member_losses, {"step": 0}

    def spiky(logits, labels, ignore_index=-100):
        counter["step"] += 1
        losses = real(logits, labels, ignore_index)
        n = counter["step"]
        extra = 3.0 if 11 <= n <= 20 else 100.0 if 21 <= n <= 30 else 50.0 if 31 <= n <= 40 else 0.0
        return losses + torch.tensor([extra, 0.0])[: len(losses)]  # seed 0 is slot 0, also once seed 1 has left

    monkeypatch.setattr(ensemble, "member_losses", spiky)

    def sweep(name, first_step=0, *extra):
        counter["step"] = first_step
        ledger = tmp_path / f"{name}.jsonl"
        assert (
            ens_sweep.main(
                [
                    *TINY,
                    "--hops",
                    "2",
                    "--depths",
                    "1",
                    "--seeds",
                    "0,1",
                    "--curriculum",
                    "off",
                    "--stop-at",
                    "1.01",
                    "--heads-every",
                    "-1",
                    "--max-steps",
                    "50",
                    "--rollback-spikes",
                    "5",
                    "--ledger",
                    str(ledger),
                    "--out-dir",
                    str(tmp_path / name),
                    "--name",
                    "t",
                    *extra,
                ]
            )
            == 0
        )
        return {r["seed"]: r for r in _records(ledger)}

    whole = sweep("whole")
    history = whole[0]["train_loss_history"]
    assert history[1][1] < history[0][1] + 5  # the onset window was accepted
    first, second = whole[0]["rollbacks"]
    assert first == [30, history[1][1], history[2][1], 0.5, 10]  # compared with the onset window, back to step 10
    assert second == [40, history[0][1], history[3][1], 0.25, 10]  # with the window before the onset, same weights
    assert whole[1]["rollbacks"] == []
    plain = sweep("plain", 1000)  # no spike: seed 0 trains on at full rate, seed 1 exactly as with one
    assert plain[0]["rollbacks"] == [] and plain[1]["train_loss_history"] == whole[1]["train_loss_history"]
    assert plain[0]["train_loss_history"][0] == whole[0]["train_loss_history"][0]
    assert plain[0]["train_loss_history"][3:] != whole[0]["train_loss_history"][3:]
    staged = sweep(
        "staged",
        0,
        "--curriculum",
        "on",
        "--curriculum-kind",
        "staged",
        "--advance-below",
        "100",
        "--rollback-spikes",
        "2",
    )  # the onset (+3) right after the stage raise at step 10: only its
    # questions below stage 2 are compared, and the onset is not in their loss
    assert [r[0] for r in staged[0]["rollbacks"]][:1] == [30] and staged[0]["rollbacks"][0][4] == 10
    real_match, evals = ens_sweep.exact_match, {"n": 0}

    def seed_1_done_at_20(ens, data, split, seeds, autocast, chunk=500):
        em = real_match(ens, data, split, seeds, autocast, chunk)
        evals["n"] += split == "validation"
        return torch.where(torch.tensor(seeds) == 1, 1.0, em) if split == "validation" and evals["n"] >= 2 else em

    monkeypatch.setattr(ens_sweep, "exact_match", seed_1_done_at_20)
    dropped = sweep(
        "dropped", 0, "--stop-at", "0.995"
    )  # seed 1 leaves the ensemble at step 20: seed 0's snapshots follow it to slot 0
    monkeypatch.setattr(ens_sweep, "exact_match", real_match)
    assert dropped[1]["reached_step"] == 20 and [r[0] for r in dropped[0]["rollbacks"]] == [30, 40]
    assert all(r[4] == 10 for r in dropped[0]["rollbacks"])
    split = ["--checkpoint-dir", str(tmp_path / "ck"), "--steps-per-call", "25"]
    assert all(r["timed_out"] for r in sweep("split", 0, *split).values())
    resumed = sweep("split", 25, *split)
    for seed in (0, 1):
        assert resumed[seed]["rollbacks"] == whole[seed]["rollbacks"]
        assert resumed[seed]["train_loss_history"] == whole[seed]["train_loss_history"]
        assert resumed[seed]["exact_match"] == whole[seed]["exact_match"]
    tags = {ens_sweep.tag_of(ens_sweep.settings_of(ens_sweep.parse_args(a))) for a in ([], ["--rollback-spikes", "1"])}
    assert len(tags) == 2  # a sweep with rollbacks is another setting; earlier tags are unchanged
    with pytest.raises(SystemExit):
        ens_sweep.parse_args(["--rollback-spikes", "1", "--rollback-lr-factor", "0"])
    with pytest.raises(SystemExit):
        ens_sweep.parse_args(["--raise-delta", "2"])  # without --rollback-spikes


def test_eval_saved_answers_the_recorded_test_split_again_and_fresh_questions(tmp_path, capsys):
    """retrieval_eval_saved.py: a member saved by the sweep answers its seed's test split as the sweep
    recorded (both float32 on the CPU), and fresh questions, with a Wilson interval around the rate; a directory
    without the seed suffix is refused."""
    eval_saved = importlib.import_module("retrieval_eval_saved")
    ledger = tmp_path / "a.jsonl"
    assert (
        ens_sweep.main(
            [
                *TINY,
                "--hops",
                "2",
                "--depths",
                "1",
                "--seeds",
                "1",
                "--curriculum",
                "on",
                "--pair-separator",
                "--max-steps",
                "20",
                "--save-passed",
                str(tmp_path / "keep"),
                "--save-at-least",
                "0",
                "--ledger",
                str(ledger),
                "--out-dir",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    record = _records(ledger)[0]
    member = tmp_path / "keep" / "D2-cur-L1-s1"
    out = tmp_path / "eval.json"
    assert eval_saved.main([str(member), "--fresh", "300", "--test-size", "16", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["members"]
    assert row["seed"] == 1 and row["layers"] == 1 and row["task"]["pair_separator"] is True
    assert row["test"]["exact_match"] == record["exact_match"]
    lo, hi = row["fresh"]["wilson95"]
    assert row["fresh"]["n"] == 300 and lo <= row["fresh"]["exact_match"] <= hi and hi - lo < 0.1
    assert "D2-cur-L1-s1" in capsys.readouterr().out
    assert eval_saved.wilson(0, 10)[0] == 0.0 and eval_saved.wilson(10, 10)[1] == pytest.approx(1.0)
    renamed = tmp_path / "member"
    member.rename(renamed)
    with pytest.raises(ValueError, match="the seed is its suffix"):
        eval_saved.main([str(renamed), "--fresh", "10"])
