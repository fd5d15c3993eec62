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
Growth callbacks plug in at :func:`growth_callbacks`.

Fast path for short sequences on a GPU: ``--data-on-device --torch-compile --bf16`` with a large ``--batch-size``
(the datasets live on the GPU, the model and the Seq-VCR head + statistics are compiled, no host synchronisation
in a step); ``benchmarks/train_throughput.py`` measures it against the raw compiled step. :func:`prepare` and
:func:`build_trainer` build exactly what :func:`main` trains.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PRESETS = {
    "gpt2-tiny": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4)),
    "gpt2-mini": ("gpt2", dict(n_embd=128, n_layer=4, n_head=4)),
    "gpt2-small": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12)),
    "llama-tiny": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4)),
    "llama-mini": ("llama", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=4)),
}

TASK_OPTIONS = {  # option -> type; only the options given reach the task builder
    "digits": int, "digits_a": int, "digits_b": int, "num_operators": int, "modulus": int, "length": int,
    "max_value": int, "num_pairs": int, "hops": int, "num_nodes": int, "train_size": int,
    "validation_size": int, "test_size": int,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="multiplication", choices=["multiplication", "arithmetic", "lis", "retrieval"])
    for name, kind in TASK_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None)
    p.add_argument("--no-curriculum", dest="curriculum", action="store_false", default=None)
    p.add_argument("--pair-separator", dest="pair_separator", action="store_true", default=None,
                   help="retrieval: '<sep>' after every pair of a question")
    p.add_argument("--model", default="llama-mini",
                   help=f"a preset ({', '.join(PRESETS)}), 'smollm2', or a local checkpoint directory")
    p.add_argument("--config-overrides", default="", help="preset config overrides, e.g. 'n_layer=6,n_embd=256'")
    p.add_argument("--pauses", type=int, default=2, help="pause tokens between question and answer (0 = off)")
    p.add_argument("--seq-vcr", dest="seq_vcr", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seq-vcr-layers", default="last")
    p.add_argument("--seq-vcr-variance-weight", type=float, default=1.0)
    p.add_argument("--seq-vcr-covariance-weight", type=float, default=0.004)
    p.add_argument("--seq-vcr-projection-dim", type=int, default=2048, help="0 = no projection head")
    p.add_argument("--seq-vcr-statistics", default="batch", choices=["batch", "batch_length"])
    p.add_argument("--seq-vcr-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the Seq-VCR head + statistics (default: with --torch-compile)")
    p.add_argument("--output-dir", default="runs/reasoning")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training after about this many seconds: the step rate is measured after the first "
                        "steps (compilation) and again every 10 s, the run ends at the step that fits, and a "
                        "decaying learning-rate schedule is re-aimed at that step; --epochs / --max-steps stay the "
                        "upper bound")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="split a run over several time windows: stop after about this many seconds of training "
                        "with the schedule unchanged, save a checkpoint and evaluate; continue with "
                        "--resume-from-checkpoint OUTPUT_DIR/checkpoint-N and the same flags")
    p.add_argument("--batch-size", type=int, default=32, help="per device")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--torch-compile", action="store_true",
                   help="torch.compile the model (and the Seq-VCR head + statistics); drops the last partial "
                        "training batch of an epoch so that no second shape is compiled")
    p.add_argument("--torch-compile-mode", default=None, help="torch.compile mode, e.g. 'max-autotune-no-cudagraphs'")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls (CUDA): the float32 Seq-VCR statistics get faster")
    p.add_argument("--data-on-device", action="store_true",
                   help="move the tokenised datasets to the training device once; batches are gathered there")
    p.add_argument("--labelled-logits", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the LM head's logits only from the first answer position on (the loss is the "
                        "same; the question and pause positions carry no label)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logging-steps", type=int, default=50)
    p.add_argument("--save-steps", type=int, default=0, help="0 = no checkpoints")
    p.add_argument("--save-final", action="store_true",
                   help="save the trained model and tokenizer to OUTPUT_DIR/final (loads with from_pretrained)")
    p.add_argument("--resume-from-checkpoint", default=None)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--max-test", type=int, default=None, help="answer only the first N test questions")
    p.add_argument("--callback", action="append", default=[], help="extra TrainerCallback as 'module:attr'")
    p.add_argument("--midas-stages", type=int, default=0,
                   help="grow depth during training by MIDAS stacking in this many stages (0 = off)")
    p.add_argument("--midas-block-size", type=int, default=1)
    p.add_argument("--midas-alpha", type=float, default=1.0, help="Prop-alpha stage schedule")
    p.add_argument("--midas-where", default="middle", choices=["middle", "top"])
    p.add_argument("--grow-at", action="append", default=[], metavar="STEP=PLAN.yaml",
                   help="function-preserving growth with a plan file at an optimizer step (repeatable)")
    p.add_argument("--cpu", action="store_true", help="force the CPU (use_cpu)")
    p.add_argument("--dataloader-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's); 1 avoids thread contention on a shared machine")
    return p.parse_args(argv)


