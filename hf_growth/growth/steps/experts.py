"""``experts``: dense -> mixture-of-experts upcycling (Llama and Mistral -> Mixtral, Qwen3 -> Qwen3-MoE), and more
experts for a mixture of experts.

Every expert starts as a copy of the dense MLP and the router (``mlp.gate``) is drawn from the seed. A token's
output is ``sum_k w_k expert_k(x)`` over its ``top_k`` chosen experts; when the chosen experts' routing weights
are renormalised to sum to one (Mixtral always; Qwen3-MoE with ``norm_topk_prob: true``, which the grown config
sets) and every expert is the MLP, that is ``MLP(x)`` whatever the router says: the upcycled model computes what
the dense one did. Experts diverge once training sends different tokens to them, and the router learns then.

Options, and whether each keeps the function:

- ``to``: experts per layer; ``top_k``: experts per token (default 2, or ``to`` when smaller). Exact for any value.
- ``router_init``: ``normal`` (default; seeded normal values with ``router_std``, default the config's
  ``initializer_range``) or ``zeros`` (every token ties: ``torch.topk`` picks the first ``top_k`` experts until
  the load-balancing loss moves the router). Exact either way: the output does not depend on the router.
- ``noise``: std of seeded normal noise added to every expert's weights (symmetry breaking; default 0, off).
  Changes the function: the step is recorded as ``approximate`` (``exact: false``) and the in-memory path
  measures max |Δlogits| into the history record.
- ``router_aux_loss_coef``, ``output_router_logits`` (the load-balancing loss: added to the training loss when
  ``output_router_logits`` is true), ``router_jitter_noise`` (Mixtral: multiplicative noise on the router's input
  in training mode), ``norm_topk_prob`` (Qwen3-MoE; default true): config settings. They change no logits of the
  model in eval mode, except ``norm_topk_prob: false``, which is refused unless ``top_k == to`` (the softmax over
  all experts sums to one) or ``approximate: true`` (then the chosen experts' weights sum to less than one).

On a mixture of experts, ``to`` must be a multiple ``m`` of the experts: every expert is copied ``m`` times with
its router row and ``top_k`` is multiplied by ``m`` (each chosen expert's copies share its probability, so the
renormalised weights of the copies add up to the original's): exact. Another number of experts, or another
``top_k``, changes which experts are chosen: refused, or done with ``approximate: true`` (new experts copy
``j mod E``) and measured.

>>> ExpertsStep(to=8, top_k=2).params()
{'experts': {'to': 8, 'top_k': 2}}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..._lazy import lazy_module
from .. import ops
from .base import GrowthStep, Stage

if TYPE_CHECKING:
    import torch

    from ..adapters import Adapter
    from ..views import View
else:
    torch = lazy_module("torch", globals())

#: dense adapter name -> the model_type of its mixture-of-experts form
UPCYCLE_TARGETS: dict[str, str] = {"llama": "mixtral", "mistral": "mixtral", "qwen3": "qwen3_moe"}

#: the step's config settings (each goes to the config key of the same name, where the target has it)
MOE_SETTINGS = ("router_aux_loss_coef", "output_router_logits", "router_jitter_noise", "norm_topk_prob")

EXPERT_TENSOR_ROLES = ("router.w", "experts_in.w", "experts_out.w")


def register_upcycle_target(adapter_name: str, model_type: str) -> None:
    """Say which mixture-of-experts architecture (``model_type``) a dense architecture upcycles to."""
    UPCYCLE_TARGETS[adapter_name] = model_type


class ExpertsStep(GrowthStep):
    """``experts``: dense -> MoE upcycling, or more experts for an MoE model (see the module)."""

    kind: Literal["experts"] = "experts"
    top_k: int | None = Field(default=None, gt=0)
    router_init: Literal["normal", "zeros"] = "normal"
    router_std: float | None = Field(default=None, ge=0)
    noise: float = Field(default=0.0, ge=0)
    router_aux_loss_coef: float | None = Field(default=None, ge=0)
    output_router_logits: bool | None = None
    router_jitter_noise: float | None = Field(default=None, ge=0)
    norm_topk_prob: bool | None = None

    def resize(self, stage: Stage) -> None:
        from ..adapters import get_adapter

        before, adapter = stage.before, stage.adapter
        dense = not before.experts
        if dense:
            if adapter.name not in UPCYCLE_TARGETS:
                raise ValueError(
                    f"hf-growth upcycles {', '.join(sorted(UPCYCLE_TARGETS))} models to a mixture of experts "
                    f"({', '.join(sorted(set(UPCYCLE_TARGETS.values())))}); {adapter.name} has no mixture-of-experts "
                    "adapter here"
                )
            target = get_adapter(UPCYCLE_TARGETS[adapter.name])
            top_k = self.top_k if self.top_k is not None else min(2, self.to)
        else:
            target = adapter
            self.no_shrink(before.experts, self.to, "number of experts")
            m, exact_split = divmod(self.to, before.experts)
            top_k = self.top_k if self.top_k is not None else (before.top_k * m if not exact_split else before.top_k)
            if not self.approximate and (exact_split or top_k != before.top_k * m):
                raise ValueError(
                    f"more experts change which experts the router picks: {before.experts} -> {self.to} experts with "
                    f"top_k {before.top_k} -> {top_k} is exact only by an integer factor m with top_k times m (every "
                    f"expert copied m times with its router row), e.g. to: {2 * before.experts}, top_k: "
                    f"{2 * before.top_k}; or set `approximate: true` to do it anyway and measure the error"
                )
        if top_k > self.to:
            raise ValueError(f"top_k {top_k} is more than the {self.to} experts")
        for key in MOE_SETTINGS:
            if getattr(self, key) is not None and key not in target.moe_settings:
                raise ValueError(f"{target.name} has no `{key}` setting (it has: {', '.join(target.moe_settings)})")
        stage.target = target
        stage.after = before.with_(experts=self.to, top_k=top_k)
        stage.record["upcycled"] = dense
        if dense:
            target.check_upcycle(stage)
        if (
            not target.renormalises({**stage.cfg_before, **self.settings(stage)})
            and top_k < self.to
            and not self.approximate
        ):
            raise ValueError(
                f"{target.name} with norm_topk_prob: false weighs the chosen experts by their softmax probabilities, "
                f"which sum to less than one when top_k ({top_k}) < experts ({self.to}): the output shrinks; keep "
                "norm_topk_prob: true (the default), or set `approximate: true` to do it anyway and measure the error"
            )
        if self.noise and not self.approximate:  # symmetry-breaking noise changes the function: measured
            stage.step = self.model_copy(update={"approximate": True})

    def settings(self, stage: Stage) -> dict[str, Any]:
        """The config settings this step writes (the target's defaults for upcycling where it needs them)."""
        out = {key: getattr(self, key) for key in MOE_SETTINGS if getattr(self, key) is not None}
        if stage.record.get("upcycled"):
            out = {**stage.adapter_after.upcycle_defaults, **out}
        return out

    def rewrite_config(self, stage: Stage) -> dict[str, Any]:
        target = stage.adapter_after
        cfg = stage.cfg_before
        if stage.record.get("upcycled"):
            cfg = target.from_dense_config(cfg, stage.adapter)
        cfg = target.write_sizes(cfg, stage.before, stage.after)
        return {**cfg, **self.settings(stage)}

    def view(
        self, prev: View, stage: Stage, *, seed: int, device: Any, dtype: Callable[[], torch.dtype], meta: bool
    ) -> View:
        from ..views import ExpertsView

        return ExpertsView(prev, stage, seed, device, dtype, meta)

    # ---------------------------------------------------------------- tensors (ExpertsView calls these)
    def expert_tensor(self, role: str, parts: list[torch.Tensor], c: Any) -> tuple[torch.Tensor, Any]:
        """The output tensor of an expert role and its placement (None: all new). Upcycling: ``parts`` are the
        dense MLP's (gate and up for ``experts_in.w``, down for ``experts_out.w``; none for the router). More
        experts: ``parts`` is the MoE tensor itself."""
        b, a = c.before, c.after
        shape = c.stage.adapter_after.canonical_shape(role, a)
        if not b.experts:  # upcycling
            if role == "router.w":
                if self.router_init == "zeros":
                    return c.zeros(shape), None
                return c.free(shape, tag="router", std=self.router_std), None
            mlp = parts[0] if len(parts) == 1 else _cat0(parts)
            out = c.empty(shape)
            if not c.meta:
                out.copy_(mlp.unsqueeze(0).expand(shape))
            self._add_noise(out, 0, c)
            return out, None
        old = parts[0]
        out = c.empty(shape)
        if not c.meta:
            for j in range(0, a.experts, b.experts):  # copies of every expert (router rows too) in order
                n = min(b.experts, a.experts - j)
                out[j : j + n] = old[:n]
        if role != "router.w":
            self._add_noise(out, b.experts, c)
        return out, [ops.leading(b.experts)] + [None] * (old.dim() - 1)

    def _add_noise(self, out: torch.Tensor, first: int, c: Any) -> None:
        """Seeded symmetry-breaking noise on experts ``first..`` (off when ``noise`` is 0)."""
        if not self.noise or c.meta or first >= out.shape[0]:
            return
        noise = c.free(tuple(out.shape), tag="noise", std=self.noise, dtype=torch.float32)
        out[first:] = (out[first:].float() + noise[first:]).to(out.dtype)


def _cat0(parts: list[torch.Tensor]) -> torch.Tensor:
    if any(p.is_meta for p in parts):
        return torch.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype, device="meta")
    return torch.cat(parts, 0)


def target_adapter_of(adapter: Adapter) -> str | None:
    """The model_type a dense adapter upcycles to, or None."""
    return UPCYCLE_TARGETS.get(adapter.name)
