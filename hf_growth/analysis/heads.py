"""Attention-head emergence during training (stacked-heads paper, papers.md §3).

``HeadEmergenceCallback`` runs a fixed probe batch at chosen steps and stores, per recorded step, (a) one
scalar per layer and head: the attention mass that the chosen query positions put on the key positions the
task says matter (e.g. the retrieval chain), averaged over the probe's sequences, and (b) the full attention
maps of the chosen layers/heads for one probe sequence. Nothing else is kept, so memory is
``steps × (layers × heads + chosen maps × T²)`` floats.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ._common import eager_attention, eval_mode, iter_batches, model_device


def head_scores(attentions: Iterable[torch.Tensor], important: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """``(layers, heads)`` attention mass on ``important`` keys, averaged over the ``query_mask`` positions.

    ``attentions``: per layer ``(B, H, T, T)``; ``important``: ``(B, T)`` key mask, or ``(B, T, T)`` per query;
    ``query_mask``: ``(B, T)``.
    """
    scores = []
    q = query_mask.to(torch.float64)
    for attention in attentions:
        a = attention.to(torch.float64)
        imp = important.to(device=a.device, dtype=torch.float64)
        if imp.dim() == 2:
            mass = torch.einsum("bhqk,bk->bhq", a, imp)
        else:
            mass = torch.einsum("bhqk,bqk->bhq", a, imp)
        qq = q.to(a.device)
        scores.append((mass * qq[:, None, :]).sum((0, 2)) / qq.sum().clamp_min(1))
    return torch.stack(scores).cpu()


def _last_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    tokens = attention_mask.shape[1]
    positions = torch.arange(tokens, device=attention_mask.device).expand_as(attention_mask)
    last = torch.where(attention_mask.bool(), positions, -1).max(1).values
    return positions == last[:, None]


class HeadEmergenceCallback(TrainerCallback):
    """Record attention on a fixed probe batch at chosen training steps (a ``transformers.TrainerCallback``).

    - ``probe``: ``input_ids`` tensor or mapping with ``input_ids`` (+ ``attention_mask``), kept fixed.
    - ``important``: bool ``(B, T)`` key positions that matter (or ``(B, T, T)``, per query row).
    - ``query_mask``: bool ``(B, T)`` query positions to score; default the last real token of each sequence.
    - ``steps`` (explicit global steps) and/or ``every`` (every n steps); step 0 is recorded at train start.
    - ``layers`` / ``heads``: which maps to store (default: all layers, all heads); ``map_example``: which
      probe sequence's maps to keep. Scores are always kept for every layer and head.

    >>> cb = HeadEmergenceCallback(torch.randint(0, 64, (2, 6)), torch.ones(2, 6, dtype=torch.bool), every=10)
    >>> cb.steps, cb.scores
    ([], [])

    After training: ``cb.steps`` (list of int), ``cb.scores`` (list of ``(L, H)`` arrays), ``cb.maps`` (list of
    ``(len(layers), len(heads), T, T)`` arrays), ``cb.to_dict()`` / ``cb.save(path)`` and
    ``plot_head_emergence(cb, path)``.

    Recording switches the model to eval mode and eager attention for one forward pass and restores both. It
    runs on every process and needs the whole model there (single device or DDP; not FSDP/DeepSpeed-sharded);
    save from the main process.
    """

    def __init__(
        self,
        probe: Any,
        important: torch.Tensor,
        *,
        query_mask: torch.Tensor | None = None,
        steps: Iterable[int] | None = None,
        every: int | None = None,
        layers: Iterable[int] | None = None,
        heads: Iterable[int] | None = None,
        map_example: int = 0,
    ) -> None:
        self.probe = next(iter_batches(probe))
        self.important = torch.as_tensor(important).bool()
        if self.important.shape[:2] != self.probe["input_ids"].shape:
            raise ValueError(
                f"important has shape {tuple(self.important.shape)}; expected (B, T) or (B, T, T) with "
                f"(B, T) = {tuple(self.probe['input_ids'].shape)}"
            )
        if query_mask is None:
            query_mask = _last_token_mask(self.probe["attention_mask"])
        self.query_mask = torch.as_tensor(query_mask).bool() & self.probe["attention_mask"].bool()
        self.record_steps = None if steps is None else sorted({int(s) for s in steps})
        self.every = every
        if self.record_steps is None and not every:
            raise ValueError("give `steps` and/or `every`")
        self.layers = None if layers is None else [int(x) for x in layers]
        self.heads = None if heads is None else [int(x) for x in heads]
        self.map_example = int(map_example)
        self.steps: list[int] = []
        self.scores: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []

    def should_record(self, step: int) -> bool:
        if step in self.steps:
            return False
        if self.record_steps is not None and step in self.record_steps:
            return True
        return bool(self.every) and step % self.every == 0

    def record(self, model: torch.nn.Module, step: int) -> None:
        """Run the probe through ``model`` now and store the scores and maps under ``step``."""
        device = model_device(model)
        with eval_mode(model), eager_attention(model):
            batch = {key: value.to(device) for key, value in self.probe.items()}
            output = model(**batch, output_attentions=True, use_cache=False)
        attentions = output.attentions
        if not attentions or any(a is None for a in attentions):
            raise ValueError("the model returned no attention weights")
        self.scores.append(head_scores(attentions, self.important, self.query_mask).float().numpy())
        layers = self.layers if self.layers is not None else list(range(len(attentions)))
        heads = self.heads if self.heads is not None else list(range(attentions[0].shape[1]))
        maps = torch.stack([attentions[layer][self.map_example, heads] for layer in layers])
        self.maps.append(maps.float().cpu().numpy())
        self.steps.append(int(step))
        self.map_layers, self.map_heads = layers, heads

    # --- TrainerCallback hooks -------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self.should_record(state.global_step):
            self.record(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.should_record(state.global_step):
            self.record(model, state.global_step)

    # --- output ------------------------------------------------------------------------------------
    def emergence_steps(self, threshold: float | None = None) -> list[list[int | None]]:
        """Per layer and head, the first recorded step whose score reaches ``threshold`` (``None``: never);
        by default the step at which the head has covered half of its rise (see ``first_reach``)."""
        return first_reach(np.stack(self.scores), self.steps, threshold) if self.scores else []

    def to_dict(self, *, include_maps: bool = True) -> dict[str, Any]:
        """The recorded numbers as a JSON-able dict (``scores[step][layer][head]``; maps optional)."""
        data: dict[str, Any] = {
            "steps": list(self.steps),
            "scores": [s.tolist() for s in self.scores],
            "map_layers": getattr(self, "map_layers", self.layers),
            "map_heads": getattr(self, "map_heads", self.heads),
            "map_example": self.map_example,
            "map_tokens": int(self.probe["attention_mask"][self.map_example].sum()),
        }
        if include_maps:
            data["maps"] = [np.round(m, 5).tolist() for m in self.maps]
        return data

    def save(self, path: str | Path, *, include_maps: bool = True) -> Path:
        """Write ``to_dict()`` as JSON to ``path`` and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(include_maps=include_maps)))
        return path


