"""Pause tokens: embedding growth, collator layout and masking, batched greedy generation."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_growth.tasks import build_tokenizer
from hf_growth.training.pause import (
    PAUSE,
    PAUSE_END,
    PAUSE_START,
    PauseCollator,
    add_pause_tokens,
    encode_examples,
    generate_with_pauses,
    pause_tokens_of,
)


def tiny_gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def tiny_llama(vocab: int, tied: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def gpt2_style_tokenizer():
    """A byte-level BPE tokenizer like GPT-2's, trained offline on task-like text (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["5 6 3 2 * 7 4 3 4", "1 2 + 3 = 4", "9 8 7 6 5 4 3 2 1 0"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")  # no pad token, like GPT-2


@pytest.mark.parametrize("make", [tiny_gpt2, lambda v: tiny_llama(v, tied=True)])
def test_add_pause_tokens_tied_mean_init_idempotent(make):
    tok = build_tokenizer(max_number=20, include_pause_tokens=False)
    model = make(len(tok))
    old = model.get_input_embeddings().weight.detach().clone()
    pause = add_pause_tokens(tok, model, num=3)
    assert len(tok) == old.shape[0] + 3
    assert pause.ids == tok.convert_tokens_to_ids([PAUSE_START, PAUSE, PAUSE_END])
    assert pause.block == [pause.start, pause.pause, pause.pause, pause.pause, pause.end]
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok)
    torch.testing.assert_close(emb[: old.shape[0]], old)
    for i in pause.ids:
        torch.testing.assert_close(emb[i], old.mean(dim=0))
    assert model.get_output_embeddings().weight is emb  # tied stays tied
    assert PAUSE in tok.all_special_tokens
    before = emb.detach().clone()
    assert add_pause_tokens(tok, model, num=3) == pause  # idempotent
    assert len(tok) == before.shape[0] and model.get_input_embeddings().weight.shape == before.shape
    torch.testing.assert_close(model.get_input_embeddings().weight, before)


def test_add_pause_tokens_untied_output_mean_init():
    tok = build_tokenizer(max_number=20, include_pause_tokens=False)
    model = tiny_llama(len(tok), tied=False)
    old_out = model.get_output_embeddings().weight.detach().clone()
    pause = add_pause_tokens(tok, model)
    out = model.get_output_embeddings().weight
    assert out is not model.get_input_embeddings().weight
    assert out.shape[0] == len(tok)
    torch.testing.assert_close(out[pause.pause], old_out.mean(dim=0))


def test_tokenizer_already_has_tokens_and_model_none():
    tok = build_tokenizer(max_number=20)  # pause tokens built in
    n = len(tok)
    pause = add_pause_tokens(tok, None, num=2)
    assert len(tok) == n and pause == pause_tokens_of(tok, 2)
    with pytest.raises(ValueError, match="add_pause_tokens"):
        pause_tokens_of(build_tokenizer(max_number=5, include_pause_tokens=False))


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_layout_and_masks(side):
    tok = build_tokenizer(max_number=20)
    pause = pause_tokens_of(tok, num=2)
    collate = PauseCollator(tok, pause, padding_side=side)
    batch = collate([{"question": "1 2 * 3", "answer": "3 6"}, {"question": "4 * 5", "answer": "0 2"}])
    ids, labels, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == att.shape == (2, 11)
    assert att.sum(dim=1).tolist() == [11, 10]
    assert att[1, -1 if side == "left" else 0] == 1 and att[1, 0 if side == "left" else -1] == 0
    assert ids[1][~att[1].bool()].tolist() == [tok.pad_token_id]
    expected = [["1", "2", "*", "3"], ["4", "*", "5"]]
    answers = [["3", "6"], ["0", "2"]]
    for row in range(2):
        valid = att[row].bool()
        tokens = tok.convert_ids_to_tokens(ids[row][valid].tolist())
        assert tokens == expected[row] + [PAUSE_START, PAUSE, PAUSE, PAUSE_END] + answers[row] + ["<eos>"]
        target = labels[row][valid].tolist()
        n_prefix = len(expected[row]) + 4
        assert target[:n_prefix] == [-100] * n_prefix  # question and pauses masked
        assert tok.convert_ids_to_tokens(target[n_prefix:]) == answers[row] + ["<eos>"]
        assert (labels[row][~valid] == -100).all()  # padding masked


