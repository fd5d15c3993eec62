"""Pause tokens (``papers.md`` §1): ``<question> <pause_start> <pause>*k <pause_end> <answer> <eos>``.

>>> from hf_growth.tasks import build_tokenizer
>>> from hf_growth.training.pause import add_pause_tokens, PauseCollator
>>> tok = build_tokenizer()
>>> pause = add_pause_tokens(tok, None, num=2)
>>> batch = PauseCollator(tok, pause)([{"question": "1 2 * 3", "answer": "3 6"}])
>>> tok.decode(batch["input_ids"][0])
'1 2 * 3 <pause_start> <pause> <pause> <pause_end> 3 6 <eos>'
>>> batch["labels"][0].tolist()[-3:] == tok.convert_tokens_to_ids(["3", "6", "<eos>"])
True

With peft, add the tokens to the base model first and let LoRA train only their embedding rows::

    pause = add_pause_tokens(tokenizer, model, num=2)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                        trainable_token_indices={"embed_tokens": pause.ids})  # or modules_to_save=["embed_tokens"]
    model = get_peft_model(model, config)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "PAUSE_START",
    "PAUSE",
    "PAUSE_END",
    "PauseTokens",
    "add_pause_tokens",
    "pause_tokens_of",
    "PauseCollator",
    "encode_examples",
    "generate_with_pauses",
]

PAUSE_START, PAUSE, PAUSE_END = "<pause_start>", "<pause>", "<pause_end>"


@dataclass(frozen=True)
class PauseTokens:
    """Ids of the pause tokens and the number of ``<pause>`` tokens in a block (``num=0``: no block)."""

    start: int
    pause: int
    end: int
    num: int = 2

    @property
    def ids(self) -> list[int]:
        """The three distinct ids ``[start, pause, end]`` (e.g. for peft's ``trainable_token_indices``)."""
        return [self.start, self.pause, self.end]

    @property
    def block(self) -> list[int]:
        """The ids inserted between question and answer: ``[start] + [pause]*num + [end]``, or ``[]``."""
        return [] if self.num <= 0 else [self.start, *([self.pause] * self.num), self.end]


def _unwrap(model):
    get_base = getattr(model, "get_base_model", None)  # peft
    return get_base() if callable(get_base) else model


def pause_tokens_of(tokenizer, num: int = 2) -> PauseTokens:
    """The :class:`PauseTokens` of a tokenizer that already has them (raise ``ValueError`` otherwise)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (PAUSE_START, PAUSE, PAUSE_END) if t not in vocab]
    if missing:
        raise ValueError(f"tokenizer has no pause tokens {missing}: call add_pause_tokens(tokenizer, model) first")
    return PauseTokens(vocab[PAUSE_START], vocab[PAUSE], vocab[PAUSE_END], num)


@torch.no_grad()
def add_pause_tokens(tokenizer, model=None, num: int = 2) -> PauseTokens:
    """Add ``<pause_start>``, ``<pause>``, ``<pause_end>`` as special tokens and grow the model's embeddings.

    New embedding rows (input and, if untied, output) are set to the mean of the existing rows; tied
    embeddings stay tied. Idempotent: a second call adds nothing and changes no weight. ``model`` may be
    ``None`` (tokenizer only) or a peft model (its base model is resized; prefer calling this before
    ``get_peft_model``). Returns the ids as :class:`PauseTokens` (``num`` pauses per block).

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from hf_growth.tasks import build_tokenizer
    >>> tok = build_tokenizer(include_pause_tokens=False)
    >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    >>> pause = add_pause_tokens(tok, model)
    >>> model.get_input_embeddings().num_embeddings == len(tok) and pause == add_pause_tokens(tok, model)
    True
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in (PAUSE_START, PAUSE, PAUSE_END) if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    pause = pause_tokens_of(tokenizer, num)
    if model is None:
        return pause
    base = _unwrap(model)
    needed = max(len(tokenizer), max(pause.ids) + 1)
    embeddings = base.get_input_embeddings()
    old = embeddings.weight.shape[0]
    if needed <= old:
        return pause
    output = base.get_output_embeddings()
    tied = output is not None and output.weight is embeddings.weight
    in_mean = embeddings.weight[:old].float().mean(dim=0)
    out_mean = None if (output is None or tied) else output.weight[:old].float().mean(dim=0)
    base.resize_token_embeddings(needed, mean_resizing=False)
    embeddings = base.get_input_embeddings()
    embeddings.weight[old:] = in_mean.to(embeddings.weight.dtype)
    output = base.get_output_embeddings()
    if tied and output is not None and output.weight is not embeddings.weight:  # pragma: no cover - defensive
        base.tie_weights()
    if out_mean is not None and output is not None:
        output.weight[old:] = out_mean.to(output.weight.dtype)
        bias = getattr(output, "bias", None)
        if bias is not None and bias.shape[0] == needed:
            bias[old:] = bias[:old].mean()
    return pause


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens; fast paths for word-level (split + lookup) and Rust tokenizers."""
    texts = list(texts)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        if (
            type(backend.model).__name__ == "WordLevel"
            and type(backend.pre_tokenizer).__name__ == "WhitespaceSplit"
            and backend.normalizer is None
        ):
            vocab, unk = tokenizer.get_vocab(), tokenizer.unk_token_id
            return [[vocab.get(word, unk) for word in text.split()] for text in texts]
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer needs an eos_token (it ends every answer)")
    return int(eos)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else _eos_id(tokenizer))


def encode_examples(
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    pause: PauseTokens | None = None,
    padding_side: str = "right",
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise (question, answer) pairs into padded ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Layout per row: question ids, the pause block (if ``pause`` and ``pause.num > 0``), answer ids, EOS.
    Labels are ``-100`` on question, pause and padding positions. ``padding_side``: ``"right"`` or ``"left"``.

    >>> from hf_growth.tasks import build_tokenizer
    >>> tok = build_tokenizer()
    >>> out = encode_examples(tok, ["1 * 2", "3"], ["2", "4 5"])
    >>> out["input_ids"].shape  # the longer row: 3 question tokens, 1 answer token, <eos>
    torch.Size([2, 5])
    >>> out["labels"][1].tolist() == [-100, *tok.convert_tokens_to_ids(["4", "5", "<eos>"]), -100]
    True
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    import itertools

    import numpy as np

    block = np.asarray(pause.block if pause is not None else [], dtype=np.int64)
    eos, pad = _eos_id(tokenizer), _pad_id(tokenizer)
    q_ids, a_ids = _encode(tokenizer, questions), _encode(tokenizer, answers)
    n, nb = len(q_ids), block.size
    lq = np.fromiter(map(len, q_ids), dtype=np.int64, count=n)
    la = np.fromiter(map(len, a_ids), dtype=np.int64, count=n)
    total = lq + nb + la + 1
    width = int(total.max()) if n else 0
    if max_length is not None:
        if width > max_length:
            raise ValueError(f"an example has {width} tokens, more than max_length={max_length}")
        width = max_length
    shift = np.zeros(n, dtype=np.int64) if padding_side == "right" else width - total
    input_ids = np.full((n, width), pad, dtype=np.int64)
    labels = np.full((n, width), -100, dtype=np.int64)
    attention = (np.arange(width)[None, :] >= shift[:, None]) & (np.arange(width)[None, :] < (shift + total)[:, None])
    rows = np.arange(n)

    def scatter(lists, lengths, start, into_labels):
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
        row = np.repeat(rows, lengths)
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        col = np.arange(flat.size) - offsets + np.repeat(start, lengths)
        input_ids[row, col] = flat
        if into_labels:
            labels[row, col] = flat

    scatter(q_ids, lq, shift, False)
    for j in range(nb):
        input_ids[rows, shift + lq + j] = block[j]
    scatter(a_ids, la, shift + lq + nb, True)
    input_ids[rows, shift + total - 1] = eos
    labels[rows, shift + total - 1] = eos
    input_ids = torch.from_numpy(input_ids)
    label_t = torch.from_numpy(labels)
    attention = torch.from_numpy(attention.astype(np.int64))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_t}


class PauseCollator:
    """Data collator: features with ``question``/``answer`` strings -> padded tensors with the pause block.

    ``pause=None`` means no pause block. Use with ``TrainingArguments(remove_unused_columns=False)`` when the
    dataset is a ``datasets.Dataset`` with string columns.

    >>> from hf_growth.tasks import build_tokenizer
    >>> tok = build_tokenizer()
    >>> collate = PauseCollator(tok, pause_tokens_of(tok, num=1), padding_side="left")
    >>> batch = collate([{"question": "1", "answer": "2"}, {"question": "1 2", "answer": "3"}])
    >>> batch["attention_mask"][0].tolist()  # left padding: 1 + 3 (pause block) + 1 + <eos> = 6 of 7
    [0, 1, 1, 1, 1, 1, 1]
    """

    def __init__(
        self,
        tokenizer,
        pause: PauseTokens | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.pause = pause
        self.padding_side = padding_side
        self.max_length = max_length

    def __call__(self, features: Iterable[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = list(features)
        return encode_examples(
            self.tokenizer,
            [f["question"] for f in features],
            [f["answer"] for f in features],
            self.pause,
            self.padding_side,
            self.max_length,
        )


@torch.no_grad()
def generate_with_pauses(
    model,
    tokenizer,
    questions: Sequence[str],
    pause: PauseTokens | None = None,
    batch_size: int = 256,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy answers to ``questions``: each prompt is the question plus the pause block.

    Prompts are batched by token length, so no batch needs padding (exact for absolute-position models too).
    Generation stops at EOS; pause and other special tokens are stripped from the returned strings.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from hf_growth.tasks import build_tokenizer
    >>> tok = build_tokenizer()
    >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    >>> len(generate_with_pauses(model, tok, ["1 2 * 3 4"], pause_tokens_of(tok), max_new_tokens=3))
    1
    """
    block = pause.block if pause is not None else []
    eos, pad = _eos_id(tokenizer), _pad_id(tokenizer)
    prompts = [q + block for q in _encode(tokenizer, questions)]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    device = next(_unwrap(model).parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = [""] * len(prompts)
    try:
        for _, idx in sorted(by_length.items()):
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                ids = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )
                new = out[:, ids.shape[1] :].tolist()
                for i, row in zip(chunk, new):
                    if eos in row:
                        row = row[: row.index(eos)]
                    answers[i] = " ".join(tokenizer.decode(row, skip_special_tokens=True).split())
    finally:
        model.train(was_training)
    return answers