def first_reach(scores: np.ndarray, steps: list[int], threshold: float | None) -> list[list[int | None]]:
    """For ``scores`` ``(S, L, H)`` recorded at ``steps``: per layer and head, the first step whose score is
    >= ``threshold``; with ``threshold=None``, the first step that covers half the head's rise from its first
    to its highest score (``None`` for heads that rise by less than 0.05)."""
    out: list[list[int | None]] = []
    for layer in range(scores.shape[1]):
        row: list[int | None] = []
        for head in range(scores.shape[2]):
            curve = scores[:, layer, head]
            if threshold is None:
                rise = curve.max() - curve[0]
                if rise < 0.05:
                    row.append(None)
                    continue
                hit = np.nonzero(curve >= curve[0] + rise / 2)[0]
            else:
                hit = np.nonzero(curve >= threshold)[0]
            row.append(int(steps[int(hit[0])]) if hit.size else None)
        out.append(row)
    return out


def as_record(source: HeadEmergenceCallback | Mapping[str, Any]) -> dict[str, Any]:
    """A callback or its ``to_dict()`` (e.g. loaded from JSON) as a dict with numpy arrays."""
    if isinstance(source, HeadEmergenceCallback):
        data = source.to_dict(include_maps=False)
        data["maps"] = list(source.maps)
    else:
        data = dict(source)
    data["scores"] = np.asarray(data["scores"], dtype=np.float32)
    data["maps"] = [np.asarray(m, dtype=np.float32) for m in data.get("maps") or []]
    return data


__all__ = ["HeadEmergenceCallback", "head_scores"]
