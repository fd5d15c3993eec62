"""ResFormer / SVFormer: config validation, every variant's forward/backward, cache == no cache, save/load,
remote code without hf_growth, none == Llama, Llama -> ResFormer conversion, lazy registration.

Tests marked ``compat`` also run under transformers 5.17 (``make test-compat``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hf_growth  # noqa: F401  (registers the Auto classes)
from hf_growth.resformer.configuration_resformer import ResFormerConfig
from hf_growth.resformer.convert import convert_llama_to_resformer, resformer_config_from_llama
from hf_growth.resformer.modeling_resformer import (
    ResFormerForCausalLM,
    ResFormerModel,
    kv_cache_bytes,
)

compat = pytest.mark.compat
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["none", "identity", "constant", "learnable", "learnable_plus", "sparse", "svformer"]
ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def tiny_kwargs(**overrides):
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(ROPE),
        initializer_range=0.2,  # large enough that greedy decoding is not decided by ties
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return kwargs


def tiny_config(variant: str = "identity", **overrides) -> ResFormerConfig:
    if variant == "sparse":
        overrides.setdefault("value_residual_layers", [2])
    return ResFormerConfig(value_residual=variant, **tiny_kwargs(**overrides))


def tiny_model(variant: str = "identity", seed: int = 0, **overrides) -> ResFormerForCausalLM:
    torch.manual_seed(seed)
    model = ResFormerForCausalLM(tiny_config(variant, **overrides)).eval()
    with torch.no_grad():  # move learnable lambdas off their init so that tests see them
        for name, param in model.named_parameters():
            if "lambda_" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**tiny_kwargs(**overrides))).eval()


def left_padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 97, (3, 6))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0
    ids[2, :4], mask[2, :4] = 0, 0
    return ids, mask


# -------------------------------------------------------------------------------------------- config
@compat
def test_config_presets_and_overrides():
    assert tiny_config("identity").resolved_value_residual_lambda() == (0.5, 0.5)
    assert tiny_config("constant").resolved_value_residual_lambda() == (2.0, 1.0)
    assert tiny_config("learnable").resolved_value_residual_lambda() == (0.5, 0.5)
    assert tiny_config("svformer").resolved_value_residual_lambda() == (1.0, 0.0)
    assert tiny_config("sparse").resolved_value_residual_lambda() == (5.0, 1.0)
    assert tiny_config("constant", value_residual_lambda=(3, 1)).resolved_value_residual_lambda() == (3.0, 1.0)
    assert tiny_config("identity").resolved_value_residual_layers() == [1, 2]
    assert tiny_config("none").resolved_value_residual_layers() == []
    assert tiny_config("sparse", value_residual_layers=(2, 1)).value_residual_layers == [1, 2]
    config = tiny_config(head_dim=16, qk_head_dim=12)
    assert (config.head_dim, config.qk_head_dim, config.v_head_dim) == (16, 12, 16)


@compat
def test_config_json_round_trip(tmp_path):
    config = tiny_config("sparse", value_residual_layers=[1, 2], value_residual_lambda=(4, 0.5), qk_head_dim=10)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "resformer"
    assert saved["auto_map"]["AutoConfig"] == "configuration_resformer.ResFormerConfig"
    assert (tmp_path / "configuration_resformer.py").is_file()
    from transformers import AutoConfig

    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is ResFormerConfig
    for key in ("value_residual", "value_residual_layers", "value_residual_lambda", "qk_head_dim", "v_head_dim"):
        assert getattr(loaded, key) == getattr(config, key), key
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.to_dict()) == strip(config.to_dict())


@compat
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(value_residual="dense"), "Unknown value_residual 'dense'"),
        (dict(value_residual="sparse"), "sparse' needs value_residual_layers"),
        (dict(value_residual_layers=[0, 1]), "must not contain 0"),
        (dict(value_residual_layers=[3]), "index 3 is out of range"),
        (dict(value_residual_layers=[-1]), "index -1 is out of range"),
        (dict(num_attention_heads=4, num_key_value_heads=3), r"num_attention_heads \(4\) must be divisible"),
        (dict(qk_head_dim=7), r"qk_head_dim \(7\) must be even"),
        (dict(value_residual_lambda=(1.0,)), "must be \\(lambda_first, lambda_own\\)"),
        (dict(value_residual="svformer", value_residual_lambda=(1, 1)), "cannot be set with value_residual='svformer'"),
        (dict(value_residual="none", value_residual_layers=[1]), "no effect with value_residual='none'"),
    ],
)
def test_config_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResFormerConfig(**tiny_kwargs(**kwargs))


# -------------------------------------------------------------------------------------------- model
@compat
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_every_variant(variant):
    model = tiny_model(variant).train()
    ids, mask = left_padded_batch()
    out = model(ids, attention_mask=mask, labels=ids)
    assert out.logits.shape == (3, 6, 97)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    attn = [layer.self_attn for layer in model.model.layers]
    assert all(a.q_proj.weight.grad is not None and a.q_proj.weight.grad.abs().sum() > 0 for a in attn)
    if variant == "svformer":
        assert hasattr(attn[0], "v_proj") and not hasattr(attn[1], "v_proj") and not hasattr(attn[2], "v_proj")
        assert attn[0].v_proj.weight.grad.abs().sum() > 0  # V_0 feeds every layer
    else:
        assert all(hasattr(a, "v_proj") for a in attn)
    lambdas = {n: p for n, p in model.named_parameters() if "lambda_" in n}
    expected = {
        "learnable": {f"model.layers.{i}.self_attn.lambda_{k}" for i in (1, 2) for k in ("first", "own")},
        "learnable_plus": {"model.lambda_scale"}
        | {f"model.layers.{i}.self_attn.lambda_{k}" for i in (1, 2) for k in ("logit", "own")},
    }.get(variant, set())
    assert set(lambdas) == expected
    for name, param in lambdas.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@compat
def test_value_residual_formula_identity_and_sparse():
    """V'_n = lambda_first * V_0 + lambda_own * V_n, checked against a hand-computed layer 1 / layer 2."""
    captured = {}

    def run(variant, **kw):
        model = tiny_model(variant, **kw)
        attn = [layer.self_attn for layer in model.model.layers]
        hooks = [
            a.v_proj.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o)) for k, a in enumerate(attn)
        ]
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad():
            model(ids)
        for hook in hooks:
            hook.remove()
        return model

    model = run("constant", value_residual_lambda=(3.0, 0.25))
    v0 = captured[0].view(1, 4, 2, 8).transpose(1, 2)
    mixed = model.model.layers[1].self_attn.mix_values(captured[1].view(1, 4, 2, 8).transpose(1, 2), v0)
    torch.testing.assert_close(mixed, 3.0 * v0 + 0.25 * captured[1].view(1, 4, 2, 8).transpose(1, 2), rtol=0, atol=0)
    sparse = tiny_model("sparse", value_residual_layers=[2])
    assert [layer.self_attn.mixes for layer in sparse.model.layers] == [False, False, True]


