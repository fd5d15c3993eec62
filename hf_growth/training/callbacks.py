"""Growth during training: MIDAS gradual stacking and function-preserving growth, keeping the optimizer state.

:func:`grow_in_place` grows a model **in place** (the same Python object: the Trainer's ``model``,
``model_wrapped``, the accelerator and the callback handler all keep seeing it; a ``DistributedDataParallel``
wrapper is rebuilt in place around the grown module, FSDP is refused) with the growth engine
(:func:`hf_growth.grow_model`), and re-keys the optimizer (the same optimizer object, so the LR scheduler keeps
working): surviving parameters keep their Adam state (``exp_avg``, ``exp_avg_sq``, ``step``) moved with the
weights, the old slices of widened tensors keep their moments and the new slices start at zero, copied blocks
take a copy of their source's state (or a fresh one, ``copied_state="fresh"``), wholly new tensors start fresh.

:class:`MidasStackingCallback` calls it at the stage boundaries of the Prop-alpha schedule with the engine's
``stack`` step; :class:`GrowthCallback` calls it with any plan at chosen steps. The growth is recorded in
``config.growth_history`` (MIDAS steps carry ``"midas_stage"``), which is all the state there is: a checkpoint's
``config.json`` says how far the schedule went, and ``callback.bind(trainer)`` grows a fresh model to the
checkpoint's size before ``trainer.train(resume_from_checkpoint=...)`` loads its weights.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                          num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2))
>>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
>>> model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward(); opt.step()
>>> same = model
>>> info = grow_in_place(model, [{"stack": {"to": 8, "block_size": 2}}], optimizer=opt)
>>> model is same, model.config.num_hidden_layers, info["params_after"] > info["params_before"]
(True, 8, True)
>>> {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
True
>>> midas_boundaries(100, stages=4, alpha=1.0)
[10, 30, 60]
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

__all__ = [
    "GrowthCallback",
    "MidasStackingCallback",
    "grow_in_place",
    "grow_to_checkpoint",
    "midas_boundaries",
    "midas_stage_depths",
]

logger = logging.getLogger(__name__)

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
#: keys the callbacks add to growth_history records (replayed on resume)
_RECORD_KEYS = ("midas_stage", "growth_callback_step")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


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
def _wrapper_chain(model: nn.Module) -> list[nn.Module]:
    """``model`` and the modules it wraps (torch.compile's ``_orig_mod``, DDP/DataParallel's ``module``),
    outermost first; FSDP is refused."""
    chain = [model]
    while True:
        inner = chain[-1]
        kind = type(inner).__name__
        if kind == "FullyShardedDataParallel" or kind.startswith("FSDP"):
            raise NotImplementedError(
                f"in-place growth of an FSDP-sharded model ({kind}) is not supported: its flat parameters and "
                "sharded optimizer state would have to be gathered, grown and re-sharded; grow under DDP or on one "
                "device, save, and start the FSDP run from the grown checkpoint"
            )
        if kind == "OptimizedModule":  # torch.compile: grow the original module
            chain.append(inner._orig_mod)
        elif hasattr(inner, "module") and isinstance(inner.module, nn.Module):  # DDP / DataParallel
            chain.append(inner.module)
        else:
            return chain


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The model to grow inside DDP / DataParallel / torch.compile wrappers; FSDP is refused."""
    return _wrapper_chain(model)[-1]


