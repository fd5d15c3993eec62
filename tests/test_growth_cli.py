"""``hf-growth grow`` on a tiny saved checkpoint: streaming (default for a directory) and in memory."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PLAN = "- mlp_width: 96\n- hidden_size: 48\n- num_layers: {to: 3, where: top}\n"


@pytest.fixture()
def src(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    (tmp_path / "plan.yaml").write_text(PLAN)
    return model


def _card(out):
    return (out / "README.md").read_text()


def test_grow_command_streams_a_checkpoint_directory(tmp_path, capsys, monkeypatch, src):
    from hf_growth.cli import main
    from hf_growth.commands import grow as grow_command
    from hf_growth.growth import streaming
    from hf_growth.growth.verify import max_logit_diff

    calls = []
    real = streaming.grow_checkpoint
    monkeypatch.setattr(streaming, "grow_checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    monkeypatch.setattr(grow_command, "load_source", lambda *a: pytest.fail("a directory must not be loaded"))
    out = tmp_path / "out"
    args = [
        "grow",
        str(tmp_path / "src"),
        str(tmp_path / "plan.yaml"),
        str(out),
        "--seed",
        "1",
        "--max-shard-size",
        "30KB",
        "--verify",
    ]
    assert main(args) == 0
    assert calls and calls[0]["max_shard_size"] == "30KB" and calls[0]["quiet"] is False
    text = capsys.readouterr().out
    assert "parameters" in text and "(96, 48)" in text and "max |Δlogits| = " in text and "saved to" in text
    grown = LlamaForCausalLM.from_pretrained(out).eval()
    assert grown.config.num_hidden_layers == 3 and max_logit_diff(src, grown) <= 1e-5
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) > 0
    card = _card(out)
    assert "`mlp_width`" in card and "Verified with `hf-growth grow --verify`" in card
    n = grown.num_parameters()
    assert f"{n:,}" in card and f"{src.num_parameters():,}" in card
    record = grown.config.growth_history[-1]
    assert record["num_params_after"] == n
    assert grown.config.growth_history[0]["num_params_before"] == src.num_parameters()

    # the output exists: refused (exit 2, nothing touched) unless --overwrite; --quiet prints nothing
    before = (out / "config.json").read_text()
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and (out / "config.json").read_text() == before
    assert main(["grow", str(tmp_path / "src"), str(tmp_path / "plan.yaml"), str(out), "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert "Verified" not in _card(out)  # streaming verifies only when asked

    (tmp_path / "bad.yaml").write_text("- mlp_width: 16\n")
    assert main(["grow", str(tmp_path / "src"), str(tmp_path / "bad.yaml"), str(tmp_path / "out2")]) == 2
    assert "plan step 0 (mlp_width): cannot shrink" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_grow_command_in_memory(tmp_path, capsys, monkeypatch, src):
    from hf_growth.cli import main
    from hf_growth.growth import streaming
    from hf_growth.growth.verify import max_logit_diff

    monkeypatch.setattr(streaming, "grow_checkpoint", lambda *a, **k: pytest.fail("--in-memory must not stream"))
    out = tmp_path / "out"
    assert (
        main(
            [
                "grow",
                str(tmp_path / "src"),
                str(tmp_path / "plan.yaml"),
                str(out),
                "--in-memory",
                "--seed",
                "1",
                "--max-shard-size",
                "30KB",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "parameters" in text and "(96, 48)" in text and "max |Δlogits| = " in text
    grown = LlamaForCausalLM.from_pretrained(out).eval()
    assert grown.config.num_hidden_layers == 3 and max_logit_diff(src, grown) <= 1e-5
    assert (out / "model.safetensors.index.json").is_file()  # --max-shard-size reached save_pretrained
    card = _card(out)
    assert "`hidden_size`" in card and "max |Δlogits| against the source" in card
    assert f"{grown.num_parameters():,}" in card
    assert main(["grow", str(tmp_path / "src"), str(tmp_path / "plan.yaml"), str(out), "--in-memory"]) == 2
    assert "exists" in capsys.readouterr().err
    assert (
        main(["grow", str(tmp_path / "src"), str(tmp_path / "plan.yaml"), str(tmp_path / "x"), "--dtype", "bfloat16"])
        == 2
    )
    assert "--dtype needs --in-memory" in capsys.readouterr().err


def test_streaming_and_in_memory_cli_agree(tmp_path, src):
    from hf_growth.cli import main
    from hf_growth.growth.io import SafetensorsSource

    for name, extra in (("a", []), ("b", ["--in-memory", "--no-verify"])):
        assert (
            main(
                [
                    "grow",
                    str(tmp_path / "src"),
                    str(tmp_path / "plan.yaml"),
                    str(tmp_path / name),
                    "--quiet",
                    "--seed",
                    "5",
                    *extra,
                ]
            )
            == 0
        )
    a, b = SafetensorsSource(tmp_path / "a"), SafetensorsSource(tmp_path / "b")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    ha = json.loads((tmp_path / "a" / "config.json").read_text())["growth_history"]
    hb = json.loads((tmp_path / "b" / "config.json").read_text())["growth_history"]
    assert ha == hb


def test_grow_model_output_dir_writes_the_card(tmp_path, src):
    from hf_growth.growth import grow_model

    grown = grow_model(src, [{"mlp_width": 96}], seed=0, output_dir=tmp_path / "g", max_shard_size="30KB")
    card = _card(tmp_path / "g")
    assert "`mlp_width`" in card and f"{grown.num_parameters():,}" in card
    assert (tmp_path / "g" / "model.safetensors.index.json").is_file()
    with pytest.raises(FileExistsError):
        grow_model(src, [{"mlp_width": 96}], output_dir=tmp_path / "g")
    grow_model(src, [{"mlp_width": 128}], output_dir=tmp_path / "g", overwrite=True)
    assert json.loads((tmp_path / "g" / "config.json").read_text())["intermediate_size"] == 128


def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_help_and_a_streamed_stack_import_neither_torch_nor_transformers(tmp_path, src):
    """`hf-growth grow --help` and a copy-only plan (stack) on a checkpoint directory start in a fraction of a second:
    no torch, no transformers; the output is the in-memory path's."""
    import subprocess
    import sys

    from hf_growth.growth import grow_model
    from hf_growth.growth.io import SafetensorsSource

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "hf_growth.cli", *args], capture_output=True, text=True
        )

    helped = run("grow", "--help")
    assert helped.returncode == 0 and "--max-shard-size" in helped.stdout
    assert not {m for m in _imported(helped.stderr) if m.split(".")[0] in ("torch", "transformers", "pydantic")}
    (tmp_path / "stack.yaml").write_text("- stack: {to: 3, block_size: 1, where: top}\n")
    grown = run("grow", str(tmp_path / "src"), str(tmp_path / "stack.yaml"), str(tmp_path / "out"), "--quiet")
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert not {m for m in _imported(grown.stderr) if m.split(".")[0] in ("torch", "transformers")}
    expected = grow_model(src, [{"stack": {"to": 3, "block_size": 1, "where": "top"}}])
    out = SafetensorsSource(tmp_path / "out")
    state = {k: v for k, v in expected.state_dict().items()}
    assert set(out) == set(state) and all(torch.equal(out[n], state[n]) for n in out)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 3