def build_task(args):
    from hf_growth import tasks

    kwargs = {k: getattr(args, k) for k in [*TASK_OPTIONS, "curriculum", "pair_separator"]
              if getattr(args, k, None) is not None}
    kwargs["seed"] = args.seed
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
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from hf_growth import tasks
    from hf_growth.commands import parse_key_values

    if args.model == "smollm2":
        from hf_growth._embedded import load_smollm2

        model, tokenizer = load_smollm2()
        model.train()
        return model, tokenizer
    if args.model in PRESETS:
        numbers = [int(t) for s in ("train", "test") for col in ("question", "answer")
                   for q in splits[s][col][:2000] for t in q.split() if t.isdigit()]
        tokenizer = tasks.build_tokenizer(max_number=max(256, max(numbers, default=0) + 1))
        kind, shape = PRESETS[args.model]
        shape = {**shape, **parse_key_values(args.config_overrides, "--config-overrides")}
        longest = max(len(q.split()) + len(a.split()) for q, a in zip(splits["train"]["question"][:2000], splits["train"]["answer"][:2000]))
        positions = max(64, 2 * (longest + args.pauses + 3))
        common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.eos_token_id)
        if kind == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(n_positions=positions, **common, **shape))
        else:
            model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=positions, **common, **shape))
        return model, tokenizer
    path = Path(args.model)
    if not path.is_dir():
        raise SystemExit(f"--model {args.model!r} is neither a preset ({', '.join(PRESETS)}), 'smollm2', nor a directory")
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

    callbacks = []
    if args.midas_stages:
        callbacks.append(MidasStackingCallback(stages=args.midas_stages, block_size=args.midas_block_size,
                                               alpha=args.midas_alpha, where=args.midas_where, seed=args.seed))
    if args.grow_at:
        plans = {}
        for spec in args.grow_at:
            step, sep, plan = spec.partition("=")
            if not sep or not step.isdigit():
                raise SystemExit(f"--grow-at expects STEP=PLAN.yaml, got {spec!r}")
            plans[int(step)] = plan
        callbacks.append(GrowthCallback(plans, seed=args.seed))
    for spec in args.callback:
        module, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        callbacks.append(obj() if isinstance(obj, type) else obj)
    return callbacks


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
    pause = add_pause_tokens(tokenizer, model, num=args.pauses) if args.pauses > 0 else None
    train = encode_split(tokenizer, splits["train"], pause)
    valid = encode_split(tokenizer, splits["validation"], pause)
    return splits, model, tokenizer, pause, train, valid


def make_config(args):
    """The :class:`SeqVCRConfig` of a run. Host synchronisations are kept out of the training step: no NaN/Inf
    filter on the logged loss (it reads the loss on the host every step); on CUDA, batches from pinned host memory
    are copied asynchronously, and ``--data-on-device`` turns pinning off (the batches are already there).
    ``--torch-compile`` drops the last partial training batch of each epoch (no second shape to compile)."""
    import torch

    from hf_growth.training import SeqVCRConfig

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.data_on_device and args.dataloader_workers:
        raise SystemExit("--data-on-device gathers batches on the device: use --dataloader-workers 0")
    pin = torch.cuda.is_available() and not args.cpu and not args.data_on_device  # batches copied from host memory
    extra = {"tf32": True} if args.tf32 else {}
    return SeqVCRConfig(
        output_dir=args.output_dir,
        use_seq_vcr=args.seq_vcr,
        seq_vcr_layers=args.seq_vcr_layers,
        seq_vcr_variance_weight=args.seq_vcr_variance_weight,
        seq_vcr_covariance_weight=args.seq_vcr_covariance_weight,
        seq_vcr_projection_dim=args.seq_vcr_projection_dim or None,
        seq_vcr_statistics=args.seq_vcr_statistics,
        seq_vcr_compile=args.seq_vcr_compile,
        num_pause_tokens=args.pauses,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.scheduler,
        bf16=args.bf16,
        torch_compile=args.torch_compile,
        torch_compile_mode=args.torch_compile_mode,
        seed=args.seed,
        logging_steps=args.logging_steps,
        logging_nan_inf_filter=False,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        eval_strategy="no",
        report_to=[],
        use_cpu=args.cpu,
        dataloader_num_workers=args.dataloader_workers,
        dataloader_pin_memory=pin,
        dataloader_drop_last=args.torch_compile,
        accelerator_config={"non_blocking": pin},
        ddp_backend="gloo" if distributed and (args.cpu or not torch.cuda.is_available()) else None,
        disable_tqdm=True,
        **extra,
    )


