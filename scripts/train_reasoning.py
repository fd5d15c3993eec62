#!/usr/bin/env python
"""Train a causal LM on a reasoning task with optional pause tokens and Seq-VCR; report exact match.

    python scripts/train_reasoning.py --task multiplication --digits 2 --model llama-mini \
        --pauses 2 --seq-vcr --epochs 8 --output-dir runs/mult2
    accelerate launch --config_file scripts/accelerate/ddp.yaml scripts/train_reasoning.py ...   # see README

The model comes from a preset shape built from a config (``gpt2-small`` = GPT-2 small's shape, random
init; ``gpt2-tiny``, ``llama-tiny``, ...), a local checkpoint directory, or ``smollm2`` (the embedded
SmolLM2-135M). Presets use the word-level task tokenizer; checkpoints use their own tokenizer if they ship one.
Datasets are tokenised once into tensors (no ``datasets`` needed). At the end the test split is answered
greedily (pauses appended to each prompt) and ``OUTPUT_DIR/results.json`` gets the exact match.
Growth callbacks plug in at :func:`growth_callbacks`; every growth is checked against the model before the first
step (:func:`check_growth`).

Flags: the script's own (:class:`ScriptArguments`: task, model, growth, evaluation) and every field of
:class:`hf_growth.SeqVCRConfig` (``TrainingArguments`` + Seq-VCR: ``--learning_rate`` or ``--learning-rate``,
``--seq-vcr-projection-dim``, ``--bf16``, ...), parsed by ``transformers.HfArgumentParser``; the short forms of
earlier versions (``--lr``, ``--epochs``, ``--batch-size``, ``--pauses``, ``--cpu``, ...) still work (:data:`ALIASES`).

Fast path for short sequences on a GPU: ``--data-on-device --torch-compile --bf16`` with a large ``--batch-size``
(the datasets live on the GPU, the model and the Seq-VCR head + statistics are compiled, no host synchronisation
in a step); ``benchmarks/train_throughput.py`` measures it against the raw compiled step. :func:`prepare` and
:func:`build_trainer` build exactly what :func:`main` trains.
"""

import argparse
import importlib
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PRESETS = {
    "gpt2-tiny": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4)),
    "gpt2-mini": ("gpt2", dict(n_embd=128, n_layer=4, n_head=4)),
    "gpt2-small": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12)),
    "llama-tiny": (
        "llama",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    ),
    "llama-mini": (
        "llama",
        dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    ),
}

TASK_OPTIONS = (
    "digits",
    "digits_a",
    "digits_b",
    "num_operators",
    "modulus",
    "length",
    "max_value",
    "num_pairs",
    "hops",
    "num_nodes",
    "train_size",
    "validation_size",
    "test_size",
)

#: the script's defaults where they differ from TrainingArguments' / SeqVCRConfig's
SCRIPT_DEFAULTS = dict(
    output_dir="runs/reasoning",
    seed=0,
    logging_steps=50,
    report_to="none",
    eval_strategy="no",
    disable_tqdm=True,
    logging_nan_inf_filter=False,
    save_steps=0,
    save_strategy=None,
    per_device_eval_batch_size=None,
    dataloader_pin_memory=None,
    dataloader_drop_last=None,
)

#: short flags of earlier versions of the script -> the SeqVCRConfig field they set
ALIASES = {
    "--epochs": ("num_train_epochs", float),
    "--batch-size": ("per_device_train_batch_size", int),
    "--grad-accum": ("gradient_accumulation_steps", int),
    "--lr": ("learning_rate", float),
    "--scheduler": ("lr_scheduler_type", str),
    "--pauses": ("num_pause_tokens", int),
    "--dataloader-workers": ("dataloader_num_workers", int),
}


