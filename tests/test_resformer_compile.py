"""ResFormer declares ``_can_compile_fullgraph``: static-cache generation under ``torch.compile(fullgraph=True)``
gives the same tokens as eager dynamic-cache generation, for every value-residual variant.

The compile backend records the graphs and runs them eagerly (no code generation), which keeps the test short and
still fails on any graph break (``fullgraph=True``).
"""

from __future__ import annotations

import pytest
import torch
from test_resformer import VARIANTS, left_padded_batch, tiny_model


@pytest.mark.compat
@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_static_cache_generation_equals_eager(variant):
    from transformers import CompileConfig

    model = tiny_model(variant)
    assert model._can_compile_fullgraph
    ids, mask = left_padded_batch()
    graphs = []

    def recording_backend(graph_module, example_inputs, **options):
        graphs.append(graph_module)
        return graph_module.forward

    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend=recording_backend)
    compile_config._compile_all_devices = True  # generate compiles on accelerators only, unless told otherwise
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = model.generate(ids, **kwargs)
    compiled = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert len(graphs) == 1  # the decoding step, traced whole once
    assert torch.equal(compiled, expected)
