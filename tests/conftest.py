"""Shared fixtures. Tests run on the CPU, offline, with small thread counts (CI has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# HF_GROWTH_TEST_THREADS=1 on a machine shared with other jobs (2 spinning threads on 1 free core are slow)
torch.set_num_threads(int(os.environ.get("HF_GROWTH_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M as ``(model, tokenizer)``, float32, loaded once per session.

    Shared by every test: never modify it in place (grow or convert into a new model instead).
    """
    from hf_growth._embedded import load_smollm2

    model, tokenizer = load_smollm2()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, tokenizer


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses the ``smollm2`` fixture (it loads the 135M model) ``smollm2``: test-fast skips it."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.smollm2)
