"""The retrieval depth sweep with every run of a hop count trained at once, as one ensemble.

``retrieval_depth.py`` runs one ``train_reasoning.py`` process per (D, depth, curriculum, seed); on the GPU those
steps cost ~30 ms each whatever the model (launch- and host-bound), so the sweep did not fit. Here all runs of
one hop count D are members of one :class:`llama_ensemble.LlamaEnsemble`: one batched step trains
them all. A member is exactly a ``LlamaForCausalLM`` of its depth (width ``--width``, ``--heads`` heads, MLP
``--mlp``), started from transformers' initialisation with ``torch.manual_seed(seed)`` (its first ``depth``
layers), trained on its own stream of fresh examples from the task's distribution
(:func:`hf_growth.tasks.retrieval.sample_retrieval_ids`; curriculum: D uniform in 1..D per example) with the
training script's defaults: AdamW (0.9, 0.999, eps 1e-8, decay ``--weight-decay``), gradient norm clipped to 1
per member, linear warm-up then linear decay to 0 at ``--max-steps``, bf16 autocast. The loss is the
cross-entropy of the one answer token (predicted at the last question position).

Every ``--eval-every`` steps each member's validation exact match is measured on its seed's validation split
(``retrieval_splits``, D = hops, the same split the script's runs used); a member reaching ``--stop-at`` is
frozen and leaves the ensemble (as ``AccuracyMonitor`` stops a run). At the end each member answers its seed's
test split (float32; the answer is the argmax at the last question position, which is the script's greedy
exact match for these one-token answers) and passes at ``--target``. Records have ``retrieval_depth.py``'s
format, so its table, fits and plot (``summarize``, ``plot``) are reused: the smallest depth where all / any
seeds pass, per D and curriculum, against log3(2D).

Head emergence comes with the sweep: every ``--heads-every`` steps each member's attention on a fixed probe
batch (64 questions at D = hops) is scored per layer and head as ``retrieval_probe.RetrievalHeads`` does (mass of
the last question token's attention on the chain's tokens). ``<name>.D<D>.heads.json`` holds every member's
curves and emergence order; for the smallest depth at which all seeds pass (curriculum on if it passes), the
plots ``<name>.D<D>.heads_s<seed>.png`` (attention maps over training + per-head curves) are written.

    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_ensemble.py --hops 1,2,4 --out-dir out --time-budget 500    # GPU
    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_ensemble.py --cpu-smoke                                     # seconds
    PYTHONPATH=. python research/retrieval_depth_vs_hops/retrieval_ensemble.py --summarize-only --ledger ... --out-dir ...

Curricula (``--curriculum both|on|off``; ``--curriculum-kind``): ``mixture`` draws D uniformly from 1..D from the
first step; ``staged`` starts a curriculum member at D = 1 and raises its largest D by one whenever its mean
training loss over an eval window falls below ``--advance-below`` (with ``<sep>`` questions, D = 2 was learned only
this way: ``README.md``); it draws D uniformly from 1..k, or, with ``--newest-share P``, asks for k itself
in a fraction P of the batch on top.

Resumable: finished members go to ``--ledger`` (JSON lines, keyed like ``retrieval_depth.py``'s runs, tag =
hash of the shared settings); a later call skips them. Members cut off by ``--time-budget`` are recorded with
``timed_out`` and rerun by the next call, from scratch, or, with ``--checkpoint-dir``, from where they stopped
(one ``--max-steps`` schedule spread over several calls).

Growing instead of starting from scratch (another arm; its tag differs): ``--save-passed DIR`` writes each member
that passes as a ``LlamaForCausalLM``; ``--init-from 'DIR/D4-cur-L6-s{seed}'`` starts every member of a later
sweep from its seed's saved model, grown to the deepest member's depth by ``grow_model``'s function-preserving
``num_layers`` expansion (new blocks on top; a member of depth L uses the first L layers). ``--save-at-least EM``
also saves members below the target (at the end of every call), e.g. a plateau a later call goes on from.

Loss spikes (``--rollback-spikes DELTA``): a member whose mean training loss over an eval window rises by more
than DELTA over its last accepted window is put back to its weights, AdamW moments and curriculum stage at the start
of the window *before* (``SpikeGuard``; a spike's onset can lift one window by less than DELTA) and its learning rate
factor is multiplied by ``--rollback-lr-factor``; the others train on untouched. The first window after a stage raise
is compared on its questions below the new stage only (the new D's are not learned yet). Records list the rollbacks
(step, reference, loss compared, factor, step whose weights it went back to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from _common import command_line, device_label, versions, write_json  # noqa: E402
from retrieval_depth import Ledger, _ints, add_task_and_model_args, markdown_table, plot, shape_of, summarize, tag_of  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_task_and_model_args(p)
    p.add_argument("--depths", type=_ints, default=list(range(1, 7)), help="layers per member, e.g. 1-6")
    p.add_argument("--batch-size", type=int, default=256, help="examples per member per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=10000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--stop-at", type=float, default=0.995, help="freeze a member at this validation exact match")
    p.add_argument(
        "--curriculum-kind",
        choices=["mixture", "staged"],
        default="mixture",
        help="curriculum members: D uniform in 1..D from the start (mixture), or in 1..k with k raised "
        "by one whenever the member's mean training loss over an eval window is below "
        "--advance-below (staged)",
    )
    p.add_argument("--advance-below", type=float, default=0.1, help="staged curriculum: loss that raises k")
    p.add_argument(
        "--newest-share",
        type=float,
        default=0.0,
        metavar="P",
        help="staged curriculum: this fraction of each member's batch asks for its current largest D "
        "(the rest stay uniform in 1..k, as with 0)",
    )
    p.add_argument(
        "--rollback-spikes",
        type=float,
        default=0.0,
        metavar="DELTA",
        help="a member whose mean training loss over an eval window exceeds its last accepted window's by more "
        "than DELTA (the first window after a stage raise: on its questions below the new stage) is "
        "put back to its weights, AdamW moments and stage at the start of the window before and its "
        "learning rate is multiplied by --rollback-lr-factor (0 = off)",
    )
    p.add_argument("--rollback-lr-factor", type=float, default=0.5)
    p.add_argument(
        "--raise-delta",
        type=float,
        default=None,
        metavar="DELTA",
        help="--rollback-spikes' DELTA for the first window after a stage raise, whose loss below the new "
        "stage rises in a healthy raise too (CPU D = 2: by 0.4-0.7); default: --rollback-spikes'",
    )
    p.add_argument("--target", type=float, default=0.99, help="a member passes at this test exact match")
    p.add_argument("--heads-every", type=int, default=0, help="head scores every N steps (0 = eval-every; -1 = off)")
    p.add_argument("--heads-probe", type=int, default=64)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="compile the forward + backward with mode='reduce-overhead' (CUDA graphs; needs --compile)",
    )
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=0, help="seconds for the whole call (0 = none)")
    p.add_argument("--ledger", default="research/retrieval_depth_vs_hops/results/retrieval_ensemble.runs.jsonl")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="spread one schedule of --max-steps over several calls: a D cut off by --time-budget saves "
        "its ensemble, optimizer and records here (safetensors + JSON) and the next call with the "
        "same settings resumes it; the schedule is not re-aimed",
    )
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=0,
        help="end each D after this many steps in this call, as --time-budget would (0 = no limit)",
    )
    p.add_argument(
        "--save-passed",
        default=None,
        metavar="DIR",
        help="save each member that passes as a LlamaForCausalLM in DIR/D<D>-<cur|nocur>-L<layers>-s<seed>",
    )
    p.add_argument(
        "--save-at-least",
        type=float,
        default=None,
        metavar="EM",
        help="with --save-passed: save every member whose test exact match is at least EM (default: "
        "--target), e.g. one on a plateau for a later call to start from (--init-from); members are "
        "tested, and so saved, at the end of every call, also one cut off by --time-budget",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="start each member from a saved LlamaForCausalLM, PATH with {seed} (e.g. "
        "runs/passed/D4-cur-L6-s{seed}), grown to the deepest member's depth by new function-preserving "
        "top layers (hf_growth.grow_model); a member of depth L uses its first L layers",
    )
    p.add_argument(
        "--init-from-other-input",
        action="store_true",
        help="let --init-from start from models trained on another input (pairs, nodes, <sep>), as a "
        "length curriculum does; refused by default",
    )
    p.add_argument("--out-dir", default="research/retrieval_depth_vs_hops/results")
    p.add_argument("--name", default="retrieval_ensemble")
    p.add_argument("--label", default="")
    p.add_argument("--summarize-only", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sweep on the CPU (D = 1, 2; depths 1-2; 60 steps)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.cpu, args.hops, args.depths, args.seeds = True, [1, 2], [1, 2], [0]
        args.width, args.heads, args.batch_size, args.max_steps, args.eval_every = 32, 2, 32, 60, 20
        args.validation_size, args.test_size, args.warmup, args.heads_probe = 64, 64, 10, 8
    cuda = torch.cuda.is_available() and not args.cpu
    args.device = "cuda" if cuda else "cpu"
    args.bf16 = cuda if args.bf16 is None else args.bf16
    args.compile = cuda if args.compile is None else args.compile
    if args.cuda_graphs and not (cuda and args.compile):
        p.error("--cuda-graphs needs CUDA and --compile")
    if args.heads_every == 0:
        args.heads_every = args.eval_every
    if args.newest_share and (args.curriculum_kind != "staged" or not 0 < args.newest_share <= 1):
        p.error("--newest-share needs --curriculum-kind staged and a value in (0, 1]")
    if args.save_at_least is not None and (args.save_passed is None or not 0 <= args.save_at_least <= 1):
        p.error("--save-at-least needs --save-passed and a value in [0, 1]")
    if args.rollback_spikes < 0 or not 0 < args.rollback_lr_factor <= 1:
        p.error("--rollback-spikes must be >= 0 and --rollback-lr-factor in (0, 1]")
    if args.raise_delta is not None and (args.raise_delta <= 0 or not args.rollback_spikes):
        p.error("--raise-delta must be > 0 and comes with --rollback-spikes")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """What every member shares: its hash is the records' tag (changing one reruns everything)."""
    keys = (
        "width",
        "heads",
        "mlp",
        "pairs_factor",
        "min_pairs",
        "min_nodes",
        "validation_size",
        "test_size",
        "batch_size",
        "lr",
        "warmup",
        "weight_decay",
        "max_grad_norm",
        "max_steps",
        "eval_every",
        "stop_at",
        "bf16",
    )
    extra = {"pair_separator": True} if args.pair_separator else {}  # only when on: earlier tags stay valid
    if args.curriculum_kind == "staged":
        extra.update(curriculum_kind="staged", advance_below=args.advance_below)
        if args.newest_share:  # only when on: earlier tags stay valid
            extra["newest_share"] = args.newest_share
    if args.init_from:
        extra["init_from"] = args.init_from
    if args.rollback_spikes:
        # back to the start of the window before the spike's (older records went back one window: other tag)
        extra.update(
            rollback_spikes=args.rollback_spikes,
            rollback_lr_factor=args.rollback_lr_factor,
            rollback_to="window_before",
        )
        if args.curriculum_kind == "staged":  # older records: the window after a raise was not compared
            extra["after_raise"] = "questions_below_the_stage"
            if args.raise_delta is not None:
                extra["raise_delta"] = args.raise_delta
    return {"trainer": "ensemble", **{k: getattr(args, k) for k in keys}, **extra}


