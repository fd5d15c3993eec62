"""The fused value residual (``ValueResidualProjection``) against the plain formula.

Forward values, every gradient (inputs, weights, lambdas) and the activation memory autograd saves, for every
mixing variant, in float32 and bfloat16. The plain formula is ``v_proj`` as a module followed by ``mix_values``
(``attn.fused_value_residual = False``).
"""

from __future__ import annotations

import pytest
import torch

import hf_growth  # noqa: F401
from hf_growth.resformer.configuration_resformer import ResFormerConfig
from hf_growth.resformer.modeling_resformer import ResFormerForCausalLM, ValueResidualProjection

compat = pytest.mark.compat
MIXING_VARIANTS = ["identity", "constant", "learnable", "learnable_plus", "sparse"]


def tiny_model(variant: str, dtype=torch.float32, fused: bool = True, **overrides) -> ResFormerForCausalLM:
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        initializer_range=0.2,
        value_residual=variant,
    )
    if variant == "sparse":
        kwargs["value_residual_layers"] = [2]
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = ResFormerForCausalLM(ResFormerConfig(**kwargs))
    with torch.no_grad():  # lambdas off their initial values, so that every term of the formula matters
        for name, param in model.named_parameters():
            if "lambda_" in name:
                param.add_(0.3 * torch.randn_like(param))
    for layer in model.model.layers:
        layer.self_attn.fused_value_residual = fused
    return model.to(dtype).train()


def run(model, ids) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = model(ids).logits
    (logits.float().square().mean()).backward()  # a loss whose gradient reaches every logit
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# -------------------------------------------------------------------------------------------- the function
def plain(x, w, b, v0, first, own):
    value = torch.nn.functional.linear(x, w, b)
    return first * v0 + own * value


def inputs(dtype, bias: bool, learnable: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    tensors = dict(x=make(2, 5, 16), w=make(12, 16) / 4, b=make(12) if bias else None, v0=make(2, 5, 12))
    lambdas = dict(first=make(1), own=make(1)) if learnable else dict(first=2.0, own=0.75)
    grad = make(2, 5, 12)
    leaves = {k: v.to(dtype).requires_grad_() for k, v in {**tensors, **lambdas}.items() if isinstance(v, torch.Tensor)}
    args = {k: leaves.get(k, v) for k, v in {**tensors, **lambdas}.items()}
    return args, leaves, grad.to(dtype)


def grads(fn, dtype, bias, learnable):
    args, leaves, grad = inputs(dtype, bias, learnable)
    out = fn(args["x"], args["w"], args["b"], args["v0"], args["first"], args["own"])
    out.backward(grad)
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@compat
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("learnable", [False, True])
def test_function_equals_plain_formula_float32(bias, learnable):
    fused_out, fused_grads = grads(ValueResidualProjection.apply, torch.float32, bias, learnable)
    plain_out, plain_grads = grads(plain, torch.float32, bias, learnable)
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-6, atol=1e-6)
    assert (
        set(fused_grads)
        == set(plain_grads)
        == ({"x", "w", "v0"} | ({"b"} if bias else set()) | ({"first", "own"} if learnable else set()))
    )
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-5, atol=1e-5, msg=name)


@compat
@pytest.mark.parametrize("bias", [False, True])
def test_function_bfloat16_as_accurate_as_plain_formula(bias):
    """In bf16 both differ from the exact (float64) result by bf16 round-off; the fused one by no more."""
    exact_out, exact_grads = grads(plain, torch.float64, bias, True)
    for name, (out, grad) in {
        "fused": grads(ValueResidualProjection.apply, torch.bfloat16, bias, True),
        "plain": grads(plain, torch.bfloat16, bias, True),
    }.items():
        assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grad.values())
        torch.testing.assert_close(out.double(), exact_out, rtol=2e-2, atol=2e-2, msg=name)
        for key in exact_grads:
            scale = exact_grads[key].abs().max().item()
            torch.testing.assert_close(
                grad[key].double(), exact_grads[key], rtol=2e-2, atol=2e-2 * scale, msg=f"{name} {key}"
            )


@compat
def test_function_lambda_own_zero_still_has_its_gradient():
    """lambda_own = 0 (SVFormer-like start): V_own is not recoverable from the mixed values, its gradient is."""
    args, leaves, grad = inputs(torch.float64, True, True)
    with torch.no_grad():
        leaves["own"].zero_()
    mixed = ValueResidualProjection.apply(args["x"], args["w"], args["b"], args["v0"], args["first"], args["own"])
    mixed.backward(grad)
    expected = (grad * torch.nn.functional.linear(args["x"], args["w"], args["b"])).sum()
    torch.testing.assert_close(leaves["own"].grad, expected.reshape(1).detach(), rtol=1e-12, atol=1e-12)
    assert leaves["w"].grad.abs().max() == 0 and leaves["x"].grad.abs().max() == 0


