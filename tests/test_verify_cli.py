"""``hf-growth verify SRC OUT`` on tiny checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch

from hf_growth.cli import main


@pytest.fixture
def tiny_pair(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=1, bos_token_id=0)
    model = LlamaForCausalLM(cfg)
    src = tmp_path / "src"
    model.save_pretrained(src)
    return model, src


def test_verify_identical_models_pass(tiny_pair, tmp_path, capsys):
    model, src = tiny_pair
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert main(["verify", str(src), str(out), "--max-new-tokens", "4", "--update-card"]) == 0
    text = capsys.readouterr().out
    assert "max |Δlogits|: 0 " in text and "greedy text:   matches" in text and "verify: OK" in text
    card = (out / "README.md").read_text()
    assert "max |Δlogits| against the source: **0**" in card and "greedy text **matches**" in card


def test_verify_mismatch_returns_nonzero(tiny_pair, tmp_path, capsys):
    model, src = tiny_pair
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    out = tmp_path / "out"
    model.save_pretrained(out)
    assert main(["verify", str(src), str(out), "--max-new-tokens", "4"]) == 1
    text = capsys.readouterr().out
    assert "verify: MISMATCH" in text
    value = float(text.split("max |Δlogits|: ")[1].split()[0])
    assert value > 1e-3


def test_verify_missing_dir_is_a_clean_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err
