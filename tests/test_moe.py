"""Mixture of experts: dense -> MoE upcycling (``experts``: Llama -> Mixtral) and growing MoE models; exact on
random and tiny activations, the router and the experts learn, refusals, round trips, streaming = in-memory for
the fused and the per-expert checkpoint layouts."""

from __future__ import annotations

import json

import pytest
import torch
from growth_testing import assert_exact, tiny_inputs
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from hf_growth.growth import grow_model
from hf_growth.growth.adapters.mixtral import MixtralAdapter
from hf_growth.growth.engine import GrowthEngine
from hf_growth.growth.io.reader import ExpertLayoutSource
from hf_growth.growth.verify import max_logit_diff

TOL = 1e-5


def tiny_llama(*, tied=False, bias=False, tiny=False, layers=2, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        attention_bias=bias,
        mlp_bias=bias,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # make the gains matter
                p.copy_(torch.randn_like(p) * 0.1 + 1.0)
        if tiny:  # hidden states ~1e-3: RMSNorm's epsilon matters
            model.model.embed_tokens.weight.mul_(0.005)
    return model.to(dtype)


def tiny_mistral(*, seed=0, tiny=False):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = MistralForCausalLM(cfg).eval()
    if tiny:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(0.005)
    return model


def tiny_qwen3(*, seed=0, tiny=False, bias=False, sliding=False):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        attention_bias=bias,
        initializer_range=0.2,
        use_sliding_window=sliding,
        max_window_layers=1,
        sliding_window=8,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + 1.0)
        if tiny:
            model.model.embed_tokens.weight.mul_(0.005)
    return model


def tiny_qwen3_moe(*, experts=4, top_k=2, seed=0):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Qwen3MoeForCausalLM(cfg).eval()


def tiny_mixtral(*, experts=4, top_k=2, tied=False, seed=0):
    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        tie_word_embeddings=tied,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return MixtralForCausalLM(cfg).eval()


def logits_differ(a, b):
    """The models are not the same function (the test's premise: a step that should be exact has work to do)."""
    return max_logit_diff(a, b) > 1e-3


# ------------------------------------------------------------------------------------------ upcycling
@pytest.mark.parametrize(
    "step",
    [
        {"to": 8, "top_k": 2},
        {"to": 4, "top_k": 1},
        {"to": 4, "top_k": 4},
        {"to": 1},
        {"to": 6, "top_k": 3, "router_init": "zeros"},
        {"to": 4, "router_std": 1.0},
    ],
    ids=["8top2", "4top1", "4top4", "1", "zeros", "std1"],
)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_upcycling_llama_is_exact(step, tied):
    for tiny in (False, True):
        src = tiny_llama(tied=tied, tiny=tiny)
        grown = grow_model(src, [{"experts": step}], seed=1)
        assert type(grown) is MixtralForCausalLM
        assert grown.config.num_local_experts == step["to"]
        assert grown.config.num_experts_per_tok == step.get("top_k", min(2, step["to"]))
        assert grown.config.tie_word_embeddings == tied
        assert_exact(src, grown)
    assert grown.config.growth_history[-1]["exact"] is True


def test_upcycling_mistral_is_exact():
    for tiny in (False, True):
        src = tiny_mistral(tiny=tiny)
        grown = grow_model(src, [{"experts": {"to": 4, "top_k": 2}}, {"mlp_width": 64}], seed=1)
        assert type(grown) is MixtralForCausalLM
        assert (grown.config.sliding_window, grown.config.head_dim) == (8, 16)
        assert_exact(src, grown)