@compat
def test_none_equals_llama():
    llama = tiny_llama()
    resformer = ResFormerForCausalLM(tiny_config("none")).eval()
    assert resformer.load_state_dict(llama.state_dict()) is not None
    ids, mask = left_padded_batch()
    with torch.no_grad():
        a = llama(ids, attention_mask=mask, output_hidden_states=True)
        b = resformer(ids, attention_mask=mask, output_hidden_states=True)
    diff = (a.logits - b.logits).abs().max().item()
    print(f"none vs Llama max|dlogits| = {diff:.3g}")
    assert diff <= 1e-5
    assert len(a.hidden_states) == len(b.hidden_states) == 4
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


@compat
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_cache_equals_no_cache_left_padding(variant):
    model = tiny_model(variant)
    ids, mask = left_padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)
    assert len(set(with_cache[:, 6:].flatten().tolist())) > 1  # not a degenerate constant sequence
    # incremental decoding reproduces the full forward's logits position by position
    full = model(with_cache, attention_mask=torch.cat([mask, torch.ones(3, 8, dtype=mask.dtype)], 1)).logits
    out = model(ids, attention_mask=mask, use_cache=True)
    cache = out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values
    running_mask = mask
    for step in range(3):
        token = with_cache[:, 6 + step : 7 + step]
        running_mask = torch.cat([running_mask, torch.ones_like(token)], 1)
        step_out = model(token, attention_mask=running_mask, past_key_values=cache, use_cache=True)
        torch.testing.assert_close(step_out.logits[:, -1], full[:, 6 + step], rtol=0, atol=1e-5)