def _rewrap_ddp(ddp: nn.Module) -> None:
    """Rebuild a ``DistributedDataParallel`` wrapper **in place** around its (grown) module.

    DDP registers its gradient all-reduce on the parameters it saw at construction; after growth those are gone,
    and the new ones would silently train apart on every rank. The wrapper object must stay the same (the
    Trainer's training loop holds it in a local variable), so it is re-initialised with its own settings:
    a fresh reducer over the new parameters, the module's state broadcast from rank 0, comm hooks re-registered.
    """
    import inspect

    accepted = inspect.signature(type(ddp).__init__).parameters
    kwargs: dict[str, Any] = dict(
        device_ids=ddp.device_ids, output_device=ddp.output_device, dim=ddp.dim, process_group=ddp.process_group,
        bucket_cap_mb=ddp.bucket_bytes_cap / float(1024 * 1024), find_unused_parameters=ddp.find_unused_parameters,
        gradient_as_bucket_view=ddp.gradient_as_bucket_view, static_graph=bool(getattr(ddp, "static_graph", False)),
        mixed_precision=getattr(ddp, "mixed_precision", None),
    )
    if "forward_sync_buffers" in accepted and hasattr(ddp, "forward_sync_buffers"):
        kwargs["forward_sync_buffers"] = ddp.forward_sync_buffers
    else:
        kwargs["broadcast_buffers"] = ddp.broadcast_buffers
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    comm_hooks = list(getattr(ddp, "_comm_hooks", []))
    module = ddp.module
    type(ddp).__init__(ddp, module, **kwargs)
    for hook, state in comm_hooks:
        ddp.register_comm_hook(state, hook)


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer
    return optimizer


def _num_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot read the number of layers from {type(config).__name__}")


def _pattern(name: str) -> str:
    return _LAYER_INDEX.sub(".*.", name, count=1)


def _lookup(new_slices: Mapping[str, Any], name: str) -> Any:
    if name in new_slices:
        return new_slices[name]
    return new_slices.get(_pattern(name))


def _tensor_origins(engine: Any) -> dict[str, tuple[str | None, str]]:
    """For every output tensor of ``engine``: ``(source tensor name, "keep" | "copy")``, or ``(None, "new")``
    for a tensor with no source (new random/copied-with-zeroed-outputs layers count as new)."""
    from hf_growth.growth.engine import MetaSource, _LayerView, _SourceView
    from hf_growth.growth.views import ExpertsView

    view = engine.view(MetaSource(engine.source_shapes()), meta=True)
    out: dict[str, tuple[str | None, str]] = {}
    for top_name in view.keys():
        name, mode, v = top_name, "keep", view
        while not isinstance(v, _SourceView):
            if isinstance(v, ExpertsView) and v.computed(name):  # router and experts (copies: _expert_state)
                name = None
                break
            if isinstance(v, _LayerView) and v.adapter.layer_of(name) is not None:
                origin, m = v._origin[name]
                if origin is None or m not in ("keep", "copy"):
                    name = None
                    break
                if m == "copy":
                    mode = "copy"
                name = origin
            v = v.prev
        out[top_name] = (name, mode) if name is not None else (None, "new")
    return out


def _layer_keep_map(engine: Any) -> dict[int, int]:
    """old layer -> new layer for the layers an engine run keeps (composed over its depth steps)."""
    mapping = {j: j for j in range(engine.stages[0].before.layers)}
    for stage in engine.stages:
        if stage.layers is None:
            continue
        kept = {j: i for i, (j, mode) in enumerate(stage.layers) if mode == "keep"}
        mapping = {old: kept[cur] for old, cur in mapping.items() if cur in kept}
    return mapping


def _module_prefix(adapter: Any) -> str:
    return adapter.layer_prefix  # e.g. "model.layers." (tensor and module names share it)


def _move_hooks(old_modules: dict[str, nn.Module], model: nn.Module, keep: dict[int, int], prefix: str) -> int:
    """Carry forward/backward hooks of the old modules to the modules now at their place (the hook dicts
    themselves move, so ``RemovableHandle.remove()`` keeps working). Returns the number of modules moved."""
    new_modules = dict(model.named_modules())
    moved = 0
    layer_re = re.compile("^" + re.escape(prefix) + r"(\d+)(.*)$")
    for name, module in old_modules.items():
        if module is model or not any(getattr(module, d, None) for d in _HOOK_DICTS):
            continue
        match = layer_re.match(name)
        if match:
            j = int(match.group(1))
            if j not in keep:
                continue
            name = f"{prefix}{keep[j]}{match.group(2)}"
        target = new_modules.get(name)
        if target is None or target is module:
            continue
        for d in _HOOK_DICTS:
            hooks = getattr(module, d, None)
            if hooks:
                existing = getattr(target, d)
                hooks.update({k: v for k, v in existing.items() if k not in hooks})
                setattr(target, d, hooks)
        moved += 1
    return moved