def build_trainer(args, model, tokenizer, train, valid, callbacks=()):
    """The script's :class:`SeqVCRTrainer` (growth callbacks bound, datasets on the device with
    ``--data-on-device``); ``callbacks`` are added after the script's own."""
    from hf_growth.training import SeqVCRTrainer
    from hf_growth.training.data import LabelledLogitsCollator, collate_tensors, first_labelled_position

    config = make_config(args)
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

        if args.time_budget is not None and args.stop_after is not None:
            raise SystemExit("--time-budget ends a run annealed, --stop-after pauses it for a resume: pick one")
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

    torch.manual_seed(args.seed)
    splits, model, tokenizer, pause, train, valid = prepare(args)  # tokenised on every core (tokenizers' default)
    # then no tokenizer threads: dataloader workers fork after this point, and generation tokenises small batches
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data_seconds = time.perf_counter() - start
    trainer = build_trainer(args, model, tokenizer, train, valid)
    train_start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    train_seconds = time.perf_counter() - train_start
    trainer.args.dataloader_drop_last = False  # dropped for training only; evaluate every validation example
    eval_loss = trainer.evaluate()["eval_loss"]
    if args.save_final:  # every rank: under FSDP, gathering the full state dict is a collective
        # the prompt layout travels with the model (`hf-growth analyze --task` reads it)
        trainer.model.config.num_pause_tokens = args.pauses
        trainer.save_model(os.path.join(args.output_dir, "final"))

    if not trainer.is_world_process_zero():
        return 0
    # tokens: padded positions of full batches (the last partial batch of an epoch counts as full)
    tokens_per_step = train.tensors["input_ids"].shape[1] * args.batch_size * args.grad_accum * trainer.args.world_size
    resumed_at = 0
    if args.resume_from_checkpoint:
        from transformers import TrainerState

        resumed_at = TrainerState.load_from_json(str(Path(args.resume_from_checkpoint) / "trainer_state.json")).global_step
    test = splits["test"]
    questions, references = test["question"], test["answer"]
    if args.max_test is not None:
        questions, references = questions[: args.max_test], references[: args.max_test]
    longest_answer = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in references)
    eval_start = time.perf_counter()
    predictions = generate_with_pauses(trainer.model, tokenizer, questions, pause, batch_size=args.eval_batch_size,
                                       max_new_tokens=longest_answer + 1)
    em = tasks.exact_match(predictions, references)
    result = {
        "task": args.task,
        "task_options": {k: getattr(args, k) for k in [*TASK_OPTIONS, "pair_separator"] if getattr(args, k) is not None},
        "model": args.model,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "growth_history": list(getattr(trainer.model.config, "growth_history", None) or []),
        "pauses": args.pauses,
        "seq_vcr": args.seq_vcr,
        "exact_match": em,
        "num_test": len(references),
        "eval_loss": eval_loss,
        "train_loss": train_output.training_loss,
        "global_steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "seed": args.seed,
        "seq_len": train.tensors["input_ids"].shape[1],
        "tokens_seen": trainer.state.global_step * tokens_per_step,
        "train_tokens_per_s": (trainer.state.global_step - resumed_at) * tokens_per_step / train_seconds,
        "world_size": trainer.args.world_size,
        "time_budget": next((c.budget_record for c in trainer.callback_handler.callbacks
                             if hasattr(c, "budget_record")), None),
        "seconds": {"data": round(data_seconds, 2), "train": round(train_seconds, 2),
                    "exact_match": round(time.perf_counter() - eval_start, 2),
                    "total": round(time.perf_counter() - start, 2)},
        "examples": [{"question": q, "reference": r, "prediction": p}
                     for q, r, p in list(zip(questions, references, predictions))[:5]],
        "last_log": [h for h in trainer.state.log_history if "loss" in h][-1:],
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    os.makedirs(args.output_dir, exist_ok=True)
    out = Path(args.output_dir) / "results.json"
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
