"""grow_model on Llama / Qwen2: every step, compositions, exactness (random and tiny activations), gradient
flow, determinism, history, bad plans, dtype, GGUF settings, freeze_original."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch
from growth_testing import HEAD_DIM_STEPS, WIDTH_STEPS, assert_exact, depth_steps, tiny_inputs
from growth_testing import train_steps as _train_steps
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_growth.growth import grow_model
from hf_growth.growth.engine import GrowthEngine, StateDictSource
from hf_growth.growth.freeze import freeze_original, new_parameter_masks
from hf_growth.growth.plan import GrowthPlan
from hf_growth.growth.verify import max_logit_diff

TOL = 1e-5


def tiny_llama(
    *,
    tied=False,
    bias=False,
    heads=4,
    kv=2,
    hidden=48,
    rope=None,
    eps=1e-6,
    seed=0,
    tiny=False,
    layers=2,
    dtype=torch.float32,
):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=tied,
        attention_bias=bias,
        mlp_bias=bias,
        rms_norm_eps=eps,
        rope_parameters=rope,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # make biases and gains matter
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
        if tiny:  # hidden states ~1e-3: RMSNorm's epsilon matters
            model.model.embed_tokens.weight.mul_(0.05)
    return model.to(dtype)


SINGLE_STEPS = {**WIDTH_STEPS, **HEAD_DIM_STEPS, **depth_steps(2)}
COMPOSITIONS = {
    "all_axes": [
        {"mlp_width": 96},
        {"num_heads": {"to": 6, "num_key_value_heads": 3}},
        {"hidden_size": 72},
        {"num_layers": 3},
    ],
    "all_axes_head_dim": [
        {"hidden_size": 96},
        {"head_dim": 24},
        {"num_heads": 8},
        {"mlp_width": 80},
        {"num_layers": {"to": 4, "init": "copy"}},
        {"hidden_size": 120},
    ],
    "twice_each": [
        {"mlp_width": 80},
        {"mlp_width": 96},
        {"hidden_size": 60},
        {"hidden_size": 72},
        {"num_layers": 3},
        {"num_layers": 4},
    ],
}


@pytest.mark.parametrize(
    "plan", list(SINGLE_STEPS.values()) + list(COMPOSITIONS.values()), ids=list(SINGLE_STEPS) + list(COMPOSITIONS)
)
@pytest.mark.parametrize("tied,bias", [(False, False), (True, True)], ids=["untied", "tied+bias"])
def test_exact_llama(plan, tied, bias):
    for tiny in (False, True):
        src = tiny_llama(tied=tied, bias=bias, tiny=tiny, eps=1e-5 if tiny else 1e-6)
        grown = grow_model(src, plan, seed=1)
        assert_exact(src, grown)
        assert grown.config.tie_word_embeddings == tied


def test_rms_eps_is_what_keeps_tiny_activations_exact():
    src = tiny_llama(tiny=True, eps=1e-5)
    grown = grow_model(src, [{"hidden_size": 96}])
    assert grown.config.rms_norm_eps == pytest.approx(0.5e-5)
    assert_exact(src, grown)
    for module in grown.modules():  # the same model with the old epsilon is measurably off
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = 1e-5
    assert max_logit_diff(src, grown, tiny_inputs()) > 100 * TOL


def test_gqa_duplicates_kv_heads_when_groups_shrink():
    src = tiny_llama(heads=4, kv=1)  # 4 queries per KV head -> 3 per KV head: each KV head is copied
    grown = grow_model(src, [{"num_heads": {"to": 6, "num_key_value_heads": 2}}])
    assert_exact(src, grown)
    k = grown.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(k[:12], k[12:])


def test_gqa_impossible_regroup_fails_naming_the_step():
    # 3 queries per KV head -> 2 per KV head needs 2 copies of each of the 2 KV heads: 4 > 3
    with pytest.raises(ValueError, match=r"plan step 1 \(num_heads\): cannot regroup 6 query / 2 KV heads"):
        grow_model(tiny_llama(heads=6, kv=2), [{"mlp_width": 96}, {"num_heads": {"to": 6, "num_key_value_heads": 3}}])


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 500.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ],
    ids=["default", "linear", "llama3"],
)
def test_rope_head_dim_integer_factor(rope):
    src = tiny_llama(rope=rope)
    grown = grow_model(src, [{"head_dim": 24}, {"num_layers": 3}])
    assert grown.config.head_dim == 24 and grown.config.rope_parameters["rope_type"] == rope["rope_type"]
    assert_exact(src, grown)
    long = torch.arange(64).repeat(1, 2)  # positions beyond the llama3 original context
    assert max_logit_diff(src, grown, long) <= TOL


def test_rope_non_integer_factor_refused_or_approximated():
    src = tiny_llama()
    with pytest.raises(ValueError, match=r"plan step 0 \(head_dim\): .*integer factor"):
        grow_model(src, [{"head_dim": 16}])
    with pytest.raises(ValueError, match=r"RoPE type 'yarn'"):
        GrowthEngine(
            tiny_llama(rope={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}).config, [{"head_dim": 24}]
        )
    with pytest.warns(UserWarning, match="approximate growth"):
        grown = grow_model(src, [{"head_dim": {"to": 16, "approximate": True}}])
    record = grown.config.growth_history[-1]
    assert record["exact"] is False and record["max_logit_diff"] == pytest.approx(max_logit_diff(src, grown))


def test_qwen2_biases_exact_and_layer_types():
    torch.manual_seed(0)
    src = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    with torch.no_grad():
        for name, p in src.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    grown = grow_model(src, COMPOSITIONS["all_axes"] + [{"head_dim": 24}])
    assert_exact(src, grown)
    assert grown.config.head_dim == 24 and len(grown.config.layer_types) == 3


def test_source_untouched_and_no_shared_storage():
    src = tiny_llama(tied=True)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    config_before = src.config.to_dict()
    grown = grow_model(src, [{"num_layers": {"to": 3, "where": "top"}}])  # layers 0-1 are plain copies
    opt = torch.optim.SGD(grown.parameters(), lr=1.0)
    grown.train()
    grown(input_ids=tiny_inputs(), labels=tiny_inputs()).loss.backward()
    opt.step()
    after = src.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert src.config.to_dict() == config_before and not hasattr(src.config, "growth_history")


def test_bf16_stays_bf16():
    src = tiny_llama(dtype=torch.bfloat16)
    grown = grow_model(src, COMPOSITIONS["all_axes"])
    assert {p.dtype for p in grown.parameters()} == {torch.bfloat16}
    assert grown.config.dtype == torch.bfloat16
    assert max_logit_diff(src, grown) < 0.1  # bf16 rounding of the rescaled gains only


def test_gguf_quantization_settings_not_carried():
    src = tiny_llama()
    src.config.quantization_config = {"quant_method": "gguf"}
    src.hf_quantizer = object()
    grown = grow_model(src, [{"mlp_width": 96}])
    assert getattr(grown.config, "quantization_config", None) is None
    assert "quantization_config" not in grown.config.to_dict()
    assert getattr(grown, "hf_quantizer", None) is None
    assert src.config.quantization_config == {"quant_method": "gguf"}


def test_determinism_and_seeds_differ_only_in_free_weights():
    src = tiny_llama()
    plan = COMPOSITIONS["all_axes"]
    a, b, c = (grow_model(src, plan, seed=s) for s in (0, 0, 1))
    masks = new_parameter_masks(a)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    differs_somewhere = False
    for name, mask in masks.items():
        assert torch.equal(sa[name], sb[name]), name
        diff = sa[name] != sc[name]
        if mask is None:
            assert not diff.any(), name
        elif mask != "all":
            assert not (diff & ~mask).any(), f"{name}: an old entry depends on the seed"
        differs_somewhere |= bool(diff.any())
    assert differs_somewhere


def test_order_independent():
    src = tiny_llama()
    engine = GrowthEngine(src.config, COMPOSITIONS["all_axes_head_dim"], seed=3)
    view = engine.view(StateDictSource(src.state_dict()))
    forward = {n: view.get(n) for n in view.keys()}
    view2 = engine.view(StateDictSource(src.state_dict()))
    backward = {n: view2.get(n) for n in reversed(view2.keys())}
    assert forward.keys() == backward.keys()
    assert all(torch.equal(forward[n], backward[n]) for n in forward)
    assert engine.output_shapes() == {n: tuple(t.shape) for n, t in forward.items()}


def test_growth_history_and_save_load(tmp_path):
    src = tiny_llama()
    grown = grow_model(src, COMPOSITIONS["all_axes"], seed=7)
    history = grown.config.growth_history
    assert [next(iter(r["step"])) for r in history] == ["mlp_width", "num_heads", "hidden_size", "num_layers"]
    assert history[0]["before"]["mlp"] == 64 and history[0]["after"]["mlp"] == 96
    assert all(r["seed"] == 7 and r["exact"] for r in history)
    assert history[-1]["new_layers"] == [2]
    slices = history[-1]["new_slices"]
    assert slices["model.layers.2.self_attn.q_proj.weight"] == "all"
    assert slices["model.embed_tokens.weight"] == {"1": [[48, 72]]}
    grown.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.growth_history == history
    assert max_logit_diff(grown, loaded) == 0.0
    again = grow_model(loaded, [{"mlp_width": 128}])
    assert [r["run"] for r in again.config.growth_history] == [0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    "plan,match",
    [
        ([{"widen": 3}], r"plan step 0: unknown step 'widen'; known steps: mlp_width"),
        (
            [{"mlp_width": 96}, {"mlp_width": 32}],
            r"plan step 1 \(mlp_width\): cannot shrink the MLP width from 96 to 32",
        ),
        ([{"hidden_size": 50}], r"plan step 0 \(hidden_size\): .*not a multiple of the number of attention heads"),
        (
            [{"num_heads": {"to": 7, "num_key_value_heads": 2}}],
            r"plan step 0 \(num_heads\): 7 query heads cannot be split",
        ),
        ([{"qk_dim": 24}], r"plan step 0 \(qk_dim\): stock llama has one head_dim .*convert to ResFormer"),
        ([{"num_layers": {"to": 4, "where": [1]}}], r"plan step 0 \(num_layers\): `where` lists 1 positions"),
        (
            [{"stack": {"to": 3, "block_size": 2}}],
            r"plan step 0 \(stack\): 2 layers do not form blocks of 2|not a whole",
        ),
        ([{"mlp_width": "big"}], r"plan step 0 \(mlp_width\): expected an integer"),
        ([{"mlp_width": {"to": 96, "colour": 1}}], r"plan step 0 \(mlp_width\): colour: Extra inputs"),
        ([], r"no steps"),
    ],
)
def test_bad_plans_fail_before_any_tensor(plan, match):
    src = tiny_llama()
    src.state_dict = lambda *a, **k: pytest.fail("a tensor was read")  # noqa: E731
    with pytest.raises(ValueError, match=match):
        grow_model(src, plan)


def test_bad_yaml_and_unsupported_architecture(tmp_path):
    bad = tmp_path / "plan.yaml"
    bad.write_text("- mlp_width: [1, 2\n")
    with pytest.raises(ValueError, match="plan.yaml is not valid YAML"):
        GrowthPlan.parse(bad)
    good = tmp_path / "good.yaml"
    good.write_text("- mlp_width: 96\n- num_layers: {to: 3, where: top}\n")
    assert GrowthPlan.parse(good).to_list() == [{"mlp_width": {"to": 96}}, {"num_layers": {"to": 3, "where": "top"}}]
    from hf_growth.growth.adapters import supported_model_types

    assert {"gpt2", "llama", "qwen2", "resformer"} <= set(supported_model_types())
    supported = ", ".join(supported_model_types())
    with pytest.raises(ValueError, match=rf"cannot grow model_type 'bert'; supported: {supported}$"):
        GrowthEngine({"model_type": "bert"}, [{"mlp_width": 10}])


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_new_weights_learn(tied):
    src = tiny_llama(tied=tied, bias=True)
    grown = grow_model(src, COMPOSITIONS["all_axes_head_dim"])
    masks = new_parameter_masks(grown)
    initial = {n: p.detach().clone() for n, p in grown.named_parameters()}
    seen = _train_steps(grown)
    checked = 0
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            continue
        new = torch.ones_like(p, dtype=torch.bool) if mask == "all" else mask
        assert seen[name][new].all(), f"{name}: a new entry never had a gradient"
        was_zero = new & (initial[name] == 0)
        assert (p.detach()[was_zero] != 0).all(), f"{name}: a zero-initialised new entry stayed zero"
        checked += 1
    assert checked > 10


def test_freeze_original_trains_only_new_entries():
    src = tiny_llama()
    grown = grow_model(src, COMPOSITIONS["all_axes"])
    counts = freeze_original(grown)
    assert counts["whole"] == 9 and counts["masked"] > 0
    initial = {n: p.detach().clone() for n, p in grown.named_parameters()}
    masks = new_parameter_masks(grown)
    _train_steps(grown, steps=2)
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            assert not p.requires_grad and torch.equal(p, initial[name])
        elif mask != "all":
            assert torch.equal(p.detach()[~mask], initial[name][~mask]), name
            assert not torch.equal(p.detach()[mask], initial[name][mask]), name


def test_freeze_original_with_peft():
    peft = pytest.importorskip("peft")
    src = tiny_llama()
    grown = grow_model(src, [{"mlp_width": 96}, {"num_layers": 3}])
    model = peft.get_peft_model(grown, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    counts = freeze_original(model)
    assert counts["whole"] == 9
    base_q = {n: p.detach().clone() for n, p in model.named_parameters() if "q_proj.base_layer" in n}
    lora = [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora
    _train_steps(model, steps=2)
    new_q = "base_model.model.model.layers.2.self_attn.q_proj.base_layer.weight"
    for n, p in model.named_parameters():
        if n in base_q and n != new_q:
            assert torch.equal(p, base_q[n]), n
    assert not torch.equal(dict(model.named_parameters())[new_q], base_q[new_q])


def test_module_doctests():
    import hf_growth.growth.engine as engine
    import hf_growth.growth.freeze as freeze
    import hf_growth.growth.memory as memory
    import hf_growth.growth.ops as ops
    import hf_growth.growth.plan as plan
    import hf_growth.growth.stacking as stacking

    for module in (ops, plan, stacking, engine, memory, freeze):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_warnings_clean_for_exact_growth():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        grow_model(tiny_llama(), [{"mlp_width": 96}])