def test_every_expert_is_the_mlp_and_the_router_is_seeded():
    src = tiny_llama()
    grown = grow_model(src, [{"experts": {"to": 4}}], seed=1)
    mlp = src.model.layers[1].mlp
    experts = grown.model.layers[1].mlp.experts
    for e in range(4):
        assert torch.equal(experts.gate_up_proj[e], torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]))
        assert torch.equal(experts.down_proj[e], mlp.down_proj.weight)
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert torch.equal(grown.state_dict()[name], src.state_dict()[name])
    router = grown.model.layers[1].mlp.gate.weight
    assert router.shape == (4, 32) and 0.1 < router.std().item() < 0.3  # initializer_range 0.2
    again = grow_model(src, [{"experts": {"to": 4}}], seed=1)
    other = grow_model(src, [{"experts": {"to": 4}}], seed=2)
    assert torch.equal(again.model.layers[1].mlp.gate.weight, router)
    assert not torch.equal(other.model.layers[1].mlp.gate.weight, router)
    assert not torch.equal(grown.model.layers[0].mlp.gate.weight, router)  # seeded per tensor
    zeros = grow_model(src, [{"experts": {"to": 4, "router_init": "zeros"}}])
    assert not zeros.model.layers[1].mlp.gate.weight.any()


def test_upcycled_config_and_history():
    src = tiny_llama()
    plan = [
        {
            "experts": {
                "to": 8,
                "top_k": 2,
                "router_aux_loss_coef": 0.02,
                "output_router_logits": True,
                "router_jitter_noise": 0.01,
            }
        }
    ]
    grown = grow_model(src, plan)
    data = grown.config.to_dict()
    assert data["model_type"] == "mixtral"
    assert (data["router_aux_loss_coef"], data["output_router_logits"], data["router_jitter_noise"]) == (
        0.02,
        True,
        0.01,
    )
    assert not {"attention_bias", "mlp_bias", "pretraining_tp"} & set(data)
    record = grown.config.growth_history[-1]
    assert record["upcycled"] is True and record["exact"] is True
    assert record["before"] == {
        "hidden": 32,
        "mlp": 48,
        "heads": 4,
        "kv_heads": 2,
        "qk_dim": 8,
        "v_dim": 8,
        "layers": 2,
    }
    assert record["after"] == {**record["before"], "experts": 8, "top_k": 2}
    assert record["new_slices"] == {
        f"model.layers.*.mlp.{n}": "all" for n in ("gate.weight", "experts.gate_up_proj", "experts.down_proj")
    }
    assert record["num_params_after"] == grown.num_parameters()
    # the load-balancing loss is on: training adds it to the loss
    out = grown(input_ids=tiny_inputs(), labels=tiny_inputs())
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert max_logit_diff(src, grown) <= TOL  # eval mode: jitter is off, the logits are the dense model's


