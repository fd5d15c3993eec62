"""Growth during training: MIDAS gradual stacking and function-preserving growth, keeping the optimizer state.

Both callbacks grow the Trainer's model in place with :func:`hf_growth.growth.in_place.grow_in_place` (the same
model object; a DDP wrapper is rebuilt around it, FSDP is refused; the optimizer's Adam state is re-keyed: old
slices keep their moments, new slices start at zero, copied blocks take a copy of their source's state).
:class:`MidasStackingCallback` grows at the stage boundaries of the Prop-alpha schedule with the engine's ``stack``
step; :class:`GrowthCallback` grows with any plan at chosen steps. The growth is recorded in
``config.growth_history`` (MIDAS steps carry ``"midas_stage"``), which is all the state there is: a checkpoint's
``config.json`` says how far the schedule went, and ``callback.bind(trainer)`` grows a fresh model to the
checkpoint's size before ``trainer.train(resume_from_checkpoint=...)`` loads its weights. A
:class:`~hf_growth.SeqVCRTrainer`'s projection head follows every growth step (see its docs).

>>> midas_boundaries(100, stages=4, alpha=1.0)
[10, 30, 60]
>>> GrowthCallback({20: [{"mlp_width": 128}]}).plan_at_step
{20: [{'mlp_width': 128}]}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..growth.in_place import grow_in_place, unwrap_growable

__all__ = [
    "GrowthCallback",
    "MidasStackingCallback",
    "grow_in_place",
    "grow_to_checkpoint",
    "midas_boundaries",
    "midas_stage_depths",
]

logger = logging.getLogger(__name__)

#: keys the callbacks add to growth_history records (replayed on resume)
_RECORD_KEYS = ("midas_stage", "growth_callback_step")


# ------------------------------------------------------------------------------------------ schedule
def midas_boundaries(total_steps: int, stages: int, alpha: float = 1.0) -> list[int]:
    """Global steps after which stage ``i`` (1..stages-1) ends under Prop-alpha: stage ``i`` trains for
    ``T * i**alpha / sum_j j**alpha`` steps (Saunshi et al. 2409.19044).

    >>> midas_boundaries(40, 4, 0.0)
    [10, 20, 30]
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    weights = [float(i) ** alpha for i in range(1, stages + 1)]
    total, cum, out = sum(weights), 0.0, []
    for w in weights[:-1]:
        cum += w
        out.append(int(round(total_steps * cum / total)))
    return out


def midas_stage_depths(initial_layers: int, stages: int, layers_per_stage: int) -> list[int]:
    """Number of layers in each stage.

    >>> midas_stage_depths(6, 4, 6)
    [6, 12, 18, 24]
    """
    return [initial_layers + i * layers_per_stage for i in range(stages)]


# ------------------------------------------------------------------------------------------ helpers
def _num_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot read the number of layers from {type(config).__name__}")


