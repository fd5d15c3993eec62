"""Mistral (sliding window), Qwen3 (per-head q/k RMSNorm) and Phi-3 (fused qkv_proj and gate_up_proj): every
exact axis on tiny random models (random and tiny-activation inputs), streaming bit-identical to in-memory
growth, save / from_pretrained round trips, freeze_original, the new weights' gradients and every refusal."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from growth_testing import HEAD_DIM_STEPS, WIDTH_STEPS, depth_steps, tiny_inputs
from growth_testing import train_steps as _train_steps
from growth_testing import worst_logit_diff as worst_diff
from transformers import AutoModelForCausalLM

from hf_growth.growth import grow_model
from hf_growth.growth.freeze import freeze_original, new_parameter_masks
from hf_growth.growth.io import SafetensorsSource
from hf_growth.growth.verify import max_logit_diff

TOL = 1e-5
ARCHS = ["mistral", "qwen3", "phi3"]


def tiny_model(arch: str, *, tied=False, bias=False, tiny=False, layers=2, seed=0, dtype=torch.float32, **extra):
    """A tiny random model whose norms, biases and q/k norms are away from their initial values; ``tiny``: hidden
    states (and queries / keys) of about 1e-3, where RMSNorm's epsilon matters."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5 if tiny else 1e-6,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    if arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        model = MistralForCausalLM(MistralConfig(**common, head_dim=12, sliding_window=6, **extra))
    elif arch == "qwen3":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config = Qwen3Config(
            **common,
            head_dim=12,
            attention_bias=bias,
            use_sliding_window=True,
            sliding_window=6,
            max_window_layers=1,
            **extra,
        )
        model = Qwen3ForCausalLM(config)
    elif arch == "phi3":
        from transformers import Phi3Config, Phi3ForCausalLM

        model = Phi3ForCausalLM(Phi3Config(**common, **extra))
    else:
        raise AssertionError(arch)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # make biases and gains matter
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
        if tiny:  # and queries / keys of about 1e-3 too, where Qwen3's q/k norms' epsilon matters
            model.model.embed_tokens.weight.mul_(0.05)
            for name, p in model.named_parameters():
                if any(f"{x}_proj" in name for x in ("q", "k", "qkv")):
                    p.mul_(0.01)
    return model.to(dtype)


#: the worst |Δlogits| measured per architecture (printed at the end of the module: `pytest -s`)
WORST: dict[str, float] = {}


def assert_exact(arch, src, grown):
    diff = worst_diff(src, grown)
    WORST[arch] = max(WORST.get(arch, 0.0), diff)
    assert diff <= TOL, diff


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    for arch, diff in sorted(WORST.items()):
        print(f"\nworst max |Δlogits| {arch}: {diff:.3g}")


PLANS = {
    **WIDTH_STEPS,
    **HEAD_DIM_STEPS,
    **depth_steps(2),
    "all_axes": [
        {"mlp_width": 96},
        {"num_heads": {"to": 6, "num_key_value_heads": 3}},
        {"hidden_size": 72},
        {"head_dim": 24},
        {"num_layers": 3},
    ],
    "all_axes_twice": [
        {"hidden_size": 96},
        {"head_dim": 24},
        {"num_heads": 8},
        {"mlp_width": 80},
        {"num_layers": {"to": 4, "init": "copy"}},
        {"hidden_size": 120},
        {"mlp_width": 96},
    ],
}


@pytest.mark.parametrize("plan", list(PLANS.values()), ids=list(PLANS))
@pytest.mark.parametrize("arch", ARCHS)
def test_exact_on_every_axis(arch, plan):
    for tied, bias, tiny in ((False, False, False), (True, True, True)):
        src = tiny_model(arch, tied=tied, bias=bias, tiny=tiny)
        grown = grow_model(src, plan, seed=1)
        assert type(grown) is type(src)
        assert grown.config.tie_word_embeddings == tied
        assert_exact(arch, src, grown)


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_growth_keeps_the_head_size_and_the_window(arch):
    src = tiny_model(arch)
    grown = grow_model(src, [{"hidden_size": 96}])
    attn = grown.model.layers[0].self_attn
    assert attn.head_dim == 12 and grown.config.head_dim == 12
    assert grown.config.sliding_window == src.config.sliding_window
    assert_exact(arch, src, grown)