@compat
def test_svformer_cache_stores_v0_once():
    ids = torch.randint(3, 97, (2, 16))
    bytes_ = {}
    for variant in ("identity", "svformer", "none"):
        model = tiny_model(variant, num_hidden_layers=4)
        with torch.no_grad():
            out = model(ids, use_cache=True)
        cache = out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values
        bytes_[variant] = kv_cache_bytes(cache)
        if variant == "svformer":
            assert [tuple(layer.values.shape) for layer in cache.layers] == [(2, 2, 16, 8)] + [(2, 2, 16, 0)] * 3
            assert all(tuple(layer.keys.shape) == (2, 2, 16, 8) for layer in cache.layers)
    per_tensor = 2 * 2 * 16 * 8 * 4  # batch * kv heads * tokens * head_dim * fp32 bytes
    assert bytes_["identity"] == bytes_["none"] == 4 * 2 * per_tensor
    assert bytes_["svformer"] == (4 + 1) * per_tensor  # 4 key tensors + V_0 once
    print(
        f"SVFormer KV cache: {bytes_['svformer']} B vs {bytes_['identity']} B "
        f"({bytes_['svformer'] / bytes_['identity']:.3f}x; (L+1)/(2L) for L=4)"
    )


@compat
def test_separate_qk_and_v_head_dims_with_cache():
    model = tiny_model("learnable", head_dim=8, qk_head_dim=12, v_head_dim=6)
    attn = model.model.layers[1].self_attn
    assert attn.q_proj.out_features == 4 * 12 and attn.k_proj.out_features == 2 * 12
    assert attn.v_proj.out_features == 2 * 6 and attn.o_proj.in_features == 4 * 6
    assert model.model.rotary_emb.inv_freq.numel() == 6
    ids, mask = left_padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))


@compat
@pytest.mark.parametrize("variant", ["learnable_plus", "svformer"])
def test_sdpa_equals_eager(variant):
    model = tiny_model(variant)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("sdpa")
        sdpa = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(eager[mask.bool()], sdpa[mask.bool()], rtol=0, atol=1e-5)


@compat
def test_outputs_loss_and_logits_to_keep():
    model = tiny_model("learnable")
    model.set_attn_implementation("eager")
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        out = model(ids, labels=ids, output_hidden_states=True, output_attentions=True)
        last = model(ids, logits_to_keep=1).logits
    assert len(out.hidden_states) == 4 and out.hidden_states[0].shape == (2, 7, 32)
    assert len(out.attentions) == 3 and out.attentions[1].shape == (2, 4, 7, 7)
    torch.testing.assert_close(out.attentions[2].sum(-1), torch.ones(2, 4, 7))
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, manual)
    assert last.shape == (2, 1, 97)
    torch.testing.assert_close(last[:, 0], out.logits[:, -1], rtol=0, atol=1e-6)
    base = ResFormerModel(tiny_config("learnable"))
    assert base(ids).last_hidden_state.shape == (2, 7, 32)


@compat
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_same_gradients(use_reentrant):
    ids = torch.randint(3, 97, (2, 7))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("learnable_plus").train()
        if checkpointing:
            kwargs = {"use_reentrant": use_reentrant}
            if hasattr(model, "activation_checkpointing_enable"):  # newer 5.x; the old name goes in v6
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            assert model.model.layers[1].gradient_checkpointing
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