def _new_indices(spec: Any, shape: tuple[int, ...]) -> list[set[int]] | str | None:
    """Per-dimension sets of new indices from a ``new_slices`` JSON spec."""
    if spec is None or spec == "all":
        return spec
    out = [set() for _ in shape]
    for d, ranges in spec.items():
        for start, stop in ranges:
            out[int(d)].update(range(start, stop))
    return out


def _carry_tensor(old: torch.Tensor, new_shape: tuple[int, ...], spec: Any) -> torch.Tensor | None:
    """A moment tensor of ``new_shape``: the old entries at the kept positions, zeros at the new ones."""
    if tuple(old.shape) == tuple(new_shape) and spec is None:
        return old
    new = _new_indices(spec, new_shape)
    if new == "all" or old.dim() != len(new_shape):
        return None
    new = new or [set() for _ in new_shape]
    keep = [sorted(set(range(n)) - s) for n, s in zip(new_shape, new)]
    if any(len(k) != o for k, o in zip(keep, old.shape)):
        return None
    out = torch.zeros(new_shape, dtype=old.dtype, device=old.device)
    index = torch.meshgrid(*[torch.tensor(k, dtype=torch.long, device=old.device) for k in keep], indexing="ij")
    out[index] = old
    return out


# ------------------------------------------------------------------------------------------ growth
def grow_in_place(model: nn.Module, plan: Any, *, optimizer: Any = None, seed: int = 0,
                  copied_state: str = "copy", record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Grow ``model`` by ``plan`` in place (same object) and re-key ``optimizer``'s state.

    ``copied_state``: ``"copy"`` (copied blocks get a copy of their source's optimizer state) or ``"fresh"``.
    ``record``: extra keys for the run's ``growth_history`` records (e.g. ``{"midas_stage": 2}``).
    Returns ``{"params_before", "params_after", "carried", "copied", "fresh", "hooks_moved"}``.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    >>> grow_in_place(m, [{"mlp_width": 192}])["params_after"] - sum(p.numel() for p in m.parameters())
    0
    """
    from hf_growth.growth import grow_model
    from hf_growth.growth.engine import GrowthEngine

    if copied_state not in ("copy", "fresh"):
        raise ValueError(f"copied_state must be 'copy' or 'fresh', got {copied_state!r}")
    from torch.nn.parallel import DistributedDataParallel

    chain = _wrapper_chain(model)
    target = chain[-1]
    ddp_wrappers = [m for m in chain if isinstance(m, DistributedDataParallel)]
    engine = GrowthEngine(target.config, plan, seed=seed)  # validates before anything changes
    origins = _tensor_origins(engine)
    keep_layers = _layer_keep_map(engine)
    old_params = dict(target.named_parameters())
    old_modules = dict(target.named_modules())
    params_before = sum(p.numel() for p in old_params.values())

    with torch.no_grad():
        grown = grow_model(target, engine.plan, seed=seed)
    if record:
        run = grown.config.growth_history[-1].get("run")
        for rec in grown.config.growth_history:
            if rec.get("run") == run:
                rec.update(copy.deepcopy(dict(record)))
    new_slices = grown.config.growth_history[-1].get("new_slices", {})

    # transplant: the same top-level object gets the grown children and config (and the grown class when a step
    # changed the architecture: experts, Llama -> Mixtral)
    if type(grown) is not type(target):
        target.__class__ = type(grown)
    for name, child in list(grown.named_children()):
        setattr(target, name, child)
    target.config = grown.config
    for module in target.modules():
        if module is not target and hasattr(module, "config") and isinstance(module.config, type(grown.config)):
            module.config = grown.config
    if getattr(target.config, "tie_word_embeddings", False) and hasattr(target, "tie_weights"):
        target.tie_weights()
    for name, param in target.named_parameters():  # keep what was frozen frozen
        origin, _ = origins.get(name, (None, "new"))
        if origin in old_params and not old_params[origin].requires_grad:
            param.requires_grad_(False)
    hooks_moved = _move_hooks(old_modules, target, keep_layers, _module_prefix(engine.adapter))
    for ddp in reversed(ddp_wrappers):  # innermost first
        _rewrap_ddp(ddp)

    counts = {"carried": 0, "copied": 0, "fresh": 0}
    if optimizer is not None:
        _rekey_optimizer(_unwrap_optimizer(optimizer), target, old_params, origins, new_slices, copied_state, counts,
                         engine)
    params_after = sum(p.numel() for p in target.parameters())
    return {"params_before": params_before, "params_after": params_after, "hooks_moved": hooks_moved, **counts}


def _rekey_optimizer(opt: torch.optim.Optimizer, model: nn.Module, old_params: dict[str, nn.Parameter],
                     origins: dict[str, tuple[str | None, str]], new_slices: Mapping[str, Any],
                     copied_state: str, counts: dict[str, int], engine: Any = None) -> None:
    old_ids = {id(p): n for n, p in old_params.items()}
    group_of: dict[str, int] = {}  # old param name -> group index
    for g, group in enumerate(opt.param_groups):
        for p in group["params"]:
            if id(p) in old_ids:
                group_of[old_ids[id(p)]] = g
    pattern_group = {_pattern(n): g for n, g in group_of.items()}
    new_state: dict[Any, dict[str, Any]] = defaultdict(dict)
    assigned: dict[int, list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        origin, mode = origins.get(name, (None, "new"))
        if origin is not None and origin not in group_of:
            continue  # its source was not being optimized (frozen)
        if not param.requires_grad:
            continue
        if origin is None and engine is not None:  # experts: each expert's moments are copies of its source's
            state = _expert_state(opt, engine, name, param, old_params)
            if state is not None:
                source = next(iter(state.pop("_sources")))
                assigned[group_of.get(source, 0)].append(param)
                new_state[param] = state
                counts["copied"] += 1
                continue
        g = group_of.get(origin) if origin is not None else pattern_group.get(_pattern(name), 0)
        assigned[g if g is not None else 0].append(param)
        state = opt.state.get(old_params[origin]) if origin is not None else None
        if not state:
            counts["fresh"] += 1
            continue
        if mode == "copy" and copied_state == "fresh":
            counts["fresh"] += 1
            continue
        spec = None if mode == "copy" else _lookup(new_slices, name)
        moved: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                carried = _carry_tensor(value, tuple(param.shape), spec)
                if carried is None:
                    moved = {}
                    break
                moved[key] = carried.clone() if (mode == "copy" or carried is value) else carried
            else:
                moved[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
        if moved:
            new_state[param] = moved
            counts["copied" if mode == "copy" else "carried"] += 1
        else:
            counts["fresh"] += 1
    for g, group in enumerate(opt.param_groups):
        others = [p for p in group["params"] if id(p) not in old_ids]  # e.g. a Seq-VCR projection head
        group["params"] = assigned.get(g, []) + others
        for p in others:
            if p in opt.state:
                new_state[p] = opt.state[p]
    opt.state = new_state


def _expert_state(opt: torch.optim.Optimizer, engine: Any, name: str, param: nn.Parameter,
                  old_params: dict[str, nn.Parameter]) -> dict[str, Any] | None:
    """The optimizer state of a new expert tensor whose experts are copies (upcycling: the dense MLP's; more
    experts: the old experts'): every copied part gets its source's moments, the rest zeros. None when no part is
    a copy or a source has no state."""
    origins = engine.part_origins(name)
    if not origins or all(o is None for *_, o in origins):
        return None
    out: dict[str, Any] = {"_sources": []}
    for expert, part, parts, origin in origins:
        if origin is None:
            continue
        source, src_expert, src_part = origin
        state = opt.state.get(old_params[source]) if source in old_params else None
        if not state:
            return None
        out["_sources"].append(source)
        rows = param.shape[1] // parts
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if src_expert is not None:
                    src_rows = value.shape[1] // parts
                    value = value[src_expert, src_part * src_rows:(src_part + 1) * src_rows]
                if key not in out:
                    out[key] = torch.zeros(param.shape, dtype=value.dtype, device=value.device)
                out[key][expert, part * rows:(part + 1) * rows] = value
            elif key not in out:
                out[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------------------ resume
def _runs(history: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    for rec in history:
        if runs and rec.get("run") == runs[-1][0].get("run"):
            runs[-1].append(rec)
        else:
            runs.append([rec])
    return runs


def grow_to_checkpoint(model: nn.Module, checkpoint: "str | os.PathLike") -> int:
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
    target = _unwrap_model(model)
    current = getattr(target.config, "growth_history", None) or []
    if [r.get("step") for r in saved[: len(current)]] != [r.get("step") for r in current] or len(saved) < len(current):
        raise ValueError(f"the model's growth_history is not a prefix of {path}'s: cannot grow it to the checkpoint")
    replayed = 0
    for run in _runs(saved[len(current):]):
        extra = {k: v for k, v in run[0].items() if k in _RECORD_KEYS}
        grow_in_place(target, [rec["step"] for rec in run], seed=int(run[0].get("seed", 0)), record=extra or None)
        replayed += 1
    return replayed


class _Bindable(TrainerCallback):
    trainer: Any = None

    def bind(self, trainer: Any) -> "_Bindable":
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
        _unwrap_model(self.trainer.model_wrapped if self.trainer is not None else model)

    def _grow(self, plan: Any, kwargs: dict[str, Any], seed: int, record: dict[str, Any] | None) -> dict[str, Any]:
        if self.trainer is None and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise RuntimeError(
                f"{type(self).__name__} in a distributed run needs callback.bind(trainer): the callback must reach "
                "the Trainer's DDP wrapper to rebuild it around the grown model (it only sees the bare model)"
            )
        # model_wrapped: the outermost wrapper (DDP), rebuilt in place around the grown model
        model = kwargs.get("model") if self.trainer is None else self.trainer.model_wrapped
        optimizer = kwargs.get("optimizer") if self.trainer is None else self.trainer.optimizer
        return grow_in_place(model, plan, optimizer=optimizer, seed=seed, copied_state=self.copied_state,
                             record=record)


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

    def __init__(self, stages: int = 4, block_size: int = 1, alpha: float = 1.0, where: str = "middle",
                 layers_per_stage: int | None = None, num_layers: int | None = None, copied_state: str = "copy",
                 seed: int = 0) -> None:
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
        config = _unwrap_model(model).config
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
        done, _ = self._done(_unwrap_model(target).config)
        if done >= self.stages or state.global_step < self.boundaries[done - 1]:
            return
        stage = done + 1
        depth = self.depths[stage - 1]
        plan = [{"stack": {"to": depth, "block_size": self.block_size, "where": self.where}}]
        info = self._grow(plan, {"model": model, **kwargs}, self.seed + stage, {"midas_stage": stage})
        self.events.append({"step": state.global_step, "stage": stage, "layers": depth, **info})
        logger.info("MIDAS: step %d, stage %d, %d layers, %d -> %d parameters", state.global_step, stage, depth,
                    info["params_before"], info["params_after"])


class GrowthCallback(_Bindable):
    """Grow the model by ``plan_at_step[step]`` after optimizer step ``step``, in place, keeping the optimizer
    state (old slices keep their Adam moments, new slices start at zero). With a function-preserving plan the
    next step's loss equals the loss before growth. ``check_batch`` (a dict of model inputs with ``labels``)
    makes it measure the loss on that batch in eval mode right before and right after each growth (``events``).

    >>> cb = GrowthCallback({20: [{"mlp_width": 128}], 40: [{"num_layers": {"to": 4, "where": "top"}}]})
    >>> sorted(cb.plan_at_step)
    [20, 40]
    """

    def __init__(self, plan_at_step: Mapping[int, Any], *, seed: int = 0, copied_state: str = "copy",
                 check_batch: Mapping[str, torch.Tensor] | None = None) -> None:
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
        target = _unwrap_model(self.trainer.model if self.trainer is not None else model)
        if self._applied(target.config, step):  # resumed from a checkpoint saved after this growth
            return
        before = self._loss(target, self.check_batch) if self.check_batch is not None else None
        info = self._grow(self.plan_at_step[step], {"model": model, **kwargs}, self.seed + step,
                          {"growth_callback_step": step})
        after = self._loss(target, self.check_batch) if self.check_batch is not None else None
        self.events.append({"step": step, "loss_before": before, "loss_after": after, **info})
        logger.info("growth at step %d: %d -> %d parameters", step, info["params_before"], info["params_after"])
