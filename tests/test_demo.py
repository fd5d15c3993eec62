"""`hf-growth demo`, the README's main job: on a tiny Llama standing in for SmolLM2 (its logic and its output
directory), and once on the embedded SmolLM2-135M itself (the session fixture)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import hf_growth._embedded as embedded
from hf_growth.cli import main
from hf_growth.commands import demo

TINY_PLAN = [
    {"mlp_width": 96},
    {"num_heads": {"to": 8, "num_key_value_heads": 4}},
    {"hidden_size": 48},
    {"num_layers": {"to": 4, "where": "interleave"}},
]


@pytest.fixture
def tiny_demo(monkeypatch):
    """The demo on a tiny random Llama with the task tokenizer (and a plain chat template) instead of SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_growth.tasks import build_tokenizer

    tokenizer = build_tokenizer(max_number=16)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config).eval()
    loads = []

    def load():
        loads.append(1)
        return model, tokenizer

    monkeypatch.setattr(embedded, "load_smollm2", load)
    monkeypatch.setitem(demo.DEMO_MODELS, "smollm2", ("SmolLM2-135M", TINY_PLAN))
    return model, loads


def run_demo_cli(out: Path, *extra: str) -> int:
    return main(["demo", "--out", str(out), "--prompt", "1 + 2 =", "--max-new-tokens", "4", *extra])


def test_demo_writes_a_summary_and_replaces_its_own_earlier_output(tiny_demo, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    source, _ = tiny_demo
    out = tmp_path / "hf-growth-demo"
    assert run_demo_cli(out) == 0
    summary = json.loads((out / demo.DEMO_SUMMARY).read_text())
    assert [row["name"] for row in summary["models"]] == [
        "SmolLM2-135M (source)",
        "ResFormer (learnable, converted)",
        "grown: MLP 96, heads 8/4, hidden 48, 4 layers",
    ]
    diffs = [row["max_logit_diff"] for row in summary["models"]]
    assert diffs[0] == 0.0 and diffs[1] <= 1e-5 and diffs[2] <= 1e-5, diffs
    assert summary["greedy_text_identical"] is True
    assert len({row["greedy_answer"] for row in summary["models"]}) == 1 and summary["models"][0]["greedy_answer"]
    grown = AutoModelForCausalLM.from_pretrained(out)
    assert [row["parameters"] for row in summary["models"]][::2] == [source.num_parameters(), grown.num_parameters()]
    assert grown.config.num_hidden_layers == 4 and grown.config.hidden_size == 48
    assert len(grown.config.growth_history) == 4
    assert summary["files"] == sorted(p.name for p in out.iterdir())
    printed = capsys.readouterr().out
    for row in summary["models"]:
        assert row["name"] in printed

    # a second run (what `make demo` does again) replaces the demo's own output, leaving nothing else behind
    assert run_demo_cli(out, "--max-new-tokens", "2") == 0
    assert "replacing the demo's earlier output" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf-growth-demo"]
    assert demo.is_demo_output(out)


def test_demo_without_save_writes_nothing(tiny_demo, tmp_path):
    assert run_demo_cli(tmp_path / "out", "--no-save") == 0
    assert list(tmp_path.iterdir()) == []


def _earlier_demo_output_with_a_note(out: Path) -> None:
    out.mkdir()
    (out / "config.json").write_text("{}")
    summary = {"written_by": demo.WRITTEN_BY, "files": ["config.json", demo.DEMO_SUMMARY]}
    (out / demo.DEMO_SUMMARY).write_text(json.dumps(summary))
    (out / "notes.txt").write_text("mine")  # added by the user afterwards


@pytest.mark.parametrize(
    "make_out, reason",
    [
        (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "is not an earlier demo output;"),
        (lambda out: out.write_text("a file"), "is not an earlier demo output;"),
        (_earlier_demo_output_with_a_note, "holds files an earlier demo run did not write"),
    ],
    ids=["foreign-directory", "a-file", "demo-output-with-a-user-file"],
)
def test_demo_refuses_what_it_did_not_write(tiny_demo, tmp_path, capsys, make_out, reason):
    out = tmp_path / "hf-growth-demo"
    make_out(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else out.read_bytes()
    assert run_demo_cli(out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hf-growth demo: error: {out} exists") and reason in err and err.count("\n") == 1, err
    assert "--overwrite" in err
    after = {p.name: p.read_bytes() for p in out.iterdir()} if out.is_dir() else out.read_bytes()
    assert after == before
    assert tiny_demo[1] == []  # refused before loading the model


@pytest.mark.parametrize(
    "summary, files, expected",
    [
        ({"written_by": "hf-growth demo", "files": ["config.json", "hf_growth_demo.json"]}, ["config.json"], True),
        ({"written_by": "someone else", "files": ["config.json", "hf_growth_demo.json"]}, ["config.json"], False),
        ({"written_by": "hf-growth demo"}, ["config.json"], False),
        ("not json", ["config.json"], False),
    ],
)
def test_is_demo_output(tmp_path, summary, files, expected):
    for name in files:
        (tmp_path / name).write_text("{}")
    (tmp_path / demo.DEMO_SUMMARY).write_text(summary if isinstance(summary, str) else json.dumps(summary))
    assert demo.is_demo_output(tmp_path) is expected
    assert demo.is_demo_output(tmp_path / "missing") is False


def test_demo_output_stays_out_of_git_status():
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("hf-growth-demo/model.safetensors", ".hf-growth-demo.tmp-0123abcd/config.json"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path


@pytest.mark.slow
@pytest.mark.smollm2
def test_demo_converts_grows_and_saves_with_a_card(smollm2, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(embedded, "load_smollm2", lambda: smollm2)  # reuse the session's model
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-new-tokens", "8"]) == 0
    assert "greedy text identical across models: True" in capsys.readouterr().out
    summary = json.loads((out / demo.DEMO_SUMMARY).read_text())
    diffs = [row["max_logit_diff"] for row in summary["models"]]
    assert diffs[0] == 0.0 and diffs[1] <= 1e-5 and diffs[2] <= 1e-4, diffs
    assert summary["greedy_text_identical"] is True
    assert summary["models"][0]["parameters"] == smollm2[0].num_parameters()
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 36 and config["hidden_size"] == 768
    assert config["intermediate_size"] == 2048 and config["num_key_value_heads"] == 4
    assert len(config["growth_history"]) == 4
    card = (out / "README.md").read_text()
    assert "hf-growth" in card and "greedy text **matches**" in card
    assert (out / "tokenizer.json").is_file()
    assert demo.is_demo_output(out)