@pytest.mark.parametrize("arch", ARCHS)
def test_stack_copies_layers(arch):
    src = tiny_model(arch, layers=4)
    grown = grow_model(src, [{"stack": {"to": 8, "block_size": 1, "where": "middle"}}])
    assert grown.config.num_hidden_layers == 8 and grown.config.growth_history[-1]["exact"] is False
    copies = grown.config.growth_history[-1]["copied_blocks"]
    for block in copies:
        for offset, layer in enumerate(block["layers"]):
            new = block["inserted_at"] + offset
            for (name, a), (_, b) in zip(
                grown.model.layers[new].named_parameters(), src.model.layers[layer].named_parameters()
            ):
                assert torch.equal(a, b), name


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_with_plain_from_pretrained(arch, tmp_path):
    src = tiny_model(arch, bias=True)
    grown = grow_model(src, PLANS["all_axes"], seed=2)
    grown.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(src)
    assert loaded.config.growth_history == grown.config.growth_history
    assert max_logit_diff(grown, loaded) == 0.0 and max_logit_diff(grown, loaded, tiny_inputs()) == 0.0
    assert_exact(arch, src, loaded)


# ------------------------------------------------------------------------------------------ streaming
def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


STREAM_PLANS = {
    "all_axes": PLANS["all_axes"] + [{"stack": {"to": 5, "block_size": 1}}],
    "all_axes_twice": PLANS["all_axes_twice"],
    "layers_positions": PLANS["layers_positions"],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("plan", list(STREAM_PLANS))
@pytest.mark.parametrize("arch", ARCHS)
def test_streaming_is_bit_identical_to_in_memory(arch, plan, dtype, tmp_path):
    src_model = tiny_model(arch, bias=True, tied=plan == "all_axes_twice", dtype=dtype)
    src = tmp_path / "src"
    src_model.save_pretrained(src, max_shard_size="8KB")
    before = _digest(src)
    out = grow_model(
        str(src), STREAM_PLANS[plan], output_dir=tmp_path / "stream", seed=3, max_shard_size="6KB", quiet=True
    )
    assert _digest(src) == before  # the source is never modified
    grown = grow_model(src_model, STREAM_PLANS[plan], seed=3, output_dir=tmp_path / "mem")
    streamed, expected = SafetensorsSource(out), grown.state_dict()
    if grown.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    assert set(streamed) == set(expected)
    for name, tensor in expected.items():
        assert streamed[name].dtype == tensor.dtype and torch.equal(streamed[name], tensor), name
    for name in ("config.json", "README.md"):  # byte for byte the in-memory path's files
        assert (out / name).read_bytes() == (tmp_path / "mem" / name).read_bytes(), name
    card = (out / "README.md").read_text()
    assert all(f"`{next(iter(step))}`" in card for step in STREAM_PLANS[plan])
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
    assert type(loaded) is type(src_model)
    if dtype == torch.float32 and plan != "all_axes":  # (stacking changes the function by design)
        assert_exact(arch, src_model, loaded)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_json_without_defaults_grows_like_the_config_class(arch, tmp_path):
    """A config.json that leaves keys at their defaults (the Hub's usual case): the adapter fills them in the way
    the config class does, and the streamed model is the in-memory one."""
    src_model = tiny_model(arch)
    src = tmp_path / "src"
    src_model.save_pretrained(src)
    data = json.loads((src / "config.json").read_text())
    defaults = src_model.config_class().to_dict()
    for key in list(data):
        if key not in ("model_type", "architectures") and (data[key] == defaults.get(key) or key == "layer_types"):
            del data[key]
    (src / "config.json").write_text(json.dumps(data))
    plan = [{"mlp_width": 96}, {"hidden_size": 72}, {"num_layers": 3}]
    out = grow_model(str(src), plan, output_dir=tmp_path / "out", seed=3, quiet=True)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = grow_model(src_model, plan, seed=3)
    assert max_logit_diff(reference, loaded) == 0.0


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("arch", ARCHS)
def test_new_weights_get_gradients(arch):
    src = tiny_model(arch, bias=True)
    grown = grow_model(src, PLANS["all_axes_twice"])
    masks = new_parameter_masks(grown)
    seen = _train_steps(grown)
    checked = 0
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            continue
        new = torch.ones_like(p, dtype=torch.bool) if mask == "all" else mask
        assert seen[name][new].all(), f"{name}: a new entry never had a gradient"
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_original_trains_only_new_entries(arch):
    src = tiny_model(arch)
    grown = grow_model(src, PLANS["all_axes"])
    counts = freeze_original(grown)
    assert counts["whole"] > 0 and counts["masked"] > 0
    initial = {n: p.detach().clone() for n, p in grown.named_parameters()}
    masks = new_parameter_masks(grown)
    _train_steps(grown, steps=2)
    for name, p in grown.named_parameters():
        mask = masks[name]
        if mask is None:
            assert not p.requires_grad and torch.equal(p, initial[name]), name
        elif mask != "all":
            assert torch.equal(p.detach()[~mask], initial[name][~mask]), name


# ------------------------------------------------------------------------------------------ refusals
ONE_HEAD_DIM = (
    "stock {arch} has one head_dim for q, k and v, so {kind} cannot grow alone: use `head_dim` (both together)"
)
REFUSALS = {
    "mistral": [
        ({}, [{"qk_dim": 24}], "plan step 0 (qk_dim): " + ONE_HEAD_DIM.format(arch="mistral", kind="qk_dim")),
        ({}, [{"value_dim": 24}], "plan step 0 (value_dim): " + ONE_HEAD_DIM.format(arch="mistral", kind="value_dim")),
        (
            {},
            [{"head_dim": 18}],
            "plan step 0 (head_dim): RoPE frequencies theta^(-2i/d) and the rotate-half pairing "
            "depend on the head size: growing 12 -> 18 is exact only by an integer factor (e.g. 24); set "
            "`approximate: true` to keep old pairs in place and measure the error",
        ),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
            [{"head_dim": 24}],
            "plan step 0 (head_dim): RoPE type 'yarn' depends on the head size in a way an index placement cannot "
            "keep; exact head-size growth supports default, linear, llama3. Set `approximate: true` to do it anyway "
            "and measure the error",
        ),
    ],
}
REFUSALS["qwen3"] = [(extra, plan, message.replace("mistral", "qwen3")) for extra, plan, message in REFUSALS["mistral"]]
LONGROPE = {
    "rope_type": "longrope",
    "rope_theta": 1e4,
    "short_factor": [1.0, 1.5, 2.0, 1.0, 1.0, 3.0],
    "long_factor": [2.0] * 6,
}
REFUSALS["phi3"] = REFUSALS["mistral"][:3] + [
    (
        {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
        [{"head_dim": 24}],
        "plan step 0 (head_dim): partial rotary embeddings are not supported for head-size growth; "
        "set `approximate: true` to do it anyway and measure the error",
    ),
    (
        {"rope_parameters": LONGROPE},
        [{"head_dim": 24}],
        "plan step 0 (head_dim): RoPE type 'longrope' depends on the head size in a way an index placement cannot "
        "keep; exact head-size growth supports default, linear, llama3. Set `approximate: true` to do it anyway and "
        "measure the error",
    ),
    (
        {"rope_parameters": LONGROPE},
        [{"mlp_width": 96}, {"hidden_size": 96}],
        "plan step 1 (hidden_size): Phi3Config checks longrope's short_factor / long_factor lengths against "
        "hidden_size / num_attention_heads, not head_dim, so with longrope the grown model needs hidden_size = "
        "num_attention_heads x head_dim (4 x 12 = 48), got 96: grow hidden_size and num_heads by the same factor",
    ),
]
REFUSALS["phi3"] = [(extra, plan, message.replace("mistral", "phi3")) for extra, plan, message in REFUSALS["phi3"]]


@pytest.mark.parametrize(
    "arch,extra,plan,message", [(arch, *case) for arch, cases in REFUSALS.items() for case in cases]
)
def test_refusals_say_why_and_nothing_is_read(arch, extra, plan, message):
    src = tiny_model(arch, **extra)
    src.state_dict = lambda *a, **k: pytest.fail("a tensor was read")  # noqa: E731
    with pytest.raises(ValueError) as error:
        grow_model(src, plan)
    assert str(error.value) == message


# ------------------------------------------------------------------------------------------ qwen3's q/k norms
def test_qwen3_hidden_growth_scales_q_and_k_for_the_shared_epsilon():
    src = tiny_model("qwen3", tiny=True, bias=True)
    grown = grow_model(src, [{"hidden_size": 96}])
    assert grown.config.rms_norm_eps == pytest.approx(0.5e-5)
    old, new = src.model.layers[0].self_attn, grown.model.layers[0].self_attn
    assert torch.equal(new.q_norm.weight, old.q_norm.weight) and torch.equal(new.k_norm.weight, old.k_norm.weight)
    scale = math.sqrt(0.5)
    assert torch.allclose(new.q_proj.weight[:, :48], old.q_proj.weight * scale)
    assert torch.allclose(new.k_proj.bias, old.k_proj.bias * scale)
    assert_exact("qwen3", src, grown)
    with torch.no_grad():  # without the scaling the q/k norms see the new epsilon: measurably off
        for a, b in zip(grown.model.layers, src.model.layers):
            a.self_attn.q_proj.weight[:, :48] = b.self_attn.q_proj.weight
            a.self_attn.k_proj.weight[:, :48] = b.self_attn.k_proj.weight
            a.self_attn.q_proj.bias.copy_(b.self_attn.q_proj.bias)
            a.self_attn.k_proj.bias.copy_(b.self_attn.k_proj.bias)
    assert max_logit_diff(src, grown, tiny_inputs()) > 10 * TOL


def test_qwen3_head_dim_copies_dimensions_and_zeroes_new_key_gains():
    src = tiny_model("qwen3", tiny=True)
    grown = grow_model(src, [{"head_dim": 24}])
    old, new = src.model.layers[0].self_attn, grown.model.layers[0].self_attn
    # old dims at 2i (first RoPE half) and 12 + 2i (second half); the new dim 2i + 1 copies old dim i
    first, second = torch.arange(6) * 2, 12 + torch.arange(6) * 2
    q_old, q_new = old.q_proj.weight.view(4, 12, 48), new.q_proj.weight.view(4, 24, 48)
    assert torch.equal(q_new[:, first], q_old[:, :6]) and torch.equal(q_new[:, first + 1], q_old[:, :6])
    assert torch.equal(q_new[:, second + 1], q_old[:, 6:])
    assert torch.equal(new.q_norm.weight[first + 1], old.q_norm.weight[:6])
    assert (new.k_norm.weight[first + 1] == 0).all() and (new.k_norm.weight[second + 1] == 0).all()
    assert torch.allclose(new.k_norm.weight[first], old.k_norm.weight[:6] * math.sqrt(2))
    assert_exact("qwen3", src, grown)
    with pytest.warns(UserWarning, match="approximate growth"):
        approx = grow_model(src, [{"head_dim": {"to": 18, "approximate": True}}])
    assert approx.config.growth_history[-1]["exact"] is False


def test_qwen3_layer_types_follow_their_layers(tmp_path):
    src = tiny_model("qwen3")
    assert src.config.layer_types == ["full_attention", "sliding_attention"]
    plan = [{"num_layers": {"to": 3, "where": [0]}}]  # Qwen3Config's rule would make layer 1 sliding
    grown = grow_model(src, plan, seed=3)
    assert grown.config.layer_types == ["full_attention", "full_attention", "sliding_attention"]
    assert_exact("qwen3", src, grown)
    path = tmp_path / "src"
    src.save_pretrained(path)
    data = json.loads((path / "config.json").read_text())
    del data["layer_types"]  # as many Qwen3 config.json files on the Hub: the rule gives them
    (path / "config.json").write_text(json.dumps(data))
    out = grow_model(str(path), plan, output_dir=tmp_path / "out", seed=3, quiet=True)
    assert json.loads((out / "config.json").read_text())["layer_types"] == grown.config.layer_types
    assert max_logit_diff(grown, AutoModelForCausalLM.from_pretrained(out)) == 0.0


# ------------------------------------------------------------------------------------------ phi3's fused tensors
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_phi3_longrope_and_partial_rotary_grow_exactly_where_the_head_size_stays(partial, tmp_path):
    src = tiny_model(
        "phi3",
        tiny=True,
        rope_parameters={
            **LONGROPE,
            "partial_rotary_factor": partial,
            "short_factor": LONGROPE["short_factor"][: int(6 * partial)],
            "long_factor": LONGROPE["long_factor"][: int(6 * partial)],
        },
        max_position_embeddings=64,
        original_max_position_embeddings=16,
    )
    plan = [
        {"hidden_size": 96},
        {"num_heads": {"to": 8, "num_key_value_heads": 4}},
        {"mlp_width": 96},
        {"num_layers": 3},
    ]
    grown = grow_model(src, plan)
    assert grown.config.head_dim == 12 and grown.config.rope_parameters["rope_type"] == "longrope"
    assert_exact("phi3", src, grown)
    long = torch.arange(64).repeat(1, 1)[:, :40]  # past original_max_position_embeddings: the long factors
    assert max_logit_diff(src, grown, long) <= TOL


def test_phi3_fused_parts_grow_like_separate_tensors():
    src = tiny_model("phi3")
    grown = grow_model(src, [{"mlp_width": 96}, {"num_heads": {"to": 6, "num_key_value_heads": 3}}])
    gate_up_old, gate_up = src.model.layers[0].mlp.gate_up_proj.weight, grown.model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(gate_up[:64], gate_up_old[:64]) and torch.equal(gate_up[96:160], gate_up_old[64:])
    assert not torch.equal(gate_up[64:96], gate_up[160:])  # gate and up draw their new rows from their own seeds
    qkv = grown.model.layers[0].self_attn.qkv_proj.weight
    assert qkv.shape == (6 * 12 + 2 * 3 * 12, 48)
    q, k, v = qkv.split([72, 36, 36])
    _, old_k, old_v = src.model.layers[0].self_attn.qkv_proj.weight.split([48, 24, 24])
    assert torch.equal(k[:24], old_k) and torch.equal(v[:24], old_v)
    assert not torch.equal(k[24:], v[24:]) and not torch.equal(q[-12:], k[24:])
    masks = new_parameter_masks(grown)
    assert (
        masks["model.layers.0.mlp.gate_up_proj.weight"][:, 0].tolist()
        == [False] * 64 + [True] * 32 + [False] * 64 + [True] * 32
    )