def test_router_and_experts_learn():
    src = tiny_llama()
    grown = grow_model(src, [{"experts": {"to": 4, "top_k": 2}}], seed=0).train()
    router0 = grown.model.layers[0].mlp.gate.weight.detach().clone()
    optimizer = torch.optim.Adam(grown.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(4):
        ids = torch.randint(0, 64, (4, 16))
        loss = grown(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    experts = grown.model.layers[0].mlp.experts
    assert (grown.model.layers[0].mlp.gate.weight - router0).abs().max() > 1e-3  # the router moved
    differences = [(experts.gate_up_proj[0] - experts.gate_up_proj[e]).abs().max().item() for e in range(1, 4)]
    assert min(differences) > 1e-4  # the experts are no longer copies of each other


def test_noise_changes_the_function_and_is_measured():
    src = tiny_llama()
    with pytest.warns(UserWarning, match="approximate growth: measured max"):
        grown = grow_model(src, [{"experts": {"to": 4, "noise": 0.05}}], seed=0)
    record = grown.config.growth_history[-1]
    assert record["exact"] is False and record["step"]["experts"]["approximate"] is True
    assert record["max_logit_diff"] == max_logit_diff(src, grown) > 1e-4
    experts = grown.model.layers[0].mlp.experts
    assert not torch.equal(experts.down_proj[0], experts.down_proj[1])


REFUSALS = [
    (
        lambda: tiny_llama(bias=True),
        [{"experts": 4}],
        (
            r"plan step 0 \(experts\): Mixtral has no biases: a llama model with attention_bias and mlp_bias cannot "
            r"become one exactly; set `approximate: true` to drop them and measure the error"
        ),
    ),
    (tiny_llama, [{"experts": {"to": 4, "top_k": 5}}], r"plan step 0 \(experts\): top_k 5 is more than the 4 experts"),
    (
        tiny_llama,
        [{"experts": {"to": 4, "norm_topk_prob": False}}],
        (
            r"plan step 0 \(experts\): mixtral has no `norm_topk_prob` setting \(it has: router_aux_loss_coef, "
            r"output_router_logits, router_jitter_noise\)"
        ),
    ),
    (
        tiny_mixtral,
        [{"experts": 6}],
        (
            r"plan step 0 \(experts\): more experts change which experts the router picks: 4 -> 6 experts with "
            r"top_k 2 -> 2 is exact only by an integer factor m with top_k times m \(every expert copied m times with "
            r"its router row\), e.g. to: 8, top_k: 4; or set `approximate: true` to do it anyway and measure the error"
        ),
    ),
    (
        tiny_mixtral,
        [{"experts": {"to": 8, "top_k": 2}}],
        r"more experts change which experts the router picks: 4 -> 8 experts with top_k 2 -> 2 is exact only",
    ),
    (tiny_mixtral, [{"experts": 2}], r"plan step 0 \(experts\): cannot shrink the number of experts from 4 to 2"),
]


@pytest.mark.parametrize(
    "make, plan, message", REFUSALS, ids=["bias", "top_k", "norm_topk_prob", "non_multiple", "top_k_kept", "shrink"]
)
def test_refusals(make, plan, message):
    with pytest.raises(ValueError, match=message):
        grow_model(make(), plan)


def test_architectures_without_a_moe_form_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    qwen2 = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    for model, name in ((qwen2, "qwen2"), (gpt2, "gpt2")):
        with pytest.raises(
            ValueError,
            match=rf"plan step 0 \(experts\): hf-growth upcycles llama, mistral, qwen3 "
            rf"models to a mixture of experts \(mixtral, qwen3_moe\); {name} has no "
            r"mixture-of-experts adapter here",
        ):
            grow_model(model, [{"experts": 4}])


def test_approximate_drops_biases_and_measures():
    src = tiny_llama(bias=True)
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    with pytest.warns(UserWarning, match="approximate growth"):
        grown = grow_model(src, [{"experts": {"to": 4, "approximate": True}}])
    assert grown.config.growth_history[-1]["max_logit_diff"] > 1e-3
    assert not any(name.endswith("bias") for name, _ in grown.named_parameters())


def test_save_and_from_pretrained_round_trip(tmp_path):
    src = tiny_llama()
    grow_model(src, [{"experts": {"to": 4, "top_k": 2}}], seed=0, output_dir=tmp_path / "moe")
    out = tmp_path / "moe"
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is MixtralForCausalLM
    assert max_logit_diff(src, loaded) <= TOL
    assert max_logit_diff(grow_model(src, [{"experts": {"to": 4, "top_k": 2}}], seed=0), loaded) == 0.0
    card = (out / "README.md").read_text()
    assert "- moe\n" in card and "Sparse Upcycling" in card
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]


def test_dtype_is_kept():
    src = tiny_llama(dtype=torch.bfloat16)
    grown = grow_model(src, [{"experts": 4}])
    assert {p.dtype for p in grown.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------ growing MoE models
MOE_PLANS = {
    "mlp_width": [{"mlp_width": 80}],
    "heads_kv": [{"num_heads": {"to": 8, "num_key_value_heads": 4}}],
    "head_dim": [{"head_dim": 16}],
    "hidden_size": [{"hidden_size": 48}],
    "num_layers": [{"num_layers": {"to": 4, "where": "interleave"}}],
    "num_layers_copy": [{"num_layers": {"to": 3, "where": "top", "init": "copy"}}],
    "more_experts": [{"experts": {"to": 8, "top_k": 4}}],
    "more_experts_x3": [{"experts": 12}],
    "all": [
        {"experts": 8},
        {"mlp_width": 64},
        {"num_heads": {"to": 8, "num_key_value_heads": 4}},
        {"hidden_size": 48},
        {"num_layers": 3},
    ],
}


@pytest.mark.parametrize("plan", list(MOE_PLANS.values()), ids=list(MOE_PLANS))
def test_growing_mixtral_is_exact(plan):
    src = tiny_mixtral()
    grown = grow_model(src, plan, seed=2)
    assert type(grown) is MixtralForCausalLM
    assert_exact(src, grown)
    assert grown.config.growth_history[-1]["exact"] is True


@pytest.mark.parametrize(
    "plan",
    [
        [{"experts": 8}, {"mlp_width": 64}, {"hidden_size": 48}, {"num_layers": 3}],
        [
            {"num_heads": {"to": 8, "num_key_value_heads": 4}},
            {"experts": 4},
            {"num_layers": {"to": 4, "where": "top"}},
            {"experts": {"to": 8, "top_k": 4}},
        ],
    ],
    ids=["upcycle_then_grow", "grow_upcycle_grow"],
)
def test_upcycling_composes_with_every_axis(plan):
    for tiny in (False, True):
        src = tiny_llama(tiny=tiny)
        grown = grow_model(src, plan, seed=3)
        assert type(grown) is MixtralForCausalLM
        assert_exact(src, grown)


def test_width_growth_draws_different_values_per_expert_and_part():
    src = tiny_mixtral()
    grown = grow_model(src, [{"mlp_width": 64}], seed=0)
    gate_up = grown.model.layers[0].mlp.experts.gate_up_proj
    new_gate, new_up = gate_up[:, 48:64], gate_up[:, 64 + 48 :]
    assert not torch.equal(new_gate[0], new_gate[1]) and not torch.equal(new_gate[0], new_up[0])
    assert not grown.model.layers[0].mlp.experts.down_proj[:, :, 48:].any()  # the new units add nothing
    spec = grown.config.growth_history[-1]["new_slices"]["model.layers.*.mlp.experts.gate_up_proj"]
    assert spec == {"1": [[48, 64], [112, 128]]}


def test_new_layer_moe_block_adds_nothing_and_learns():
    src = tiny_mixtral()
    grown = grow_model(src, [{"num_layers": {"to": 3, "where": "top"}}], seed=0).train()
    new = grown.model.layers[2].mlp
    assert not new.experts.down_proj.any() and new.experts.gate_up_proj.abs().sum() > 0 and new.gate.weight.any()
    ids = torch.randint(0, 64, (2, 16))
    grown(input_ids=ids, labels=ids).loss.backward()
    assert new.experts.down_proj.grad.abs().max() > 0  # its output projection learns first
    optimizer = torch.optim.Adam(grown.parameters(), lr=1e-2)
    router = new.gate.weight.detach().clone()
    for _ in range(3):
        optimizer.step()
        optimizer.zero_grad()
        grown(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert (new.gate.weight - router).abs().max() > 1e-4


def test_more_experts_copies_experts_and_router_rows():
    src = tiny_mixtral()
    grown = grow_model(src, [{"experts": 8}])
    assert grown.config.num_experts_per_tok == 4
    old, new = src.model.layers[0].mlp, grown.model.layers[0].mlp
    assert torch.equal(new.gate.weight, torch.cat([old.gate.weight] * 2))
    assert torch.equal(new.experts.down_proj, torch.cat([old.experts.down_proj] * 2))
    spec = grown.config.growth_history[-1]["new_slices"]
    assert spec["model.layers.*.mlp.gate.weight"] == {"0": [[4, 8]]}


def test_more_experts_approximate_is_measured():
    src = tiny_mixtral()
    with pytest.warns(UserWarning, match="approximate growth"):
        grown = grow_model(src, [{"experts": {"to": 6, "approximate": True}}])
    assert grown.config.num_experts_per_tok == 2
    assert grown.config.growth_history[-1]["max_logit_diff"] == max_logit_diff(src, grown)


def test_stack_on_mixtral_changes_the_function_by_design():
    src = tiny_mixtral()
    grown = grow_model(src, [{"stack": {"to": 4, "block_size": 1, "where": "top"}}])
    assert grown.config.num_hidden_layers == 4 and grown.config.growth_history[-1]["exact"] is False
    assert logits_differ(src, grown)
    assert torch.equal(grown.model.layers[1].mlp.experts.gate_up_proj, grown.model.layers[2].mlp.experts.gate_up_proj)


def test_engine_hands_the_target_adapter_to_later_steps():
    engine = GrowthEngine(tiny_llama().config, [{"mlp_width": 64}, {"experts": 4}, {"mlp_width": 80}])
    assert [s.adapter.name for s in engine.stages] == ["llama", "llama", "mixtral"]
    assert (engine.source_adapter.name, engine.adapter.name) == ("llama", "mixtral")
    assert type(engine.new_config).__name__ == "MixtralConfig"
    shapes = engine.output_shapes()
    assert shapes["model.layers.0.mlp.experts.gate_up_proj"] == (4, 160, 32)
    assert "model.layers.0.mlp.up_proj.weight" not in shapes


# ------------------------------------------------------------------------------------------ streaming
def _grow_both(model, plan, tmp_path, seed=3):
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import grow_checkpoint

    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="20KB")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = grow_checkpoint(src, plan, tmp_path / "stream", seed=seed, max_shard_size="30KB", quiet=True)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is never modified
    grow_model(model, plan, seed=seed, output_dir=tmp_path / "mem", verify=False)
    grown = grow_model(model, plan, seed=seed, verify=False)
    streamed, saved = SafetensorsSource(out), SafetensorsSource(tmp_path / "mem")
    assert set(streamed) == set(saved)  # the names save_pretrained writes (per expert, in transformers 5.25)
    for name in saved:
        assert streamed.dtype(name) == saved.dtype(name) and torch.equal(streamed[name], saved[name]), name
    fused = ExpertLayoutSource(streamed, MixtralAdapter())  # read back as the model holds them
    expected = {
        k: v for k, v in grown.state_dict().items() if not (grown.config.tie_word_embeddings and k == "lm_head.weight")
    }
    assert set(fused.keys()) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(fused.get(name), tensor), name
    for name in ("config.json", "README.md"):  # (verify=False: approximate steps are measured by neither)
        assert (out / name).read_bytes() == (tmp_path / "mem" / name).read_bytes(), name
    return out, grown


STREAM_CASES = {
    "upcycle": (tiny_llama, [{"experts": {"to": 4, "top_k": 2, "router_aux_loss_coef": 0.01}}]),
    "upcycle_tied_bf16": (lambda: tiny_llama(tied=True, dtype=torch.bfloat16), [{"experts": 8}]),
    "upcycle_and_grow": (
        tiny_llama,
        [{"mlp_width": 64}, {"experts": 4}, {"hidden_size": 48}, {"num_layers": 3}, {"experts": 8}],
    ),
    "upcycle_noise": (tiny_llama, [{"experts": {"to": 4, "noise": 0.01}}, {"mlp_width": 64}]),
    "mistral": (tiny_mistral, [{"experts": 4}, {"num_heads": {"to": 8, "num_key_value_heads": 4}}]),
    "mixtral": (
        tiny_mixtral,
        [
            {"mlp_width": 64},
            {"num_heads": {"to": 8, "num_key_value_heads": 4}},
            {"hidden_size": 48},
            {"num_layers": {"to": 3, "where": "top"}},
            {"experts": 8},
        ],
    ),
    "mixtral_stack": (tiny_mixtral, [{"stack": {"to": 4, "block_size": 1, "where": "top"}}]),
}


@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_streaming_is_the_in_memory_path_bit_for_bit(tmp_path, case):
    make, plan = STREAM_CASES[case]
    model = make()
    out, grown = _grow_both(model, plan, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is MixtralForCausalLM
    assert max_logit_diff(grown.float(), loaded.float()) == 0.0


def _save_fused(model, directory):
    """A checkpoint in the fused layout transformers 5 holds in memory (``mlp.experts.gate_up_proj``...)."""
    from safetensors.torch import save_file

    directory.mkdir()
    model.config.save_pretrained(directory)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )
    return directory


@pytest.mark.parametrize(
    "plan",
    [
        [{"mlp_width": 64}, {"num_layers": {"to": 3, "where": "top"}}],
        [{"experts": 8}],
        [{"hidden_size": 48}, {"experts": 8}],
    ],
    ids=["width_depth", "more_experts", "hidden_experts"],
)
def test_streaming_reads_the_fused_and_the_per_expert_layout(tmp_path, plan):
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import grow_checkpoint

    model = tiny_mixtral()
    per_expert = tmp_path / "per_expert"
    model.save_pretrained(per_expert)
    fused = _save_fused(model, tmp_path / "fused")
    assert any("block_sparse_moe.experts.0.w1" in n for n in SafetensorsSource(per_expert))
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in SafetensorsSource(fused))
    outs = [grow_checkpoint(src, plan, tmp_path / f"out_{src.name}", seed=1, quiet=True) for src in (per_expert, fused)]
    a, b = (SafetensorsSource(o) for o in outs)
    assert set(a) == set(b)
    assert all(torch.equal(a[n], b[n]) for n in a)
    grown = grow_model(model, plan, seed=1)
    loaded = AutoModelForCausalLM.from_pretrained(outs[1]).eval()
    assert max_logit_diff(grown, loaded) == 0.0 and max_logit_diff(model, loaded) <= TOL


def test_streaming_copies_expert_bytes(tmp_path):
    """Upcycling copies the dense MLP's bytes into every expert; more experts copy the experts' bytes, from either
    layout; only the routers (and what a width step changes) are computed."""
    from hf_growth.growth.engine import GrowthEngine as Engine
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import (
        expert_layout_source,
        load_source_config,
        plan_output,
    )

    tiny_llama().save_pretrained(tmp_path / "llama")
    model = tiny_mixtral()
    model.save_pretrained(tmp_path / "per_expert")
    _save_fused(model, tmp_path / "fused")
    for src, plan in (("llama", [{"experts": 8}]), ("per_expert", [{"experts": 8}]), ("fused", [{"experts": 8}])):
        engine = Engine(load_source_config(tmp_path / src), plan)
        source = expert_layout_source(SafetensorsSource(tmp_path / src), engine)
        planned = plan_output(engine, source)
        computed = sorted(p.name for p in planned if p.source_info(source) is None)
        assert computed == [
            "model.layers.0.block_sparse_moe.gate.weight",
            "model.layers.1.block_sparse_moe.gate.weight",
        ]
    engine = Engine(load_source_config(tmp_path / "fused"), [{"mlp_width": 64}])
    source = expert_layout_source(SafetensorsSource(tmp_path / "fused"), engine)
    computed = {p.name.split("experts.")[-1] for p in plan_output(engine, source) if p.source_info(source) is None}
    assert computed == {f"{e}.{w}.weight" for e in range(4) for w in ("w1", "w2", "w3")}


# ------------------------------------------------------------------------------------------ during training
def test_grow_in_place_upcycles_with_the_optimizer_state():
    from hf_growth.training.callbacks import grow_in_place

    model = tiny_llama().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    mlp = model.model.layers[1].mlp
    gate_state, down_state = optimizer.state[mlp.gate_proj.weight], optimizer.state[mlp.down_proj.weight]
    up_state = optimizer.state[mlp.up_proj.weight]
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, labels=ids).loss.item()
    info = grow_in_place(model, [{"experts": {"to": 4, "top_k": 2}}], optimizer=optimizer, seed=0)
    assert type(model) is MixtralForCausalLM and model.config.model_type == "mixtral"
    with torch.no_grad():
        after = model(input_ids=ids, labels=ids).loss.item()
    assert abs(after - before) < 1e-5
    experts, router = model.model.layers[1].mlp.experts, model.model.layers[1].mlp.gate.weight
    for key in ("exp_avg", "exp_avg_sq"):
        moments = optimizer.state[experts.gate_up_proj][key]
        for e in range(4):
            assert torch.equal(moments[e], torch.cat([gate_state[key], up_state[key]]))
            assert torch.equal(optimizer.state[experts.down_proj][key][e], down_state[key])
    assert torch.equal(optimizer.state[experts.gate_up_proj]["step"], gate_state["step"])
    assert router not in optimizer.state  # the router's moments start at zero
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    assert info["copied"] == 4 and info["fresh"] == 2  # two expert tensors per layer copied; the routers fresh
    model.train()  # and it trains on: the experts diverge, then the router moves
    start = router.detach().clone()
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (router - start).abs().max() > 1e-5


