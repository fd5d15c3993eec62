"""Growth during training with Seq-VCR on: the projection head, its optimizer state and the hidden-state hooks
follow every growth step (tiny Llama / GPT-2, CPU)."""

from __future__ import annotations

import pytest
import torch
from test_callbacks import Counting as CallbackCounting
from test_callbacks import tiny
from transformers import TrainerCallback

from hf_growth import GrowthCallback, MidasStackingCallback, SeqVCRConfig, SeqVCRTrainer
from hf_growth.training.seq_vcr_trainer import find_decoder_layers

VOCAB, SEQ, PROJ = 48, 12, 16


class Counting(CallbackCounting):
    """The growth-callback tests' counting sequences, shorter."""

    def __init__(self, n: int = 96):
        super().__init__(n, seq=SEQ)


def config(tmp_path, max_steps: int, **kw) -> SeqVCRConfig:
    base = dict(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        seq_vcr_projection_dim=PROJ,
        num_pause_tokens=0,
        lr_scheduler_type="constant",
    )
    base.update(kw)
    return SeqVCRConfig(**base)


CHECK = {"input_ids": Counting(16).ids}


class Probe(TrainerCallback):
    """At ``step``: the Seq-VCR terms on a fixed batch, the head's weight and its Adam moments (placed before the
    growth callback it sees the model before growth, placed after it the grown one)."""

    def __init__(self, trainer, step: int):
        self.trainer, self.step, self.seen = trainer, step, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        (head,) = self.trainer.seq_vcr_projection.values()
        state_of = self.trainer.optimizer.state[head.weight]
        self.seen = {
            "terms": self.trainer.measure_seq_vcr(CHECK),
            "weight": head.weight.detach().clone(),
            "exp_avg": state_of["exp_avg"].clone(),
            "exp_avg_sq": state_of["exp_avg_sq"].clone(),
            "names": list(self.trainer.seq_vcr_projection),
        }


def grow_mid_run(tmp_path, arch, plan, grow_at=3, max_steps=6, **kw):
    model = tiny(arch)
    trainer = SeqVCRTrainer(model=model, args=config(tmp_path, max_steps, **kw), train_dataset=Counting())
    before = Probe(trainer, grow_at)
    trainer.add_callback(before)
    GrowthCallback({grow_at: plan}).bind(trainer)  # bind adds the callback to the trainer
    after = Probe(trainer, grow_at)
    trainer.add_callback(after)
    trainer.train()
    return trainer, model, before.seen, after.seen


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hidden_size_growth_widens_the_projection_head_and_its_adam_state(tmp_path, arch):
    trainer, model, before, after = grow_mid_run(tmp_path, arch, [{"hidden_size": 64}])
    assert trainer.state.global_step == 6  # the steps after growth ran (they crashed in _project_and_measure)
    (head,) = trainer.seq_vcr_projection.values()
    assert tuple(head.weight.shape) == (PROJ, 64) and head.in_features == 64
    # the old input columns keep their weights and Adam moments, the new ones start at zero
    assert tuple(after["weight"].shape) == (PROJ, 64)
    for key in ("weight", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(after[key][:, :32], before[key], rtol=0, atol=0)
        assert after[key][:, 32:].abs().sum() == 0
    # function-preserving growth + zero new columns: the regulariser continues where it was
    for term in ("seq_vcr_variance", "seq_vcr_covariance"):
        assert after["terms"][term] == pytest.approx(before["terms"][term], rel=1e-4, abs=1e-6), term
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in [*model.parameters(), *trainer.seq_vcr_projection.parameters()]
    }


def test_layer_growth_moves_last_layer_hook_and_head_to_the_new_last_block(tmp_path):
    trainer, model, before, after = grow_mid_run(tmp_path, "llama", [{"num_layers": {"to": 5, "where": "top"}}])
    blocks = find_decoder_layers(model)
    assert len(blocks) == 5
    assert before["names"] == ["layer_2"] and after["names"] == ["layer_4"] == list(trainer.seq_vcr_projection)
    hooked = [i for i, block in enumerate(blocks) if block._forward_hooks]
    assert hooked == [4]  # the new last block (the old last one is now block 2)
    torch.testing.assert_close(after["weight"], before["weight"], rtol=0, atol=0)
    torch.testing.assert_close(after["exp_avg"], before["exp_avg"], rtol=0, atol=0)
    for term in ("seq_vcr_variance", "seq_vcr_covariance"):  # new top blocks are the identity
        assert after["terms"][term] == pytest.approx(before["terms"][term], rel=1e-4, abs=1e-6), term


def test_explicit_block_index_follows_its_block_and_embeddings_stay_at_the_input(tmp_path):
    front = [{"num_layers": {"to": 4, "where": [0]}}]  # a new block 0: the old blocks move up by one
    trainer, model, before, after = grow_mid_run(tmp_path, "llama", front, seq_vcr_layers="1")
    blocks = find_decoder_layers(model)
    assert [i for i, block in enumerate(blocks) if block._forward_hooks] == [2]  # still the old block 1
    assert before["names"] == ["layer_1"] and after["names"] == ["layer_2"]
    torch.testing.assert_close(after["weight"], before["weight"], rtol=0, atol=0)
    trainer, model, before, after = grow_mid_run(tmp_path / "emb", "llama", front, seq_vcr_layers="embeddings")
    blocks = find_decoder_layers(model)
    assert [i for i, b in enumerate(blocks) if b._forward_pre_hooks] == [0] and after["names"] == ["embeddings"]
    for term in ("seq_vcr_variance", "seq_vcr_covariance"):  # the embeddings did not change
        assert after["terms"][term] == pytest.approx(before["terms"][term], rel=1e-5, abs=1e-7), term


def test_resume_after_hidden_growth_restores_the_wide_head(tmp_path):
    plan = {2: [{"hidden_size": 48}]}
    full = tiny("llama")
    trainer = SeqVCRTrainer(
        model=full, args=config(tmp_path, 6, save_strategy="steps", save_steps=4), train_dataset=Counting()
    )
    GrowthCallback(plan).bind(trainer)
    trainer.train()
    resumed = tiny("llama")
    trainer2 = SeqVCRTrainer(model=resumed, args=config(tmp_path / "r", 6), train_dataset=Counting())
    GrowthCallback(plan).bind(trainer2)
    trainer2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    (head,), (head2,) = trainer.seq_vcr_projection.values(), trainer2.seq_vcr_projection.values()
    assert tuple(head2.weight.shape) == (PROJ, 48)
    # the resumed run ends where the uninterrupted one did: head, its optimizer state and the model
    torch.testing.assert_close(head2.weight, head.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        trainer2.optimizer.state[head2.weight]["exp_avg"],
        trainer.optimizer.state[head.weight]["exp_avg"],
        rtol=1e-4,
        atol=1e-7,
    )
    for (n, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_midas_stacking_with_seq_vcr_keeps_the_head_on_the_last_block(tmp_path):
    model = tiny("gpt2", 3)
    trainer = SeqVCRTrainer(model=model, args=config(tmp_path, 8), train_dataset=Counting())
    cb = MidasStackingCallback(stages=3, block_size=1, where="middle").bind(trainer)
    trainer.train()
    blocks = find_decoder_layers(model)
    assert len(cb.events) == 2 and len(blocks) == 5
    assert list(trainer.seq_vcr_projection) == ["layer_4"]
    assert [i for i, b in enumerate(blocks) if b._forward_hooks] == [4]
