"""TimeBudgetCallback: a run ends inside its wall-clock budget with its learning-rate schedule completed."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from hf_growth.training.budget import TimeBudgetCallback, retarget_schedule


class _Tokens(Dataset):
    def __init__(self, n=64, length=8, vocab=32):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_time_budget_ends_run_with_completed_schedule(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    args = TrainingArguments(
        str(tmp_path),
        max_steps=100_000,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    budget = TimeBudgetCallback(2.0, warmup=3, measure=10)
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[budget])
    budget._clock = lambda: 0.01 * trainer.state.global_step  # a step takes 10 ms of this clock: 200 fit
    trainer.train()
    record = budget.budget_record
    assert record["schedule_retargeted"] is True and record["steps_per_s"] == pytest.approx(100)
    assert record["end_step"] == trainer.state.global_step == 200
    # the cosine schedule was re-aimed at the end step: the rate of the last step is ~0, not ~1e-3
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[-1] < 1e-3 * 0.01 and max(lrs) > 1e-3 * 0.9


def test_time_budget_follows_a_run_that_slows_down(tmp_path):
    """The rate is measured again during the run: steps that get 50x slower after step 60 (another job took the
    GPU, say) still end the run at its budget, not at the first estimate's step."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    args = TrainingArguments(
        str(tmp_path),
        max_steps=100_000,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    budget = TimeBudgetCallback(3.0, warmup=3, measure=20, recheck_seconds=0.2)
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[budget])

    def clock():  # 1 ms per step up to step 60, then 50 ms
        step = trainer.state.global_step
        return 0.001 * min(step, 60) + 0.05 * max(step - 60, 0)

    budget._clock = clock
    trainer.train()
    record = budget.budget_record
    # the first estimate (1000 steps/s at step 23) aimed at step ~3000; the budget ends at step 60 + 2.94 / 0.05
    assert record["measurements"] >= 3 and record["steps_per_s"] == pytest.approx(20)
    assert trainer.state.global_step == record["end_step"]
    assert abs(clock() - 3.0) <= 0.05 * 2


def test_retarget_schedule_moves_the_end_of_decaying_schedules():
    from transformers import get_scheduler

    def schedule(name):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return get_scheduler(name, opt, num_warmup_steps=0, num_training_steps=100)

    linear = schedule("linear")
    assert retarget_schedule(linear, 10) is True
    assert linear.lr_lambdas[0](5) == pytest.approx(0.5) and linear.lr_lambdas[0](10) == 0.0
    assert retarget_schedule(schedule("constant"), 10) is False
    with pytest.raises(ValueError, match="seconds > 0"):
        TimeBudgetCallback(0)


def test_script_time_budget(tmp_path):
    from test_train_script import TINY, _load_script

    module = _load_script()
    out = tmp_path / "run"
    assert (
        module.main(
            [
                *TINY,
                "--model",
                "gpt2-tiny",
                "--epochs",
                "200",
                "--time-budget",
                "4",
                "--scheduler",
                "cosine",
                "--max-test",
                "8",
                "--save-final",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "results.json").read_text())
    # --save-final records the prompt layout with the model (read by `hf-growth analyze --task`)
    assert json.loads((out / "final" / "config.json").read_text())["num_pause_tokens"] == result["pauses"] == 2
    budget = result["time_budget"]
    assert budget["seconds"] == 4.0 and budget["schedule_retargeted"] is True
    assert result["global_steps"] == budget["end_step"] < 200 * 32 and result["epochs"] < 200


@pytest.mark.slow
def test_script_time_budget_ddp_ranks_agree(tmp_path):
    """Under torchrun the ranks stop at the same step (they agree on the smallest end): a rank stopping alone
    would leave the other waiting in DDP's gradient all-reduce forever."""
    import socket
    import sys

    from test_train_script import SCRIPT, TINY, _run

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        str(SCRIPT),
        *TINY,
        "--model",
        "llama-tiny",
        "--max-steps",
        "5000",
        "--time-budget",
        "4",
        "--max-test",
        "8",
        "--no-seq-vcr",
        "--output-dir",
        str(out),
    ]
    _run(cmd, timeout=180)
    result = json.loads((out / "results.json").read_text())
    budget = result["time_budget"]
    assert result["world_size"] == 2 and result["global_steps"] == budget["end_step"] < 5000
    assert budget["measurements"] >= 1


def test_script_stop_after_then_resume_matches_one_run(tmp_path, capsys):
    """--stop-after pauses a run for a later window: it stops at its first measurement (a budget of 1 us) with a
    checkpoint and the schedule untouched, and resuming from that checkpoint ends with the same weights as the
    run done in one go (Seq-VCR, pauses and --data-on-device on)."""
    from safetensors.torch import load_file
    from test_train_script import TINY, _load_script

    module = _load_script()
    flags = [
        *TINY,
        "--model",
        "llama-tiny",
        "--max-steps",
        "60",
        "--scheduler",
        "cosine",
        "--max-test",
        "4",
        "--data-on-device",
        "--save-final",
    ]
    assert module.main([*flags, "--output-dir", str(tmp_path / "whole")]) == 0
    assert module.main([*flags, "--stop-after", "1e-6", "--output-dir", str(tmp_path / "part")]) == 0
    first = json.loads((tmp_path / "part" / "results.json").read_text())
    stop = first["time_budget"]
    # warm-up (10) + measuring (40) steps, then the first measurement finds the budget spent
    assert first["global_steps"] == stop["end_step"] == 50 and stop["anneal"] is False
    assert stop["schedule_retargeted"] is False and first["last_log"][0]["learning_rate"] > 0
    checkpoint = tmp_path / "part" / "checkpoint-50"
    assert checkpoint.is_dir()
    assert (
        module.main([*flags, "--resume-from-checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "part")]) == 0
    )
    assert json.loads((tmp_path / "part" / "results.json").read_text())["global_steps"] == 60
    whole = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "part" / "final" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        module.main([*flags, "--stop-after", "5", "--time-budget", "5", "--output-dir", str(tmp_path / "both")])
    assert exc.value.code == 2 and "--stop-after pauses it for a resume: pick one" in capsys.readouterr().err