# ------------------------------------------------------------------------------------------ resume
def _runs(history: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    for rec in history:
        if runs and rec.get("run") == runs[-1][0].get("run"):
            runs[-1].append(rec)
        else:
            runs.append([rec])
    return runs


def grow_to_checkpoint(model: nn.Module, checkpoint: str | os.PathLike) -> int:
    """Grow ``model`` in place to the size of ``checkpoint`` by replaying the growth runs its ``config.json``
    ``growth_history`` has and ``model`` lacks (weights are then loaded from the checkpoint). Returns the number
    of runs replayed.

    >>> grow_to_checkpoint(model, "out/checkpoint-30")   # doctest: +SKIP
    """
    path = os.path.join(os.fspath(checkpoint), "config.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        saved = json.load(f).get("growth_history") or []
    target = unwrap_growable(model)
    current = getattr(target.config, "growth_history", None) or []
    if [r.get("step") for r in saved[: len(current)]] != [r.get("step") for r in current] or len(saved) < len(current):
        raise ValueError(f"the model's growth_history is not a prefix of {path}'s: cannot grow it to the checkpoint")
    replayed = 0
    for run in _runs(saved[len(current) :]):
        extra = {k: v for k, v in run[0].items() if k in _RECORD_KEYS}
        grow_in_place(target, [rec["step"] for rec in run], seed=int(run[0].get("seed", 0)), record=extra or None)
        replayed += 1
    return replayed


class _Bindable(TrainerCallback):
    trainer: Any = None

    def bind(self, trainer: Any) -> _Bindable:
        """Attach to ``trainer``: adds the callback if missing, and grows the model to a checkpoint's size before
        ``trainer.train(resume_from_checkpoint=...)`` loads its weights. Returns ``self``."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        original = trainer._load_from_checkpoint
        if getattr(original, "_hf_growth_wrapped", False):
            return self

        def _load_from_checkpoint(resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            grow_to_checkpoint(model if model is not None else trainer.model, resume_from_checkpoint)
            return original(resume_from_checkpoint, model)

        _load_from_checkpoint._hf_growth_wrapped = True  # type: ignore[attr-defined]
        trainer._load_from_checkpoint = _load_from_checkpoint
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # fail before the first step, not at the first growth, when the run's wrapper cannot be grown (FSDP)
        unwrap_growable(self.trainer.model_wrapped if self.trainer is not None else model)

    def _grow(self, plan: Any, kwargs: dict[str, Any], seed: int, record: dict[str, Any] | None) -> dict[str, Any]:
        if (
            self.trainer is None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        ):
            raise RuntimeError(
                f"{type(self).__name__} in a distributed run needs callback.bind(trainer): the callback must reach "
                "the Trainer's DDP wrapper to rebuild it around the grown model (it only sees the bare model)"
            )
        # model_wrapped: the outermost wrapper (DDP), rebuilt in place around the grown model
        model = kwargs.get("model") if self.trainer is None else self.trainer.model_wrapped
        optimizer = kwargs.get("optimizer") if self.trainer is None else self.trainer.optimizer
        info = grow_in_place(model, plan, optimizer=optimizer, seed=seed, copied_state=self.copied_state, record=record)
        follow = getattr(self.trainer, "follow_model_growth", None)  # SeqVCRTrainer: its projection head
        if follow is not None:
            follow()
        return info


# ------------------------------------------------------------------------------------------ callbacks
class MidasStackingCallback(_Bindable):
    """MIDAS (``where="middle"``) or gradual (``"top"``) stacking on a Prop-alpha schedule, in place.

    The run has ``stages`` stages over the Trainer's ``max_steps``; stage ``i`` (1-indexed) trains for
    ``T * i**alpha / sum_j j**alpha`` steps. At each boundary the model grows by ``layers_per_stage`` layers
    (default ``block_size``: one block) with the engine's ``stack`` step, or to ``num_layers`` at the last stage
    (``layers_per_stage = (num_layers - initial) / (stages - 1)``). ``copied_state``: ``"copy"`` | ``"fresh"``
    Adam state for the copied blocks. The stage reached is read from ``config.growth_history``, so the
    schedule resumes from a checkpoint (use :meth:`bind` so the Trainer grows the model before loading it).

    >>> cb = MidasStackingCallback(stages=4, block_size=2)                    # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]); cb.bind(trainer)  # doctest: +SKIP
    >>> trainer.train()                                                        # doctest: +SKIP
    """

    def __init__(
        self,
        stages: int = 4,
        block_size: int = 1,
        alpha: float = 1.0,
        where: str = "middle",
        layers_per_stage: int | None = None,
        num_layers: int | None = None,
        copied_state: str = "copy",
        seed: int = 0,
    ) -> None:
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        if where not in ("middle", "top"):
            raise ValueError(f"where must be 'middle' or 'top', got {where!r}")
        if copied_state not in ("copy", "fresh"):
            raise ValueError(f"copied_state must be 'copy' or 'fresh', got {copied_state!r}")
        self.stages, self.block_size, self.alpha, self.where = int(stages), int(block_size), float(alpha), where
        self.layers_per_stage, self.num_layers = layers_per_stage, num_layers
        self.copied_state, self.seed = copied_state, int(seed)
        self.boundaries: list[int] = []
        self.depths: list[int] = []
        self.events: list[dict[str, Any]] = []

    @staticmethod
    def _done(config: Any) -> tuple[int, int]:
        """(stages completed, layers added by them) from ``growth_history``."""
        done, added = 1, 0
        for rec in getattr(config, "growth_history", None) or []:
            if "midas_stage" in rec:
                done = max(done, int(rec["midas_stage"]))
                added += int(rec["after"]["layers"]) - int(rec["before"]["layers"])
        return done, added

    def schedule(self, max_steps: int, model: nn.Module) -> tuple[list[int], list[int]]:
        """(boundaries, depths) for a run of ``max_steps`` on ``model`` (at any stage of the schedule)."""
        config = unwrap_growable(model).config
        _, added = self._done(config)
        initial = _num_layers(config) - added
        per = self.layers_per_stage
        if self.num_layers is not None:
            if self.stages < 2 or (self.num_layers - initial) % (self.stages - 1):
                raise ValueError(f"{initial} -> {self.num_layers} layers is not {self.stages - 1} equal growths")
            per = (self.num_layers - initial) // (self.stages - 1)
        per = self.block_size if per is None else int(per)
        if per % self.block_size:
            raise ValueError(f"layers_per_stage {per} is not a whole number of blocks of {self.block_size}")
        return midas_boundaries(max_steps, self.stages, self.alpha), midas_stage_depths(initial, self.stages, per)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        self.boundaries, self.depths = self.schedule(state.max_steps, self.trainer.model if self.trainer else model)
        logger.info("MIDAS schedule: grow after steps %s to %s layers", self.boundaries, self.depths[1:])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        target = self.trainer.model if self.trainer is not None else model
        done, _ = self._done(unwrap_growable(target).config)
        if done >= self.stages or state.global_step < self.boundaries[done - 1]:
            return
        stage = done + 1
        depth = self.depths[stage - 1]
        plan = [{"stack": {"to": depth, "block_size": self.block_size, "where": self.where}}]
        info = self._grow(plan, {"model": model, **kwargs}, self.seed + stage, {"midas_stage": stage})
        self.events.append({"step": state.global_step, "stage": stage, "layers": depth, **info})
        logger.info(
            "MIDAS: step %d, stage %d, %d layers, %d -> %d parameters",
            state.global_step,
            stage,
            depth,
            info["params_before"],
            info["params_after"],
        )


class GrowthCallback(_Bindable):
    """Grow the model by ``plan_at_step[step]`` after optimizer step ``step``, in place, keeping the optimizer
    state (old slices keep their Adam moments, new slices start at zero). With a function-preserving plan the
    next step's loss equals the loss before growth. ``check_batch`` (a dict of model inputs with ``labels``)
    makes it measure the loss on that batch in eval mode right before and right after each growth (``events``).

    >>> cb = GrowthCallback({20: [{"mlp_width": 128}], 40: [{"num_layers": {"to": 4, "where": "top"}}]})
    >>> sorted(cb.plan_at_step)
    [20, 40]
    """

    def __init__(
        self,
        plan_at_step: Mapping[int, Any],
        *,
        seed: int = 0,
        copied_state: str = "copy",
        check_batch: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if copied_state not in ("copy", "fresh"):
            raise ValueError(f"copied_state must be 'copy' or 'fresh', got {copied_state!r}")
        self.plan_at_step = {int(k): v for k, v in plan_at_step.items()}
        self.seed, self.copied_state, self.check_batch = int(seed), copied_state, check_batch
        self.events: list[dict[str, Any]] = []

    @staticmethod
    def _loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> float:
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                return float(model(**{k: v.to(device) for k, v in batch.items()}).loss)
        finally:
            model.train(was)

    def _applied(self, config: Any, step: int) -> bool:
        return any(rec.get("growth_callback_step") == step for rec in getattr(config, "growth_history", None) or [])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step not in self.plan_at_step:
            return
        target = unwrap_growable(self.trainer.model if self.trainer is not None else model)
        if self._applied(target.config, step):  # resumed from a checkpoint saved after this growth
            return
        before = self._loss(target, self.check_batch) if self.check_batch is not None else None
        info = self._grow(
            self.plan_at_step[step], {"model": model, **kwargs}, self.seed + step, {"growth_callback_step": step}
        )
        after = self._loss(target, self.check_batch) if self.check_batch is not None else None
        self.events.append({"step": step, "loss_before": before, "loss_after": after, **info})
        logger.info("growth at step %d: %d -> %d parameters", step, info["params_before"], info["params_after"])