def test_growth_callback_upcycles_mid_run_with_loss_continuity(tmp_path):
    from test_callbacks import Counting, args
    from transformers import Trainer

    from hf_growth.training.callbacks import GrowthCallback

    model = tiny_llama()
    batch = {"input_ids": Counting(8).ids, "labels": Counting(8).ids}
    callback = GrowthCallback(
        {3: [{"experts": {"to": 4, "top_k": 2}}], 6: [{"experts": {"to": 8, "top_k": 4}}]}, check_batch=batch
    )
    trainer = Trainer(model=model, args=args(tmp_path, 9), train_dataset=Counting(128))
    callback.bind(trainer)
    trainer.train()
    assert [e["step"] for e in callback.events] == [3, 6]
    for event in callback.events:
        assert abs(event["loss_after"] - event["loss_before"]) < 1e-5, event
    assert type(model) is MixtralForCausalLM and model.config.num_local_experts == 8
    params = {id(p) for p in model.parameters()}
    assert params == {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


# ------------------------------------------------------------------------------------------ freeze, card, matrix
def test_freeze_original_trains_the_experts_and_routers():
    from hf_growth.growth.freeze import freeze_original

    grown = grow_model(tiny_llama(), [{"experts": 4}])
    counts = freeze_original(grown)
    trainable = {n for n, p in grown.named_parameters() if p.requires_grad}
    assert trainable == {
        f"model.layers.{i}.mlp.{n}"
        for i in range(2)
        for n in ("gate.weight", "experts.gate_up_proj", "experts.down_proj")
    }
    assert counts["whole"] == 6 and counts["masked"] == 0
    more = grow_model(tiny_mixtral(), [{"experts": 8}])
    freeze_original(more)
    router = more.model.layers[0].mlp.gate.weight
    assert router.requires_grad
    ids = tiny_inputs()
    more.train()
    more(input_ids=ids, labels=ids).loss.backward()
    assert not router.grad[:4].any() and router.grad[4:].any()  # only the new experts' rows learn
    assert not more.model.layers[0].mlp.experts.down_proj.grad[:4].any()


def test_support_matrix_lists_upcycling():
    from hf_growth.growth.support import support_matrix

    matrix = support_matrix(["llama", "mixtral", "qwen2"])
    assert matrix["llama"]["experts"].status == "exact"
    assert matrix["mixtral"]["experts"].status == "exact with conditions"
    assert "more experts change which experts the router picks" in matrix["mixtral"]["experts"].refusals[0].error
    assert matrix["qwen2"]["experts"].status == "refused"


# ------------------------------------------------------------------------------------------ Qwen3 -> Qwen3-MoE
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "attention_bias"])
def test_upcycling_qwen3_is_exact(bias):
    from transformers import Qwen3MoeForCausalLM

    for tiny in (False, True):
        src = tiny_qwen3(tiny=tiny, bias=bias)
        grown = grow_model(src, [{"experts": {"to": 4, "top_k": 2}}], seed=1)
        assert type(grown) is Qwen3MoeForCausalLM
        assert grown.config.norm_topk_prob is True and grown.config.moe_intermediate_size == 48
        assert grown.config.num_experts == 4 and grown.config.head_dim == 16
        assert_exact(src, grown)


