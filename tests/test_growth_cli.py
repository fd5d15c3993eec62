"""``hf-growth grow`` on a tiny model directory."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def test_grow_command(tmp_path, capsys):
    from hf_growth.cli import main
    from hf_growth.growth.verify import max_logit_diff

    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)).eval()
    src.save_pretrained(tmp_path / "src")
    (tmp_path / "plan.yaml").write_text("- mlp_width: 96\n- hidden_size: 48\n- num_layers: {to: 3, where: top}\n")
    assert main(["grow", str(tmp_path / "src"), str(tmp_path / "plan.yaml"), str(tmp_path / "out"), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "parameters" in text and "max |Δlogits| = " in text and "(96, 48)" in text
    grown = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert grown.config.num_hidden_layers == 3 and max_logit_diff(src, grown) <= 1e-5
    (tmp_path / "bad.yaml").write_text("- mlp_width: 16\n")
    assert main(["grow", str(tmp_path / "src"), str(tmp_path / "bad.yaml"), str(tmp_path / "out2")]) == 2
    assert "plan step 0 (mlp_width): cannot shrink" in capsys.readouterr().err