@dataclass
class ScriptArguments:
    """The script's own flags: task, model, growth during training, evaluation; everything else is a
    :class:`~hf_growth.SeqVCRConfig` (``TrainingArguments`` + Seq-VCR) flag. ``training`` holds that config after
    :func:`parse_args`."""

    task: str = field(
        default="multiplication",
        metadata={"help": "Reasoning task.", "choices": ["multiplication", "arithmetic", "lis", "retrieval"]},
    )
    digits: int | None = field(default=None, metadata={"help": "Task option (multiplication, arithmetic)."})
    digits_a: int | None = field(default=None, metadata={"help": "Task option."})
    digits_b: int | None = field(default=None, metadata={"help": "Task option."})
    num_operators: int | None = field(default=None, metadata={"help": "Task option (arithmetic)."})
    modulus: int | None = field(default=None, metadata={"help": "Task option (arithmetic)."})
    length: int | None = field(default=None, metadata={"help": "Task option (lis)."})
    max_value: int | None = field(default=None, metadata={"help": "Task option (lis)."})
    num_pairs: int | None = field(default=None, metadata={"help": "Task option (retrieval)."})
    hops: int | None = field(default=None, metadata={"help": "Task option (retrieval)."})
    num_nodes: int | None = field(default=None, metadata={"help": "Task option (retrieval)."})
    train_size: int | None = field(default=None, metadata={"help": "Training questions."})
    validation_size: int | None = field(default=None, metadata={"help": "Validation questions."})
    test_size: int | None = field(default=None, metadata={"help": "Test questions."})
    curriculum: bool | None = field(default=None, metadata={"help": "Task curriculum (retrieval); --no-curriculum."})
    pair_separator: bool = field(default=False, metadata={"help": "retrieval: '<sep>' after every pair."})
    model: str = field(
        default="llama-mini",
        metadata={"help": f"A preset ({', '.join(PRESETS)}), 'smollm2', or a local checkpoint directory."},
    )
    config_overrides: str = field(
        default="", metadata={"help": "Preset config overrides, e.g. 'n_layer=6,n_embd=256'."}
    )
    time_budget: float | None = field(
        default=None,
        metadata={
            "help": "Stop after about this many seconds with the learning-rate schedule completed (re-aimed at the "
            "step that fits); --num-train-epochs / --max-steps stay the upper bound."
        },
    )
    stop_after: float | None = field(
        default=None,
        metadata={
            "help": "Stop after about this many seconds with the schedule unchanged and save a checkpoint; continue "
            "with --resume-from-checkpoint OUTPUT_DIR/checkpoint-N and the same flags."
        },
    )
    data_on_device: bool = field(
        default=False,
        metadata={"help": "Move the tokenised datasets to the training device once; batches are gathered there."},
    )
    labelled_logits: bool = field(
        default=True,
        metadata={"help": "Compute the LM head's logits only from the first answer position on (same loss)."},
    )
    save_final: bool = field(
        default=False, metadata={"help": "Save the trained model and tokenizer to OUTPUT_DIR/final."}
    )
    eval_batch_size: int = field(default=500, metadata={"help": "Test questions answered per generate() call."})
    max_test: int | None = field(default=None, metadata={"help": "Answer only the first N test questions."})
    midas_stages: int = field(
        default=0, metadata={"help": "Grow depth by MIDAS stacking in this many stages (0 = off)."}
    )
    midas_block_size: int = field(default=1, metadata={"help": "Layers per stacked block."})
    midas_alpha: float = field(default=1.0, metadata={"help": "Prop-alpha stage schedule."})
    midas_where: str = field(
        default="middle", metadata={"help": "Where blocks are stacked.", "choices": ["middle", "top"]}
    )
    threads: int | None = field(default=None, metadata={"help": "torch intra-op CPU threads (1 on a shared machine)."})
    # set by parse_args, not flags of their own
    grow_at: list = field(default_factory=list, init=False)
    callback: list = field(default_factory=list, init=False)
    training: Any = field(default=None, init=False)


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2, before anything is trained or written."""
    print(f"{Path(__file__).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser():
    """``HfArgumentParser`` over :class:`ScriptArguments` and ``SeqVCRConfig`` plus the short aliases."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import string_to_bool

    from hf_growth.training import SeqVCRConfig

    parser = HfArgumentParser((ScriptArguments, SeqVCRConfig), description=__doc__.split("\n\n")[0])
    for action in parser._actions:  # optional booleans (--tf32, --seq-vcr-compile) work as bare flags too
        if action.type is string_to_bool and action.nargs is None:
            action.nargs, action.const = "?", True
    for flag, (dest, kind) in ALIASES.items():
        parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS, help=f"same as --{dest}")
    parser.add_argument(
        "--seq-vcr",
        dest="use_seq_vcr",
        action="store_const",
        const=True,
        default=argparse.SUPPRESS,
        help="same as --use_seq_vcr (on by default)",
    )
    parser.add_argument(
        "--no-seq-vcr",
        dest="use_seq_vcr",
        action="store_false",
        default=argparse.SUPPRESS,
        help="train without the Seq-VCR regulariser",
    )
    parser.add_argument(
        "--no-seq-vcr-compile",
        dest="seq_vcr_compile",
        action="store_false",
        default=argparse.SUPPRESS,
        help="do not compile the Seq-VCR head + statistics",
    )
    parser.add_argument("--no-curriculum", dest="curriculum", action="store_false", default=argparse.SUPPRESS)
    parser.add_argument(
        "--cpu", dest="use_cpu", action="store_true", default=argparse.SUPPRESS, help="same as --use_cpu"
    )
    parser.add_argument(
        "--grow-at",
        dest="grow_at",
        action="append",
        default=[],
        metavar="STEP=PLAN.yaml",
        help="function-preserving growth with a plan file after an optimizer step (repeatable)",
    )
    parser.add_argument(
        "--callback",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="an extra TrainerCallback (class or instance), repeatable",
    )
    parser.set_defaults(**SCRIPT_DEFAULTS)
    return parser


