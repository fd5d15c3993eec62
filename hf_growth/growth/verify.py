"""Measure how far two causal LMs are apart: :func:`max_logit_diff` (max |logits_a - logits_b|), and
:func:`verify_checkpoints`, which compares two saved checkpoints (what ``hf-growth verify`` runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def random_input_ids(vocab_size: int, *, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    """A seeded random batch of token ids, the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)


@torch.no_grad()
def max_logit_diff(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    input_ids: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 2,
    seq_len: int = 16,
) -> float:
    """Return ``max |logits_a - logits_b|`` over a batch, computed in float32.

    Both models must share a vocabulary. Without ``input_ids`` a seeded random batch of
    ``batch_size x seq_len`` tokens is used, so the number is reproducible.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg)
    >>> max_logit_diff(model, model)
    0.0
    """
    vocab_a = model_a.get_output_embeddings().weight.shape[0]
    vocab_b = model_b.get_output_embeddings().weight.shape[0]
    if vocab_a != vocab_b:
        raise ValueError(f"max_logit_diff needs the same vocabulary: {vocab_a} vs {vocab_b} output rows.")
    if input_ids is None:
        input_ids = random_input_ids(vocab_a, batch_size=batch_size, seq_len=seq_len, seed=seed)
    logits = []
    for model in (model_a, model_b):
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            use_cache=False,
        )
        logits.append(out.logits.float().cpu())
        model.train(was_training)
    diff = (logits[0] - logits[1]).abs()
    if attention_mask is not None:
        diff = diff[attention_mask.bool().cpu()]
    return diff.max().item()


# ------------------------------------------------------------------------------ checkpoint verification

DEFAULT_PROMPT = "The capital of France is"
#: the largest max |Δlogits| (float32) that counts as "the same function"
DEFAULT_TOLERANCE = 1e-4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A loadable checkpoint directory: ``config.json`` and valid safetensors (no pickle), else a one-line error."""
    from .io import CheckpointError, SafetensorsSource

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path / 'config.json'}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or not config.get("model_type"):
        raise CheckpointError(f"{path / 'config.json'}: no model_type; not a transformers model config")
    SafetensorsSource(path)  # every header, the index and the shards: a truncated or missing file fails here
    return path


def _load_model(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    import hf_growth  # noqa: F401  (registers the ResFormer Auto classes)

    from .io import CheckpointError

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - whatever transformers raises, it is this input that cannot load
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: cannot load the model ({type(error).__name__}: {first_line})") from error
    return model.eval()


def load_tokenizer(*paths: str | os.PathLike) -> Any:
    """The tokenizer of the first of ``paths`` that holds tokenizer files and loads (offline), else ``None``."""
    for path in paths:
        if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
            continue
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception:  # noqa: BLE001, S112 - a tokenizer that does not load: try the next, else random ids
            continue
    return None


def _greedy(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    eos = model.config.eos_token_id
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=eos if isinstance(eos, int) else 0,
        )
    return out[0, input_ids.shape[1] :]


def verify_checkpoints(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    prompt: str = DEFAULT_PROMPT,
    max_new_tokens: int = 16,
    dtype: str = "float32",
    seed: int = 0,
    models: tuple[torch.nn.Module, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Compare the causal LMs saved in ``src`` and ``out``: max |Δlogits| on a seeded random batch and on the
    prompt, and whether greedy text matches.

    Returns ``{"max_logit_diff", "prompt_logit_diff", "greedy_match", "src_text", "out_text", "prompt",
    "dtype", "tokenizer"}``. Without tokenizer files in either directory the prompt is a seeded random row of
    token ids (``"tokenizer": False``, and ``"prompt"`` says so). Bad input raises a one-line ``ValueError`` /
    ``FileNotFoundError`` before anything is computed: a directory without ``config.json``, a truncated,
    missing or pickle-only weight file, two models with different vocabularies. ``models`` skips loading.

    >>> verify_checkpoints("small-model", "grown-model")["greedy_match"]  # doctest: +SKIP
    True
    """
    from .io import CheckpointError

    if dtype not in ("float32", "bfloat16", "float16", "float64"):
        raise ValueError(f"dtype {dtype!r}: use float32, bfloat16, float16 or float64")
    torch_dtype = getattr(torch, dtype)
    if models is None:
        paths = [_check_checkpoint_dir(src), _check_checkpoint_dir(out)]
        model_a, model_b = (_load_model(p, torch_dtype) for p in paths)
    else:
        model_a, model_b = models
    vocab_a = model_a.get_output_embeddings().weight.shape[0]
    vocab_b = model_b.get_output_embeddings().weight.shape[0]
    if vocab_a != vocab_b:
        raise CheckpointError(
            f"{src} and {out} cannot be compared: their vocabularies differ ({vocab_a} vs {vocab_b} output rows)"
        )
    diff = max_logit_diff(model_a, model_b, seed=seed)
    tokenizer = load_tokenizer(src, out)
    if tokenizer is not None:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if input_ids.numel() == 0 or int(input_ids.max()) >= vocab_a:
            tokenizer = None  # a tokenizer that does not fit the model: fall back to random ids
    if tokenizer is None:
        input_ids = random_input_ids(vocab_a, batch_size=1, seq_len=8, seed=seed + 1)
    prompt_diff = max_logit_diff(model_a, model_b, input_ids)
    tokens_a = _greedy(model_a, input_ids, max_new_tokens)
    tokens_b = _greedy(model_b, input_ids, max_new_tokens)

    def text(tokens: torch.Tensor) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer is not None else str(tokens.tolist())

    return {
        "max_logit_diff": max(diff, prompt_diff),
        "prompt_logit_diff": prompt_diff,
        "greedy_match": bool(torch.equal(tokens_a, tokens_b)),
        "src_text": text(tokens_a),
        "out_text": text(tokens_b),
        "prompt": prompt if tokenizer is not None else f"random token ids {input_ids[0].tolist()}",
        "dtype": dtype,
        "tokenizer": tokenizer is not None,
    }


def verification_passed(result: dict[str, Any], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether a :func:`verify_checkpoints` result says "the same function": max |Δlogits| <= ``tolerance``
    and the same greedy text.

    >>> verification_passed({"max_logit_diff": 3e-6, "greedy_match": True})
    True
    """
    return result["max_logit_diff"] <= tolerance and result["greedy_match"] is not False


def changes_function_by_design(growth_history: list[dict[str, Any]] | None) -> bool:
    """Whether a grown config's ``growth_history`` holds a step that is not meant to preserve the function
    (``stack``, or a step run with ``approximate: true``).

    >>> changes_function_by_design([{"step": {"stack": {"to": 4}}}]), changes_function_by_design([])
    (True, False)
    """
    for record in growth_history or []:
        for kind, options in (record.get("step") or {}).items():
            if kind == "stack" or (isinstance(options, dict) and options.get("approximate")):
                return True
    return False
