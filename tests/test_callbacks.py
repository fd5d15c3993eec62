"""Growth during training: MIDAS stacking and function-preserving growth callbacks (tiny GPT-2 / Llama, CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_growth.training.callbacks import GrowthCallback, MidasStackingCallback, grow_in_place, midas_boundaries

VOCAB, SEQ = 48, 16


def tiny(arch: str, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
                tie_word_embeddings=False,
            )
        )
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=layers,
            n_head=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


class Counting(torch.utils.data.Dataset):
    """Sequences t, t+s, t+2s, ... mod VOCAB: learnable in a few dozen steps."""

    def __init__(self, n: int = 256, seq: int = SEQ):
        g = torch.Generator().manual_seed(0)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + stride * torch.arange(seq)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def args(tmp_path, max_steps: int = 20, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        lr_scheduler_type="constant",
    )
    base.update(kw)
    return TrainingArguments(**base)


def optimizer_ids(trainer) -> set[int]:
    return {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}


class Recorder(TrainerCallback):
    """After every step (and after the growth callbacks): depth, parameter count, optimizer == model check."""

    def __init__(self, trainer, extra=()):
        self.trainer, self.extra, self.rows = trainer, list(extra), []

    def on_step_end(self, args, state, control, **kwargs):
        model = self.trainer.model
        params = {id(p) for p in model.parameters() if p.requires_grad} | {id(p) for p in self.extra}
        self.rows.append(
            {
                "step": state.global_step,
                "layers": model.config.num_hidden_layers,
                "params": sum(p.numel() for p in model.parameters()),
                "optimizer_matches": optimizer_ids(self.trainer) == params,
            }
        )


def losses(trainer) -> list[float]:
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


# --------------------------------------------------------------------------------------------- schedule
def test_midas_boundaries_prop_alpha():
    assert midas_boundaries(20, 4, 1.0) == [2, 6, 12]
    assert midas_boundaries(40, 4, 0.0) == [10, 20, 30]
    assert midas_boundaries(100, 1) == []


# --------------------------------------------------------------------------------------------- optimizer state
def _adam_steps(model, n=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = Counting(8)
    for _ in range(n):
        model(input_ids=data.ids, labels=data.ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("copied_state", ["copy", "fresh"])
def test_stack_moves_adam_state_with_the_weights(copied_state):
    model = tiny("llama", 3)
    opt = _adam_steps(model)
    before = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in model.named_parameters()}
    info = grow_in_place(
        model, [{"stack": {"to": 4, "block_size": 1, "where": "middle"}}], optimizer=opt, copied_state=copied_state
    )
    # middle of 3 one-layer blocks: layer 1 is copied after itself -> [0, 1, 1', 2]
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4
    assert optimizer_ids_of(opt) == {id(p) for p in model.parameters()}
    state = {n: opt.state.get(p, {}) for n, p in model.named_parameters()}
    for new, old in [
        ("model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"),
        ("model.layers.3.self_attn.o_proj.weight", "model.layers.2.self_attn.o_proj.weight"),
    ]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[new][key], before[old][key], rtol=0, atol=0)
    copy_state = state["model.layers.2.mlp.down_proj.weight"]
    if copied_state == "copy":
        torch.testing.assert_close(copy_state["exp_avg"], before["model.layers.1.mlp.down_proj.weight"]["exp_avg"])
        assert copy_state["exp_avg"].data_ptr() != state["model.layers.1.mlp.down_proj.weight"]["exp_avg"].data_ptr()
        assert info["copied"] == 9
    else:
        assert copy_state == {} and info["fresh"] == 9
    opt.step()  # the optimizer still steps (fresh state initialises lazily)


def optimizer_ids_of(opt) -> set[int]:
    return {id(p) for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_width_growth_keeps_old_moments_new_slices_zero(arch):
    model = tiny(arch, 2)
    opt = _adam_steps(model)
    names = dict(model.named_parameters())
    mlp_out = "model.layers.0.mlp.down_proj.weight" if arch == "llama" else "transformer.h.0.mlp.c_proj.weight"
    embed = "model.embed_tokens.weight" if arch == "llama" else "transformer.wte.weight"
    old_mlp, old_embed = opt.state[names[mlp_out]]["exp_avg"].clone(), opt.state[names[embed]]["exp_avg_sq"].clone()
    plan = [{"mlp_width": 192}, {"hidden_size": 64}]
    grow_in_place(model, plan, optimizer=opt)
    names = dict(model.named_parameters())
    assert optimizer_ids_of(opt) == {id(p) for p in model.parameters()}
    new_mlp, new_embed = opt.state[names[mlp_out]]["exp_avg"], opt.state[names[embed]]["exp_avg_sq"]
    assert tuple(new_mlp.shape) == tuple(names[mlp_out].shape)
    if arch == "llama":  # down_proj (hidden, mlp): old block top-left, the rest zero
        torch.testing.assert_close(new_mlp[:32, :64], old_mlp)
        assert new_mlp[32:].abs().sum() == 0 and new_mlp[:, 64:].abs().sum() == 0
    else:  # Conv1D c_proj (mlp, hidden), hidden grown by cloning
        torch.testing.assert_close(new_mlp[:128, :32], old_mlp)
        assert new_mlp[128:].abs().sum() == 0 and new_mlp[:, 32:].abs().sum() == 0
    torch.testing.assert_close(new_embed[:, :32], old_embed)
    assert new_embed[:, 32:].abs().sum() == 0
    assert int(opt.state[names[embed]]["step"]) == 2
    opt.step()


# --------------------------------------------------------------------------------------------- Trainer
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_midas_callback_grows_at_boundaries(tmp_path, arch):
    model = tiny(arch, 3)
    params0 = sum(p.numel() for p in model.parameters())
    cb = MidasStackingCallback(stages=4, block_size=1, alpha=1.0, where="middle")
    trainer = Trainer(
        model=model, args=args(tmp_path, 24, save_strategy="steps", save_steps=8), train_dataset=Counting()
    )
    cb.bind(trainer)
    rec = Recorder(trainer)
    trainer.add_callback(rec)
    trainer.train()
    assert trainer.model is model  # in place
    boundaries = midas_boundaries(24, 4)  # [2, 7, 14]
    assert [e["step"] for e in cb.events] == boundaries
    for row in rec.rows:
        assert row["layers"] == 3 + sum(row["step"] >= b for b in boundaries), row
        assert row["optimizer_matches"], row
    counts = [r["params"] for r in rec.rows]
    assert counts[0] == params0 and counts == sorted(counts) and len(set(counts)) == 4
    loss = losses(trainer)
    assert sum(loss[-4:]) / 4 < 0.75 * sum(loss[:4]) / 4, loss
    # checkpoints saved after growth reload with from_pretrained, at the size of their stage
    for step, layers in ((8, 5), (16, 6), (24, 6)):
        ckpt = os.path.join(tmp_path, f"checkpoint-{step}")
        loaded = type(model).from_pretrained(ckpt)
        assert loaded.config.num_hidden_layers == layers
        assert [r.get("midas_stage") for r in loaded.config.growth_history] == list(range(2, layers - 1))
    torch.testing.assert_close(loaded(input_ids=Counting(4).ids).logits, model.eval()(input_ids=Counting(4).ids).logits)


def test_midas_resume_mid_schedule_continues(tmp_path):
    full = tiny("llama", 3)
    cb = MidasStackingCallback(stages=4, block_size=1)
    trainer = Trainer(
        model=full, args=args(tmp_path, 24, save_strategy="steps", save_steps=4), train_dataset=Counting()
    )
    cb.bind(trainer)
    trainer.train()

    resumed_model = tiny("llama", 3)
    cb2 = MidasStackingCallback(stages=4, block_size=1)
    trainer2 = Trainer(model=resumed_model, args=args(tmp_path / "r", 24, save_strategy="no"), train_dataset=Counting())
    cb2.bind(trainer2)
    rec = Recorder(trainer2)
    trainer2.add_callback(rec)
    trainer2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))  # saved in stage 3 (5 layers)
    assert rec.rows[0]["step"] == 9 and rec.rows[0]["layers"] == 5
    assert [e["step"] for e in cb2.events] == [14]
    assert all(r["optimizer_matches"] for r in rec.rows)
    assert resumed_model.config.num_hidden_layers == 6
    assert [r["midas_stage"] for r in resumed_model.config.growth_history] == [2, 3, 4]
    # the resumed run ends where the uninterrupted one did (same data order, RNG, optimizer state)
    for (n, a), (_, b) in zip(full.named_parameters(), resumed_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_midas_with_seq_vcr_trainer_keeps_projection_head(tmp_path):
    from hf_growth.training import SeqVCRConfig, SeqVCRTrainer

    model = tiny("gpt2", 3)
    targs = SeqVCRConfig(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seq_vcr_projection_dim=16,
        num_pause_tokens=0,
        seed=0,
    )
    trainer = SeqVCRTrainer(model=model, args=targs, train_dataset=Counting())
    cb = MidasStackingCallback(stages=3, block_size=1, where="top").bind(trainer)
    head = list(trainer.seq_vcr_projection.parameters())
    rec = Recorder(trainer, extra=head)
    trainer.add_callback(rec)
    trainer.train()  # the Seq-VCR hooks move to the grown model (else: "hooks did not fire")
    assert model.config.num_hidden_layers == 5 and [e["step"] for e in cb.events] == midas_boundaries(12, 3)
    assert all(r["optimizer_matches"] for r in rec.rows)
    assert all("ce_loss" in r for r in trainer.state.log_history if "loss" in r)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_growth_callback_is_function_preserving(tmp_path, arch):
    model = tiny(arch, 2)
    batch = {"input_ids": Counting(8).ids, "labels": Counting(8).ids}
    plans = {4: [{"mlp_width": 192}], 8: [{"hidden_size": 64}], 12: [{"num_layers": {"to": 3, "where": "top"}}]}
    cb = GrowthCallback(plans, check_batch=batch)
    trainer = Trainer(
        model=model, args=args(tmp_path, 20, save_strategy="steps", save_steps=10), train_dataset=Counting()
    )
    cb.bind(trainer)
    rec = Recorder(trainer)
    trainer.add_callback(rec)
    trainer.train()
    assert [e["step"] for e in cb.events] == [4, 8, 12]
    for e in cb.events:
        assert e["params_after"] > e["params_before"]
        assert abs(e["loss_after"] - e["loss_before"]) < 1e-5, e
    assert all(r["optimizer_matches"] for r in rec.rows)
    loss = losses(trainer)
    assert sum(loss[-4:]) / 4 < 0.75 * sum(loss[:4]) / 4, loss
    loaded = type(model).from_pretrained(os.path.join(tmp_path, "checkpoint-10"))
    assert (loaded.config.hidden_size if arch == "llama" else loaded.config.n_embd) == 64
    # resuming after the growths replays them on a fresh model and does not grow twice
    fresh = tiny(arch, 2)
    cb2 = GrowthCallback(plans)
    trainer2 = Trainer(model=fresh, args=args(tmp_path / "r", 20), train_dataset=Counting())
    cb2.bind(trainer2)
    trainer2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert [e["step"] for e in cb2.events] == [12]
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in model.parameters())


def test_grow_in_place_through_wrappers():
    """DataParallel (and compile) wrappers are looked through; FSDP is refused before anything changes."""
    model = tiny("llama", 2)
    wrapped = torch.nn.DataParallel(model)  # no GPUs: a pass-through wrapper, reads the module at every call
    ids = Counting(4).ids
    before = model(ids).logits
    info = grow_in_place(wrapped, [{"mlp_width": 96}])
    assert wrapped.module is model and model.config.intermediate_size == 96
    assert info["params_after"] > info["params_before"]
    assert torch.allclose(wrapped(ids).logits, before, atol=1e-6)

    class FullyShardedDataParallel(torch.nn.Module):  # stands in for torch's FSDP wrapper (matched by name)
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(NotImplementedError, match="FSDP-sharded model"):
        grow_in_place(FullyShardedDataParallel(model), [{"mlp_width": 128}])
    assert model.config.intermediate_size == 96  # untouched
    cb = GrowthCallback({1: [{"mlp_width": 128}]})
    with pytest.raises(NotImplementedError, match="grow under DDP or on one device"):
        cb.on_train_begin(None, None, None, model=FullyShardedDataParallel(model))