def parse_args(argv=None) -> ScriptArguments:
    """The script's arguments with the run's :class:`~hf_growth.SeqVCRConfig` in ``.training``. Bad flags, plan
    files that do not parse and contradicting options exit with status 2 and one line."""
    import torch

    from hf_growth.training import SeqVCRConfig

    ns = vars(build_parser().parse_args(argv))
    script = ScriptArguments(**{f.name: ns.pop(f.name) for f in fields(ScriptArguments) if f.init})
    script.grow_at = [_parse_grow_at(spec) for spec in ns.pop("grow_at")]
    script.callback = ns.pop("callback")
    if script.data_on_device and ns["dataloader_num_workers"]:
        fail("--data-on-device gathers batches on the device: use --dataloader-workers 0")
    if script.time_budget is not None and script.stop_after is not None:
        fail("--time-budget ends a run annealed, --stop-after pauses it for a resume: pick one")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    pin = torch.cuda.is_available() and not ns["use_cpu"] and not script.data_on_device  # batches from host memory
    derived = {
        "dataloader_pin_memory": pin,
        "dataloader_drop_last": ns["torch_compile"],  # no 2nd compiled shape
        "per_device_eval_batch_size": ns["per_device_train_batch_size"],
        "save_strategy": "steps" if ns["save_steps"] else "no",
    }
    for key, value in derived.items():
        if ns[key] is None:
            ns[key] = value
    ns["save_steps"] = ns["save_steps"] or 500
    if ns["accelerator_config"] is None:
        ns["accelerator_config"] = {"non_blocking": bool(ns["dataloader_pin_memory"])}
    if ns["ddp_backend"] is None and distributed and (ns["use_cpu"] or not torch.cuda.is_available()):
        ns["ddp_backend"] = "gloo"
    try:
        script.training = SeqVCRConfig(**{f.name: ns[f.name] for f in fields(SeqVCRConfig) if f.init and f.name in ns})
    except ValueError as error:
        fail(str(error).splitlines()[0])
    return script


