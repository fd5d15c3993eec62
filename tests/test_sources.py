"""One model-source resolver for every command: model object, checkpoint directory, .gguf, embedded name, Hub id
(from a cache laid out in a temporary directory: no network), and `hf-growth export`."""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_growth.cli import main
from hf_growth.growth.sources import ModelSourceError, export_model, load_model, resolve_source

PLAN = [{"mlp_width": 96}, {"num_layers": {"to": 3, "where": "top"}}]
IDS = torch.tensor([[1, 5, 9, 2, 7]])


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()


def tokenizer():
    from hf_growth.tasks import build_tokenizer

    return build_tokenizer(max_number=40)  # 64 > its vocabulary: the tiny model reads its ids


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture()
def saved(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "src")
    tokenizer().save_pretrained(tmp_path / "src")
    return model, tmp_path / "src"


@pytest.fixture()
def embedded(monkeypatch):
    """`smollm2` resolves to a tiny model (the real one is 135M): the loader is what the name reaches."""
    import hf_growth._embedded as embedded_module

    model, tok = tiny_llama(3), tokenizer()
    monkeypatch.setattr(
        embedded_module, "load_smollm2", lambda dtype="float32": (copy.deepcopy(model).to(getattr(torch, dtype)), tok)
    )
    return model, tok


# --- resolve / load -------------------------------------------------------------------------------------
def test_resolve_kinds_and_one_line_errors(tmp_path, saved):
    model, src = saved
    assert resolve_source(model).kind == "model" and load_model(model) == (model, None)
    assert resolve_source(src).kind == "directory" and resolve_source(src).directory == src
    assert resolve_source("smollm2").kind == resolve_source("SmolLM2").kind == "embedded"
    (tmp_path / "notes").mkdir()
    cases = {
        str(tmp_path / "notes"): "a directory without config.json, so not a saved model (save_pretrained output)",
        str(tmp_path / "x.gguf"): "no such GGUF file",
        str(src / "config.json"): "a file, not a model directory or a .gguf file",
        str(
            tmp_path / "missing"
        ): "no such local directory or .gguf file, and not an embedded model (smollm2, gemma3-270m) or "
        "a Hub repository id (org/name)",
    }
    for source, message in cases.items():
        with pytest.raises(ModelSourceError) as error:
            resolve_source(source)
        assert str(error.value) == f"model source {source!r}: {message}"
        assert isinstance(error.value, ValueError) and isinstance(error.value, FileNotFoundError)
    with pytest.raises(ModelSourceError, match="Hub ids are off here"):
        resolve_source("org/model", hub=False)
    with pytest.raises(ModelSourceError, match="a list, not a model"):
        resolve_source([1])
    with pytest.raises(ValueError, match="dtype='bfloat16' applies to loaded sources"):
        load_model(model, dtype="bfloat16")


