"""SeqVCRTrainer: logged terms, loss scaling under gradient accumulation, projection head handling, peft."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainerCallback, TrainingArguments

from hf_growth import tasks
from hf_growth.training import SeqVCRConfig, SeqVCRTrainer, seq_vcr_terms
from hf_growth.training.data import TensorDataset, collate_tensors, encode_split
from hf_growth.training.pause import add_pause_tokens, pause_tokens_of
from hf_growth.training.seq_vcr_trainer import PROJECTION_FILE, find_decoder_layers

TOK = tasks.build_tokenizer(max_number=100)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(TOK),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(TOK),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(cfg)


def dataset(n=64, padded=False):
    split = tasks.multiplication_splits(digits=2, train_size=n, validation_size=4, test_size=4)["train"]
    if padded:  # varying lengths -> padding and varying label counts
        split = {
            "question": [q if i % 2 else q.split(" * ")[0] for i, q in enumerate(split["question"])],
            "answer": split["answer"],
        }
    return encode_split(TOK, split, pause_tokens_of(TOK, 2))


def make_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=8,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seq_vcr_projection_dim=48,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    base.update(kw)
    return SeqVCRConfig(**base)


def train_logs(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama])
def test_logged_terms_and_head_training(tmp_path, make_model):
    model = make_model()
    trainer = SeqVCRTrainer(
        model=model, args=make_args(tmp_path, max_steps=3), train_dataset=dataset(), data_collator=collate_tensors
    )
    head_before = copy.deepcopy(trainer.seq_vcr_projection.state_dict())
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 3
    for entry in logs:
        for key in ("ce_loss", "seq_vcr_variance", "seq_vcr_covariance"):
            assert math.isfinite(entry[key]), key
        assert entry["seq_vcr_variance"] > 0
        assert entry["loss"] == pytest.approx(
            entry["ce_loss"] + entry["seq_vcr_variance"] + entry["seq_vcr_covariance"], rel=1e-4
        )
    # the head is in the optimizer and was trained; it is not part of the model
    head_ids = {id(p) for p in trainer.seq_vcr_projection.parameters()}
    assert head_ids <= {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    after = trainer.seq_vcr_projection.state_dict()
    assert any(not torch.equal(head_before[k], after[k]) for k in after)
    assert not any("seq_vcr" in k for k in model.state_dict())
    trainer.save_model(str(tmp_path / "final"))
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert not any("seq_vcr" in k or "projection" in k for k in saved)
    assert not (tmp_path / "final" / PROJECTION_FILE).exists()


def test_layer_choices_and_plain_training_arguments(tmp_path):
    ds = dataset(16)
    for layers, names in (("embeddings", ["embeddings"]), ("0,1", ["layer_0", "layer_1"]), ([-1], ["layer_1"])):
        trainer = SeqVCRTrainer(
            model=tiny_llama(),
            args=make_args(tmp_path, max_steps=1, seq_vcr_layers=layers),
            train_dataset=ds,
            data_collator=collate_tensors,
        )
        assert list(trainer.seq_vcr_projection) == names
        trainer.train()
        assert math.isfinite(train_logs(trainer)[0]["seq_vcr_variance"])
    # no projection head
    trainer = SeqVCRTrainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=1, seq_vcr_projection_dim=None),
        train_dataset=ds,
        data_collator=collate_tensors,
    )
    assert not list(trainer.seq_vcr_projection.parameters())
    trainer.train()
    assert math.isfinite(train_logs(trainer)[0]["seq_vcr_covariance"])
    # plain TrainingArguments: SeqVCRConfig defaults (2048-dim head)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SeqVCRTrainer(model=tiny_gpt2(), args=args, train_dataset=ds, data_collator=collate_tensors)
    assert trainer.seq_vcr_projection["layer_1"].out_features == 2048
    # switched off: no hooks, no extra logs
    trainer = SeqVCRTrainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=1, use_seq_vcr=False),
        train_dataset=ds,
        data_collator=collate_tensors,
    )
    trainer.train()
    assert "seq_vcr_variance" not in train_logs(trainer)[0] and not trainer._hooks


def test_config_validation():
    assert SeqVCRConfig(output_dir="/tmp/x", report_to=[], use_cpu=True, seq_vcr_layers="3, 5").seq_vcr_layers == [3, 5]
    with pytest.raises(ValueError, match="seq_vcr_layers"):
        SeqVCRConfig(output_dir="/tmp/x", report_to=[], use_cpu=True, seq_vcr_layers="middle")
    with pytest.raises(ValueError, match="seq_vcr_statistics"):
        SeqVCRConfig(output_dir="/tmp/x", report_to=[], use_cpu=True, seq_vcr_statistics="tokens")
    defaults = SeqVCRConfig(output_dir="/tmp/x", report_to=[], use_cpu=True)
    assert (defaults.seq_vcr_variance_weight, defaults.seq_vcr_covariance_weight, defaults.seq_vcr_eps) == (
        1.0,
        0.004,
        1e-3,
    )
    assert (defaults.seq_vcr_layers, defaults.seq_vcr_statistics, defaults.num_pause_tokens) == ("last", "batch", 2)
    with pytest.raises(ValueError, match="out of range"):
        SeqVCRTrainer(
            model=tiny_gpt2(), args=SeqVCRConfig(output_dir="/tmp/x", report_to=[], use_cpu=True, seq_vcr_layers="7")
        )
    assert len(find_decoder_layers(tiny_gpt2())) == 2


class _Recorder(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.grads = trainer, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = list(self.trainer.model.parameters()) + list(self.trainer.seq_vcr_projection.parameters())
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in params]


class _RecordingTrainer(SeqVCRTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append(({k: v.clone() for k, v in inputs.items()}, num_items_in_batch))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama])
def test_gradient_accumulation_scaling(tmp_path, make_model):
    """One optimizer step with 2 micro-batches equals: sum over micro-batches of
    (CE summed over tokens / tokens in the whole step) + Seq-VCR(micro-batch) / 2."""
    model = make_model()
    reference_model = copy.deepcopy(model)
    args = make_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,
        seq_vcr_layers="0",
        seq_vcr_covariance_weight=0.5,
    )
    trainer = _RecordingTrainer(
        model=model, args=args, train_dataset=dataset(16, padded=True), data_collator=collate_tensors
    )
    trainer.seen = []
    head = copy.deepcopy(trainer.seq_vcr_projection)
    recorder = _Recorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    assert len(trainer.seen) == 2
    n_items = sum(int((inp["labels"][:, 1:] != -100).sum()) for inp, _ in trainer.seen)
    assert all(int(n) == n_items for _, n in trainer.seen)
    for inputs, _ in trainer.seen:
        out = reference_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True
        )
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        ce = (
            torch.nn.functional.cross_entropy(
                logits, inputs["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
            )
            / n_items
        )
        aux = seq_vcr_terms(head["layer_0"](out.hidden_states[1]), inputs["attention_mask"].bool(), 1.0, 0.5).total
        (ce + aux / 2).backward()
    expected = [p.grad for p in list(reference_model.parameters()) + list(head.parameters())]
    assert len(expected) == len(recorder.grads)
    for got, want in zip(recorder.grads, expected):
        if want is None:
            assert got is None or got.abs().max() == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_checkpoint_resume_restores_projection_head(tmp_path):
    ds = dataset(64)
    args = make_args(tmp_path / "a", max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)
    full = SeqVCRTrainer(model=tiny_llama(), args=args, train_dataset=ds, data_collator=collate_tensors)
    full.train()
    ckpt = tmp_path / "a" / "checkpoint-2"
    saved = load_file(str(ckpt / PROJECTION_FILE))
    assert set(saved) == {"layer_1.weight", "layer_1.bias"}
    model_file = load_file(str(ckpt / "model.safetensors"))
    assert not any("seq_vcr" in k or "layer_1.weight" == k for k in model_file)
    assert not list(ckpt.glob("*projection*.bin")) and not list(ckpt.glob("*projection*.pt"))
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert any("seq_vcr_variance" in h for h in state["log_history"])

    torch.manual_seed(123)  # a different fresh head: only loading the checkpoint can make them agree
    args_b = make_args(tmp_path / "b", max_steps=4, save_strategy="no", per_device_train_batch_size=4, seed=0)
    resumed = SeqVCRTrainer(model=tiny_llama(), args=args_b, train_dataset=ds, data_collator=collate_tensors)
    resumed.seq_vcr_projection["layer_1"].reset_parameters()
    resumed.train(resume_from_checkpoint=str(ckpt))
    final_a = full.seq_vcr_projection.state_dict()
    final_b = resumed.seq_vcr_projection.state_dict()
    for k in final_a:
        torch.testing.assert_close(final_b[k], final_a[k], rtol=1e-4, atol=1e-6)
    # evaluation loss is the model's loss alone
    metrics = resumed.evaluate(eval_dataset=dataset(8))
    batch = collate_tensors(dataset(8).__getitems__(list(range(8))))
    resumed.model.eval()
    with torch.no_grad():
        plain = resumed.model(**batch).loss.item()
    assert metrics["eval_loss"] == pytest.approx(plain, rel=1e-4)


def test_peft_lora_with_pause_tokens(tmp_path):
    peft = pytest.importorskip("peft")
    tok = tasks.build_tokenizer(max_number=100, include_pause_tokens=False)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(cfg)
    pause = add_pause_tokens(tok, model, num=2)
    lora = peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], trainable_token_indices={"embed_tokens": pause.ids}
    )
    model = peft.get_peft_model(model, lora)
    split = tasks.multiplication_splits(digits=2, train_size=32, validation_size=4, test_size=4)["train"]
    ds = encode_split(tok, split, pause)
    trainer = SeqVCRTrainer(
        model=model, args=make_args(tmp_path, max_steps=2), train_dataset=ds, data_collator=collate_tensors
    )
    trainer.train()
    for entry in train_logs(trainer):
        assert all(math.isfinite(entry[k]) for k in ("ce_loss", "seq_vcr_variance", "seq_vcr_covariance"))
    trainer.save_model(str(tmp_path / "adapter"))
    assert not any("seq_vcr" in f for f in os.listdir(tmp_path / "adapter"))


def test_tensor_dataset_collation():
    ds = TensorDataset({"input_ids": torch.arange(6).view(3, 2), "labels": torch.arange(6).view(3, 2)})
    assert collate_tensors(ds.__getitems__([2, 0]))["input_ids"].tolist() == [[4, 5], [0, 1]]
    assert collate_tensors([ds[0], ds[1]])["labels"].tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="same number of rows"):
        TensorDataset({"a": torch.zeros(2), "b": torch.zeros(3)})


def test_head_joins_the_existing_param_groups_and_is_clipped_on_its_own(tmp_path):
    """The head's weight joins the decay group, its bias the no-decay group (no extra groups: fewer optimizer launches
    per step); the head's gradients are clipped with their own norm, the model's with theirs."""
    args = make_args(tmp_path, max_steps=1, weight_decay=0.1, max_grad_norm=1e-3)
    trainer = SeqVCRTrainer(model=tiny_gpt2(), args=args, train_dataset=dataset(16), data_collator=collate_tensors)
    recorder = _Recorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2
    head = trainer.seq_vcr_projection["layer_1"]
    group_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert group_of[id(head.weight)] == 0.1 and group_of[id(head.bias)] == 0.0
    n_model = len(list(trainer.model.parameters()))
    model_grads, head_grads = recorder.grads[:n_model], recorder.grads[n_model:]

    def norm(grads):
        return float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None]))
        )

    assert norm(model_grads) == pytest.approx(1e-3, rel=1e-3)  # each side clipped to max_grad_norm on its own
    assert norm(head_grads) == pytest.approx(1e-3, rel=1e-3)


def test_tensor_dataset_to_device_gathers_there():
    ds = TensorDataset({"input_ids": torch.arange(6).view(3, 2), "labels": torch.arange(6).view(3, 2)})
    assert ds.to("cpu") is ds and ds.device == torch.device("cpu")
    batch = ds.__getitems__([2, 0])
    assert collate_tensors(batch)["input_ids"] is batch[0]["input_ids"]  # one ready batch: passed through, no copy
    meta = ds.to("meta")
    assert meta.device.type == "meta" and ds.device.type == "cpu"
    out = collate_tensors(meta.__getitems__(range(2)))
    assert out["input_ids"].device.type == "meta" and tuple(out["labels"].shape) == (2, 2)


class _StepPhase(TrainerCallback):
    """``inside`` is true between ``on_step_begin`` and ``on_step_end`` (the forward/backward/optimizer part)."""

    inside = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.inside = True

    def on_step_end(self, args, state, control, **kwargs):
        self.inside = False


def _count_host_reads(monkeypatch, phase: _StepPhase) -> list[str]:
    """Record every Python-level host read of a tensor value made inside a training step."""
    calls: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _name=name, _original=original, **kwargs):
            if phase.inside:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


def _eager_attention_gpt2() -> GPT2LMHeadModel:
    model = tiny_gpt2()  # sdpa's mask check reads the padding mask on the host in eager mode (not when compiled)
    model.config._attn_implementation = "eager"
    return model


def test_logged_terms_are_window_means_without_host_syncs_in_steps(tmp_path, monkeypatch):
    """Logged every 3 optimizer steps, ``loss``/``ce_loss``/``seq_vcr_*`` are the means of what logging every step
    reports (same seed and data, 2 micro-batches per step), and no step reads a tensor on the host."""
    ds = dataset(64, padded=True)
    common = dict(
        max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=2, logging_nan_inf_filter=False
    )
    every = SeqVCRTrainer(
        model=_eager_attention_gpt2(),
        args=make_args(tmp_path / "a", logging_steps=1, **common),
        train_dataset=ds,
        data_collator=collate_tensors,
    )
    every.train()
    phase = _StepPhase()
    windowed = SeqVCRTrainer(
        model=_eager_attention_gpt2(),
        args=make_args(tmp_path / "b", logging_steps=3, **common),
        train_dataset=ds,
        data_collator=collate_tensors,
        callbacks=[phase],
    )
    calls = _count_host_reads(monkeypatch, phase)
    windowed.train()
    assert calls == []
    # the counter sees a sync: the Trainer's NaN/Inf filter reads the loss every step
    filtered = SeqVCRTrainer(
        model=_eager_attention_gpt2(),
        args=make_args(tmp_path / "c", max_steps=1),
        train_dataset=ds,
        data_collator=collate_tensors,
        callbacks=[phase],
    )
    filtered.train()
    assert "__bool__" in calls
    monkeypatch.undo()
    per_step, per_window = train_logs(every), train_logs(windowed)
    assert len(per_step) == 6 and len(per_window) == 2
    for got, window in zip(per_window, (per_step[:3], per_step[3:])):
        for key in ("loss", "ce_loss", "seq_vcr_variance", "seq_vcr_covariance"):
            assert got[key] == pytest.approx(sum(e[key] for e in window) / 3, rel=1e-5, abs=1e-9), key


def test_head_runs_in_the_models_mixed_precision(tmp_path):
    """With bf16 the projection head's matmul runs under the model's autocast (the statistics stay float32)."""
    trainer = SeqVCRTrainer(
        model=tiny_gpt2(),
        args=make_args(tmp_path, max_steps=1, bf16=True),
        train_dataset=dataset(16),
        data_collator=collate_tensors,
    )
    head = trainer.seq_vcr_projection["layer_1"]
    dtypes = []
    handle = head.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    trainer.train()
    handle.remove()
    assert dtypes == [torch.bfloat16] and head.weight.dtype == torch.float32
    assert math.isfinite(train_logs(trainer)[0]["seq_vcr_variance"])