def _parse_grow_at(spec: str) -> tuple[int, Any]:
    """``STEP=PLAN.yaml`` -> ``(step, GrowthPlan)``; a bad spec or plan file exits 2."""
    from hf_growth import GrowthPlan

    step, sep, path = spec.partition("=")
    if not sep or not step.isdigit() or not path:
        fail(f"--grow-at expects STEP=PLAN.yaml, got {spec!r}")
    try:
        return int(step), GrowthPlan.parse(Path(path))
    except (OSError, ValueError) as error:
        fail(f"--grow-at {spec}: {error}")


def make_config(args: ScriptArguments):
    """The run's :class:`~hf_growth.SeqVCRConfig` (built by :func:`parse_args`)."""
    return args.training


def build_task(args):
    from hf_growth import tasks

    kwargs = {k: getattr(args, k) for k in [*TASK_OPTIONS, "curriculum"] if getattr(args, k) is not None}
    if args.pair_separator:
        kwargs["pair_separator"] = True
    kwargs["seed"] = args.training.seed
    return tasks.build(args.task, as_datasets=False, **kwargs)


def build_model_and_tokenizer(args, splits):
    """A (model, tokenizer) pair: preset shape (random init + task tokenizer), checkpoint, or SmolLM2."""
    model, tokenizer = _model_and_tokenizer(args, splits)
    if getattr(model, "loss_type", None) is None:
        # GPT-2's class name names no loss: transformers then logs a warning inside every forward, which
        # torch.compile cannot trace (a graph break in each training step)
        model.loss_type = "ForCausalLM"
    return model, tokenizer


def _model_and_tokenizer(args, splits):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from hf_growth import tasks
    from hf_growth.commands import parse_key_values

    if args.model == "smollm2":
        from hf_growth._embedded import load_smollm2

        model, tokenizer = load_smollm2()
        model.train()
        return model, tokenizer
    if args.model in PRESETS:
        numbers = [
            int(t)
            for s in ("train", "test")
            for col in ("question", "answer")
            for q in splits[s][col][:2000]
            for t in q.split()
            if t.isdigit()
        ]
        tokenizer = tasks.build_tokenizer(max_number=max(256, max(numbers, default=0) + 1))
        kind, shape = PRESETS[args.model]
        shape = {**shape, **parse_key_values(args.config_overrides, "--config-overrides")}
        longest = max(
            len(q.split()) + len(a.split())
            for q, a in zip(splits["train"]["question"][:2000], splits["train"]["answer"][:2000])
        )
        positions = max(64, 2 * (longest + args.training.num_pause_tokens + 3))
        common = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        if kind == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(n_positions=positions, **common, **shape))
        else:
            model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=positions, **common, **shape))
        return model, tokenizer
    path = Path(args.model)
    if not path.is_dir():
        fail(f"--model {args.model!r} is neither a preset ({', '.join(PRESETS)}), 'smollm2', nor a directory")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        tokenizer = tasks.build_tokenizer()
    return model, tokenizer


def growth_callbacks(args, model) -> list:
    """Callbacks that grow the model during training (``--midas-*``, ``--grow-at``) plus any extra
    ``TrainerCallback`` given as ``--callback module:attr`` (class or instance)."""
    from hf_growth.training.callbacks import GrowthCallback, MidasStackingCallback

    seed = args.training.seed
    callbacks = []
    if args.midas_stages:
        callbacks.append(
            MidasStackingCallback(
                stages=args.midas_stages,
                block_size=args.midas_block_size,
                alpha=args.midas_alpha,
                where=args.midas_where,
                seed=seed,
            )
        )
    if args.grow_at:
        callbacks.append(GrowthCallback({step: plan.to_list() for step, plan in args.grow_at}, seed=seed))
    for spec in args.callback:
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        callbacks.append(obj() if isinstance(obj, type) else obj)
    return callbacks