@compat
@pytest.mark.parametrize("variant", ["learnable", "learnable_plus", "svformer"])
def test_save_load_round_trip_exact(tmp_path, variant):
    from transformers import AutoModelForCausalLM

    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_resformer.ResFormerConfig",
        "AutoModel": "modeling_resformer.ResFormerModel",
        "AutoModelForCausalLM": "modeling_resformer.ResFormerForCausalLM",
    }
    assert (tmp_path / "modeling_resformer.py").is_file() and (tmp_path / "configuration_resformer.py").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ResFormerForCausalLM
    original = model.state_dict()
    reloaded = loaded.state_dict()
    assert set(original) == set(reloaded)
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@compat
def test_init_weights_sets_lambdas_from_config():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("learnable", value_residual_lambda=(0.25, 2.0)))
    attn = model.model.layers[2].self_attn
    assert attn.lambda_first.item() == 0.25 and attn.lambda_own.item() == 2.0
    plus = AutoModelForCausalLM.from_config(tiny_config("learnable_plus", value_residual_lambda=(0.5, 1.0)))
    assert plus.model.lambda_scale.item() == 1.0  # 0.5 * two mixing layers
    assert plus.model.layers[1].self_attn.lambda_logit.item() == 0.0
    lambdas = plus.model.value_residual_lambda_first()
    assert sorted(lambdas) == [1, 2] and all(v.item() == pytest.approx(0.5) for v in lambdas.values())


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_growth" or name.startswith("hf_growth."):
                raise ImportError("hf_growth is blocked in this test")
    sys.meta_path.insert(0, Block())
    sys.path = [p for p in sys.path if p not in ("", ".", REPO)]
    try:
        import hf_growth
        raise SystemExit("hf_growth must not be importable here")
    except ImportError:
        pass
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    result = {}
    for path in PATHS:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
        saved = load_file(path + "/expected.safetensors")
        ids = saved["ids"]
        with torch.no_grad():
            logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
        diff = (logits - saved["logits"]).abs().max().item()
        result[path] = dict(module=type(model).__module__, diff=diff, generated=generated.tolist())
    print("RESULT" + json.dumps(result))
    """
)


@compat
@pytest.mark.slow
def test_remote_code_loads_without_hf_growth(tmp_path):
    paths, expected = [], {}
    ids = torch.randint(3, 97, (2, 7))
    for variant in ("learnable_plus", "svformer"):
        model = tiny_model(variant)
        path = tmp_path / variant
        model.save_pretrained(path)
        with torch.no_grad():
            save_file({"ids": ids, "logits": model(ids).logits.contiguous()}, str(path / "expected.safetensors"))
        expected[str(path)] = model.generate(
            ids, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None
        ).tolist()
        paths.append(str(path))
    script = f"REPO = {str(REPO)!r}\nPATHS = {paths!r}\n" + REMOTE_SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for path in paths:
        assert result[path]["module"].startswith("transformers_modules."), result[path]["module"]
        assert result[path]["diff"] == 0.0
        assert result[path]["generated"] == expected[path]


IMPORT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import transformers
    before = set(sys.modules)
    import hf_growth
    added = sorted(set(sys.modules) - before)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    config = AutoConfig.for_model("resformer", vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, value_residual="svformer")
    names = [type(config).__name__, type(AutoModelForCausalLM.from_config(config)).__name__,
             type(AutoModel.from_config(config)).__name__]
    print("RESULT" + json.dumps(dict(added=added, names=names)))
    """
)


