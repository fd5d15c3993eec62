"""Benchmark: streaming dense -> MoE upcycling against the copy limit and mergekit-moe.

In one run, on the seeded random bf16 Llama checkpoint of ``grow_streaming.py`` (generated once and cached under
``--cache-dir``), it measures wall time and peak RSS, each in its own subprocess, of:

1. ``hf-growth upcycle``  ``{experts: {to: 8, top_k: 2}}`` streaming (Llama -> Mixtral: every expert's tensors are
   byte copies of the dense MLP's; only the routers are computed);
2. ``copy``               copying that output's bytes with ``shutil.copyfile`` (the physical limit);
3. ``mergekit-moe``       mergekit-moe 0.1.5 (own venv; LGPL: used as a tool, never copied) building the same Mixtral
   with ``gate_mode: random`` from 8 copies of the same model; its expert tensors (and every other tensor but the
   routers, which are random in both) are checked equal to ours.

Prints a table and writes JSON (machine facts, the exact command, checkpoint shape, results, targets).

    .venv/bin/python benchmarks/upcycle_streaming.py --cache-dir /data/bench          # the real run (~1.2 GB source)
    .venv/bin/python benchmarks/upcycle_streaming.py --cache-dir /tmp/b --size tiny   # smoke test

mergekit is installed on first use into ``--mergekit-venv`` (as in ``grow_streaming.py``: this venv's torch is
shared through a ``.pth`` file), or pass ``--mergekit-python`` of an existing venv; ``--skip-mergekit`` leaves it
out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE.parent))

import grow_streaming as gs  # noqa: E402
from _common import write_json  # noqa: E402

MERGEKIT_VERSION = "0.1.5"
EXPERTS, TOP_K = 8, 2
PLAN = [{"experts": {"to": EXPERTS, "top_k": TOP_K}}]


def mergekit_moe_config(src: Path) -> str:
    """mergekit-moe's config for 8 copies of ``src`` with random routers (prompts are not used by ``random``)."""
    lines = [f"base_model: {src}", "gate_mode: random", "dtype: bfloat16", f"experts_per_token: {TOP_K}", "experts:"]
    for _ in range(EXPERTS):
        lines += [f"  - source_model: {src}", '    positive_prompts: [""]']
    return "\n".join(lines) + "\n"


def mergekit_moe_cmd(python: Path, config: Path, out: Path, shard_bytes: int) -> list[str]:
    exe = python.parent / "mergekit-moe"
    help_text = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False).stdout
    cmd = [str(exe), str(config), str(out)]
    if "--out-shard-size" in help_text:  # bytes, as in grow_streaming.py (mergekit compares bytes with it)
        cmd += ["--out-shard-size", str(shard_bytes)]
    for flag in ("--no-copy-tokenizer", "--lazy-unpickle", "--allow-crimes"):
        if flag in help_text:
            cmd.append(flag)
    return cmd


def ensure_mergekit(args: argparse.Namespace) -> Path:
    """mergekit's python (installed as ``grow_streaming.py`` does, pinned to 0.1.5)."""
    return gs.mergekit_python(args, f"mergekit=={MERGEKIT_VERSION}")


def ensure_tokenizer(src: Path, vocab_size: int) -> None:
    """mergekit-moe loads the base model's tokenizer: give the generated checkpoint a word-level one (``t0``,
    ``t1``, ...) of its vocabulary size. hf-growth copies it along as a side file."""
    if (src / "tokenizer.json").exists():
        return
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", bos_token="t1", eos_token="t2").save_pretrained(
        src
    )


