"""The step registry (a step is one module: schema, validation, transforms), the adapters' per-step refusals, the
views' public face, the seeded free values' independence of blocks and threads, and lazy torch in growth/."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Literal

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_growth.growth import free_values, grow_model, ops
from hf_growth.growth.adapters.llama import LlamaAdapter
from hf_growth.growth.engine import GrowthEngine, MetaSource, StateDictSource
from hf_growth.growth.plan import GrowthPlan
from hf_growth.growth.steps import STEP_TYPES, GrowthStep, Stage, register_step
from hf_growth.growth.verify import max_logit_diff
from hf_growth.growth.views import LayerView, SourceView, WidthView


def tiny_llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


class MlpWidthZeroStep(GrowthStep):
    """A step defined outside the package: the MLP grows with zero new units (gate, up and down all zero)."""

    kind: Literal["mlp_width_zero"] = "mlp_width_zero"

    def resize(self, stage: Stage) -> None:
        self.no_shrink(stage.before.mlp, self.to, "MLP width")
        stage.after = stage.before.with_(mlp=self.to)

    def transform(self, role: str, t: torch.Tensor, c: Any):
        old, new = c.before.mlp, c.after.mlp
        if role == "mlp_in.w":
            return c.placed(t, (new, t.shape[1]), [ops.leading(old), None]), [ops.leading(old), None]
        if role == "mlp_out.w":
            return c.placed(t, (t.shape[0], new), [None, ops.leading(old)]), [None, ops.leading(old)]
        return None


class NoZeroMlpLlamaAdapter(LlamaAdapter):
    def check_mlp_width_zero(self, stage: Stage) -> None:
        raise ValueError(f"this architecture refuses zero MLP units ({stage.before.mlp} -> {stage.after.mlp})")


@pytest.fixture
def zero_step():
    register_step(MlpWidthZeroStep)
    yield MlpWidthZeroStep
    STEP_TYPES.pop("mlp_width_zero")


def test_a_registered_step_runs_without_engine_changes(zero_step):
    src = tiny_llama()
    plan = GrowthPlan.parse("- mlp_width: 80\n- mlp_width_zero: 96")
    assert [type(s) for s in plan.steps][1] is zero_step
    grown = grow_model(src, plan, seed=1)
    assert max_logit_diff(src, grown) <= 1e-5
    up = grown.model.layers[1].mlp.up_proj.weight
    assert up.shape == (96, 48) and not up[64:80].eq(0).all() and up[80:].eq(0).all()
    record = grown.config.growth_history[-1]
    assert record["step"] == {"mlp_width_zero": {"to": 96}} and record["exact"] is True
    assert record["new_slices"]["model.layers.*.mlp.up_proj.weight"] == {"0": [[64, 96]]}


def test_a_registered_step_meets_the_adapters_check_named_after_it(zero_step):
    config = tiny_llama().config
    with pytest.raises(
        ValueError,
        match=r"^plan step 1 \(mlp_width_zero\): this architecture refuses zero MLP units "
        r"\(80 -> 96\)$",
    ):
        GrowthEngine(config, [{"mlp_width": 80}, {"mlp_width_zero": 96}], adapter=NoZeroMlpLlamaAdapter())
    with pytest.raises(ValueError, match=r"^plan step 0 \(mlp_width_zero\): cannot shrink the MLP width from 64 to 32"):
        GrowthEngine(config, [{"mlp_width_zero": 32}])


def test_unknown_steps_list_the_registry():
    with pytest.raises(
        ValueError,
        match=r"^plan step 0: unknown step 'vocab'; known steps: mlp_width, num_heads, "
        r"head_dim, qk_dim, value_dim, hidden_size, num_layers, stack, experts$",
    ):
        GrowthPlan.parse([{"vocab": 8}])


def test_plan_accepts_step_objects_and_kind_dicts():
    plan = GrowthPlan(steps=[{"kind": "num_layers", "to": 4, "where": [3, 1]}, STEP_TYPES["stack"](to=6)])
    assert plan.to_list() == [{"num_layers": {"to": 4, "where": [1, 3]}}, {"stack": {"to": 6}}]
    assert GrowthPlan.parse(plan.to_list()) == plan


def test_views_expose_the_chain_and_layer_origins():
    src = tiny_llama(layers=3)
    engine = GrowthEngine(
        src.config,
        [
            {"num_layers": {"to": 4, "where": [2], "init": "copy"}},
            {"mlp_width": 96},
            {"stack": {"to": 5, "block_size": 1}},
        ],
    )
    view = engine.view(MetaSource(engine.source_shapes()), meta=True)
    chain = [view, view.prev, view.prev.prev, view.prev.prev.prev]
    assert [type(v) for v in chain] == [LayerView, WidthView, LayerView, SourceView]
    name = "model.layers.{}.mlp.up_proj.weight".format
    # num_layers 3 -> 4: a new layer 2, a copy of layer 1; stack 4 -> 5 (MIDAS, blocks of 1): copies block 1
    assert [view.origin(name(i)) for i in range(5)] == [
        (name(0), "keep"),
        (name(1), "keep"),
        (name(1), "copy"),
        (name(2), "keep"),
        (name(3), "keep"),
    ]
    assert [chain[2].origin(name(i)) for i in range(4)] == [
        (name(0), "keep"),
        (name(1), "keep"),
        (name(1), "new_copy"),
        (name(2), "keep"),
    ]
    assert chain[2].origin("model.norm.weight") == ("model.norm.weight", "keep")
    # bytes copied from the source: kept and stacked norms; not the widened MLP, not the new layer's tensors
    norm = "model.layers.{}.input_layernorm.weight".format
    assert [view.copy_of(norm(i)) for i in range(5)] == [norm(0), norm(1), norm(1), None, norm(2)]
    assert view.copy_of(name(0)) is None


PLAN = [
    {"mlp_width": 96},
    {"num_heads": {"to": 8, "num_key_value_heads": 4}},
    {"hidden_size": 64},
    {"num_layers": {"to": 3, "where": "top"}},
    {"head_dim": 24},
]


def test_free_values_do_not_depend_on_blocks_being_drawn_on_threads(monkeypatch):
    """Each block of free values has its own generator: 3 threads, 1 thread and row chunks give the same bytes."""
    monkeypatch.setattr(free_values, "FREE_BLOCK_ELEMENTS", 5 * 48)  # many blocks per tensor
    src = tiny_llama()
    outputs = []
    for threads in (3, 1):
        monkeypatch.setattr(free_values, "FREE_THREADS", threads)
        outputs.append(dict(GrowthEngine(src.config, PLAN, seed=3).run(StateDictSource(src.state_dict()))))
    assert outputs[0].keys() == outputs[1].keys()
    assert all(torch.equal(outputs[0][n], outputs[1][n]) for n in outputs[0])
    view = GrowthEngine(src.config, PLAN, seed=3).view(StateDictSource(src.state_dict()))
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        whole = outputs[0][name]
        chunks = [view.get_rows(name, a, min(a + 7, 64), 64) for a in range(0, 64, 7)]
        assert torch.equal(torch.cat(chunks), whole), name
    # the block size is part of the seed: other blocks, other values (so the blocks above were really many)
    monkeypatch.setattr(free_values, "FREE_BLOCK_ELEMENTS", 1 << 20)
    single = dict(GrowthEngine(src.config, PLAN, seed=3).run(StateDictSource(src.state_dict())))
    assert not torch.equal(single["lm_head.weight"], outputs[0]["lm_head.weight"])


_NO_TORCH = r"""
import json, sys
from hf_growth.growth.engine import GrowthEngine
config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2}
engine = GrowthEngine(config, json.loads(sys.argv[1]))
print(json.dumps([engine.param_counts(), engine.new_config_dict["num_hidden_layers"], "torch" in sys.modules]))
"""


def test_validating_a_plan_and_counting_parameters_import_no_torch():
    plan = [
        {"mlp_width": 96},
        {"hidden_size": 64},
        {"head_dim": 24},
        {"num_layers": {"to": 4, "init": "copy"}},
        {"stack": {"to": 5, "block_size": 1}},
    ]
    out = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, json.dumps(plan)], capture_output=True, text=True, check=True
    )
    counts, layers, torch_imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert torch_imported is False and layers == 5
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    grown = grow_model(LlamaForCausalLM(config), plan)
    assert counts[-1][1] == grown.num_parameters()
