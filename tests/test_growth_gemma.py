"""Gemma 2 and Gemma 3 (text) on tiny random configs: every axis exact (random and tiny-activation inputs), the
(1 + w) gains, the sqrt(hidden) embedding scale, tied embeddings, sandwich norms, query_pre_attn_scalar, soft-capping,
sliding / full layer types and Gemma 3's q/k norms; streaming = in memory; save / load; refusals; training."""

from __future__ import annotations

import json

import pytest
import torch
from growth_testing import WIDTH_STEPS, assert_exact, depth_steps
from growth_testing import train_steps as _train_steps
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
)

from hf_growth.growth import grow_model
from hf_growth.growth.freeze import freeze_original, new_parameter_masks
from hf_growth.growth.verify import max_logit_diff

TOL = 1e-5
IDS = torch.arange(64).reshape(2, 32)  # every token once; longer than the sliding window
VERSIONS = ["gemma2", "gemma3_text"]
GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]


def tiny_gemma(version: str, *, tied: bool = True, tiny: bool = False, seed: int = 0, dtype=torch.float32):
    """A 4-layer Gemma with softcapping that bites, a sliding window shorter than the inputs, query_pre_attn_scalar
    unlike head_dim, norm gains away from zero. ``tiny``: embeddings, q/k and block outputs scaled down, so that
    every RMSNorm's epsilon matters (pre-norms, post-norms and Gemma 3's q/k norms)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        query_pre_attn_scalar=10,
        sliding_window=5,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5 if tiny else 1e-6,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        final_logit_softcapping=4.0,
        attn_logit_softcapping=3.0,
    )
    if version == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 50.0}))
    else:
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 20.0},
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        }
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, layer_types=GEMMA3_LAYER_TYPES, rope_parameters=rope))
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # (1 + w): gains away from 1, some below zero
                p.copy_(torch.randn_like(p) * 0.7)
            if tiny and any(k in name for k in ("embed_tokens", "q_proj", "k_proj", "o_proj", "down_proj")):
                p.mul_(0.01)
    for p in model.parameters():  # the parameters only: Gemma keeps its embedding scale and RoPE buffers float32
        p.data = p.data.to(dtype)
    return model


PLANS = {
    **WIDTH_STEPS,
    "layers_interleave": [{"num_layers": 6}],
    **{k: v for k, v in depth_steps(4).items() if k != "layers_interleave"},
    "all_axes": [
        {"mlp_width": 96},
        {"num_heads": {"to": 6, "num_key_value_heads": 3}},
        {"hidden_size": 72},
        {"num_layers": 6},
    ],
    "twice_each": [
        {"hidden_size": 60},
        {"mlp_width": 80},
        {"hidden_size": 72},
        {"num_layers": 5},
        {"num_layers": {"to": 6, "init": "copy"}},
    ],
}
GEMMA2_PLANS = {
    "head_dim": [{"head_dim": 24}],
    "head_dim_x3": [{"head_dim": 36}],
    "all_axes_head_dim": [
        {"hidden_size": 96},
        {"head_dim": 24},
        {"num_heads": 8},
        {"mlp_width": 80},
        {"num_layers": {"to": 6, "init": "copy"}},
    ],
}
CASES = [(v, name) for v in VERSIONS for name in PLANS] + [("gemma2", name) for name in GEMMA2_PLANS]


@pytest.mark.parametrize("version,plan", CASES, ids=[f"{v}-{p}" for v, p in CASES])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_exact(version, plan, tied):
    steps = {**PLANS, **GEMMA2_PLANS}[plan]
    for tiny in (False, True):
        src = tiny_gemma(version, tied=tied, tiny=tiny)
        grown = grow_model(src, steps, seed=1)
        assert type(grown) is type(src)
        assert_exact(src, grown)
        assert grown.config.tie_word_embeddings == tied
        assert len(grown.config.layer_types) == grown.config.num_hidden_layers


@pytest.mark.parametrize("version", VERSIONS)
def test_hidden_growth_keeps_embedding_scale_and_norm_epsilons_exact(version, monkeypatch):
    """Each correction of hidden growth is needed: the embedding values (sqrt(hidden) grows), the epsilon, and in
    Gemma 3 the q/k scale that keeps q_norm / k_norm exact under the rescaled epsilon."""
    from hf_growth.growth.adapters.gemma import Gemma3TextAdapter

    src = tiny_gemma(version, tied=False, tiny=True)
    plan = [{"hidden_size": 96}]
    grown = grow_model(src, plan)
    assert_exact(src, grown)
    assert grown.config.rms_norm_eps == pytest.approx(0.5e-5)
    embed = grown.model.embed_tokens
    assert embed.embed_scale.item() == pytest.approx(96**0.5)
    assert torch.allclose(embed.weight[:, :48] * 96**0.5, src.model.embed_tokens.weight * 48**0.5, rtol=1e-6)
    assert not embed.weight[:, 48:].any()
    norm = grown.model.layers[0].input_layernorm.weight  # (1 + w') = (1 + w) sqrt(h/h')
    assert torch.allclose(1 + norm[:48], (1 + src.model.layers[0].input_layernorm.weight) * 0.5**0.5, atol=1e-6)
    for module in grown.modules():  # the old epsilon is measurably off on tiny activations
        if hasattr(module, "eps"):
            module.eps = 1e-5
    assert max_logit_diff(src, grown, IDS) > 100 * TOL
    if version == "gemma3_text":
        q = grown.model.layers[0].self_attn.q_proj.weight[:, :48]
        assert torch.allclose(q, src.model.layers[0].self_attn.q_proj.weight * 0.5**0.5, rtol=1e-6)
        monkeypatch.setattr(Gemma3TextAdapter, "qk_norm", False)  # without the q/k compensation
        assert max_logit_diff(src, grow_model(src, plan), IDS) > 100 * TOL


def test_tied_final_norm_makes_up_for_the_scaled_embedding():
    src = tiny_gemma("gemma3_text", tied=True)
    grown = grow_model(src, [{"hidden_size": 96}])
    assert_exact(src, grown)
    assert grown.lm_head.weight.data_ptr() == grown.model.embed_tokens.weight.data_ptr()
    final = grown.model.norm.weight
    assert torch.equal(final[:48], src.model.norm.weight)  # the gains stay; new entries take their mean
    assert torch.allclose(final[48:], (1 + src.model.norm.weight).mean() - 1)
    untied = grow_model(tiny_gemma("gemma3_text", tied=False), [{"hidden_size": 96}])
    assert not torch.equal(untied.model.norm.weight[:48], src.model.norm.weight)


def test_new_layers_are_the_identity_and_take_the_layer_type_below():
    src = tiny_gemma("gemma3_text")
    grown = grow_model(src, [{"num_layers": {"to": 6, "where": [2, 5]}}])
    assert_exact(src, grown)
    types = grown.config.layer_types
    # old layers keep their types; new layer 2 follows old layer 1 (full), new layer 5 follows old layer 3
    assert types == [
        "sliding_attention",
        "full_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "sliding_attention",
    ]
    assert grown.model.layers[2].self_attn.sliding_window is None and grown.model.layers[5].self_attn.is_sliding
    new = grown.model.layers[2]
    assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
    for norm in (
        new.input_layernorm,
        new.post_attention_layernorm,
        new.pre_feedforward_layernorm,
        new.post_feedforward_layernorm,
        new.self_attn.q_norm,
        new.self_attn.k_norm,
    ):
        assert not norm.weight.any()  # w = 0: Gemma's gain 1
    assert new.self_attn.q_proj.weight.std() > 0
    midas = grow_model(src, [{"stack": {"to": 6, "block_size": 1, "where": "middle"}}])
    assert len(midas.config.layer_types) == 6 and midas.config.growth_history[-1]["exact"] is False
    for i, layer in enumerate(midas.model.layers):  # every layer keeps the type of the layer it copies
        j = next(
            j for j, old in enumerate(src.model.layers) if torch.equal(old.mlp.up_proj.weight, layer.mlp.up_proj.weight)
        )
        assert midas.config.layer_types[i] == src.config.layer_types[j], (i, j)


def test_head_dim_keeps_query_pre_attn_scalar_and_the_keys():
    src = tiny_gemma("gemma2")
    grown = grow_model(src, [{"head_dim": 24}])
    assert_exact(src, grown)
    assert grown.config.head_dim == 24 and grown.config.query_pre_attn_scalar == 10
    k_old, k_new = src.model.layers[0].self_attn.k_proj.weight, grown.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(k_new.view(2, 24, 48)[:, ::2][:, :6], k_old.view(2, 12, 48)[:, :6])  # RoPE pairs x2 apart
    assert not k_new.view(2, 24, 48)[:, 1::2].any()


@pytest.mark.parametrize(
    "version,plan,match",
    [
        (
            "gemma3_text",
            [{"head_dim": 24}],
            r"plan step 0 \(head_dim\): gemma3_text normalizes queries and keys per head "
            r"\(q_norm / k_norm over head_dim\).*saddle.*grow num_heads instead",
        ),
        ("gemma3_text", [{"head_dim": {"to": 24, "approximate": True}}], r"gemma3_text normalizes queries and keys"),
        ("gemma2", [{"head_dim": 18}], r"plan step 0 \(head_dim\): RoPE frequencies .* integer factor \(e\.g\. 24\)"),
        (
            "gemma2",
            [{"qk_dim": 24}],
            r"plan step 0 \(qk_dim\): gemma2 has one head_dim for q, k and v, so qk_dim cannot "
            r"grow alone: use `head_dim` \(both together, exact by an integer factor\)$",
        ),
        (
            "gemma3_text",
            [{"value_dim": 24}],
            r"plan step 0 \(value_dim\): gemma3_text has one head_dim .*grow num_heads instead",
        ),
        (
            "gemma2",
            [{"hidden_size": 50}],
            r"plan step 0 \(hidden_size\): the grown config is not a valid Gemma2Config: .*"
            r"The hidden size \(50\) is not a multiple of the number of attention heads",
        ),
        (
            "gemma3_text",
            [{"num_heads": {"to": 9, "num_key_value_heads": 3}}],
            r"not a valid Gemma3TextConfig: .*The hidden size \(48\) is not a multiple of the number of attention "
            r"heads \(9\)",
        ),
    ],
)
def test_refusals(version, plan, match):
    src = tiny_gemma(version)
    src.state_dict = lambda *a, **k: pytest.fail("a tensor was read")
    with pytest.raises(ValueError, match=match):
        grow_model(src, plan)


def test_save_load_round_trip(tmp_path):
    for version in VERSIONS:
        src = tiny_gemma(version)
        grown = grow_model(src, PLANS["all_axes"], seed=4)
        grown.save_pretrained(tmp_path / version)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / version).eval()
        assert type(loaded) is type(src)
        assert loaded.config.growth_history == grown.config.growth_history
        assert loaded.config.layer_types == grown.config.layer_types
        assert max_logit_diff(grown, loaded) == 0.0 and max_logit_diff(src, loaded, IDS) <= TOL


STREAM_PLANS = {
    "gemma2": [
        {"mlp_width": 96},
        {"num_heads": {"to": 8, "num_key_value_heads": 4}},
        {"head_dim": 24},
        {"hidden_size": 96},
        {"num_layers": {"to": 6}},
        {"stack": {"to": 8, "block_size": 2}},
    ],
    "gemma3_text": [
        {"mlp_width": 96},
        {"num_heads": {"to": 6, "num_key_value_heads": 3}},
        {"hidden_size": 72},
        {"num_layers": {"to": 6, "where": [1, 4]}},
        {"num_layers": {"to": 7, "init": "copy"}},
    ],
}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("version", VERSIONS)
def test_streaming_is_bit_identical_to_in_memory(tmp_path, version, tied):
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.streaming import grow_checkpoint

    src = tiny_gemma(version, tied=tied)
    src.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    plan = STREAM_PLANS[version]
    streamed = grow_checkpoint(tmp_path / "src", plan, tmp_path / "stream", seed=3, max_shard_size="16KB", quiet=True)
    grown = grow_model(src, plan, seed=3, output_dir=tmp_path / "mem")
    tensors = SafetensorsSource(streamed)
    expected = {k: v for k, v in grown.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(tensors) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name
    for name in ("config.json", "README.md"):
        assert (streamed / name).read_bytes() == (tmp_path / "mem" / name).read_bytes(), name
    loaded = AutoModelForCausalLM.from_pretrained(streamed).eval()
    assert type(loaded) is type(src)
    if not any("stack" in step for step in plan):
        assert_exact(src, loaded)


def test_config_json_without_layer_types_keeps_the_old_layers_types(tmp_path):
    """A config.json that leaves layer_types to the config class (sliding_window_pattern): the grown config spells
    them out, so the config class does not derive them again for the grown stack."""
    from hf_growth.growth.streaming import grow_checkpoint

    src = tiny_gemma("gemma3_text")
    src.config.layer_types = ["sliding_attention"] * 3 + ["full_attention"]  # what pattern 4 gives 4 layers
    src.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    del config["layer_types"]
    config["sliding_window_pattern"] = 4
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    out = grow_checkpoint(tmp_path / "src", [{"num_layers": {"to": 6, "where": [0, 5]}}], tmp_path / "out", quiet=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["layer_types"] == ["sliding_attention"] * 4 + ["full_attention"] * 2
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert_exact(src, loaded)


@pytest.mark.parametrize("version", VERSIONS)
def test_new_weights_learn(version):
    plan = GEMMA2_PLANS["all_axes_head_dim"] if version == "gemma2" else PLANS["all_axes"]
    grown = grow_model(tiny_gemma(version, tied=False), plan)
    masks = new_parameter_masks(grown)
    initial = {n: p.detach().clone() for n, p in grown.named_parameters()}
    seen = _train_steps(grown)
    checked = 0
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            continue
        new = torch.ones_like(p, dtype=torch.bool) if mask == "all" else mask.clone()
        if name == "model.embed_tokens.weight":
            new[grown.config.pad_token_id] = False  # nn.Embedding's padding row never has a gradient
        assert seen[name][new].all(), f"{name}: a new entry never had a gradient"
        assert torch.isfinite(p).all(), name
        was_zero = new & (initial[name] == 0)
        assert (p.detach()[was_zero] != 0).all(), f"{name}: a zero-initialised new entry stayed zero"
        checked += 1
    assert checked > 10


def test_freeze_original_trains_only_new_entries():
    grown = grow_model(tiny_gemma("gemma3_text"), PLANS["all_axes"])
    counts = freeze_original(grown)
    assert counts["masked"] > 0 and counts["whole"] > 0
    initial = {n: p.detach().clone() for n, p in grown.named_parameters()}
    masks = new_parameter_masks(grown)
    _train_steps(grown, steps=2)
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            assert not p.requires_grad and torch.equal(p, initial[name]), name
        elif mask != "all":
            assert torch.equal(p.detach()[~mask], initial[name][~mask]), name


@pytest.mark.parametrize("version", VERSIONS)
def test_bf16_is_exact_to_bf16_round_off(version):
    """bfloat16: every axis but the hidden size copies bits and zeros (bit-exact logits); hidden growth rounds the
    rescaled embedding and gains (and Gemma 3's q/k) to bfloat16, and Gemma rounds sqrt(hidden) to bfloat16 itself:
    exact to bfloat16 round-off."""
    src = tiny_gemma(version, dtype=torch.bfloat16)
    grown = grow_model(src, PLANS["all_axes"])
    assert {p.dtype for p in grown.parameters()} == {torch.bfloat16}
    assert grown.config.dtype == torch.bfloat16
    assert max_logit_diff(src, grown) < 0.05 and max_logit_diff(src, grown, IDS) < 0.05  # measured 0.01 - 0.04
    no_hidden = grow_model(src, [step for step in PLANS["all_axes"] if "hidden_size" not in step])
    assert max_logit_diff(src, no_hidden) == 0.0 and max_logit_diff(src, no_hidden, IDS) == 0.0
