"""LlamaEnsemble: every member is exactly a LlamaForCausalLM (logits, attentions, gradients, optimizer steps)."""

from __future__ import annotations

import copy

import pytest
import torch
from llama_ensemble import LlamaEnsemble, MemberAdamW, clip_grad_norm_per_member, member_losses
from transformers import LlamaConfig, LlamaForCausalLM

ATOL = 2e-6


def config(**overrides) -> LlamaConfig:
    shape = dict(
        vocab_size=37,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaConfig(**{**shape, **overrides})


def seeded_models(cfg: LlamaConfig, seeds) -> list[LlamaForCausalLM]:
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(LlamaForCausalLM(cfg).eval())
    return models


def truncated(model: LlamaForCausalLM, depth: int) -> LlamaForCausalLM:
    """The model with only its first ``depth`` layers (what a member of that depth must equal)."""
    out = copy.deepcopy(model)
    out.model.layers = out.model.layers[:depth]
    out.config.num_hidden_layers = depth
    return out


@pytest.mark.compat
@pytest.mark.parametrize("tied", [False, True])
def test_members_equal_their_llama_models(tied):
    cfg = config(tie_word_embeddings=tied)
    models = seeded_models(cfg, [0, 1, 2])
    depths = [1, 3, 2]
    ens = LlamaEnsemble.from_models(models, depths)
    ids = torch.randint(0, cfg.vocab_size, (3, 4, 9))
    logits, attentions = ens(ids, output_attentions=True)
    fused = ens(ids)
    for m, (model, depth) in enumerate(zip(models, depths)):
        reference = truncated(model, depth)
        reference.set_attn_implementation("eager")
        out = reference(ids[m], output_attentions=True)
        torch.testing.assert_close(logits[m], out.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(fused[m], out.logits, atol=ATOL, rtol=0)
        for layer in range(depth):
            torch.testing.assert_close(attentions[layer][m], out.attentions[layer], atol=ATOL, rtol=0)
    # the selected positions only
    last = torch.tensor([8])
    torch.testing.assert_close(ens(ids, positions=last), fused[:, :, 8:9], atol=ATOL, rtol=0)


@pytest.mark.compat
def test_to_models_round_trip(tmp_path):
    cfg = config()
    ens = LlamaEnsemble.from_config(cfg, seeds=[3, 4], depths=[2, 3])
    models = ens.to_models()
    assert [m.config.num_hidden_layers for m in models] == [2, 3]
    torch.manual_seed(4)
    fresh = LlamaForCausalLM(cfg)  # from_config seeds exactly as transformers would
    for name, value in fresh.state_dict().items():
        assert torch.equal(models[1].state_dict()[name], value), name
    models[0].save_pretrained(tmp_path / "m0")
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "m0")
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    torch.testing.assert_close(loaded(ids).logits, ens(ids[None].expand(2, -1, -1))[0], atol=ATOL, rtol=0)
    again = LlamaEnsemble.from_models(models[1:])
    for name, value in again.hf_state().items():
        assert torch.equal(value[0], ens.hf_state(members=[1])[name][0]), name


def answer_batch(cfg, members=3, batch=5, length=8):
    ids = torch.randint(0, cfg.vocab_size, (members, batch, length))
    answers = torch.randint(0, cfg.vocab_size, (members, batch))
    return ids, answers


def test_gradients_equal_per_member_gradients():
    cfg = config()
    models = seeded_models(cfg, [0, 1, 2])
    depths = [3, 1, 2]
    ens = LlamaEnsemble.from_models(models, depths)
    ids, answers = answer_batch(cfg)
    last = torch.tensor([ids.shape[-1] - 1])
    member_losses(ens(ids, positions=last), answers[:, :, None]).sum().backward()
    grads = ens.hf_state(grad=True)
    for m, (model, depth) in enumerate(zip(models, depths)):
        reference = truncated(model, depth).train()
        loss = torch.nn.functional.cross_entropy(reference(ids[m]).logits[:, -1], answers[m])
        loss.backward()
        for name, param in reference.named_parameters():
            torch.testing.assert_close(grads[name][m], param.grad, atol=1e-6, rtol=1e-5, msg=name)
        for layer in range(depth, cfg.num_hidden_layers):  # layers the member skips get no gradient
            assert not grads[f"model.layers.{layer}.mlp.down_proj.weight"][m].any()


def test_member_losses_ignore_index():
    logits = torch.randn(2, 3, 2, 5)
    labels = torch.tensor([[[1, -100], [2, 3], [-100, -100]], [[0, 0], [4, 4], [1, -100]]])
    losses = member_losses(logits, labels)
    for m in range(2):
        expected = torch.nn.functional.cross_entropy(logits[m].reshape(-1, 5), labels[m].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(losses[m], expected)


def test_clip_grad_norm_per_member_matches_torch():
    cfg = config()
    models = seeded_models(cfg, [0, 1])
    ens = LlamaEnsemble.from_models(models)
    ids, answers = answer_batch(cfg, members=2)
    last = torch.tensor([ids.shape[-1] - 1])
    (100 * member_losses(ens(ids, positions=last), answers[:, :, None]).sum()).backward()
    norms = clip_grad_norm_per_member(ens.parameters(), 0.5)
    grads = ens.hf_state(grad=True)
    for m, model in enumerate(models):
        model.train()
        loss = 100 * torch.nn.functional.cross_entropy(model(ids[m]).logits[:, -1], answers[m])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        torch.testing.assert_close(norms[m], norm, rtol=1e-5, atol=0)
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name][m], param.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_member_adamw_matches_torch_adamw_and_freezes_exactly():
    """Given the same gradients, member 0 takes torch's AdamW steps; member 1 (factor 0) does not move at all."""
    cfg = config(num_hidden_layers=2)
    models = seeded_models(cfg, [0, 1])
    ens = LlamaEnsemble.from_models(models)
    opt = MemberAdamW(ens.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(models[0].parameters(), lr=1e-2, weight_decay=0.1)
    frozen_before = {k: v[1].clone() for k, v in ens.hf_state().items()}
    opt.factor[1] = 0.0
    for _ in range(3):
        ids, answers = answer_batch(cfg, members=1)
        models[0].train()
        torch.nn.functional.cross_entropy(models[0](ids[0]).logits[:, -1], answers[0]).backward()
        for p in ens.parameters():
            p.grad = torch.randn_like(p)  # member 1: gradients it must ignore
        grads = ens.hf_state(grad=True)
        with torch.no_grad():
            for name, param in models[0].named_parameters():
                grads[name][0].copy_(param.grad)
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad(set_to_none=True)
    state = ens.hf_state()
    for name, param in models[0].named_parameters():
        torch.testing.assert_close(state[name][0], param.detach(), atol=1e-6, rtol=1e-6, msg=name)  # round-off
    for name, value in frozen_before.items():
        assert torch.equal(state[name][1], value), name
    assert all(not s["exp_avg"][1].any() and not s["exp_avg_sq"][1].any() for s in opt.state.values())


def test_select_keeps_members_and_their_optimizer_state():
    cfg = config(num_hidden_layers=2)
    a = LlamaEnsemble.from_config(cfg, seeds=[0, 1, 2], depths=[1, 2, 2])
    b = copy.deepcopy(a)
    opt_a, opt_b = MemberAdamW(a.parameters(), lr=1e-2), MemberAdamW(b.parameters(), lr=1e-2)
    last = torch.tensor([7])
    batches = [answer_batch(cfg) for _ in range(3)]
    for step, (ids, answers) in enumerate(batches):
        if step == 2:  # b drops member 1 and reorders, then both take one more step
            opt_b.select_([2, 0], b.select_([2, 0]))
            assert b.depths == [2, 1] and b.num_members == 2
        for ens, opt, rows in ((a, opt_a, [0, 1, 2]), (b, opt_b, [2, 0] if step == 2 else [0, 1, 2])):
            member_losses(ens(ids[rows], positions=last), answers[rows][:, :, None]).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    ids = torch.randint(0, cfg.vocab_size, (3, 2, 8))
    torch.testing.assert_close(b(ids[[2, 0]]), a(ids)[[2, 0]], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(attention_bias=True), "biases"),
        (dict(attention_dropout=0.1), "attention_dropout"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_type"),
    ],
)
def test_unsupported_configs_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        LlamaEnsemble(config(**overrides), 2)


def test_bad_inputs_are_refused():
    cfg = config()
    with pytest.raises(ValueError, match="depths"):
        LlamaEnsemble(cfg, 2, depths=[1, 4])
    with pytest.raises(ValueError, match="another config"):
        LlamaEnsemble.from_models([LlamaForCausalLM(cfg), LlamaForCausalLM(config(hidden_size=64))])
    ens = LlamaEnsemble.from_config(cfg, seeds=[0, 1])
    with pytest.raises(ValueError, match="members on its first axis"):
        ens(torch.zeros(3, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no gradients"):
        ens.hf_state(grad=True)


@pytest.mark.slow
def test_compiled_clip_and_update_match_eager():
    """compile=True (the GPU sweep's path) takes the same steps as the eager loops, to float32 round-off: with a
    frozen member (unchanged bit for bit) and across a select_ that changes the members' count."""
    cfg = config(num_hidden_layers=2)
    a = LlamaEnsemble.from_config(cfg, seeds=[0, 1, 2], depths=[1, 2, 2])
    b = copy.deepcopy(a)
    opts = {
        False: MemberAdamW(a.parameters(), lr=1e-2, weight_decay=0.1),
        True: MemberAdamW(b.parameters(), lr=1e-2, weight_decay=0.1, compile=True),
    }
    for opt in opts.values():
        opt.factor[1] = 0.0
    frozen = {k: v[1].clone() for k, v in b.hf_state().items()}
    last = torch.tensor([7])
    for step in range(4):
        if step == 2:
            frozen = None
            for ens, opt in ((a, opts[False]), (b, opts[True])):
                opt.select_([2, 0], ens.select_([2, 0]))
        ids, answers = answer_batch(cfg, members=a.num_members)
        norms = {}
        for compiled, ens in ((False, a), (True, b)):
            opt = opts[compiled]
            opt.param_groups[0]["lr"] = 1e-2 * (step + 1)  # a new value each step (used, not baked into the graph)
            (10 * member_losses(ens(ids, positions=last), answers[:, :, None]).sum()).backward()
            norms[compiled] = clip_grad_norm_per_member(ens.parameters(), 0.5, compile=compiled)
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.testing.assert_close(norms[True], norms[False], atol=1e-6, rtol=1e-5)
        for name, value in b.hf_state().items():
            torch.testing.assert_close(value, a.hf_state()[name], atol=1e-6, rtol=1e-5, msg=name)
            if frozen is not None:
                assert torch.equal(value[1], frozen[name]), name


def test_restore_puts_chosen_members_back_and_leaves_the_others():
    """restore_ undoes member 1's steps since the snapshot (weights, moments, step count) and nothing else; it
    then trains on as it did from the snapshot. A snapshot from before the first step restores zero moments."""
    cfg = config(num_hidden_layers=2)
    ens = LlamaEnsemble.from_config(cfg, seeds=[0, 1, 2], depths=[1, 2, 2])
    opt = MemberAdamW(ens.parameters(), lr=1e-2)
    last = torch.tensor([7])
    batches = [answer_batch(cfg) for _ in range(4)]

    def train(steps):
        for ids, answers in steps:
            member_losses(ens(ids, positions=last), answers[:, :, None]).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    empty = opt.snapshot()
    train(batches[:1])
    snap = opt.snapshot()
    train(batches[1:3])
    after = opt.snapshot()
    opt.restore_(snap, [1])
    for now, then, later in zip(opt.snapshot(), snap, after):
        for key in now:
            assert torch.equal(now[key][1], then[key][1]) and not torch.equal(now[key][1], later[key][1]), key
            assert torch.equal(now[key][[0, 2]], later[key][[0, 2]]), key
    train(batches[1:3])  # member 1 retakes the same two steps: it ends where it was before the restore
    for now, later in zip(opt.snapshot(), after):
        torch.testing.assert_close(now["param"][1], later["param"][1], atol=1e-6, rtol=0)
    opt.restore_(empty, [0])
    assert all(not s[k][0].any() for s in opt.state.values() for k in ("step", "exp_avg", "exp_avg_sq"))
    assert torch.equal(next(ens.parameters())[0], empty[0]["param"][0])
    opt.select_([0, 2], ens.select_([0, 2]))
    with pytest.raises(ValueError, match="after select_"):
        opt.restore_(snap, [0])
