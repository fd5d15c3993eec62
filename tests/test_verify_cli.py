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
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=1,
        bos_token_id=0,
    )
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


def _one_error_line(capsys, *fragments):
    err = capsys.readouterr().err
    lines = [
        line
        for line in err.splitlines()
        if not line.startswith(("Loading weights", "Writing model shards")) and line.strip()
    ]  # transformers' progress bars aside, one line
    assert len(lines) == 1 and lines[0].startswith("hf-growth ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_verify_truncated_checkpoint_is_bad_input(tiny_pair, tmp_path, capsys):
    _, src = tiny_pair
    out = tmp_path / "out"
    shutil.copytree(src, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["verify", str(src), str(out)]) == 2
    _one_error_line(capsys, f"hf-growth verify: error: {weights}: truncated or corrupt: tensor ")


def test_verify_missing_weights_and_pickle_only_are_bad_input(tiny_pair, tmp_path, capsys):
    _, src = tiny_pair
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(src / "config.json", out)
    assert main(["verify", str(src), str(out)]) == 2
    _one_error_line(capsys, f"{out}: no model.safetensors, model.safetensors.index.json or other .safetensors file")
    torch.save({}, out / "pytorch_model.bin")
    assert main(["verify", str(src), str(out)]) == 2
    _one_error_line(capsys, "only pickle weights (pytorch_model.bin), no safetensors")


def test_verify_models_with_different_vocabularies_is_bad_input(tiny_pair, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, src = tiny_pair
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=80,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    other.save_pretrained(tmp_path / "other")
    capsys.readouterr()
    assert main(["verify", str(src), str(tmp_path / "other")]) == 2
    _one_error_line(
        capsys, f"{src} and {tmp_path / 'other'} cannot be compared: their vocabularies differ (64 vs 80 output rows)"
    )


def test_verify_without_tokenizer_uses_seeded_random_ids_and_says_so(tiny_pair, tmp_path, capsys):
    from hf_growth.growth.verify import random_input_ids

    _, src = tiny_pair
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert main(["verify", str(src), str(out), "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "no tokenizer in either directory: greedy text compared on seeded random token ids" in text
    ids = random_input_ids(64, batch_size=1, seq_len=8, seed=1)[0].tolist()
    assert f"prompt:        'random token ids {ids}'" in text and "verify: OK" in text


def test_verify_with_a_tokenizer_uses_the_prompt(tiny_pair, tmp_path, capsys):
    from hf_growth.tasks.tokenizer import build_tokenizer

    _, src = tiny_pair
    build_tokenizer(max_number=40, include_pause_tokens=False).save_pretrained(src)
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert main(["verify", str(src), str(out), "--max-new-tokens", "2", "--prompt", "1 2 +"]) == 0
    text = capsys.readouterr().out
    assert "prompt:        '1 2 +'" in text and "random token ids" not in text and "no tokenizer" not in text


def test_verify_mismatch_prints_the_figures_and_exits_1(tiny_pair, tmp_path, capsys):
    model, src = tiny_pair
    with torch.no_grad():
        model.model.norm.weight.mul_(1.01)
    model.save_pretrained(tmp_path / "out")
    capsys.readouterr()
    assert main(["verify", str(src), str(tmp_path / "out"), "--max-new-tokens", "2"]) == 1
    captured = capsys.readouterr()
    assert "error" not in captured.err and "verify: MISMATCH" in captured.out
    assert "(tolerance 0.0001, float32)" in captured.out and "greedy text:" in captured.out


def test_grow_verify_on_bad_input_leaves_nothing(tiny_pair, tmp_path, capsys):
    """A checkpoint that streams but that transformers cannot load: exit 2, one line, no output, no temp dir."""
    import json

    _, src = tiny_pair
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "hidden_act": "no_such_activation"}))
    (tmp_path / "plan.yaml").write_text("- mlp_width: 96\n")
    assert main(["grow", str(src), str(tmp_path / "plan.yaml"), str(tmp_path / "out"), "--verify", "--quiet"]) == 2
    _one_error_line(
        capsys,
        f"hf-growth grow: error: {src}: cannot load the model (KeyError: 'no_such_activation') "
        "(verification could not run; nothing was written)",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.yaml", "src"]


def test_grow_verify_mismatch_exits_1_and_keeps_the_output(tiny_pair, tmp_path, capsys, monkeypatch):
    """A function-preserving plan whose output differs (simulated: the written weights are changed before
    verification) fails --verify: exit 1, the figures, the output kept."""
    from safetensors.torch import load_file, save_file

    from hf_growth.growth import streaming

    _, src = tiny_pair
    (tmp_path / "plan.yaml").write_text("- mlp_width: 96\n")
    real = streaming._write_tensors

    def write_then_damage(engine, source, planned, tmp, **kwargs):
        real(engine, source, planned, tmp, **kwargs)
        tensors = load_file(tmp / "model.safetensors")
        tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(streaming, "_write_tensors", write_then_damage)
    assert main(["grow", str(src), str(tmp_path / "plan.yaml"), str(tmp_path / "out"), "--verify", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "verify: MISMATCH: max |Δlogits| " in text and "(tolerance 0.0001)" in text
    assert f"the output is kept in {(tmp_path / 'out').resolve()}" in text
    assert "max |Δlogits| against the source" in (tmp_path / "out" / "README.md").read_text()