def compare_with_mergekit(ours: Path, theirs: Path) -> dict:
    """Every tensor but the routers (random in both) equal. Both are read as transformers 5 holds them (fused expert
    tensors), whichever layout each wrote (hf-growth: per expert, as save_pretrained; mergekit-moe: per expert, or
    fused when it runs with transformers 5)."""
    import torch

    from hf_growth.growth.adapters import get_adapter
    from hf_growth.growth.io import SafetensorsSource
    from hf_growth.growth.io.reader import ExpertLayoutSource

    adapter = get_adapter("mixtral")
    a, b = (ExpertLayoutSource(SafetensorsSource(p), adapter) for p in (ours, theirs))
    routers = {n for n in set(a) | set(b) if n.endswith("mlp.gate.weight")}
    only_ours, only_theirs = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    compared = sorted((set(a) & set(b)) - routers)
    different = [n for n in compared if not torch.equal(a.get(n), b.get(n))]
    experts = [n for n in compared if ".experts." in n]
    return {
        "tensors_equal": not (only_ours or only_theirs or different),
        "compared": len(compared),
        "expert_tensors_compared": len(experts),
        "routers_not_compared": len(routers),
        "only_ours": only_ours[:10],
        "only_mergekit": only_theirs[:10],
        "different": different[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="where the generated checkpoint is cached")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch for outputs (default: CACHE_DIR/runs)")
    parser.add_argument(
        "--size",
        choices=sorted(gs.SHAPES),
        default="full",
        help="checkpoint shape (grow_streaming.py's: full ~1.2 GB, mid ~0.4 GB, tiny)",
    )
    parser.add_argument("--shard-size", default=None, help="input and output shard size (default: the shape's)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="result file (default: benchmarks/results/upcycle_streaming.json for --size full, "
        "else CACHE_DIR/upcycle_streaming_<size>.json)",
    )
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--prefault-gb", type=float, default=4.0, help="see grow_streaming.py")
    parser.add_argument("--repeats", type=int, default=1, help="run the sequence this many times; medians shown")
    parser.add_argument("--mergekit-venv", default=str(REPO / ".bench-venvs" / f"mergekit-{MERGEKIT_VERSION}"))
    parser.add_argument("--mergekit-python", default=None, help="python of an existing venv with mergekit 0.1.5")
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        parser.error("--cache-dir is required")

    spec = gs.SHAPES[args.size]
    shard_size = args.shard_size or spec["shard_size"]
    cache = args.cache_dir.resolve()
    work = (args.work_dir or cache / "runs").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from hf_growth.growth.io import SafetensorsSource, parse_size

    shard_bytes = parse_size(shard_size)
    src = gs.generate_checkpoint(cache, args.size, shard_size)
    src_bytes = SafetensorsSource(src).total_size
    if not args.skip_mergekit:
        ensure_tokenizer(src, spec["model"]["vocab_size"])
    timing = work / "timing.json"
    runs: dict[str, list[dict]] = {}

    def run(label: str, cmd: list[str], out: Path, repeat: int) -> dict:
        if out.exists():
            shutil.rmtree(out)
        timing.unlink(missing_ok=True)
        gs.warm(src)
        os.sync()
        gs.prefault(int(args.prefault_gb * (1 << 30)))
        load = os.getloadavg()
        r = gs.measure(cmd, label=label)
        r["work_s"] = json.loads(timing.read_text())["work_s"] if timing.exists() else None
        r["output_bytes"] = gs.dir_bytes(out)
        r["load_average_before"], r["repeat"] = list(load), repeat
        runs.setdefault(label, []).append(r)
        print(
            f"  [{repeat}] {label:<18} {r['wall_s']:8.2f} s  {r['peak_rss_mb']:8.0f} MB  (load {load[0]:.2f})",
            flush=True,
        )
        return r

    def task(**kw) -> list[str]:
        return gs.worker_cmd({**kw, "timing": str(timing)})

    print(f"source: {src} ({src_bytes / 1e9:.2f} GB of tensors)", flush=True)
    ours_out, mk_out = work / "ours-upcycle", work / "mergekit-moe"
    mk_python = ensure_mergekit(args) if not args.skip_mergekit else None
    comparison = None
    for repeat in range(args.repeats):
        run(
            "hf-growth upcycle",
            task(kind="ours", src=str(src), plan=PLAN, out=str(ours_out), shard_size=shard_size),
            ours_out,
            repeat,
        )
        run(
            "copy",
            task(kind="copy", files=[str(p) for p in gs.weight_files(ours_out)], out=str(work / "copy")),
            work / "copy",
            repeat,
        )
        shutil.rmtree(work / "copy")
        if mk_python is not None:
            config = work / "mergekit-moe.yml"
            config.write_text(mergekit_moe_config(src))
            run("mergekit-moe", mergekit_moe_cmd(mk_python, config, mk_out, shard_bytes), mk_out, repeat)
            if comparison is None:
                comparison = compare_with_mergekit(ours_out, mk_out)
                print(
                    f"  tensors equal to mergekit-moe's (routers aside): {comparison['tensors_equal']} "
                    f"({comparison['compared']} compared, {comparison['expert_tensors_compared']} expert tensors)"
                )
            shutil.rmtree(mk_out)
        shutil.rmtree(ours_out)
    timing.unlink(missing_ok=True)

    def median(values: list[float]) -> float:
        values = sorted(values)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    results = {
        label: {
            "wall_s": median([r["wall_s"] for r in rs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in rs]),
            "work_s": median([r["work_s"] for r in rs]) if rs[0]["work_s"] is not None else None,
            "output_bytes": rs[0]["output_bytes"],
            "repeats": rs,
        }
        for label, rs in runs.items()
    }
    ours, copy = results["hf-growth upcycle"], results["copy"]
    ratios = {"upcycle_vs_copy": ours["wall_s"] / copy["wall_s"]}
    targets = {
        "upcycle <= 1.5x copy": ratios["upcycle_vs_copy"] <= 1.5,
        "upcycle peak RSS <= 600 MB": ours["peak_rss_mb"] <= 600,
    }
    if "mergekit-moe" in results:
        ratios["upcycle_vs_mergekit"] = ours["wall_s"] / results["mergekit-moe"]["wall_s"]
        targets["upcycle <= 0.5x mergekit-moe"] = ratios["upcycle_vs_mergekit"] <= 0.5
        targets["expert tensors equal mergekit-moe's"] = bool(comparison and comparison["tensors_equal"])

    print()
    print(f"{'method':<18} {'wall s':>8} {'work s':>8} {'peak RSS MB':>12} {'output GB':>10} {'x copy':>7}")
    for label, r in results.items():
        work_s = f"{r['work_s']:8.2f}" if r.get("work_s") is not None else f"{'-':>8}"
        print(
            f"{label:<18} {r['wall_s']:8.2f} {work_s} {r['peak_rss_mb']:12.0f} {r['output_bytes'] / 1e9:10.3f} "
            f"{r['wall_s'] / copy['wall_s']:7.2f}"
        )
    print()
    for name, ok in targets.items():
        print(f"  [{'x' if ok else ' '}] {name}")

    record = {
        "benchmark": "upcycle_streaming",
        "command": shlex.join([sys.executable, *sys.argv]),
        "size": args.size,
        "checkpoint": {**spec["model"], "dtype": "bfloat16", "shard_size": shard_size, "tensor_bytes": src_bytes},
        "plan": PLAN,
        "mergekit": {"version": MERGEKIT_VERSION, "config": mergekit_moe_config(Path("SRC"))} if mk_python else None,
        "comparison_with_mergekit": comparison,
        "results": results,
        "ratios": ratios,
        "targets": targets,
        "machine": gs.machine_facts(work),
    }
    out_json = args.json or (
        REPO / "benchmarks" / "results" / "upcycle_streaming.json"
        if args.size == "full"
        else cache / f"upcycle_streaming_{args.size}.json"
    )
    write_json(out_json, record)
    print(f"\nwrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
