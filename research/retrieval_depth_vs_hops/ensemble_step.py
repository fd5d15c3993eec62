"""Steps per second of the retrieval sweep's ensemble step, ours vs the loop it replaces, in one run.

``retrieval_ensemble.py`` trains many small Llama members as one :class:`llama_ensemble.LlamaEnsemble`.
Its step (fresh examples drawn on the GPU, compiled forward + backward, per-member clipping, :class:`MemberAdamW`)
was bound by the host: the eager clip and update launch ~4 and ~15 kernels per parameter, and the first version of
the loop made the host wait for the GPU inside every step (a Python-list index and host-to-GPU copies of small index
tensors). This script times, on the same ensemble and data, one variant per row:

- ``eager update, host waits``: eager clip + update, the host synchronised twice per step (where the old loop's
  copies did: before drawing the batch and after the update) -- the baseline;
- ``eager update``: the same without the waits (the current loop's indexing);
- ``compiled update``: clip and update through ``torch.compile`` (``compile=True``; what the sweep now runs);
- ``compiled update + CUDA graphs``: also the forward + backward with ``mode="reduce-overhead"``.

For each: median seconds per step over ``--repeats`` timed blocks of ``--steps`` steps (synchronised at both ends,
after ``--warmup`` steps) and the ratio to the baseline. With ``--check-syncs`` the compiled loop also runs under
``torch.cuda.set_sync_debug_mode("error")`` for a few steps, which fails on any host-device synchronisation.

    PYTHONPATH=. python research/retrieval_depth_vs_hops/ensemble_step.py --hops 4 --depths 3-6 --seeds 0,1,2 --pair-separator
    PYTHONPATH=. python research/retrieval_depth_vs_hops/ensemble_step.py --cpu --steps 5 --repeats 1 --warmup 2   # smoke
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from _common import command_line, device_label, versions, write_json  # noqa: E402
from retrieval_depth import shape_of  # noqa: E402
from retrieval_ensemble import TaskData, ensemble_config  # noqa: E402
from retrieval_ensemble import parse_args as sweep_args


def parse_args(argv):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, CUDA graph capture)")
    p.add_argument("--variants", default="eager-sync,eager,compiled,graphs")
    p.add_argument("--check-syncs", action="store_true")
    p.add_argument("--output", default="research/retrieval_depth_vs_hops/results/ensemble_step.json")
    own, rest = p.parse_known_args(argv)
    args = sweep_args(rest)  # the sweep's task, model and device options (--hops takes the first D)
    for key, value in vars(own).items():
        setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from llama_ensemble import LlamaEnsemble, MemberAdamW, clip_grad_norm_per_member, member_losses

    from hf_growth import tasks

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    hops = args.hops[0]
    tokenizer = tasks.build_tokenizer(max_number=256)
    shape = shape_of(hops, args)
    members = [(depth, seed) for depth in args.depths for seed in args.seeds]
    data = TaskData(tokenizer, hops, shape, [], args, device)
    config = ensemble_config(args, tokenizer, shape, max(args.depths))
    ens = LlamaEnsemble.from_config(config, seeds=[s for _, s in members], depths=[d for d, _ in members])
    ens = ens.to(device).train()
    curriculum = torch.ones(len(members), dtype=torch.bool, device=device)
    level = torch.full((len(members),), hops, device=device)  # a staged curriculum's device copy, as the sweep has
    alive_idx = torch.arange(len(members), device=device)
    generator = torch.Generator(device).manual_seed(0)
    last = torch.tensor([shape["tokens"] - 1], device=device)

    def losses_of(ids, answers):
        return member_losses(ens(ids, positions=last), answers[:, :, None])

    forward = {"plain": torch.compile(losses_of) if args.compile else losses_of}
    if cuda and args.compile:
        forward["graphs"] = torch.compile(losses_of, mode="reduce-overhead")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    variants = {  # name -> (forward, compiled clip + update, host waits per step)
        "eager-sync": ("plain", False, True),
        "eager": ("plain", False, False),
        "compiled": ("plain", True, False),
        "graphs": ("graphs", True, False),
    }
    labels = {
        "eager-sync": "eager update, host waits",
        "eager": "eager update",
        "compiled": "compiled update",
        "graphs": "compiled update + CUDA graphs",
    }
    rows = []
    for name in args.variants.split(","):
        which, compiled, waits = variants[name]
        if which not in forward:
            print(f"{name}: skipped (needs CUDA and --compile)", flush=True)
            continue
        step_fn = forward[which]
        opt = MemberAdamW(ens.parameters(), lr=args.lr, compile=compiled)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.bf16))

        def step():
            if waits:
                sync()
            ids, answers = data.sample(curriculum[alive_idx], args.batch_size, generator, level[alive_idx])
            with autocast:
                losses = step_fn(ids, answers)
            losses.sum().backward()
            clip_grad_norm_per_member(ens.parameters(), args.max_grad_norm, compile=compiled)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if waits:
                sync()
            return losses

        begin = time.perf_counter()
        for _ in range(args.warmup):
            step()
        sync()
        warm = time.perf_counter() - begin
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            times.append((time.perf_counter() - t0) / args.steps)
        syncs_ok = None
        if args.check_syncs and cuda and not waits:
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(5):
                    step()
                syncs_ok = True
            except RuntimeError as err:
                syncs_ok = False
                print(f"{name}: a host-device synchronisation inside the step: {err}", flush=True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        per_step = statistics.median(times)
        rows.append(
            {
                "variant": labels[name],
                "key": name,
                "ms_per_step": round(1000 * per_step, 3),
                "steps_per_second": round(1 / per_step, 2),
                "member_steps_per_second": round(len(members) / per_step, 1),
                "all_ms_per_step": [round(1000 * t, 3) for t in times],
                "warmup_seconds": round(warm, 1),
                "sync_free": syncs_ok,
            }
        )
        print(f"{labels[name]}: {1000 * per_step:.2f} ms/step (warm-up {warm:.1f} s)", flush=True)
    base = rows[0]["ms_per_step"] if rows else None
    print(
        f"\nD = {hops}, {len(members)} members (depths {args.depths}, seeds {args.seeds}), batch {args.batch_size} "
        f"per member, {shape['tokens']} tokens, width {args.width}\n"
    )
    print("| variant | ms / step | steps/s | member-steps/s | vs first row |\n|---|---|---|---|---|")
    for row in rows:
        row["speedup_vs_first"] = round(base / row["ms_per_step"], 2)
        print(
            f"| {row['variant']} | {row['ms_per_step']:.2f} | {row['steps_per_second']:.1f} | "
            f"{row['member_steps_per_second']:.0f} | {row['speedup_vs_first']:.2f}x |"
        )
    result = {
        "benchmark": "ensemble_step",
        "rows": rows,
        "hops": hops,
        "members": len(members),
        "depths": args.depths,
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "tokens": shape["tokens"],
        "width": args.width,
        "heads": args.heads,
        "bf16": bool(args.bf16),
        "compile_forward": bool(args.compile),
        "device": device_label("cuda" if cuda else "cpu"),
        "versions": versions(),
        "command": command_line("research/retrieval_depth_vs_hops/ensemble_step.py", argv),
    }
    print()
    write_json(args.output, result, indent=2, announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