def member_key(hops: int, curriculum: bool, layers: int, seed: int, tag: str) -> str:
    return f"D{hops}-{'cur' if curriculum else 'nocur'}-L{layers}-s{seed}-{tag}"


# ------------------------------------------------------------------------------------------------ data
def number_ids(tokenizer, num_nodes: int, hops: int, device=None) -> torch.Tensor:
    """``sample_retrieval_ids``' ``token_ids``: at index ``k`` the id of the word ``str(k)``, for every node and D."""
    return torch.tensor(
        tokenizer.convert_tokens_to_ids([str(k) for k in range(max(num_nodes, hops + 1))]), device=device
    )


def split_ids(tokenizer, split, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``retrieval_splits`` split (``question`` texts, ``answer`` words) as ``(questions, answers)`` token ids."""
    q = [tokenizer.convert_tokens_to_ids(text.split()) for text in split["question"]]
    return (
        torch.tensor(q, device=device),
        torch.tensor(tokenizer.convert_tokens_to_ids(split["answer"]), device=device),
    )


class TaskData:
    """Token ids of one hop count's task: the number-word lookup, and each seed's validation/test questions."""

    def __init__(self, tokenizer, hops: int, shape: dict[str, int], seeds: list[int], args, device) -> None:
        from hf_growth.tasks.retrieval import QUERY, SEPARATOR, retrieval_splits

        self.hops, self.shape = hops, shape
        self.separator_id = tokenizer.convert_tokens_to_ids(SEPARATOR) if args.pair_separator else None
        self.token_ids = number_ids(tokenizer, shape["num_nodes"], hops, device)
        self.query_id = tokenizer.convert_tokens_to_ids(QUERY)
        self.newest_share = args.newest_share
        self.splits: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {"validation": {}, "test": {}}
        for seed in seeds:
            splits = retrieval_splits(
                shape["num_pairs"],
                hops,
                shape["num_nodes"],
                curriculum=False,
                seed=seed,
                train_size=0,
                validation_size=args.validation_size,
                test_size=args.test_size,
                pair_separator=args.pair_separator,
            )
            for name in self.splits:
                self.splits[name][seed] = split_ids(tokenizer, splits[name], device)

    def sample(
        self, curriculum: torch.Tensor, batch: int, generator, max_hops: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, batch, T)`` questions and ``(M, batch)`` answers; member m's curriculum flag ``curriculum[m]``
        and, for a staged curriculum, its current largest D ``max_hops[m]`` (a CPU tensor)."""
        from retrieval_sampling import sample_retrieval_ids

        m = curriculum.shape[0]
        top = None if max_hops is None else max_hops.repeat_interleave(batch)
        q, a = sample_retrieval_ids(
            m * batch,
            self.shape["num_pairs"],
            self.hops,
            self.shape["num_nodes"],
            curriculum.repeat_interleave(batch),
            self.token_ids,
            self.query_id,
            generator,
            self.separator_id,
            top,
            self.newest_share if top is not None else 0.0,
        )
        return q.view(m, batch, -1), a.view(m, batch)


@torch.no_grad()
def exact_match(ens, data: TaskData, split: str, seeds: list[int], autocast, chunk: int = 500) -> torch.Tensor:
    """Per member: the fraction of its seed's ``split`` answered right (argmax at the last question position)."""
    q = torch.stack([data.splits[split][s][0] for s in seeds])
    a = torch.stack([data.splits[split][s][1] for s in seeds])
    last = torch.tensor([q.shape[-1] - 1], device=q.device)
    hits = torch.zeros(len(seeds), device=q.device)
    for s in range(0, q.shape[1], chunk):
        with autocast():
            logits = ens(q[:, s : s + chunk], positions=last)
        hits += (logits[:, :, 0].argmax(-1) == a[:, s : s + chunk]).float().sum(1)
    return hits / q.shape[1]


# ------------------------------------------------------------------------------------------------ heads
class HeadRecorder:
    """Per member: head scores ``(depth, heads)`` on its seed's probe batch at each recorded step (+ the maps of
    probe example 0), as ``retrieval_probe.RetrievalHeads`` scores them."""

    def __init__(
        self,
        tokenizer,
        hops: int,
        shape: dict[str, int],
        seeds: list[int],
        size: int,
        device,
        pair_separator: bool = False,
    ) -> None:
        from retrieval_probe import probe_batch

        self.probes, self.chain = {}, {}
        for seed in seeds:
            opts = {
                "num_pairs": shape["num_pairs"],
                "hops": hops,
                "num_nodes": shape["num_nodes"],
                "curriculum": False,
                "seed": seed,
                "validation_size": 0,
                "test_size": 0,
                "pauses": 0,
                "pair_separator": pair_separator,
            }
            probe, important, _, _ = probe_batch(opts, tokenizer, size)
            self.probes[seed] = probe["input_ids"].to(device)
            self.chain[seed] = important.to(device)
        self.steps: dict[int, list[int]] = {}
        self.scores: dict[int, list] = {}
        self.maps: dict[int, list] = {}

    @torch.no_grad()
    def record(
        self, ens, members: list[int], seeds: list[int], depths: list[int], step: int, skip: set[int] = frozenset()
    ) -> None:
        from hf_growth.analysis.heads import head_scores

        ids = torch.stack([self.probes[s] for s in seeds])
        _, attentions = ens(ids, positions=torch.tensor([ids.shape[-1] - 1], device=ids.device), output_attentions=True)
        last = torch.zeros(ids.shape[1:], dtype=torch.bool, device=ids.device)
        last[:, -1] = True  # the position that predicts the answer attends to the chain's keys
        maps = torch.stack([a[:, 0].half() for a in attentions], dim=1).cpu()  # (M, L, H, T, T)
        for i, member in enumerate(members):
            if member in skip:
                continue
            scores = head_scores([a[i] for a in attentions[: depths[i]]], self.chain[seeds[i]], last)
            self.steps.setdefault(member, []).append(step)
            self.scores.setdefault(member, []).append(scores.float().numpy())
            self.maps.setdefault(member, []).append(maps[i, : depths[i]].float().numpy())

    def record_of(self, member: int) -> dict[str, Any]:
        import numpy as np

        scores = np.stack(self.scores[member])
        layers, heads = scores.shape[1:]
        return {
            "steps": self.steps[member],
            "scores": scores,
            "maps": self.maps[member],
            "map_layers": list(range(layers)),
            "map_heads": list(range(heads)),
            "map_example": 0,
        }


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_path(args, hops: int, tag: str) -> Path | None:
    return Path(args.checkpoint_dir) / f"{args.name}.D{hops}.{tag}" if args.checkpoint_dir else None


def save_checkpoint(
    path: Path,
    ens,
    opt,
    generator,
    keys: list[str],
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Ensemble weights, optimizer moments and the sampler's generator in ``path.safetensors``, the loop's own
    state (``state``, per member key) in ``path.json``; both written to temporary names, then renamed."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in ens.state_dict().items()}
    names = {p: n for n, p in ens.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            tensors[f"optim.{names[p]}.{k}"] = v.contiguous()
    tensors["optim.factor"] = opt.factor.contiguous()
    tensors["generator"] = generator.get_state()
    tensors.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp) + ".safetensors")
    (tmp.parent / (tmp.name + ".json")).write_text(json.dumps({"keys": keys, **state}) + "\n")
    os.replace(str(tmp) + ".safetensors", str(path) + ".safetensors")
    os.replace(tmp.parent / (tmp.name + ".json"), str(path) + ".json")


def load_checkpoint(path: Path, ens, opt, generator, keys: list[str]) -> dict[str, Any] | None:
    """Restore what :func:`save_checkpoint` wrote into a fresh ``ens``/``opt``/``generator`` built for ``keys``;
    ``None`` when there is no checkpoint. Refuses one written for other members."""
    from safetensors.torch import load_file

    meta = Path(str(path) + ".json")
    if not meta.exists():
        return None
    state = json.loads(meta.read_text())
    if state["keys"] != keys:
        raise ValueError(f"{meta} was written for members {state['keys']}, not {keys}: delete it to start over")
    tensors = load_file(str(path) + ".safetensors")
    ens.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    device = next(ens.parameters()).device
    for name, p in ens.named_parameters():
        moments = {
            k: tensors[f"optim.{name}.{k}"].to(device)
            for k in ("step", "exp_avg", "exp_avg_sq")
            if f"optim.{name}.{k}" in tensors
        }
        if moments:
            opt.state[p] = moments
    opt.factor = tensors["optim.factor"].to(device)
    generator.set_state(tensors["generator"])
    state["tensors"] = {k: v for k, v in tensors.items() if not k.startswith(("model.", "optim.", "generator"))}
    return state


class SpikeGuard:
    """``--rollback-spikes``: per member, the window loss its next window is compared with, and the two states a
    spike can go back to: the start of the window being trained (``current``) and of the one before (``previous``).

    A spike goes back to ``previous``, not to the start of the window it shows in: its onset can lift one window's
    mean by less than DELTA and the next one's by more (on the H200, 8 layers seed 2: 1.43 -> 2.14 -> 3.29), so that
    window started from an already damaged state, and going back there, however low the learning rate, left two
    members stuck on it for the rest of the schedule. After a rollback the member's next window is compared with the
    loss the window it went back to was compared with (that window's own loss where it was not compared: the first
    window), and ``previous`` is the state it went back to, so a second spike goes
    back there again. Snapshots are ensemble-wide (one slot per member training); references are per
    member index, as are the steps whose weights the snapshots hold (``steps[i]``: previous, current), the
    curriculum stage each snapshot had (``levels[i]``) and whether it was taken at a stage raise (``fresh_at[i]``).

    The first window after a stage raise has a D its weights never saw: its loss is not compared, but the loss on its
    other questions (D below the new stage, ``old_loss``) is, with the window that raised the stage, by
    ``raise_delta`` (default ``delta``; that loss rises in a healthy raise too). A raise can wreck what was learned:
    on the H200, 6 layers seed 2 went 0.09 -> 4.41 and sat at 2.73 for the 45,000 steps left. A rollback puts the
    stage back with the weights (the member raises it again once its window loss is below the mark, at the lower
    learning rate); without ``old_loss`` that window is not compared.
    """

    def __init__(
        self,
        opt,
        members: int,
        delta: float,
        factor: float,
        step: int = 0,
        levels: list[int] | None = None,
        raise_delta: float | None = None,
    ) -> None:
        self.opt, self.delta, self.factor = opt, delta, factor
        self.raise_delta = delta if raise_delta is None else raise_delta  # for the first window after a raise
        self.current = opt.snapshot()
        self.previous = self.current
        self.reference: dict[int, float | None] = {i: None for i in range(members)}
        self.earlier: dict[int, float | None] = {i: None for i in range(members)}  # what `previous`'s window met
        self.steps: dict[int, list[int]] = {i: [step, step] for i in range(members)}
        self.level = {i: 1 if levels is None else levels[i] for i in range(members)}  # curriculum stage now
        self.levels = {i: [self.level[i]] * 2 for i in range(members)}  # ... and at previous, current
        self.fresh = {i: False for i in range(members)}  # this window is the first at a new stage
        self.fresh_at = {i: [False, False] for i in range(members)}  # ... previous's, current's
        self.compared: dict[int, float | None] = {i: None for i in range(members)}  # the last loss compared

    def spiked(self, i: int, loss: float, old_loss: float | None = None) -> bool:
        """Whether member ``i``'s window loss is a spike (``old_loss``, the loss on the questions below its stage,
        in the first window after a raise; that window is not compared without it); if not, ``loss`` becomes the
        reference."""
        self.compared[i] = old_loss if self.fresh[i] else loss
        delta = self.raise_delta if self.fresh[i] else self.delta
        if None not in (self.reference[i], self.compared[i]) and self.compared[i] > self.reference[i] + delta:
            return True
        self.fresh[i] = False
        self.earlier[i], self.reference[i] = self.reference[i], loss
        return False

    def stage_raised(self, i: int, level: int) -> None:
        """Member ``i`` asks for D up to ``level`` from now: its next window is compared on the others only."""
        self.level[i], self.fresh[i] = level, True

    def roll_back(self, slots: list[int], members: list[int]) -> None:
        """Put ensemble ``slots`` (members ``members``) back to ``previous`` (weights, moments, stage) and lower
        their learning rates; the caller puts their curriculum back to ``level[i]``."""
        self.opt.restore_(self.previous, slots)
        self.opt.factor[slots] *= self.factor
        for i in members:  # compared with what the window it went back to was (or, where that was not compared,
            if self.earlier[i] is not None:  # with that window's own loss)
                self.reference[i] = self.earlier[i]
            self.earlier[i] = self.reference[i]
            self.steps[i][1] = self.steps[i][0]
            self.levels[i][1] = self.level[i] = self.levels[i][0]
            self.fresh_at[i][1] = self.fresh[i] = self.fresh_at[i][0]
        idx = torch.as_tensor(slots, device=self.current[0]["param"].device)
        params = [p for group in self.opt.param_groups for p in group["params"]]
        for cur, p in zip(self.current, params):  # the state they went back to is their `previous` too
            cur["param"][idx] = p.detach()[idx]
            for k, v in self.opt.state[p].items():
                cur[k][idx] = v[idx]

    def next_window(self, step: int, rolled_back: list[int], keep: list[int] | None = None) -> None:
        """At a window's end (after any rollback of members ``rolled_back``): ``current`` becomes ``previous``,
        kept to the ensemble slots ``keep`` where members were dropped, and the optimizer's state is the new
        ``current``."""
        self.previous = self.current if keep is None else self._select(self.current, keep)
        self.current = self.opt.snapshot()
        for i, (_, now) in self.steps.items():
            self.steps[i] = [now, now if i in rolled_back else step]
            self.levels[i] = [self.levels[i][1], self.level[i]]
            self.fresh_at[i] = [self.fresh_at[i][1], self.fresh[i]]

    @staticmethod
    def _select(snapshot, slots):
        idx = torch.as_tensor(slots, device=snapshot[0]["param"].device)
        return [{k: v[idx] for k, v in entry.items()} for entry in snapshot]

    def state(self, slots: list[int], members: list[int]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """For a checkpoint: the references of ``members`` (JSON) and both snapshots at ``slots`` (tensors)."""
        tensors = {
            f"{name}.{n}.{k}": v
            for name, snapshot in (("snapshot", self.current), ("previous", self.previous))
            for n, entry in enumerate(self._select(snapshot, slots))
            for k, v in entry.items()
        }
        return {
            i: {
                "reference": self.reference[i],
                "earlier": self.earlier[i],
                "steps": self.steps[i],
                "level": self.level[i],
                "levels": self.levels[i],
                "fresh": self.fresh[i],
                "fresh_at": self.fresh_at[i],
            }
            for i in members
        }, tensors

    def load(self, references: dict[int, dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        """Undo :meth:`state` (in a fresh call, with the members it saved)."""
        for i, r in references.items():
            self.reference[i], self.earlier[i], self.steps[i] = r["reference"], r["earlier"], r["steps"]
            self.level[i], self.levels[i], self.fresh[i], self.fresh_at[i] = (
                r["level"],
                r["levels"],
                r["fresh"],
                r["fresh_at"],
            )
        template = self.current
        self.current, self.previous = (
            [
                {k: tensors[f"{prefix}.{n}.{k}"].to(v.device) for k, v in entry.items()}
                for n, entry in enumerate(template)
            ]
            for prefix in ("snapshot", "previous")
        )


# ------------------------------------------------------------------------------------------------ one D
def lr_at(step: int, args, horizon: int) -> float:
    """transformers' linear schedule with warm-up (``get_linear_schedule_with_warmup``) over ``horizon`` steps, at
    optimizer step ``step`` (0-based: the learning rate the step's update uses)."""
    if step < args.warmup:
        return args.lr * step / max(1, args.warmup)
    return args.lr * max(0.0, (horizon - step) / max(1, horizon - args.warmup))


def ensemble_config(args, tokenizer, shape: dict[str, int], layers: int):
    """The members' ``LlamaConfig`` (``layers`` = the deepest member's; shallower members use its first layers)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.width,
        intermediate_size=args.mlp or 4 * args.width,
        num_hidden_layers=layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(64, 2 * (shape["tokens"] + 3)),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )


TASK_FILE = "retrieval_task.json"  # beside a saved member: the input it was trained on
TASK_FIELDS = ("num_pairs", "num_nodes", "pair_separator")  # what a grown member's input must share with its source


GROWN_SIZES = (  # (config field, grow_model step): a source smaller than the members grows to their shape, in this order
    ("intermediate_size", "mlp_width"),
    ("num_attention_heads", "num_heads"),
    ("head_dim", "head_dim"),
    ("hidden_size", "hidden_size"),
    ("num_hidden_layers", "num_layers"),
)


def growth_plan(src, config, path: str = "the source") -> list[dict[str, Any]]:
    """``grow_model`` steps that take a saved member's config ``src`` to the sweep's ``config`` (MLP width, heads,
    head size, width, then new top layers; each function-preserving); a source larger in any of them, or with
    another vocabulary or GQA, is refused."""
    if src.vocab_size != config.vocab_size:
        raise ValueError(
            f"--init-from {path}: vocab_size is {src.vocab_size}, the sweep's members have "
            f"{config.vocab_size} (a source trained on another task's tokenizer)"
        )
    if src.num_key_value_heads != src.num_attention_heads:
        raise ValueError(
            f"--init-from {path}: {src.num_key_value_heads} key/value heads for {src.num_attention_heads} "
            "query heads; the sweep's members are multi-head attention"
        )
    plan = []
    for field, step in GROWN_SIZES:
        have, want = getattr(src, field), getattr(config, field)
        if have > want:
            raise ValueError(
                f"--init-from {path}: {field} is {have}, the sweep's members have {want}: growing "
                "never removes (pass --width/--heads/--mlp at least the source's)"
            )
        if have < want:
            plan.append({step: {"to": want, "where": "top"}} if step == "num_layers" else {step: want})
    return plan


def grown_ensemble(pattern: str, members: list[tuple[int, bool, int]], config, task: dict[str, Any] | None = None):
    """The members' ensemble started from saved models: ``pattern.format(seed=...)`` per member, grown by
    ``grow_model`` to ``config`` (``growth_plan``: wider MLP, more heads, larger heads, wider residual, then new
    top blocks that are identities at the start; each step function-preserving, so each member computes what its
    source model computes). ``task``: the sweep's input (``TASK_FIELDS``); a source saved with another one is
    refused (a model trained on 8 pairs guesses on 16)."""
    from llama_ensemble import LlamaEnsemble
    from transformers import LlamaForCausalLM

    from hf_growth import grow_model

    models = []
    for member_depth, _, seed in members:
        path = pattern.format(seed=seed)
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"--init-from: no saved model for seed {seed} at {path} (only members that pass, or "
                "reach --save-at-least, are saved; choose --seeds that have one)"
            )
        trained = Path(path) / TASK_FILE
        if task is not None and trained.is_file():
            src_task = json.loads(trained.read_text())
            for field in TASK_FIELDS:
                if src_task.get(field) != task.get(field):
                    raise ValueError(
                        f"--init-from {path} was trained with {field} = {src_task.get(field)}, this sweep's questions "
                        f"have {task.get(field)}: a model answers only the input lengths it was trained on (a D = 4 "
                        "model of 8 pairs guesses on 16: retrieval_transfer.py); train the source on this "
                        "input (--min-pairs / --min-nodes / --pair-separator), or pass --init-from-other-input"
                    )
        source = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        src = source.config
        if member_depth < src.num_hidden_layers:
            raise ValueError(
                f"--init-from {path} has {src.num_hidden_layers} layers: a member of depth {member_depth} "
                f"would drop some (use --depths >= {src.num_hidden_layers})"
            )
        plan = growth_plan(src, config, path)
        grown = grow_model(source, plan, seed=seed) if plan else source
        grown.config.max_position_embeddings = max(src.max_position_embeddings, config.max_position_embeddings)
        models.append(grown)
    return LlamaEnsemble.from_models(models, depths=[d for d, _, _ in members])


def save_member(ens, slot: int, path: Path, task: dict[str, Any] | None = None) -> None:
    """Ensemble member ``slot`` as a ``LlamaForCausalLM`` at ``path`` (written beside it, then renamed), with the
    input it was trained on (``task``) in ``TASK_FILE``."""
    from hf_growth.growth.io import atomic_output_dir

    with atomic_output_dir(path, overwrite=True) as tmp:
        ens.to_models([slot])[0].save_pretrained(tmp)
        if task is not None:
            (tmp / TASK_FILE).write_text(json.dumps(task, indent=1) + "\n")


def train_hops(
    hops: int, members: list[tuple[int, bool, int]], args, tokenizer, tag: str, deadline: float, seconds: float = 0.0
):
    """Train ``members`` = [(depth, curriculum, seed)] of hop count ``hops`` together; returns their records and
    head records. ``seconds`` (0 = no limit): the schedule is re-aimed at the last step that fits (measured after
    the first steps and every 500 steps; at most ``--max-steps``), as ``TimeBudgetCallback`` does for the script."""
    from contextlib import nullcontext

    from llama_ensemble import LlamaEnsemble, MemberAdamW, clip_grad_norm_per_member, member_losses

    device = torch.device(args.device)
    shape = shape_of(hops, args)
    seeds_used = sorted({s for _, _, s in members})
    data = TaskData(tokenizer, hops, shape, seeds_used, args, device)
    heads = (
        HeadRecorder(tokenizer, hops, shape, seeds_used, args.heads_probe, device, args.pair_separator)
        if args.heads_every > 0
        else None
    )
    config = ensemble_config(args, tokenizer, shape, max(d for d, _, _ in members))
    task = {
        "hops": hops,
        "num_pairs": shape["num_pairs"],
        "num_nodes": shape["num_nodes"],
        "tokens": shape["tokens"],
        "pair_separator": bool(args.pair_separator),
    }
    ens = (
        grown_ensemble(args.init_from, members, config, None if args.init_from_other_input else task)
        if args.init_from
        else LlamaEnsemble.from_config(config, seeds=[s for _, _, s in members], depths=[d for d, _, _ in members])
    )
    ens = ens.to(device).train()
    opt = MemberAdamW(ens.parameters(), lr=args.lr, weight_decay=args.weight_decay, compile=args.compile)
    alive = list(range(len(members)))  # ensemble slot -> member index
    # per-step indexing uses these device copies (a Python list or CPU tensor index makes the host wait for the GPU)
    alive_idx = torch.arange(len(members), device=device)
    curriculum = torch.tensor([c for _, c, _ in members], device=device)
    # staged curriculum: each member's largest D so far, on the device (read once per eval, which syncs anyway)
    staged = args.curriculum_kind == "staged" and hops > 1
    start = [1 if c else hops for _, c, _ in members]
    level = torch.tensor(start, device=device) if staged else None
    stages: dict[int, list[tuple[int, int]]] = {i: [(0, start[i])] for i in range(len(members))} if staged else {}
    generator = torch.Generator(device).manual_seed(int(tag, 16) + hops)
    autocast = (
        (lambda: torch.autocast("cuda" if device.type == "cuda" else "cpu", dtype=torch.bfloat16))
        if args.bf16
        else nullcontext
    )
    last = torch.tensor([shape["tokens"] - 1], device=device)

    def losses_of(ids, answers, newest=None):
        """Per member: the loss to train on and, with ``newest`` (per member, the token of its stage's D), the
        loss on the batch's other questions (no gradient; see ``SpikeGuard``), else None."""
        logits = ens(ids, positions=last)
        losses = member_losses(logits, answers[:, :, None])
        if newest is None:
            return losses, None
        with torch.no_grad():
            each = torch.nn.functional.cross_entropy(
                logits[:, :, 0].detach().float().flatten(0, 1), answers.flatten(), reduction="none"
            ).view_as(answers)
            old = (ids[:, :, -2] != newest[:, None]).float()  # the question's D is its second-to-last token
            return losses, (each * old).sum(1) / old.sum(1).clamp_min(1)

    step_fn = (
        torch.compile(losses_of, mode="reduce-overhead" if args.cuda_graphs else None) if args.compile else losses_of
    )
    history: dict[int, list] = {i: [] for i in range(len(members))}
    reached: dict[int, int] = {}
    results: dict[int, dict[str, Any]] = {}
    begin = time.perf_counter()
    timed_out, step, member_steps, horizon = False, 0, 0, args.max_steps
    mark: tuple[int, float] | None = None
    frozen: set[int] = set()  # members done but still in the ensemble (learning rate factor 0)
    steady: tuple[int, float] | None = None

    def seeds_alive():
        return [members[i][2] for i in alive]

    def depths_alive():
        return [members[i][0] for i in alive]

    save_at_least = args.target if args.save_at_least is None else args.save_at_least  # default: as "passed"

    def finish(slots: list[int]) -> None:
        """Test the members in ensemble ``slots`` (float32) and store their results (and save those asked for)."""
        em = exact_match(ens, data, "test", seeds_alive(), nullcontext)
        for slot in slots:
            i = alive[slot]
            results[i] = {"exact_match": round(float(em[slot]), 4), "stop_step": step}
            if args.save_passed and results[i]["exact_match"] >= save_at_least:
                depth, cur, seed = members[i]
                save_member(
                    ens,
                    slot,
                    Path(args.save_passed) / f"D{hops}-{'cur' if cur else 'nocur'}-L{depth}-s{seed}",
                    {**task, "exact_match": results[i]["exact_match"], "step": step},
                )

    keys = [member_key(hops, cur, depth, seed, tag) for depth, cur, seed in members]
    ckpt = checkpoint_path(args, hops, tag)
    loss_sum = torch.zeros(len(members), device=device)
    old_sum = torch.zeros(len(members), device=device)  # with a guard and stages: the loss below the stage's D
    # --rollback-spikes: each member's rollbacks (step, reference, loss compared, lr factor, step gone back to)
    rollbacks: dict[int, list[tuple[int, float, float, float, int]]] = {i: [] for i in range(len(members))}
    # ... and every check of a window after a stage raise (step, reference, loss below the stage), kept or not
    raise_checks: dict[int, list[tuple[int, float, float]]] = {i: [] for i in range(len(members))}
    saved = load_checkpoint(ckpt, ens, opt, generator, keys) if ckpt else None
    if saved is not None:  # resume: the loop's state, per member
        step = saved["step"]
        for i, key in enumerate(keys):
            member = saved["members"][key]
            history[i] = [tuple(h) for h in member["history"]]
            loss_sum[i] = member["loss_sum"]
            old_sum[i] = member.get("old_loss_sum", 0.0)
            rollbacks[i] = [tuple(r) for r in member.get("rollbacks", [])]
            raise_checks[i] = [tuple(r) for r in member.get("raise_checks", [])]
            if staged:
                level[i] = int(member["level"])
                stages[i] = [tuple(x) for x in member["stages"]]
            if heads is not None:
                heads.steps[i] = member["head_steps"]
                heads.scores[i] = list(saved["tensors"][f"heads.scores.{key}"].numpy())
                heads.maps[i] = list(saved["tensors"][f"heads.maps.{key}"].float().numpy())
        print(f"[D={hops}] resumed {len(keys)} members at step {step} from {ckpt}", flush=True)
    elif heads is not None:
        heads.record(ens, alive, seeds_alive(), depths_alive(), 0)
    first_step = step
    guard = (
        SpikeGuard(
            opt,
            len(members),
            args.rollback_spikes,
            args.rollback_lr_factor,
            step,
            level.tolist() if staged else None,
            args.raise_delta,
        )
        if args.rollback_spikes
        else None
    )
    check_old = guard is not None and staged
    if guard is not None and saved is not None:
        guard.load({i: saved["members"][key]["guard"] for i, key in enumerate(keys)}, saved["tensors"])
    while step < horizon and alive:
        if (
            (deadline and time.time() > deadline)
            or (args.steps_per_call and step - first_step >= args.steps_per_call)
            or (ckpt and seconds and time.perf_counter() - begin > seconds)
        ):  # with checkpoints: this D's share
            timed_out = True
            break
        if seconds and not ckpt and (step in (20, 60) or (step and step % 500 == 0)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if mark is not None:  # steps that fit in what is left of this D's share, at the rate since the mark
                rate = (step - mark[0]) / (now - mark[1])
                horizon = max(step + 1, min(args.max_steps, int(step + rate * (seconds - (now - begin)))))
            mark = (step, now)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args, horizon)
        ids, answers = data.sample(
            curriculum[alive_idx], args.batch_size, generator, None if level is None else level[alive_idx]
        )
        with autocast():
            losses, old_losses = step_fn(ids, answers, data.token_ids[level[alive_idx]] if check_old else None)
        losses.sum().backward()
        clip_grad_norm_per_member(ens.parameters(), args.max_grad_norm, compile=args.compile)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        member_steps += len(alive)
        if step == first_step + 20:  # the steady rate (compilation and warm-up excluded) is measured from here
            if device.type == "cuda":
                torch.cuda.synchronize()
            steady = (step, time.perf_counter())
        loss_sum.index_add_(0, alive_idx, losses.detach().float())
        if old_losses is not None:
            old_sum.index_add_(0, alive_idx, old_losses)
        if heads is not None and step % args.heads_every == 0:
            heads.record(ens, alive, seeds_alive(), depths_alive(), step, skip=frozen)
        if step % args.eval_every == 0 or step == horizon:
            em = exact_match(ens, data, "validation", seeds_alive(), autocast).tolist()
            mean_loss = (loss_sum / args.eval_every).tolist()
            old_loss = (old_sum / args.eval_every).tolist()
            loss_sum.zero_()
            old_sum.zero_()
            levels = level.tolist() if staged else None
            done, spiked, rolled, kept = [], [], [], None  # kept: the slots kept where members are dropped
            for slot, i in enumerate(alive):
                if i in frozen:
                    continue
                history[i].append((step, round(em[slot], 4), round(mean_loss[i], 4)))
                if check_old and guard.fresh[i] and guard.reference[i] is not None:
                    raise_checks[i].append((step, round(guard.reference[i], 4), round(old_loss[i], 4)))
                if guard is not None and guard.spiked(i, mean_loss[i], old_loss[i] if check_old else None):
                    spiked.append(slot)
                    continue
                if staged and levels[i] < hops and mean_loss[i] < args.advance_below:
                    levels[i] += 1
                    level[i] = levels[i]
                    stages[i].append((step, levels[i]))
                    if guard is not None:
                        guard.stage_raised(i, levels[i])
                if em[slot] >= args.stop_at:
                    reached[i] = step
                    done.append(slot)
            if spiked:  # before any member is dropped: the slots are still those of the guard's snapshots
                rolled = [alive[slot] for slot in spiked]
                met = {slot: (guard.reference[i], guard.compared[i], guard.fresh[i]) for slot, i in zip(spiked, rolled)}
                guard.roll_back(spiked, rolled)
                factors = opt.factor.tolist()
                for slot in spiked:
                    i = alive[slot]
                    back_to, (reference, compared, after_raise) = guard.steps[i][0], met[slot]
                    rollbacks[i].append((step, round(reference, 4), round(compared, 4), factors[slot], back_to))
                    what = "loss below the new stage" if after_raise else "loss"
                    print(
                        f"[D={hops}] step {step}: member {keys[i]} rolled back ({what} {reference:.3f} -> "
                        f"{compared:.3f}) to its weights of step {back_to}, learning rate "
                        f"x{factors[slot]:g}",
                        flush=True,
                    )
                    if staged and guard.level[i] != levels[i]:  # the stage goes back with the weights
                        levels[i] = guard.level[i]
                        level[i] = levels[i]
                        stages[i].append((step, levels[i]))
            if done:  # freeze them now (learning rate factor 0 is exact); drop them once a quarter is frozen
                if heads is not None and step % args.heads_every:
                    heads.record(ens, alive, seeds_alive(), depths_alive(), step, skip=frozen)
                finish(done)
                frozen.update(alive[slot] for slot in done)
                opt.factor[done] = 0.0
                if len(frozen) >= max(1, len(alive) // 4):
                    keep = [slot for slot in range(len(alive)) if alive[slot] not in frozen]
                    alive, frozen, kept = [alive[slot] for slot in keep], set(), keep
                    alive_idx = torch.tensor(alive, device=device)
                    if alive:
                        opt.select_(keep, ens.select_(keep))
            if guard is not None and alive:
                guard.next_window(step, rolled, kept)
            if step % (10 * args.eval_every) == 0:
                rate = (step - first_step) / (time.perf_counter() - begin)  # this call's steps
                print(
                    f"[D={hops}] step {step}: {len(alive)} of {len(members)} members training, {rate:.1f} steps/s",
                    flush=True,
                )
    alive_slots = [slot for slot, i in enumerate(alive) if i not in frozen]
    if alive_slots:
        resumable = ckpt is not None and timed_out  # the next call records on the regular steps only
        if heads is not None and heads.steps[alive[alive_slots[0]]][-1] != step and not resumable:
            heads.record(ens, alive, seeds_alive(), depths_alive(), step, skip=frozen)
        finish(alive_slots)
    if ckpt is not None:
        if timed_out and alive_slots:  # the members still training, as the next call will ask for them
            import numpy as np

            if len(alive_slots) < len(alive):
                opt.select_(alive_slots, ens.select_(alive_slots))
                alive = [alive[slot] for slot in alive_slots]
                alive_idx = torch.tensor(alive, device=device)
            levels = level.tolist() if staged else None
            state = {
                "step": step,
                "members": {
                    keys[i]: {
                        "history": history[i],
                        "loss_sum": float(loss_sum[i]),
                        "old_loss_sum": float(old_sum[i]),
                        **({"level": levels[i], "stages": stages[i]} if staged else {}),
                        **(
                            {"rollbacks": rollbacks[i], "raise_checks": raise_checks[i]} if args.rollback_spikes else {}
                        ),
                        **({"head_steps": heads.steps[i]} if heads is not None else {}),
                    }
                    for i in alive
                },
            }
            extra = {}
            if guard is not None:  # where a spike in the next windows goes back to, for those saved
                references, extra = guard.state(alive_slots, alive)
                for i in alive:
                    state["members"][keys[i]]["guard"] = references[i]
            if heads is not None:
                for i in alive:
                    extra[f"heads.scores.{keys[i]}"] = torch.from_numpy(np.stack(heads.scores[i]))
                    extra[f"heads.maps.{keys[i]}"] = torch.from_numpy(np.stack(heads.maps[i])).half()
            save_checkpoint(ckpt, ens, opt, generator, [keys[i] for i in alive], state, extra)
            print(f"[D={hops}] saved {len(alive)} members at step {step} to {ckpt}", flush=True)
        else:
            for suffix in (".safetensors", ".json"):
                Path(str(ckpt) + suffix).unlink(missing_ok=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - begin
    steady_rate = None
    if steady is not None and step > steady[0]:
        steady_rate = round((step - steady[0]) / (time.perf_counter() - steady[1]), 2)
    device_name = device_label(device)
    records = []
    for i, (depth, cur, seed) in enumerate(members):
        em = results[i]["exact_match"]
        records.append(
            {
                "key": member_key(hops, cur, depth, seed, tag),
                "tag": tag,
                "trainer": "ensemble",
                "hops": hops,
                "curriculum": cur,
                "layers": depth,
                "seed": seed,
                "exact_match": em,
                "passed": em >= args.target,
                "num_test": args.test_size,
                "reached_step": reached.get(i),
                "global_steps": results[i]["stop_step"],
                "timed_out": timed_out and i not in reached,
                "val_history": [(s, v) for s, v, _ in history[i]],
                "train_loss_history": [(s, l) for s, _, l in history[i]],
                **({"curriculum_stages": stages[i]} if staged and cur else {}),
                **({"rollbacks": rollbacks[i], "raise_checks": raise_checks[i]} if args.rollback_spikes else {}),
                **({"init_from": args.init_from} if args.init_from else {}),  # the grown arm: never pooled with scratch
                "model": {
                    "width": config.hidden_size,
                    "heads": config.num_attention_heads,
                    "mlp": config.intermediate_size,
                },  # pooled only with members of the same shape
                "task_options": {
                    "num_pairs": shape["num_pairs"],
                    "hops": hops,
                    "num_nodes": shape["num_nodes"],
                    "curriculum": cur,
                    **({"pair_separator": True} if args.pair_separator else {}),
                    **({"curriculum_kind": "staged"} if staged and cur else {}),
                },
                "ensemble": {
                    "members": len(members),
                    "steps": step,
                    "schedule_steps": horizon,
                    "seconds_share": round(seconds, 1),
                    "wall_seconds": round(wall, 1),
                    "first_step": first_step,  # > 0 when resumed: the rates are this call's
                    "steps_per_second": round((step - first_step) / wall, 2) if wall else None,
                    "steady_steps_per_second_from_step_20": steady_rate,
                    "member_steps_per_second": round(member_steps / wall, 1) if wall else None,
                },
                "device": device_name,
                "versions": versions(),
            }
        )
    return records, heads


# ------------------------------------------------------------------------------------------------ driver
RULE_NAMES = {"emergence": "half-rise", "settled": "settled"}  # heads-file key -> the rule's name in the log


def write_heads(
    hops: int, records: list[dict], heads: HeadRecorder, members: list[tuple[int, bool, int]], args, out: Path
) -> list[str]:
    """Every member's head curves and emergence order as JSON; plots for the smallest all-seeds-passing depth."""
    from retrieval_probe import emergence_order

    from hf_growth.analysis.plots import plot_head_emergence

    data, lines = {}, []
    for i, (depth, cur, seed) in enumerate(members):
        rec = heads.record_of(i)
        data[records[i]["key"]] = {
            "steps": rec["steps"],
            "scores": rec["scores"].round(4).tolist(),
            "emergence": emergence_order(rec["scores"], rec["steps"]),
            "settled": emergence_order(rec["scores"], rec["steps"], rule="settled"),
            "passed": records[i]["passed"],
        }
    write_json(out / f"{args.name}.D{hops}.heads.json", data, indent=None)
    by_config: dict[tuple[int, bool], list[int]] = {}
    for i, (depth, cur, seed) in enumerate(members):
        by_config.setdefault((depth, cur), []).append(i)
    passing = sorted(
        (
            (d, not c)
            for (d, c), idx in by_config.items()
            if len(idx) == len(args.seeds) and all(records[i]["passed"] for i in idx)
        )
    )
    if not passing:  # then the smallest depth at which any seed passes, all its seeds plotted
        passing = sorted(((d, not c) for (d, c), idx in by_config.items() if any(records[i]["passed"] for i in idx)))
        lines.append(f"D={hops}: no configuration passed with all seeds; plots for the smallest with a passing seed")
    if not passing:
        return [f"D={hops}: no member passed; no emergence plot"]
    depth, cur = passing[0][0], not passing[0][1]
    orders: dict[str, list] = {"emergence": [], "settled": []}
    for i in by_config[(depth, cur)]:
        seed = members[i][2]
        for rule in orders:
            orders[rule].append(data[records[i]["key"]][rule]["layer_order"])
        title = (
            f"Retrieval D={hops}, {depth} layers, curriculum {'on' if cur else 'off'}, seed {seed} "
            f"({'passed' if records[i]['passed'] else 'failed'}): attention of the last token on the chain"
        )
        plot_head_emergence(heads.record_of(i), out / f"{args.name}.D{hops}.heads_s{seed}.png", title=title)
        for rule in orders:
            lines.append(
                f"D={hops} L{depth} {'cur' if cur else 'nocur'} seed {seed} ({RULE_NAMES[rule]}): "
                f"{data[records[i]['key']][rule]['sentence']}"
            )
    for rule, found in orders.items():
        lines.append(
            f"D={hops} L{depth} ({RULE_NAMES[rule]}): layer order per seed "
            f"{found}; same over seeds: {all(o == found[0] for o in found)}"
        )
    return lines


def summary(args, ledger: Ledger, tag: str, argv: list[str], out: Path, timing: dict) -> dict[str, Any]:
    records = sorted(
        (r for r in ledger.records.values() if r.get("tag") == tag),
        key=lambda r: (r["hops"], not r["curriculum"], r["layers"], r["seed"]),
    )
    result = summarize(records, len(args.seeds))
    devices = sorted({r.get("device", "?") for r in records})
    title = (
        f"{args.label + ': ' if args.label else ''}min depth for >= {args.target:.0%} test exact match "
        f"(width {args.width}, {args.heads} heads, {len(args.seeds)} seeds, <= {args.max_steps} steps x "
        f"{args.batch_size})"
    )
    png = plot(result, out / f"{args.name}.png", max(args.depths), title)
    data = {
        "benchmark": "retrieval depth sweep, ensemble trainer (issue 12)",
        "label": args.label,
        "command": command_line("research/retrieval_depth_vs_hops/retrieval_ensemble.py", argv),
        "devices": devices,
        "versions": versions(),
        "settings": settings_of(args),
        "tag": tag,
        "target": args.target,
        "depths": args.depths,
        "seeds": args.seeds,
        "shapes": {str(d): shape_of(d, args) for d in args.hops},
        "table": result["table"],
        "fits": result["fits"],
        "markdown": markdown_table(result),
        "timing": timing,
        "plot": png.name,
        "runs": records,
    }
    write_json(out / f"{args.name}.json", data)
    print(data["markdown"])
    print(f"fits: {json.dumps(result['fits'])}")
    return data


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from hf_growth import tasks

    if args.save_passed or args.init_from:  # what saving / growing needs fails now, not minutes into training
        import hf_growth.growth.io  # noqa: F401
        from hf_growth import grow_model  # noqa: F401
    start = time.time()
    deadline = start + args.time_budget - 20 if args.time_budget else 0.0  # 20 s for the tests and the files
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(Path(args.ledger))
    tag = tag_of(settings_of(args))
    tokenizer = tasks.build_tokenizer(max_number=256)
    curricula = {"both": [True, False], "on": [True], "off": [False]}[args.curriculum]
    timing: dict[str, Any] = {}
    for hops in [] if args.summarize_only else args.hops:
        members = [
            (depth, cur, seed)
            for cur in (curricula if hops > 1 else [True])
            for depth in args.depths
            for seed in args.seeds
        ]  # D = 1: the curriculum changes nothing, one search serves both
        todo = [
            m
            for m in members
            if (ledger.get(member_key(hops, m[1], m[0], m[2], tag)) or {"timed_out": True}).get("timed_out")
        ]
        if not todo:
            continue
        if deadline and time.time() > deadline - 30:
            print(f"[D={hops}] not started: the time budget is spent", flush=True)
            continue
        seconds = 0.0
        if deadline:  # this D's share of what is left: by tokens per step of the D's still to run
            weights = {
                d: shape_of(d, args)["tokens"] * (len(curricula) if d > 1 else 1)
                for d in args.hops[args.hops.index(hops) :]
            }
            seconds = (deadline - time.time() - 15) * weights[hops] / sum(weights.values())
        print(
            f"[D={hops}] {len(todo)} members: depths {args.depths}, seeds {args.seeds}; "
            f"{'%.0f s' % seconds if seconds else 'no time limit'}",
            flush=True,
        )
        records, heads = train_hops(hops, todo, args, tokenizer, tag, deadline, seconds)
        for record in records:
            ledger.add(record)
        e = records[0]["ensemble"]
        timing[str(hops)] = e
        print(
            f"[D={hops}] {e['steps']} steps in {e['wall_seconds']} s ({e['steps_per_second']} steps/s, "
            f"{e['steady_steps_per_second_from_step_20']} after the call's first 20 steps, "
            f"{e['member_steps_per_second']} member-steps/s); passed {sum(r['passed'] for r in records)} of "
            f"{len(records)}",
            flush=True,
        )
        if heads is not None:
            for line in write_heads(hops, records, heads, todo, args, out):
                print(line, flush=True)
    summary(args, ledger, tag, argv, out, timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