def test_qwen3_moe_refusals_and_approximate():
    with pytest.raises(
        ValueError,
        match=r"plan step 0 \(experts\): qwen3_moe with norm_topk_prob: false weighs the "
        r"chosen experts by their softmax probabilities, which sum to less than one "
        r"when top_k \(2\) < experts \(4\): the output shrinks; keep norm_topk_prob: "
        r"true \(the default\), or set `approximate: true`",
    ):
        grow_model(tiny_qwen3(), [{"experts": {"to": 4, "norm_topk_prob": False}}])
    with pytest.raises(ValueError, match=r"Qwen3-MoE gives every layer the same attention window"):
        grow_model(tiny_qwen3(sliding=True), [{"experts": 4}])
    with pytest.raises(ValueError, match=r"qwen3_moe has no `router_jitter_noise` setting"):
        grow_model(tiny_qwen3(), [{"experts": {"to": 4, "router_jitter_noise": 0.1}}])
    src = tiny_qwen3()
    all_experts = grow_model(src, [{"experts": {"to": 4, "top_k": 4, "norm_topk_prob": False}}])
    assert_exact(src, all_experts)  # the softmax over every expert sums to one
    with pytest.warns(UserWarning, match="approximate growth"):
        shrunk = grow_model(src, [{"experts": {"to": 4, "norm_topk_prob": False, "approximate": True}}])
    assert shrunk.config.growth_history[-1]["max_logit_diff"] > 1e-3


