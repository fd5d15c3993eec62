"""`hf-growth demo`, the README's main job, on the embedded SmolLM2-135M (the session fixture)."""

from __future__ import annotations

import json

import pytest

from hf_growth.cli import main


@pytest.mark.slow
@pytest.mark.smollm2
def test_demo_converts_grows_and_saves_with_a_card(smollm2, monkeypatch, tmp_path, capsys):
    import hf_growth._embedded as embedded

    monkeypatch.setattr(embedded, "load_smollm2", lambda: smollm2)  # reuse the session's model
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert "greedy text identical across models: True" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("SmolLM2", "ResFormer", "grown"))]
    assert len(rows) == 3
    diffs = [float(row[52:].split()[1]) for row in rows]  # the max |Δlogits| column
    assert diffs[0] == 0.0 and diffs[1] <= 1e-5 and diffs[2] <= 1e-4, diffs
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 36 and config["hidden_size"] == 768
    assert config["intermediate_size"] == 2048 and config["num_key_value_heads"] == 4
    assert len(config["growth_history"]) == 4
    card = (out / "README.md").read_text()
    assert "hf-growth" in card and "greedy text **matches**" in card
    assert (out / "tokenizer.json").is_file()
    # refuses to overwrite
    assert main(["demo", "--out", str(out)]) == 2
