"""A small word-level tokenizer over the task symbols, built with the ``tokenizers`` library.

Tokens are whitespace-separated words: the integers ``0..max_number-1``, the operators ``+ - * / ( ) =``,
``<sep>`` and ``|``, the specials ``<pad> <eos> <unk>`` and (by default) the pause tokens. Every task's
questions and answers tokenise without ``<unk>`` as long as their numbers are below ``max_number``.

>>> from hf_growth.tasks.tokenizer import build_tokenizer
>>> tok = build_tokenizer()
>>> tok.decode(tok("5 6 * 7 4")["input_ids"])
'5 6 * 7 4'
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["build_tokenizer", "TASK_SYMBOLS"]

TASK_SYMBOLS = ("+", "-", "*", "/", "(", ")", "=", "<sep>", "|")
_PAUSE = ("<pause_start>", "<pause>", "<pause_end>")


def build_tokenizer(max_number: int = 256, extra_tokens: Iterable[str] = (), include_pause_tokens: bool = True):
    """Return a word-level ``PreTrainedTokenizerFast`` (pad ``<pad>``, eos ``<eos>``, unk ``<unk>``).

    ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it.

    >>> tok = build_tokenizer(max_number=12)
    >>> tok.convert_ids_to_tokens(tok("11 + 3 =")["input_ids"])
    ['11', '+', '3', '=']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", *(str(i) for i in range(int(max_number))), *TASK_SYMBOLS]
    words += [w for w in extra_tokens if w not in words]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=4096
    )
    if include_pause_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(_PAUSE)}, replace_extra_special_tokens=False)
    return tokenizer
