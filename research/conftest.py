"""Shared set-up of the research tests: CPU, offline, small thread counts; the repository root (``hf_growth``)
and ``benchmarks/`` (``_common``: what every result file records) importable. Each question's ``tests/conftest.py``
puts its own folder on the path too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "benchmarks", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("HF_GROWTH_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
