"""Train for a wall-clock budget with a complete learning-rate schedule.

:class:`TimeBudgetCallback` times a few optimizer steps after compilation, fixes the run's last step at what fits
in the budget (never later than the configured end) and moves a decaying schedule's end there, so the rate decays
to zero as in a run planned for that many steps. Set ``num_train_epochs`` / ``max_steps`` as the upper bound.

>>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
>>> trainer = Trainer(model, TrainingArguments("out", num_train_epochs=40, lr_scheduler_type="cosine"),
...                   train_dataset=data, callbacks=[TimeBudgetCallback(600)])  # doctest: +SKIP
>>> trainer.train()  # ends after about 10 minutes, learning rate annealed  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["TimeBudgetCallback"]


class TimeBudgetCallback(TrainerCallback):
    """End training after about ``seconds`` of wall time (from ``on_train_begin``), schedule included.

    Optimizer steps ``warmup`` .. ``warmup + measure`` after the run's first step are timed (two device
    synchronisations in the whole run, none per step); the run ends at ``end_step``, the last step that fits, and
    transformers' decaying schedules (``get_scheduler``'s linear, cosine, polynomial, ... lambdas) are re-aimed at
    it. A constant schedule needs no change. ``budget_record`` holds ``seconds``, ``end_step``, ``steps_per_s`` and
    ``schedule_retargeted`` for a run's report.
    """

    def __init__(self, seconds: float, warmup: int = 10, measure: int = 40):
        if not seconds > 0 or warmup < 1 or measure < 1:
            raise ValueError(f"TimeBudgetCallback needs seconds > 0, warmup >= 1, measure >= 1; got "
                             f"{seconds}, {warmup}, {measure}")
        self.seconds, self.warmup, self.measure = float(seconds), int(warmup), int(measure)
        self.budget_record: dict[str, Any] = {"seconds": self.seconds, "end_step": None, "steps_per_s": None,
                                              "schedule_retargeted": None}
        self._start = self._window_start = None
        self._first_step = 0

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the host runs ahead of queued kernels: time what the device finished
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start, self._first_step = time.perf_counter(), state.global_step

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        done = state.global_step - self._first_step
        end = self.budget_record["end_step"]
        if end is None and done == self.warmup:
            self._window_start = self._now()
        elif end is None and done == self.warmup + self.measure:
            now = self._now()
            rate = self.measure / (now - self._window_start)
            left = self.seconds - (now - self._start)
            end = min(state.max_steps, state.global_step + max(0, int(left * rate)))
            self.budget_record.update(end_step=end, steps_per_s=rate,
                                      schedule_retargeted=retarget_schedule(lr_scheduler, end))
        if end is not None and state.global_step >= end:
            control.should_training_stop = True
        return control


def retarget_schedule(lr_scheduler: Any, num_training_steps: int) -> bool:
    """Move the end of a transformers schedule (its lambdas' ``num_training_steps``) to ``num_training_steps``;
    ``False`` when the schedule has no end to move (constant, or not built by ``get_scheduler``)."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
    lambdas = [f for f in getattr(scheduler, "lr_lambdas", None) or []
               if isinstance(f, functools.partial) and "num_training_steps" in f.keywords]
    for f in lambdas:
        f.keywords["num_training_steps"] = num_training_steps
    return bool(lambdas)
