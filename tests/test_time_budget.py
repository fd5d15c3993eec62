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
    args = TrainingArguments(str(tmp_path), max_steps=100_000, per_device_train_batch_size=8, learning_rate=1e-3,
                             lr_scheduler_type="cosine", warmup_steps=2, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, logging_steps=1)
    budget = TimeBudgetCallback(2.0, warmup=3, measure=10)
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=[budget])
    trainer.train()
    record = budget.budget_record
    assert record["schedule_retargeted"] is True and record["steps_per_s"] > 0
    assert 13 <= record["end_step"] < 100_000 and trainer.state.global_step == record["end_step"]
    # the cosine schedule was re-aimed at the end step: the rate of the last step is ~0, not ~1e-3
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[-1] < 1e-3 * 0.01 and max(lrs) > 1e-3 * 0.9


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
    assert module.main([*TINY, "--model", "gpt2-tiny", "--epochs", "200", "--time-budget", "4", "--scheduler",
                        "cosine", "--max-test", "8", "--output-dir", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    budget = result["time_budget"]
    assert budget["seconds"] == 4.0 and budget["schedule_retargeted"] is True
    assert result["global_steps"] == budget["end_step"] < 200 * 32 and result["epochs"] < 200