# -------------------------------------------------------------------------------------------- the model
@compat
@pytest.mark.parametrize("variant", MIXING_VARIANTS)
def test_model_fused_equals_plain_formula_float32(variant):
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    fused = tiny_model(variant, attention_bias=variant == "learnable")
    assert all(layer.self_attn.fuses_value_projection() == layer.self_attn.mixes for layer in fused.model.layers)
    logits, fused_grads = run(fused, ids)
    plain_logits, plain_grads = run(tiny_model(variant, fused=False, attention_bias=variant == "learnable"), ids)
    torch.testing.assert_close(logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert set(fused_grads) == set(plain_grads)
    assert any("lambda_" in n for n in plain_grads) == (variant in ("learnable", "learnable_plus"))
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@compat
@pytest.mark.parametrize("variant", MIXING_VARIANTS)
def test_model_fused_equals_plain_formula_bfloat16(variant):
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, fused_grads = run(tiny_model(variant, torch.bfloat16), ids)
    plain_logits, plain_grads = run(tiny_model(variant, torch.bfloat16, fused=False), ids)
    scale = plain_logits.abs().max().item()
    torch.testing.assert_close(logits.float(), plain_logits.float(), rtol=0.05, atol=0.05 * scale)
    for name, grad in plain_grads.items():
        assert fused_grads[name].dtype == torch.bfloat16
        scale = grad.abs().max().item()
        torch.testing.assert_close(fused_grads[name].float(), grad.float(), rtol=0.1, atol=0.1 * scale, msg=name)


@compat
def test_autocast_gradients_keep_parameter_dtypes():
    """Under bf16 autocast (float32 parameters) the fused path computes in bf16, returns float32 gradients, and
    is as close to the float32 result as the plain formula under the same autocast."""
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    _, exact = run(tiny_model("learnable"), ids)
    lambda_scale = max(g.abs().max().item() for n, g in exact.items() if "lambda_" in n)
    for fused in (True, False):
        model = tiny_model("learnable", fused=fused)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, grads = run(model, ids)
        assert logits.dtype == torch.bfloat16
        for name, grad in exact.items():
            assert grads[name].dtype == torch.float32, name
            scale = lambda_scale if "lambda_" in name else grad.norm().item()
            error = (grads[name] - grad).norm().item() / scale
            assert error < 0.1, (fused, name, error)  # bf16 round-off through three layers


@compat
def test_hooked_or_wrapped_v_proj_uses_the_plain_formula():
    model = tiny_model("learnable")
    attn = model.model.layers[1].self_attn
    assert attn.fuses_value_projection()
    seen = []
    handle = attn.v_proj.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    assert not attn.fuses_value_projection()
    model(torch.tensor([[5, 6, 7]]))
    assert seen == [(1, 3, 16)]  # the hook saw layer 1's own values
    handle.remove()
    assert attn.fuses_value_projection()
    assert not model.model.layers[0].self_attn.fuses_value_projection()  # layer 0 is the source, it mixes nothing


# -------------------------------------------------------------------------------------------- saved memory
def saved_activation_bytes(model, ids) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return sum(storages.values())


@compat
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("variant", ["identity", "learnable", "learnable_plus"])
def test_fused_mixing_saves_no_more_activations_than_llama(variant, kv_heads):
    """Llama (value_residual="none") saves per layer the values attention sees; a fused mixing layer saves its
    mixed values in their place and nothing else, while the plain formula also keeps each layer's own values
    alive for lambda_own's gradient. A learnable lambda_first needs V_0: layer 0's attention saves it anyway where
    it keeps its value input itself, but where it saves a copy (the CPU kernels do, and grouped-query attention
    may repeat the KV heads first) V_0 costs one values tensor for the whole model, not one per layer."""
    ids = torch.randint(3, 97, (2, 64), generator=torch.Generator().manual_seed(0))
    values_bytes = 2 * 64 * kv_heads * 8 * 4  # batch * tokens * kv heads * head_dim * float32
    llama = saved_activation_bytes(tiny_model("none", num_key_value_heads=kv_heads), ids)
    fused = saved_activation_bytes(tiny_model(variant, num_key_value_heads=kv_heads), ids)
    plain = saved_activation_bytes(tiny_model(variant, fused=False, num_key_value_heads=kv_heads), ids)
    print(f"{variant}, {kv_heads} KV heads: saved activations llama {llama} B, fused {fused} B, plain {plain} B")
    extra = 2 * 2 * 4 if variant == "learnable_plus" else 0  # softmax over the two mixing layers, and its scaling
    if variant == "identity":
        assert fused == plain == llama
    else:
        assert fused - llama - extra in (0, values_bytes)
        assert plain - fused == 2 * values_bytes  # V_own of the two mixing layers
