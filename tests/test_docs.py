"""The documentation cannot drift from the code: docs/architectures.md is generated from the adapters, and the
README's Python examples import only public names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from transformers import LlamaConfig

import hf_growth
from hf_growth.growth import adapters, support
from hf_growth.growth.adapters.llama import LlamaAdapter
from hf_growth.growth.plan import STEP_TYPES

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_architectures_md_is_generated_from_the_adapters():
    committed = (ROOT / "docs" / "architectures.md").read_text()
    assert committed == support.render_markdown(), (
        "docs/architectures.md is out of date: run `python -m hf_growth.growth.support > docs/architectures.md`"
    )


def test_every_step_kind_has_probes():
    assert set(support.PROBES) == set(STEP_TYPES)


def test_matrix_classifies_the_known_cases():
    matrix = support.support_matrix(["llama", "gpt2", "resformer"])
    llama, gpt2, resformer = matrix["llama"], matrix["gpt2"], matrix["resformer"]
    assert llama["hidden_size"].status == support.EXACT
    assert llama["stack"].status == support.CHANGES
    # RoPE: head size only by an integer factor; the non-integer growth is allowed with approximate: true
    (refusal,) = [p for p in llama["head_dim"].refusals if p.variant is None]
    assert refusal.label == "x1.5" and "exact only by an integer factor" in refusal.error
    assert refusal.approximate_error is None
    assert llama["qk_dim"].status == support.REFUSED and resformer["value_dim"].status == support.EXACT
    # LayerNorm: hidden growth only by integer cloning
    (refusal,) = gpt2["hidden_size"].refusals
    assert refusal.label == "x1.5" and refusal.error.startswith("LayerNorm subtracts the mean")
    assert gpt2["num_heads"].status == support.REFUSED
    # a config setting's refusal is found on the architecture that has it
    assert {p.variant for p in gpt2["num_layers"].refusals} == {"scale_attn_by_inverse_layer_idx: true"}
    assert [p.label for p in resformer["num_layers"].refusals] == ["+1 at position 0"]
    assert resformer["stack"].status == support.CHANGES_WITH_CONDITIONS


class SupportProbeConfig(LlamaConfig):
    model_type = "support_probe"


class SupportProbeAdapter(LlamaAdapter):
    """An architecture the generator has never heard of (a Llama under another model_type)."""

    name = "support_probe"
    model_types = ("support_probe",)

    def config_class(self):
        return SupportProbeConfig


def test_a_registered_adapter_is_picked_up_without_listing_it(monkeypatch):
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))
    adapters.register_adapter("support_probe", f"{__name__}:SupportProbeAdapter")
    assert "support_probe" in adapters.supported_model_types()
    matrix = support.support_matrix()
    assert list(matrix) == adapters.supported_model_types()
    assert matrix["support_probe"]["head_dim"].status == support.CONDITIONS  # RoPE, inherited from Llama
    text = support.render_markdown(matrix)
    assert "| [support_probe](#support_probe) | exact |" in text and "## support_probe" in text


def public_imports(code: str) -> list[tuple[str, str | None]]:
    """(module, name) for every import of hf_growth in ``code`` (name None for ``import module``)."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "hf_growth"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "hf_growth":
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_readme_python_examples_import_only_public_names():
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has a Python example"
    imports = [item for block in blocks for item in public_imports(block)]
    assert imports
    for module, name in imports:
        assert module == "hf_growth", f"the README imports from {module}: use a public name of hf_growth"
        assert name is None or name in hf_growth.__all__, f"{name} is not in hf_growth.__all__"


@pytest.mark.parametrize(
    "code, ok",
    [
        ("from hf_growth import grow_model", True),
        ("from hf_growth._embedded import load_smollm2", False),
        ("import hf_growth.growth.engine", False),
    ],
)
def test_public_import_check_catches_private_imports(code, ok):
    module, name = public_imports(code)[0]
    assert (module == "hf_growth" and (name is None or name in hf_growth.__all__)) is ok


def test_docs_link_to_files_that_exist():
    for page in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