def test_collator_padding_positions_and_no_pause():
    tok = build_tokenizer(max_number=20)
    batch = encode_examples(tok, ["1", "1 2 3"], ["4", "5"], pause=None, padding_side="left")
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, 0] == tok.pad_token_id
    assert batch["labels"][0].tolist() == [-100, -100, -100, tok.convert_tokens_to_ids("4"), tok.eos_token_id]
    batch = encode_examples(tok, ["1"], ["4"], pause=pause_tokens_of(tok, num=0))
    assert batch["input_ids"].shape[1] == 3  # num=0: no pause block at all
    with pytest.raises(ValueError, match="max_length"):
        encode_examples(tok, ["1 2 3"], ["4"], max_length=2)
    with pytest.raises(ValueError, match="padding_side"):
        encode_examples(tok, ["1"], ["4"], padding_side="middle")


def test_gpt2_style_tokenizer_without_pad():
    tok = gpt2_style_tokenizer()
    model = tiny_gpt2(len(tok))
    pause = add_pause_tokens(tok, model, num=2)
    batch = PauseCollator(tok, pause)(
        [{"question": "5 6 * 7 4", "answer": "5 5 6"}, {"question": "1 * 2", "answer": "2"}]
    )
    ids, labels = batch["input_ids"], batch["labels"]
    assert (ids[0] == pause.pause).sum() == 2 and (ids[0] == pause.start).sum() == 1
    answer_ids = [i for i, lab in zip(ids[0].tolist(), labels[0].tolist()) if lab != -100]
    assert tok.decode(answer_ids[:-1]) == "5 5 6" and answer_ids[-1] == tok.eos_token_id
    assert model(**batch).loss.isfinite()


@pytest.mark.smollm2
def test_smollm2_tokenizer():
    from transformers import AutoTokenizer

    from hf_growth._embedded import smollm2_gguf_path

    path = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    specials = set(tok.all_special_tokens)
    pause = add_pause_tokens(tok, None, num=2)
    assert specials <= set(tok.all_special_tokens)  # existing special tokens kept
    assert pause.start >= 49152
    batch = PauseCollator(tok, pause)([{"question": "5 6 * 7 4", "answer": "5 5 6"}])
    target = [i for i, lab in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()) if lab != -100]
    assert tok.decode(target[:-1]) == "5 5 6" and target[-1] == tok.eos_token_id
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=True).replace(" ", "") == "56*74556"


class _ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: records prompts, answers with fixed tokens then EOS then junk."""

    def __init__(self, answer_ids, eos):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.answer_ids, self.eos, self.prompts = answer_ids, eos, []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert kwargs["do_sample"] is False and attention_mask.all()
        self.prompts.append(input_ids.clone())
        tail = torch.tensor(self.answer_ids + [self.eos, self.answer_ids[0]]).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail[:, :max_new_tokens]], dim=1)


def test_generate_with_pauses_prompts_and_stripping():
    tok = build_tokenizer(max_number=20)
    pause = pause_tokens_of(tok, num=2)
    model = _ScriptedModel(tok.convert_tokens_to_ids(["7", PAUSE, "8"]), tok.eos_token_id)
    questions = ["1 2 * 3", "4 * 5", "6 7 * 8"]
    answers = generate_with_pauses(model, tok, questions, pause, batch_size=8, max_new_tokens=6)
    assert answers == ["7 8"] * 3  # EOS stops, pause stripped
    assert sorted(p.shape[1] for p in model.prompts) == [7, 8]  # grouped by length: no padding
    for prompt in model.prompts:
        assert (prompt[:, -4:] == torch.tensor(pause.block)).all()


def test_generate_with_pauses_real_model():
    tok = build_tokenizer(max_number=20)
    model = tiny_gpt2(len(tok))
    pause = pause_tokens_of(tok, num=2)
    out = generate_with_pauses(model, tok, ["1 2 * 3", "4 * 5", "1 * 1"], pause, batch_size=2, max_new_tokens=4)
    assert len(out) == 3 and all(isinstance(a, str) for a in out)
    assert all(len(a.split()) <= 4 for a in out)
    model.train()
    generate_with_pauses(model, tok, ["1"], pause, max_new_tokens=1)
    assert model.training
