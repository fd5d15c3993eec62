"""Train for a wall-clock budget with a complete learning-rate schedule.

:class:`TimeBudgetCallback` times optimizer steps after compilation, fixes the run's last step at what fits in the
budget (never later than the configured end) and moves a decaying schedule's end there, so the rate decays to zero
as in a run planned for that many steps. The rate is measured again every few seconds and the end re-aimed, so a run
that slows down (another job starts on the same GPU, say) still ends on time. Set ``num_train_epochs`` /
``max_steps`` as the upper bound.

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

__all__ = ["TimeBudgetCallback", "retarget_schedule"]


class TimeBudgetCallback(TrainerCallback):
    """End training after about ``seconds`` of wall time (counted from ``on_train_begin``), schedule included.

    The clock starts ``warmup`` optimizer steps after the run's first one (compilation lands before); after
    ``measure`` more steps the step rate gives ``end_step``, the last step that fits, and transformers' decaying
    schedules (``get_scheduler``'s linear, cosine, polynomial, ... lambdas) are re-aimed at it. The rate is then
    measured again every ``recheck_seconds`` (as a step count fixed from the last rate) over the latest window and
    the end re-aimed (in a single process also as soon as ``recheck_seconds`` have passed on the host clock, so a
    run that slows down is caught in time). Each measurement synchronises the device once; no step in between does.
    Under ``torch.distributed`` the ranks measure at the same steps and agree on the smallest end (an all-reduce),
    so no rank waits for another that stopped. ``budget_record`` holds ``seconds``, ``end_step``, ``steps_per_s`` (the
    latest window), ``measurements`` and ``schedule_retargeted`` for a run's report.

    ``anneal=False`` splits a longer run over several time windows instead: the schedule is left alone and the
    run saves a checkpoint at the step where it stops (``resume_from_checkpoint`` continues the same schedule).
    """

    def __init__(
        self, seconds: float, warmup: int = 10, measure: int = 40, recheck_seconds: float = 10.0, anneal: bool = True
    ):
        if not seconds > 0 or warmup < 1 or measure < 1 or not recheck_seconds > 0:
            raise ValueError(
                f"TimeBudgetCallback needs seconds > 0, warmup >= 1, measure >= 1, recheck_seconds > 0; "
                f"got {seconds}, {warmup}, {measure}, {recheck_seconds}"
            )
        self.seconds, self.warmup, self.measure = float(seconds), int(warmup), int(measure)
        self.recheck_seconds, self.anneal = float(recheck_seconds), bool(anneal)
        self.budget_record: dict[str, Any] = {
            "seconds": self.seconds,
            "end_step": None,
            "steps_per_s": None,
            "measurements": 0,
            "schedule_retargeted": None,
            "anneal": self.anneal,
        }
        self._start = 0.0
        self._first_step = 0
        self._mark: tuple[float, int] | None = None  # (time, step) where the current measuring window began
        self._next_check = 0

    _clock = staticmethod(time.perf_counter)

    def _now(self) -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the host runs ahead of queued kernels: time what the device finished
        return self._clock()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start, self._first_step, self._mark = self._clock(), state.global_step, None
        self._next_check = state.global_step + self.warmup + self.measure

    def _due(self, step: int) -> bool:
        """Measure again? At ``_next_check`` (a step count: every rank of a distributed run measures, and
        all-reduces, at the same steps), and in a single process also once ``recheck_seconds`` have passed on the
        host clock (a run that slowed down is caught in time, not ``cadence`` slow steps later)."""
        if step >= self._next_check:
            return True
        first_done = self.budget_record["measurements"] > 0
        return first_done and not _distributed() and self._clock() - self._mark[0] >= self.recheck_seconds

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        step, end = state.global_step, self.budget_record["end_step"]
        if step - self._first_step == self.warmup:
            self._mark = (self._now(), step)
        elif self._mark is not None and (end is None or step < end) and self._due(step):
            now = self._now()
            rate = (step - self._mark[1]) / max(now - self._mark[0], 1e-9)
            left = self.seconds - (now - self._start)
            end = min(state.max_steps, step + max(0, int(left * rate)))
            cadence = max(self.measure, int(rate * self.recheck_seconds))
            end, cadence = _agree_on_minimum(end, cadence)
            self._mark, self._next_check = (now, step), step + cadence
            self.budget_record.update(
                end_step=end,
                steps_per_s=rate,
                measurements=self.budget_record["measurements"] + 1,
                schedule_retargeted=self.anneal and retarget_schedule(lr_scheduler, end),
            )
        if end is not None and step >= end:
            control.should_training_stop = True
            control.should_save = not self.anneal and step < state.max_steps  # resumable where it stopped
        return control


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _agree_on_minimum(*values: int) -> tuple[int, ...]:
    """The element-wise minimum over the ranks of a ``torch.distributed`` run (the values themselves otherwise)."""
    import torch.distributed as dist

    if not _distributed():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tuple(int(v) for v in tensor.tolist())


def retarget_schedule(lr_scheduler: Any, num_training_steps: int) -> bool:
    """Move the end of a transformers schedule (its lambdas' ``num_training_steps``) to ``num_training_steps``;
    ``False`` when the schedule has no end to move (constant, or not built by ``get_scheduler``)."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
    lambdas = [
        f
        for f in getattr(scheduler, "lr_lambdas", None) or []
        if isinstance(f, functools.partial) and "num_training_steps" in f.keywords
    ]
    for f in lambdas:
        f.keywords["num_training_steps"] = num_training_steps
    return bool(lambdas)