def test_load_directory_same_function_and_tokenizer(saved, tmp_path):
    model, src = saved
    loaded, tok = load_model(src)
    assert not loaded.training and torch.equal(logits(loaded), logits(model))
    assert tok is not None and tok("3 + 4")["input_ids"] == tokenizer()("3 + 4")["input_ids"]
    half, _ = load_model(str(src), dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    assert load_model(bare)[1] is None  # no tokenizer files: None, not an empty tokenizer
    (bare / "model.safetensors").unlink()
    (bare / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ValueError, match="never unpickles"):
        load_model(bare)


def _hub_cache(root: Path, repo_id: str, src: Path) -> Path:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for path in src.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return snapshot


def test_hub_id_from_the_offline_cache(saved, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, src = saved
    cache = tmp_path / "hub"
    snapshot = _hub_cache(cache, "org/tiny-llama", src)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_source("org/tiny-llama")
    assert resolved.kind == "hub" and resolved.directory == snapshot.resolve()
    loaded, tok = load_model("org/tiny-llama")
    assert torch.equal(logits(loaded), logits(model)) and tok is not None
    with pytest.raises(
        ModelSourceError,
        match=r"^model source 'org/absent': no local directory 'org/absent', not an "
        r"embedded model \(smollm2, gemma3-270m\), and the Hub repository is not in the local "
        r"cache \(HF_HUB_OFFLINE=1\)$",
    ):
        resolve_source("org/absent")
    # grow_model streams the cached snapshot; the card names the repository as the base model
    from hf_growth import grow_model
    from hf_growth.growth.verify import max_logit_diff

    out = grow_model("org/tiny-llama", PLAN, output_dir=tmp_path / "grown", quiet=True)
    assert out == (tmp_path / "grown").resolve()
    grown = LlamaForCausalLM.from_pretrained(out)
    assert grown.config.num_hidden_layers == 3 and max_logit_diff(model, grown) <= 1e-5
    assert "base_model: org/tiny-llama" in (out / "README.md").read_text()
    assert not list(snapshot.parent.parent.rglob("*.tmp-*"))  # the cache is not written into


def test_grow_model_overloads():
    from hf_growth import grow_model

    overloads = typing.get_overloads(grow_model)
    assert [o.__annotations__["return"] for o in overloads] == ["torch.nn.Module", "Path"]
    assert [o.__annotations__["model"] for o in overloads] == ["torch.nn.Module", "str | os.PathLike"]
    with pytest.raises(ValueError, match="needs output_dir="):
        grow_model("smollm2", PLAN)


def test_grow_model_on_the_embedded_name(embedded, tmp_path):
    from hf_growth import grow_model

    model, tok = embedded
    out = grow_model("smollm2", PLAN, output_dir=tmp_path / "grown", seed=1)
    assert isinstance(out, Path) and (out / "tokenizer.json").is_file()
    expected = grow_model(model, PLAN, seed=1)  # the same values as growing the loaded model
    assert torch.equal(logits(LlamaForCausalLM.from_pretrained(out)), logits(expected))


def test_public_names():
    import hf_growth
    from hf_growth import _embedded

    assert hf_growth.load_model is load_model
    assert hf_growth.load_smollm2 is _embedded.load_smollm2
    assert {"load_model", "load_smollm2"} <= set(hf_growth.__all__)


# --- CLI: every command takes every source --------------------------------------------------------------
def test_grow_cli_takes_the_embedded_name(embedded, tmp_path, capsys):
    """`grow` refused `smollm2` (it took only directories and .gguf files)."""
    model, _ = embedded
    (tmp_path / "plan.yaml").write_text("- mlp_width: 96\n")
    assert main(["grow", "smollm2", str(tmp_path / "plan.yaml"), str(tmp_path / "out"), "--quiet"]) == 0
    grown = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert grown.config.intermediate_size == 96 and (logits(grown) - logits(model)).abs().max() < 1e-5
    assert main(["grow", str(tmp_path / "nope.gguf"), str(tmp_path / "plan.yaml"), str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.strip().endswith("nope.gguf': no such GGUF file")
    assert not (tmp_path / "o2").exists()


def test_analyze_cli_takes_any_source(embedded, saved, tmp_path):
    _, src = saved
    common = ["--task", "random", "--num-examples", "2", "--max-length", "8"]
    assert main(["analyze", "entropy", "smollm2", str(src), *common, "--out", str(tmp_path / "a")]) == 0
    assert set(json.loads((tmp_path / "a" / "entropy.json").read_text())) == {"SmolLM2-135M", "src"}
    assert main(["analyze", "entropy", str(tmp_path / "nothing-here"), *common, "--out", str(tmp_path / "b")]) == 2


# --- export ---------------------------------------------------------------------------------------------
def test_export_the_embedded_model(embedded, tmp_path, capsys):
    model, tok = embedded
    out = tmp_path / "smollm2-dir"
    assert main(["export", "smollm2", str(out)]) == 0
    assert f"saved smollm2 to {out.resolve()}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    again, again_tok = load_model(out)
    assert torch.equal(logits(again), logits(model)) and len(again_tok) == len(tok)
    assert not (out / "README.md").exists()  # not grown: no growth card
    # the output exists: refused, untouched; --overwrite replaces it; nothing hidden is left next to it
    before = (out / "config.json").read_bytes()
    assert main(["export", "smollm2", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "config.json").read_bytes() == before
    assert main(["export", "smollm2", str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-dir"]


def test_export_refuses_the_source_itself(saved, tmp_path, capsys):
    _, src = saved
    before = sorted(p.name for p in src.iterdir())
    assert main(["export", str(src), str(src / "copy")]) == 2
    assert "inside the source checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in src.iterdir()) == before


def test_export_a_grown_model_writes_its_card(tmp_path):
    from hf_growth import grow_model

    grown = grow_model(tiny_llama(), PLAN)
    out = export_model(grown, tmp_path / "grown", tokenizer=tokenizer())
    card = (out / "README.md").read_text()
    assert "`mlp_width`" in card and "`num_layers`" in card and (out / "tokenizer.json").is_file()
    assert torch.equal(logits(LlamaForCausalLM.from_pretrained(out)), logits(grown))
