"""LabelledLogitsCollator: logits only where the loss reads them, the same loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_growth.training.data import LabelledLogitsCollator, TensorDataset, collate_tensors, first_labelled_position


def _batch(rows=6, length=12, first=7, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :first] = -100
    labels[1, first] = -100  # rows start their answers at different columns; padding at the end
    labels[2, -3:] = -100
    mask = torch.ones_like(ids)
    mask[2, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _resformer():
    from hf_growth import ResFormerConfig, ResFormerForCausalLM

    return ResFormerForCausalLM(
        ResFormerConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )


MODELS = {
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=32)),
    "resformer": _resformer,
}


@pytest.mark.compat  # logits_to_keep and shift_labels on the GPU machine's transformers 5.17 too
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_same_loss_and_gradients_with_fewer_logits(arch):
    torch.manual_seed(0)
    model = MODELS[arch]().eval()  # no dropout: the two forwards must see the same network
    batch = _batch()
    first = first_labelled_position(TensorDataset(batch))
    assert first == 7
    full = collate_tensors(batch)
    cut = LabelledLogitsCollator(first)(batch)
    assert cut["logits_to_keep"] == 12 - 6 and cut["shift_labels"].shape == (6, 6)
    losses, grads = [], []
    for inputs in (full, cut):
        model.zero_grad()
        out = model(**inputs)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        assert out.logits.shape[1] == inputs.get("logits_to_keep") or 12
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # num_items_in_batch (gradient accumulation, transformers 5): the same sum over the same tokens
    n = (full["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(
        model(**cut, num_items_in_batch=n).loss, model(**full, num_items_in_batch=n).loss, rtol=1e-6, atol=0
    )


def test_collator_edges():
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.full((2, 4), -100)}
    assert "logits_to_keep" not in LabelledLogitsCollator(1)(batch)  # the first logit is already scored
    assert first_labelled_position(TensorDataset(batch)) is None
    assert "logits_to_keep" not in LabelledLogitsCollator(3)({"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="first_labelled must be >= 0"):
        LabelledLogitsCollator(-1)


@pytest.mark.compat
def test_script_trains_the_same_with_labelled_logits(tmp_path):
    from safetensors.torch import load_file
    from test_train_script import TINY, _load_script

    module = _load_script()
    weights = {}
    for flag in ("--labelled-logits", "--no-labelled-logits"):
        out = tmp_path / flag
        assert (
            module.main(
                [
                    *TINY,
                    "--model",
                    "llama-tiny",
                    "--max-steps",
                    "6",
                    "--max-test",
                    "4",
                    "--save-final",
                    flag,
                    "--output-dir",
                    str(out),
                ]
            )
            == 0
        )
        weights[flag] = load_file(out / "final" / "model.safetensors")
    for name, value in weights["--no-labelled-logits"].items():
        torch.testing.assert_close(weights["--labelled-logits"][name], value, rtol=1e-4, atol=1e-6, msg=name)