QWEN3_MOE_PLANS = {
    "mlp_width": [{"mlp_width": 40}],
    "heads_kv": [{"num_heads": {"to": 8, "num_key_value_heads": 4}}],
    "head_dim": [{"head_dim": 32}],
    "hidden_size": [{"hidden_size": 48}],
    "num_layers": [{"num_layers": {"to": 4, "where": "interleave"}}],
    "more_experts": [{"experts": 8}],
}


@pytest.mark.parametrize("plan", list(QWEN3_MOE_PLANS.values()), ids=list(QWEN3_MOE_PLANS))
def test_growing_qwen3_moe_is_exact(plan):
    src = tiny_qwen3_moe()
    grown = grow_model(src, plan, seed=2)
    assert_exact(src, grown)


@pytest.mark.parametrize(
    "make, plan",
    [
        (tiny_qwen3, [{"experts": 4}, {"mlp_width": 64}, {"hidden_size": 48}]),
        (tiny_qwen3_moe, [{"experts": 8}, {"num_layers": 3}]),
    ],
    ids=["qwen3", "qwen3_moe"],
)
def test_qwen3_moe_streaming_is_the_in_memory_path(tmp_path, make, plan):
    from transformers import Qwen3MoeForCausalLM

    from hf_growth.growth.adapters.qwen3_moe import Qwen3MoeAdapter
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import grow_checkpoint

    model = make()
    model.save_pretrained(tmp_path / "src")
    out = grow_checkpoint(tmp_path / "src", plan, tmp_path / "stream", seed=3, quiet=True)
    grown = grow_model(model, plan, seed=3, output_dir=tmp_path / "mem")
    saved, streamed = SafetensorsSource(tmp_path / "mem"), SafetensorsSource(out)
    assert set(saved) == set(streamed) and all(torch.equal(saved[n], streamed[n]) for n in saved)
    fused = ExpertLayoutSource(streamed, Qwen3MoeAdapter())
    assert all(torch.equal(fused.get(n), t) for n, t in grown.state_dict().items())
    for name in ("config.json", "README.md"):
        assert (out / name).read_bytes() == (tmp_path / "mem" / name).read_bytes(), name
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is Qwen3MoeForCausalLM and max_logit_diff(grown, loaded) == 0.0
