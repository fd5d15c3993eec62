"""Grow a live model in place and re-key its optimizer state: growth during training.

:func:`grow_in_place` grows a model **in place** (the same Python object: a Trainer's ``model``, ``model_wrapped``,
the accelerator and the callback handler all keep seeing it; a ``DistributedDataParallel`` wrapper is rebuilt in
place around the grown module, FSDP is refused) with the growth engine (:func:`hf_growth.grow_model`), and re-keys
the optimizer (the same optimizer object, so a learning-rate scheduler keeps working): surviving parameters keep
their Adam state (``exp_avg``, ``exp_avg_sq``, ``step``) moved with the weights, the old slices of widened tensors
keep their moments and the new slices start at zero, copied blocks take a copy of their source's state (or a fresh
one, ``copied_state="fresh"``), wholly new tensors start fresh. Forward/backward hooks on the model's modules move
to the modules now at their place.

:func:`resize_parameter` does the same for a parameter outside the model that must follow its growth (a head that
reads the model's hidden states, say): the same ``Parameter`` object, old entries kept, new ones zero, optimizer
state alongside.

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
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .engine import GrowthEngine, MetaSource
from .views import ExpertsView, LayerView, SourceView

__all__ = ["grow_in_place", "resize_parameter", "unwrap_growable"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


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


def unwrap_growable(model: nn.Module) -> nn.Module:
    """The model :func:`grow_in_place` grows inside DDP / DataParallel / torch.compile wrappers (itself when
    unwrapped); an FSDP-sharded model raises ``NotImplementedError``.

    >>> layer = nn.Linear(2, 2)
    >>> unwrap_growable(nn.DataParallel(layer)) is layer
    True
    """
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
        device_ids=ddp.device_ids,
        output_device=ddp.output_device,
        dim=ddp.dim,
        process_group=ddp.process_group,
        bucket_cap_mb=ddp.bucket_bytes_cap / float(1024 * 1024),
        find_unused_parameters=ddp.find_unused_parameters,
        gradient_as_bucket_view=ddp.gradient_as_bucket_view,
        static_graph=bool(getattr(ddp, "static_graph", False)),
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


def _pattern(name: str) -> str:
    return _LAYER_INDEX.sub(".*.", name, count=1)


def _lookup(new_slices: Mapping[str, Any], name: str) -> Any:
    if name in new_slices:
        return new_slices[name]
    return new_slices.get(_pattern(name))


def _tensor_origins(engine: Any) -> dict[str, tuple[str | None, str]]:
    """For every output tensor of ``engine``: ``(source tensor name, "keep" | "copy")``, or ``(None, "new")``
    for a tensor with no source (new random/copied-with-zeroed-outputs layers count as new)."""
    view = engine.view(MetaSource(engine.source_shapes()), meta=True)
    out: dict[str, tuple[str | None, str]] = {}
    for top_name in view.keys():
        name, mode, v = top_name, "keep", view
        while not isinstance(v, SourceView):
            if isinstance(v, ExpertsView) and v.computed(name):  # router and experts (copies: _expert_state)
                name = None
                break
            if isinstance(v, LayerView) and v.adapter.layer_of(name) is not None:
                origin, m = v.origin(name)
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
def grow_in_place(
    model: nn.Module,
    plan: Any,
    *,
    optimizer: Any = None,
    seed: int = 0,
    copied_state: str = "copy",
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Grow ``model`` by ``plan`` in place (same object) and re-key ``optimizer``'s state.

    ``copied_state``: ``"copy"`` (copied blocks get a copy of their source's optimizer state) or ``"fresh"``.
    ``record``: extra keys for the run's ``growth_history`` records (e.g. ``{"midas_stage": 2}``).
    Returns ``{"params_before", "params_after", "carried", "copied", "fresh", "hooks_moved"}``.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2))
    >>> grow_in_place(m, [{"mlp_width": 192}])["params_after"] - sum(p.numel() for p in m.parameters())
    0
    """
    from . import grow_model

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
        _rekey_optimizer(
            _unwrap_optimizer(optimizer), target, old_params, origins, new_slices, copied_state, counts, engine
        )
    params_after = sum(p.numel() for p in target.parameters())
    return {"params_before": params_before, "params_after": params_after, "hooks_moved": hooks_moved, **counts}


def _rekey_optimizer(
    opt: torch.optim.Optimizer,
    model: nn.Module,
    old_params: dict[str, nn.Parameter],
    origins: dict[str, tuple[str | None, str]],
    new_slices: Mapping[str, Any],
    copied_state: str,
    counts: dict[str, int],
    engine: Any = None,
) -> None:
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


def _expert_state(
    opt: torch.optim.Optimizer, engine: Any, name: str, param: nn.Parameter, old_params: dict[str, nn.Parameter]
) -> dict[str, Any] | None:
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
                    value = value[src_expert, src_part * src_rows : (src_part + 1) * src_rows]
                if key not in out:
                    out[key] = torch.zeros(param.shape, dtype=value.dtype, device=value.device)
                out[key][expert, part * rows : (part + 1) * rows] = value
            elif key not in out:
                out[key] = value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
    return out


def resize_parameter(
    param: nn.Parameter, shape: Sequence[int], new_slices: Mapping[Any, Any] | None = None, *, optimizer: Any = None
) -> None:
    """Resize ``param`` in place to ``shape`` for a grown model: the same ``Parameter`` object (optimizer param
    groups keep it), its old entries at the positions ``new_slices`` does not mark as new, zeros at the new ones,
    and ``optimizer``'s state for it (Adam's moments) moved the same way; its gradient is dropped.

    ``new_slices``: the new index ranges per dimension, ``{dim: [[start, stop], ...]}`` (the format of
    ``growth_history``'s ``new_slices``); ``None``: the new entries come after the old ones in every dimension.

    >>> w = nn.Parameter(torch.ones(2, 3))
    >>> resize_parameter(w, (2, 5), {1: [[0, 2]]})
    >>> w.tolist()
    [[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0]]
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != param.dim() or any(n < o for n, o in zip(shape, param.shape)):
        raise ValueError(f"cannot resize a parameter of shape {tuple(param.shape)} to {shape}: it only grows")
    if new_slices is None:
        new_slices = {d: [[o, n]] for d, (o, n) in enumerate(zip(param.shape, shape)) if n > o}
    spec = {str(d): ranges for d, ranges in new_slices.items()} or None
    if shape == tuple(param.shape) and spec is None:
        return
    data = _carry_tensor(param.data, shape, spec)
    if data is None:
        raise ValueError(f"new_slices {dict(new_slices)} do not turn shape {tuple(param.shape)} into {shape}")
    opt = _unwrap_optimizer(optimizer) if optimizer is not None else None
    state = opt.state.get(param) if opt is not None else None
    with torch.no_grad():
        param.data = data
    param.grad = None
    for key, value in list((state or {}).items()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            carried = _carry_tensor(value, shape, spec)
            if carried is None:  # state of another shape (e.g. a factored second moment): start it fresh
                opt.state[param] = {}
                return
            state[key] = carried