def total_steps(config, num_examples: int) -> int:
    """The optimizer steps of a run as the Trainer counts them (``max_steps``, or epochs x steps per epoch)."""
    if config.max_steps > 0:
        return config.max_steps
    per_batch = config.per_device_train_batch_size * config.world_size
    batches = num_examples // per_batch if config.dataloader_drop_last else math.ceil(num_examples / per_batch)
    accum = config.gradient_accumulation_steps
    return math.ceil(config.num_train_epochs * max(batches // accum + int(batches % accum > 0), 1))


def check_growth(args, model, num_examples: int) -> list[tuple[int, str]]:
    """Validate every growth of the run against the model it will meet, in the order the callbacks apply them
    (MIDAS stages and ``--grow-at`` plans by step, each against the config the previous ones leave), before the
    first training step; one line and exit 2 for the first that cannot be applied. Returns ``(step, what)``."""
    from hf_growth.growth.engine import GrowthEngine
    from hf_growth.training.callbacks import MidasStackingCallback

    events = []  # (step, order, label, plan): MIDAS before --grow-at at the same step, as the callbacks run
    if args.midas_stages:
        midas = MidasStackingCallback(
            stages=args.midas_stages, block_size=args.midas_block_size, alpha=args.midas_alpha, where=args.midas_where
        )
        try:
            boundaries, depths = midas.schedule(total_steps(args.training, num_examples), model)
        except ValueError as error:
            fail(f"--midas-stages {args.midas_stages}: {error}")
        for stage, (step, depth) in enumerate(zip(boundaries, depths[1:]), start=2):
            plan = [{"stack": {"to": depth, "block_size": args.midas_block_size, "where": args.midas_where}}]
            events.append((step, 0, f"--midas-stages {args.midas_stages} (stage {stage} at step {step})", plan))
    for step, plan in args.grow_at:
        events.append((step, 1, f"--grow-at {step}", plan))
    config = model.config
    for _step, _, label, plan in sorted(events, key=lambda e: e[:2]):
        try:
            config = GrowthEngine(config, plan).new_config
        except (ValueError, NotImplementedError) as error:
            fail(f"{label}: {error}")
    return [(step, label) for step, _, label, _ in sorted(events, key=lambda e: e[:2])]


def main(argv=None) -> int:
    try:
        return run(argv)
    finally:
        # Every rank waits for rank 0's test generation, then leaves the process group together. The
        # Trainer and its DDP wrapper hold the gloo process group and pending work objects through
        # reference cycles; collect them first, or the group is destroyed during interpreter
        # finalisation and aborts ("terminate called without an active exception", SIGABRT).
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            gc.collect()


def prepare(args):
    """``(splits, model, tokenizer, pause, train, valid)``: train/validation tokenised into ``TensorDataset``."""
    from hf_growth.training.data import encode_split
    from hf_growth.training.pause import add_pause_tokens

    splits = build_task(args)
    model, tokenizer = build_model_and_tokenizer(args, splits)
    pauses = args.training.num_pause_tokens
    pause = add_pause_tokens(tokenizer, model, num=pauses) if pauses > 0 else None
    train = encode_split(tokenizer, splits["train"], pause)
    valid = encode_split(tokenizer, splits["validation"], pause)
    return splits, model, tokenizer, pause, train, valid


def build_trainer(args, model, tokenizer, train, valid, callbacks=()):
    """The script's :class:`SeqVCRTrainer` (growth callbacks bound, datasets on the device with
    ``--data-on-device``); ``callbacks`` are added after the script's own."""
    from hf_growth.training import SeqVCRTrainer
    from hf_growth.training.data import LabelledLogitsCollator, collate_tensors, first_labelled_position

    config = args.training
    check_growth(args, model, len(train))  # every plan against the model it will meet, before the first step
    collate = collate_tensors
    if args.labelled_logits and "logits_to_keep" in inspect.signature(model.forward).parameters:
        first = first_labelled_position(train, valid)  # once, on the host tensors
        collate = LabelledLogitsCollator(first) if first else collate
    if args.data_on_device:
        train, valid = train.to(config.device), valid.to(config.device)
    trainer = SeqVCRTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[*growth_callbacks(args, model), *callbacks],
    )
    if args.time_budget is not None or args.stop_after is not None:
        from hf_growth.training.budget import TimeBudgetCallback

        anneal = args.time_budget is not None
        trainer.add_callback(TimeBudgetCallback(args.time_budget if anneal else args.stop_after, anneal=anneal))
    for callback in trainer.callback_handler.callbacks:
        if hasattr(callback, "bind"):  # growth callbacks: grow the model before a checkpoint's weights load
            callback.bind(trainer)
    return trainer


def run(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from hf_growth import tasks
    from hf_growth.training.pause import generate_with_pauses

    config = args.training
    torch.manual_seed(config.seed)
    splits, model, tokenizer, pause, train, valid = prepare(args)  # tokenised on every core (tokenizers' default)
    # then no tokenizer threads: dataloader workers fork after this point, and generation tokenises small batches
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data_seconds = time.perf_counter() - start
    trainer = build_trainer(args, model, tokenizer, train, valid)
    train_start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_seconds = time.perf_counter() - train_start
    trainer.args.dataloader_drop_last = False  # dropped for training only; evaluate every validation example
    eval_loss = trainer.evaluate()["eval_loss"]
    if args.save_final:  # every rank: under FSDP, gathering the full state dict is a collective
        # the prompt layout travels with the model (`hf-growth analyze --task` reads it)
        trainer.model.config.num_pause_tokens = config.num_pause_tokens
        trainer.save_model(os.path.join(config.output_dir, "final"))

    if not trainer.is_world_process_zero():
        return 0
    # tokens: padded positions of full batches (the last partial batch of an epoch counts as full)
    tokens_per_step = (
        train.tensors["input_ids"].shape[1]
        * config.per_device_train_batch_size
        * config.gradient_accumulation_steps
        * trainer.args.world_size
    )
    resumed_at = 0
    if config.resume_from_checkpoint:
        from transformers import TrainerState

        resumed_at = TrainerState.load_from_json(
            str(Path(config.resume_from_checkpoint) / "trainer_state.json")
        ).global_step
    test = splits["test"]
    questions, references = test["question"], test["answer"]
    if args.max_test is not None:
        questions, references = questions[: args.max_test], references[: args.max_test]
    longest_answer = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in references)
    eval_start = time.perf_counter()
    predictions = generate_with_pauses(
        trainer.model, tokenizer, questions, pause, batch_size=args.eval_batch_size, max_new_tokens=longest_answer + 1
    )
    em = tasks.exact_match(predictions, references)
    result = {
        "task": args.task,
        "task_options": {k: getattr(args, k) for k in TASK_OPTIONS if getattr(args, k) is not None}
        | ({"pair_separator": True} if args.pair_separator else {}),
        "model": args.model,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "growth_history": list(getattr(trainer.model.config, "growth_history", None) or []),
        "pauses": config.num_pause_tokens,
        "seq_vcr": config.use_seq_vcr,
        "exact_match": em,
        "num_test": len(references),
        "eval_loss": eval_loss,
        "train_loss": train_output.training_loss,
        "global_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "seed": config.seed,
        "seq_len": train.tensors["input_ids"].shape[1],
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "train_tokens_per_s": (trainer.state.global_step - resumed_at) * tokens_per_step / train_seconds,
        "world_size": trainer.args.world_size,
        "time_budget": next(
            (c.budget_record for c in trainer.callback_handler.callbacks if hasattr(c, "budget_record")), None
        ),
        "seconds": {
            "data": round(data_seconds, 2),
            "train": round(train_seconds, 2),
            "exact_match": round(time.perf_counter() - eval_start, 2),
            "total": round(time.perf_counter() - start, 2),
        },
        "examples": [
            {"question": q, "reference": r, "prediction": p}
            for q, r, p in list(zip(questions, references, predictions))[:5]
        ],
        "last_log": [h for h in trainer.state.log_history if "loss" in h][-1:],
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    os.makedirs(config.output_dir, exist_ok=True)
    out = Path(config.output_dir) / "results.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"exact match {em:.4f} on {len(references)} test questions; wrote {out}")
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # all work is written and the process group is gone; skip interpreter finalisation, where
        # torch's distributed C++ threads can still abort a finished run (pytorch/pytorch#179291)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
