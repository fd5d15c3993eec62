"""The adapter protocol: one subclass per architecture maps tensor names <-> roles and layouts, reads and
writes sizes in the config, and says what it cannot do exactly. The math lives in ``ops.py`` and the step
logic in ``steps/``; an adapter holds no tensor code. What an architecture refuses is a method per step,
``check_<kind>(stage)`` (:meth:`Adapter.check`).

Roles (canonical layout ``(out, in)``; ``transposed=True`` marks GPT-2 Conv1D storage ``(in, out)``):

=============  =========================  ============================================
role           canonical shape            meaning
=============  =========================  ============================================
embed          (vocab, hidden)            token embedding
pos            (positions, hidden)        learned position embedding
lm_head        (vocab, hidden)            unembedding (absent from the tensors when tied)
final_norm.w/b (hidden,)                  last norm
norm.w / .b    (hidden,)                  per-layer norms over the hidden size
q.w k.w v.w    (heads*qk | kv*qk | kv*v, hidden)
qkv.w / .b     q, k, v fused along dim 0 (GPT-2 c_attn)
o.w / o.b      (hidden, heads*v) / (hidden,)
mlp_in.w / .b  (mlp, hidden) / (mlp,)     gate and up projections, c_fc
mlp_out.w / .b (hidden, mlp) / (hidden,)  down projection, c_proj
gate_up.w/.b   (2*mlp, hidden) / (2*mlp,) gate and up fused along dim 0 (Phi-3 gate_up_proj)
q_norm.w       (qk,)                      per-head RMSNorm gain of the queries, shared by the heads (Qwen3, Gemma 3)
k_norm.w       (qk,)                      the same for the keys
lambda         any                        per-layer scalars (ResFormer value residual)
router.w       (experts, hidden)          a mixture of experts' router (a read-out of the hidden state)
experts_in.w   (experts, 2*mlp, hidden)   every expert's gate and up projections (gate rows first)
experts_out.w  (experts, hidden, mlp)     every expert's down projection
=============  =========================  ============================================

A width step transforms ``experts_in.w`` / ``experts_out.w`` expert by expert, each expert's gate, up and down
as the ``mlp_in.w`` / ``mlp_out.w`` role (free values seeded per part: ``name[e].gate``, ``name[e].up``,
``name[e]``), and ``router.w`` as a read-out of the hidden state like ``lm_head`` (one row per expert).

>>> from hf_growth.growth.adapters import get_adapter
>>> get_adapter({"model_type": "llama"}).role("model.layers.3.mlp.down_proj.weight")
TensorRole(role='mlp_out.w', layer=3, transposed=False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..steps import Stage


@dataclass(frozen=True)
class Sizes:
    """Every size a step can change, read from a config by an adapter."""

    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    qk_dim: int
    v_dim: int
    layers: int
    vocab: int
    tied: bool
    positions: int | None = None
    #: experts per MoE layer (0: a dense MLP) and experts per token
    experts: int = 0
    top_k: int = 0

    def with_(self, **changes: Any) -> Sizes:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        keys = ("hidden", "mlp", "heads", "kv_heads", "qk_dim", "v_dim", "layers") + (
            ("experts", "top_k") if self.experts else ()
        )
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class TensorRole:
    role: str
    layer: int | None
    transposed: bool = False


class Adapter:
    """Base class. Subclasses fill the class attributes and override the hooks they need."""

    name: ClassVar[str] = "base"
    config_class_name: ClassVar[str] = ""  # the transformers config class, named without importing it
    model_types: ClassVar[tuple[str, ...]] = ()
    norm: ClassVar[str] = "rms"  # "rms" (zero-padded hidden growth) or "layer" (integer cloning only)
    layer_prefix: ClassVar[str] = "model.layers."
    #: suffix inside a layer -> (role, transposed, config flag that must be true for it to exist or None)
    layer_tensors: ClassVar[dict[str, tuple[str, bool, str | None]]] = {}
    #: global name -> (role, transposed, flag)
    global_tensors: ClassVar[dict[str, tuple[str, bool, str | None]]] = {}
    lm_head: ClassVar[str] = "lm_head.weight"
    separate_qk_v: ClassVar[bool] = False  # qk_dim and value_dim may grow separately
    rope: ClassVar[bool] = True  # queries/keys carry RoPE (head-size growth needs a placement that keeps it)
    #: queries and keys pass a per-head RMSNorm over the head size with the config's epsilon (roles ``q_norm.w`` /
    #: ``k_norm.w``: Qwen3, Gemma 3): hidden growth, which rescales that epsilon, scales q/k by the same factor
    #: (steps/hidden_size.py); head-size growth copies dimensions (steps/qk_dim.py)
    qk_norm: ClassVar[bool] = False
    #: fused q/k/v or gate/up tensors draw each part's free values from its own seed (GPT-2's ``c_attn``, older
    #: than this option, draws them all from the tensor's name)
    fused_part_seeds: ClassVar[bool] = False
    #: config keys
    keys: ClassVar[dict[str, str]] = {}
    eps_key: ClassVar[str | None] = None
    #: per-layer lists in the config that follow the layers (rebuilt by num_layers / stack)
    layer_list_keys: ClassVar[tuple[str, ...]] = ("layer_types",)
    #: RMSNorm multiplies by ``norm_weight_offset + w``: 0 (Llama), 1 for Gemma's ``(1 + w)`` gains
    norm_weight_offset: ClassVar[float] = 0.0
    #: the embedding output is multiplied by sqrt(hidden_size) (Gemma): hidden growth rescales the embedding
    embed_scaled_by_sqrt_hidden: ClassVar[bool] = False
    #: the attention scale is 1/sqrt(head size); False when a config key fixes it (Gemma's query_pre_attn_scalar):
    #: then head-size growth leaves the keys as they are
    attention_scale_follows_head_dim: ClassVar[bool] = True

    _layer_re: ClassVar[re.Pattern] = re.compile(r"^$")

    # ---------------------------------------------------------------- mixture of experts (steps/experts.py)
    #: the ``experts`` step's config settings this architecture has (empty: not a mixture of experts)
    moe_settings: ClassVar[tuple[str, ...]] = ()
    #: settings an upcycled config gets unless the step says otherwise
    upcycle_defaults: ClassVar[dict[str, Any]] = {}
    #: the config class's defaults of the keys the dense architecture's config does not have (added when upcycling,
    #: so that a config.json dict grows into what the config class saves)
    moe_config_defaults: ClassVar[dict[str, Any]] = {}
    #: config keys of the dense architecture this one does not have (dropped when upcycling)
    dense_only_keys: ClassVar[tuple[str, ...]] = ()
    #: the causal LM class of the architecture (written into ``architectures`` when a step changes it)
    causal_lm_class_name: ClassVar[str] = ""

    #: per-expert checkpoint names (inside a layer) of a fused expert tensor: fused suffix -> the per-expert
    #: suffixes (``{e}``: the expert) whose tensors are concatenated along dim 0 within an expert. transformers 5
    #: holds the fused tensors and saves the per-expert names (its conversion mapping, reversed)
    per_expert_names: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: other tensors the per-expert checkpoints name differently: suffix -> saved suffix
    per_expert_renames: ClassVar[dict[str, str]] = {}

    def saved_parts(self, name: str, sizes: Sizes) -> list[tuple[str, int | None, int | None]] | None:
        """How ``save_pretrained`` stores the tensor ``name``: ``[(saved name, expert, part)]`` for a fused expert
        tensor (``part``: the index among the per-expert suffixes), ``[(saved name, None, None)]`` for a renamed
        tensor, None for a tensor saved under its own name."""
        match = self._layer_re.match(name)
        if not match or not self.per_expert_names:
            return None
        prefix, suffix = f"{self.layer_prefix}{match.group(1)}.", match.group(2)
        if suffix in self.per_expert_renames:
            return [(prefix + self.per_expert_renames[suffix], None, None)]
        parts = self.per_expert_names.get(suffix)
        if parts is None:
            return None
        return [(prefix + part.format(e=e), e, k) for e in range(sizes.experts) for k, part in enumerate(parts)]

    def fused_name(self, saved: str) -> tuple[str, int | None, int | None] | None:
        """The inverse of :meth:`saved_parts`: ``(name, expert, part)`` of a per-expert (or renamed) checkpoint
        name, None for any other name."""
        match = self._layer_re.match(saved)
        if not match or not self.per_expert_names:
            return None
        prefix, suffix = f"{self.layer_prefix}{match.group(1)}.", match.group(2)
        for fused, renamed in self.per_expert_renames.items():
            if suffix == renamed:
                return prefix + fused, None, None
        for fused, parts in self.per_expert_names.items():
            for k, part in enumerate(parts):
                head, tail = part.split("{e}")
                if (
                    suffix.startswith(head)
                    and suffix.endswith(tail)
                    and suffix[len(head) : len(suffix) - len(tail)].isdigit()
                ):
                    return prefix + fused, int(suffix[len(head) : len(suffix) - len(tail)]), k
        return None

    def renormalises(self, cfg: dict[str, Any]) -> bool:
        """Whether the chosen experts' routing weights are renormalised to sum to one under ``cfg``."""
        return True

    def check_upcycle(self, stage: Stage) -> None:
        """Raise ValueError when the dense model of ``stage`` (``stage.adapter``, ``stage.cfg_before``) cannot
        become this mixture of experts exactly (unless ``stage.step.approximate``)."""

    def from_dense_config(self, cfg: dict[str, Any], dense: Adapter) -> dict[str, Any]:
        """The config of the dense model ``cfg`` as this architecture's (before the sizes are written): the
        dense-only keys dropped, ``model_type`` and ``architectures`` this architecture's."""
        cfg = {**self.moe_config_defaults, **{k: v for k, v in cfg.items() if k not in self.dense_only_keys}}
        cfg["model_type"] = self.model_types[0]
        if cfg.get("architectures"):
            cfg["architectures"] = [self.causal_lm_class_name]
        return cfg

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._layer_re = re.compile("^" + re.escape(cls.layer_prefix) + r"(\d+)\.(.+)$")

    # ---------------------------------------------------------------- sizes and config
    def sizes(self, cfg: dict[str, Any]) -> Sizes:  # pragma: no cover - abstract
        raise NotImplementedError

    def write_sizes(self, cfg: dict[str, Any], before: Sizes, after: Sizes) -> dict[str, Any]:
        """Return a new config dict with ``after``'s sizes (the hidden step also rescales epsilon)."""
        raise NotImplementedError  # pragma: no cover

    def check(self, stage: Stage) -> None:
        """Raise ValueError when this architecture cannot do a step exactly (unless ``stage.step.approximate``):
        calls the method named after the step, ``check_<kind>(stage)``, when the adapter has one. ``stage``
        (:class:`hf_growth.growth.steps.Stage`) holds the step, the config and sizes before it, the sizes after
        it and, for depth steps, where each layer comes from."""
        hook = getattr(self, f"check_{stage.step.kind}", None)
        if hook is not None:
            hook(stage)

    #: the config class's defaults of the keys this adapter reads (``complete_config`` fills them in)
    config_defaults: ClassVar[dict[str, Any]] = {}

    def complete_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """A config dict read from a ``config.json`` (which may leave out keys at their default), with the
        defaults of the keys this adapter reads: what the config class would hold. Pure Python."""
        return {**self.config_defaults, **cfg}

    def validate_config(self, cfg: dict[str, Any], *, strict: bool = True) -> None:
        """Raise ValueError when the final config is not a valid config of this architecture: with
        ``strict``, by building the architecture's config class (imports transformers); else by
        :meth:`check_config`, whose pure-Python checks an adapter may provide (the streaming path)."""
        if not strict:
            self.check_config(cfg)
            return
        self._validate_with_config_class(cfg)

    def check_config(self, cfg: dict[str, Any]) -> None:
        """The checks of the config class that a grown config can fail, in pure Python. Adapters that have
        none of their own use the config class itself."""
        self._validate_with_config_class(cfg)

    def check_sizes_and_layer_lists(self, cfg: dict[str, Any]) -> None:
        """Pure-Python checks every config class makes: positive sizes, per-layer lists as long as the stack."""
        sizes = self.sizes(cfg)
        for key in ("hidden", "mlp", "heads", "kv_heads", "qk_dim", "v_dim", "layers", "vocab"):
            value = getattr(sizes, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"the grown config is not valid: {key} must be a positive integer, got {value!r}")
        for key in self.layer_list_keys:
            value = cfg.get(key)
            if isinstance(value, list) and len(value) != sizes.layers:
                raise ValueError(
                    f"the grown config is not valid: {key} has {len(value)} entries for {sizes.layers} layers"
                )

    def _validate_with_config_class(self, cfg: dict[str, Any]) -> None:
        config_class = self.config_class()
        try:
            config_class(**{k: v for k, v in cfg.items() if k not in ("transformers_version", "model_type")})
        except Exception as error:  # strict dataclass validation errors are not all ValueErrors
            message = " ".join(str(error).split())
            raise ValueError(f"the grown config is not a valid {config_class.__name__}: {message}") from None

    def config_class(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def has(self, flag: str | None, cfg: dict[str, Any]) -> bool:
        return flag is None or bool(cfg.get(flag))

    # ---------------------------------------------------------------- names <-> roles
    def role(self, name: str) -> TensorRole:
        """The role of a tensor name; ValueError for a name this adapter does not know."""
        match = self._layer_re.match(name)
        if match:
            suffix = match.group(2)
            if suffix in self.layer_tensors:
                role, transposed, _ = self.layer_tensors[suffix]
                return TensorRole(role, int(match.group(1)), transposed)
        elif name in self.global_tensors:
            role, transposed, _ = self.global_tensors[name]
            return TensorRole(role, None, transposed)
        elif name == self.lm_head:
            return TensorRole("lm_head", None, False)
        raise ValueError(f"{self.name} adapter: unknown tensor {name!r}")

    def layer_of(self, name: str) -> int | None:
        match = self._layer_re.match(name)
        return int(match.group(1)) if match else None

    def rename_layer(self, name: str, layer: int) -> str:
        match = self._layer_re.match(name)
        assert match is not None, name
        return f"{self.layer_prefix}{layer}.{match.group(2)}"

    def layer_tensor_names(self, layer: int, cfg: dict[str, Any]) -> list[str]:
        return [
            f"{self.layer_prefix}{layer}.{suffix}"
            for suffix, (_, _, flag) in self.layer_tensors.items()
            if self.has(flag, cfg) and self.layer_has(layer, suffix, cfg)
        ]

    def layer_has(self, layer: int, suffix: str, cfg: dict[str, Any]) -> bool:
        """Whether ``layer`` has the tensor ``suffix`` (ResFormer: layer-dependent tensors)."""
        return True

    def tensor_names(self, cfg: dict[str, Any]) -> list[str]:
        """Every tensor a model with this config has, in state-dict order, without the tied ``lm_head``."""
        sizes = self.sizes(cfg)
        head = [n for n, (_, _, flag) in self.global_tensors.items() if self.has(flag, cfg) and not n.startswith("~")]
        names = [n for n in head if self.global_tensors[n][0] in ("embed", "pos")]
        for layer in range(sizes.layers):
            names += self.layer_tensor_names(layer, cfg)
        names += [n for n in head if self.global_tensors[n][0] not in ("embed", "pos")]
        if not sizes.tied:
            names.append(self.lm_head)
        return names

    def canonical_shape(self, role: str, s: Sizes) -> tuple[int, ...]:
        """Shape of a role in the canonical layout for sizes ``s``."""
        q, k, v = s.heads * s.qk_dim, s.kv_heads * s.qk_dim, s.kv_heads * s.v_dim
        shapes: dict[str, tuple[int, ...]] = {
            "embed": (s.vocab, s.hidden),
            "lm_head": (s.vocab, s.hidden),
            "pos": (s.positions or 0, s.hidden),
            "norm.w": (s.hidden,),
            "norm.b": (s.hidden,),
            "final_norm.w": (s.hidden,),
            "final_norm.b": (s.hidden,),
            "q.w": (q, s.hidden),
            "k.w": (k, s.hidden),
            "v.w": (v, s.hidden),
            "o.w": (s.hidden, s.heads * s.v_dim),
            "q.b": (q,),
            "k.b": (k,),
            "v.b": (v,),
            "o.b": (s.hidden,),
            "qkv.w": (q + k + v, s.hidden),
            "qkv.b": (q + k + v,),
            "mlp_in.w": (s.mlp, s.hidden),
            "mlp_in.b": (s.mlp,),
            "mlp_out.w": (s.hidden, s.mlp),
            "mlp_out.b": (s.hidden,),
            "gate_up.w": (2 * s.mlp, s.hidden),
            "gate_up.b": (2 * s.mlp,),
            "q_norm.w": (s.qk_dim,),
            "k_norm.w": (s.qk_dim,),
            "router.w": (s.experts, s.hidden),
            "experts_in.w": (s.experts, 2 * s.mlp, s.hidden),
            "experts_out.w": (s.experts, s.hidden, s.mlp),
        }
        if role not in shapes:
            raise ValueError(f"{self.name} adapter: no canonical shape for role {role!r}")
        return shapes[role]

    def new_layer_init(self, role: str) -> str:
        """How a brand-new layer's tensor of ``role`` starts: ``zero`` | ``free`` | ``ones``."""
        if role in ("o.w", "o.b", "mlp_out.w", "mlp_out.b", "experts_out.w"):
            return "zero"  # the block's outputs: the new block is the identity
        if role.endswith(".b"):
            return "zero"
        if role in ("norm.w", "q_norm.w", "k_norm.w"):
            return "ones"
        return "free"

    def new_layer_tensor(self, role: str, name: str, layer: int, cfg: dict[str, Any]) -> Any | None:
        """Hook for roles the generic engine cannot create (ResFormer lambdas); None = use ``new_layer_init``."""
        return None

    def remap_layer_config(
        self, cfg: dict[str, Any], sources: list[int], modes: list[str] | None = None
    ) -> dict[str, Any]:
        """Rebuild per-layer config lists: new layer ``i`` takes the entry of old layer ``sources[i]`` (``modes``:
        keep | copy | new_copy | new_random per new layer)."""
        cfg = dict(cfg)
        for key in self.layer_list_keys:
            value = cfg.get(key)
            if isinstance(value, list) and len(value) == self.sizes(cfg).layers:
                cfg[key] = [value[j] for j in sources]
        return cfg
