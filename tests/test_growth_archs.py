"""GPT-2 (integer cloning, fused transposed c_attn, inverse-layer scaling), ResFormer (every variant), MIDAS."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_growth.growth import grow_model
from hf_growth.growth.verify import max_logit_diff

TOL = 1e-5
IDS = torch.arange(64).reshape(2, 32)


def tiny_gpt2(*, tied=True, scale=False, seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        tie_word_embeddings=tied,
        scale_attn_by_inverse_layer_idx=scale,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return model


GPT2_PLANS = {
    "mlp": [{"mlp_width": 160}],
    "clone_x2": [{"hidden_size": 64}],
    "clone_x3": [{"hidden_size": 96}],
    "clone_no_noise": [{"hidden_size": {"to": 64, "noise": 0.0}}],
    "layers_top": [{"num_layers": {"to": 4, "where": "top"}}],
    "all": [{"mlp_width": 160}, {"hidden_size": 64}, {"num_layers": {"to": 3, "where": "top", "init": "copy"}}],
}


@pytest.mark.parametrize("plan", list(GPT2_PLANS.values()), ids=list(GPT2_PLANS))
@pytest.mark.parametrize("tied,scale", [(True, False), (False, True)], ids=["tied", "untied+inv_layer_scale"])
def test_gpt2_exact(plan, tied, scale):
    src = tiny_gpt2(tied=tied, scale=scale)
    grown = grow_model(src, plan)
    assert max_logit_diff(src, grown) <= TOL and max_logit_diff(src, grown, IDS) <= TOL
    h = grown.config.n_embd
    assert grown.config.n_head == 4 * h // 32 and grown.config.n_embd // grown.config.n_head == 8


def test_gpt2_cloning_noise_breaks_symmetry():
    noisy = grow_model(tiny_gpt2(), [{"hidden_size": 64}]).transformer.h[0].attn.c_proj.weight
    plain = grow_model(tiny_gpt2(), [{"hidden_size": {"to": 64, "noise": 0.0}}]).transformer.h[0].attn.c_proj.weight
    assert torch.equal(plain[:32], plain[32:]) and not torch.equal(noisy[:32], noisy[32:])


def test_gpt2_refusals_and_approximation():
    src = tiny_gpt2(scale=True)
    with pytest.raises(ValueError, match=r"plan step 0 \(hidden_size\): LayerNorm subtracts the mean.*integer cloning"):
        grow_model(src, [{"hidden_size": 48}])
    with pytest.raises(ValueError, match=r"plan step 0 \(num_heads\): GPT-2's head size is n_embd / n_head"):
        grow_model(src, [{"num_heads": 8}])
    with pytest.raises(ValueError, match=r"plan step 0 \(num_layers\): scale_attn_by_inverse_layer_idx.*where: top"):
        grow_model(src, [{"num_layers": 4}])
    with pytest.warns(UserWarning, match="approximate growth: measured max"):
        grown = grow_model(src, [{"hidden_size": {"to": 48, "approximate": True}}])
    assert grown.config.growth_history[-1]["max_logit_diff"] > 0


RESFORMER_VARIANTS = ["none", "identity", "constant", "learnable", "learnable_plus", "sparse", "svformer"]
RESFORMER_PLAN = [
    {"mlp_width": 96},
    {"num_heads": {"to": 6, "num_key_value_heads": 3}},
    {"hidden_size": 72},
    {"num_layers": 4},
    {"qk_dim": 24},
    {"value_dim": 20},
    {"num_layers": {"to": 5, "init": "copy"}},
]


def tiny_resformer(variant, tied=False):
    from hf_growth import ResFormerConfig, ResFormerForCausalLM

    torch.manual_seed(0)
    cfg = ResFormerConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        value_residual=variant,
        value_residual_layers=[2] if variant == "sparse" else None,
        tie_word_embeddings=tied,
    )
    model = ResFormerForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda" in name:
                p.add_(torch.rand(1))  # lambdas away from their initial values
    return model


@pytest.mark.parametrize("variant", RESFORMER_VARIANTS)
def test_resformer_exact(variant):
    src = tiny_resformer(variant, tied=variant == "identity")
    grown = grow_model(src, RESFORMER_PLAN)
    assert max_logit_diff(src, grown) <= TOL and max_logit_diff(src, grown, IDS) <= TOL
    assert grown.config.qk_head_dim == 24 and grown.config.v_head_dim == 20
    if variant == "learnable":
        from hf_growth.resformer.configuration_resformer import DEFAULT_VALUE_RESIDUAL_LAMBDA

        first, own = DEFAULT_VALUE_RESIDUAL_LAMBDA["learnable"]
        new_layer = grown.config.growth_history[3]["new_layers"][0]  # new layers start at the variant's lambdas
        attn = grown.model.layers[new_layer].self_attn
        assert attn.lambda_first.item() == first and attn.lambda_own.item() == own


def test_resformer_refusals():
    src = tiny_resformer("learnable")
    with pytest.raises(ValueError, match=r"plan step 0 \(num_layers\): a new layer cannot go before layer 0"):
        grow_model(src, [{"num_layers": {"to": 4, "where": [0]}}])
    with pytest.raises(ValueError, match=r"plan step 0 \(stack\): stacking would copy layer 0"):
        grow_model(src, [{"stack": {"to": 6, "block_size": 3, "where": "top"}}])


def test_midas_stack_copies_middle_blocks():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    src = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    grown = grow_model(src, [{"stack": {"to": 10, "block_size": 2, "where": "middle"}}])
    record = grown.config.growth_history[-1]
    assert record["copied_blocks"] == [
        {"block": [2, 4], "inserted_at": 4, "layers": [2, 3]},
        {"block": [2, 4], "inserted_at": 4, "layers": [2, 3]},
    ]
    assert record["exact"] is False
    origin = [0, 1, 2, 3, 2, 3, 2, 3, 4, 5]
    for i, j in enumerate(origin):
        assert torch.equal(grown.model.layers[i].mlp.up_proj.weight, src.model.layers[j].mlp.up_proj.weight)
    top = grow_model(src, [{"stack": {"to": 8, "block_size": 2, "where": "top"}}])
    assert top.config.growth_history[-1]["copied_blocks"][0]["layers"] == [4, 5]
    with pytest.raises(ValueError, match=r"plan step 0 \(stack\): MIDAS middle stacking needs at least 3 blocks"):
        grow_model(src, [{"stack": {"to": 12, "block_size": 3}}])