@compat
def test_import_is_light_and_registers_lazily():
    """``import hf_growth`` (after transformers) imports only hf_growth's own small modules: no torch, no model
    code, no transformers module beyond what ``import transformers`` loaded; the Auto classes still resolve."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    print("modules added by import hf_growth:", result["added"])
    assert "hf_growth" in result["added"]
    assert [m for m in result["added"] if m != "hf_growth" and not m.startswith("hf_growth.")] == []
    heavy = {"hf_growth.resformer.modeling_resformer", "hf_growth.resformer.configuration_resformer"}
    assert heavy.isdisjoint(result["added"])
    assert result["names"] == ["ResFormerConfig", "ResFormerForCausalLM", "ResFormerModel"]


# -------------------------------------------------------------------------------------------- conversion
@compat
@pytest.mark.parametrize("variant", ["learnable", "learnable_plus"])
def test_convert_tiny_llama_exact(variant):
    llama = tiny_llama(num_hidden_layers=3, attention_bias=True, tie_word_embeddings=True)
    llama.config.quantization_config = {"quant_method": "gguf"}
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    resformer = convert_llama_to_resformer(llama, value_residual=variant)
    assert isinstance(resformer, ResFormerForCausalLM) and resformer.config.value_residual == variant
    assert getattr(resformer.config, "quantization_config", None) is None
    assert resformer.config.tie_word_embeddings and resformer.lm_head.weight is resformer.model.embed_tokens.weight
    ids, mask = left_padded_batch()
    with torch.no_grad():
        diff = (resformer(ids, attention_mask=mask).logits - llama(ids, attention_mask=mask).logits).abs().max().item()
    assert diff <= 1e-6
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(resformer.generate(ids, **kwargs), llama.generate(ids, **kwargs))
    after = llama.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the source is untouched
    assert resformer.model.embed_tokens.weight.data_ptr() != llama.model.embed_tokens.weight.data_ptr()
    if variant == "learnable":
        attn = resformer.model.layers[1].self_attn
        assert (attn.lambda_first.item(), attn.lambda_own.item()) == (0.0, 1.0)
    # still trainable: lambda_first (or the learnable_plus scale) gets a gradient at (0, 1)
    resformer.train()
    resformer(ids, labels=ids).loss.backward()
    name = "model.layers.1.self_attn.lambda_first" if variant == "learnable" else "model.lambda_scale"
    assert dict(resformer.named_parameters())[name].grad.abs().item() > 0


@compat
def test_convert_preserves_bf16_and_rejects_bad_input():
    llama = tiny_llama().to(torch.bfloat16)
    resformer = convert_llama_to_resformer(llama)
    assert {p.dtype for p in resformer.parameters()} == {torch.bfloat16}
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(resformer(ids).logits, llama(ids).logits)
    with pytest.raises(ValueError, match="needs a LlamaForCausalLM, got ResFormerForCausalLM"):
        convert_llama_to_resformer(resformer)
    with pytest.raises(ValueError, match="needs a LlamaForCausalLM, got Linear"):
        convert_llama_to_resformer(torch.nn.Linear(2, 2))
    for variant in ("identity", "svformer"):
        with pytest.raises(ValueError, match=f"value_residual='{variant}' is not function-preserving"):
            convert_llama_to_resformer(llama, value_residual=variant)


@compat
def test_llama_checkpoint_loads_into_resformer_with_initialised_lambdas(tmp_path):
    """Missing lambdas of a Llama checkpoint are set by _init_weights from the config: (0, 1) is exact."""
    llama = tiny_llama()
    llama.save_pretrained(tmp_path)
    config = resformer_config_from_llama(llama.config, value_residual="learnable")
    resformer = ResFormerForCausalLM.from_pretrained(tmp_path, config=config).eval()
    attn = resformer.model.layers[2].self_attn
    assert (attn.lambda_first.item(), attn.lambda_own.item()) == (0.0, 1.0)
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert (resformer(ids).logits - llama(ids).logits).abs().max().item() <= 1e-6


@pytest.mark.slow
@pytest.mark.smollm2
def test_convert_smollm2(smollm2):
    llama, tokenizer = smollm2
    resformer = convert_llama_to_resformer(llama, value_residual="learnable")
    assert resformer.dtype == llama.dtype and resformer.config.num_hidden_layers == 30
    prompt = tokenizer(["The capital of France is", "1, 2, 3,"], return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        diff = (resformer(**prompt).logits - llama(**prompt).logits).abs().max().item()
    print(f"SmolLM2-135M -> ResFormer max|dlogits| = {diff:.3g}")
    assert diff <= 1e-4
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    a = llama.generate(**prompt, **kwargs)
    b = resformer.generate(**prompt, **kwargs)
    assert torch.equal(a, b), (tokenizer.batch_decode(a), tokenizer.batch_decode(b))
    print(tokenizer.batch_decode(b[:, prompt["input_ids"].shape[1] :]))


# -------------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_benchmark_tiny_smoke(tmp_path, monkeypatch, capsys):
    """benchmarks/resformer_speed.py --tiny runs on the CPU (in-process, to skip a second interpreter start)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("resformer_speed", REPO / "benchmarks" / "resformer_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", ["benchmarks/resformer_speed.py", "--smoke", "--output", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    assert result["device"] and result["versions"]["torch"] and "--smoke" in result["command"]
    rows = {r["model"]: r for r in result["training"]}
    assert list(rows) == ["llama", "identity", "constant", "learnable", "learnable_plus", "sparse", "svformer"]
    assert all(r["tokens_per_s"] > 0 for r in result["training"])
    assert rows["llama"]["tokens_per_s_ratio"] == 1.0
    # the tiny shape has 3 layers: two mixing layers, one for sparse (the last 3/8), all fused; SVFormer has none
    assert {name: row["fused_layers"] for name, row in rows.items()} == dict(
        llama=0, identity=2, constant=2, learnable=2, learnable_plus=2, sparse=1, svformer=0
    )
    assert rows["identity"]["saved_activation_bytes"] == rows["llama"]["saved_activation_bytes"]
    assert result["decode"]["svformer"]["kv_cache_bytes"] < result["decode"]["llama"]["kv_cache_bytes"]
    assert "ratio" in capsys.readouterr().out
