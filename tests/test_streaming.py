"""Streaming growth (checkpoint dir -> engine -> shards) is bit-identical to the in-memory path, and fails
cleanly: nothing written, no temporary files left, the source untouched."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json

import pytest
import torch

from hf_growth.growth.adapters import supported_model_types
from hf_growth.growth.io import CheckpointError, DiskFullError, SafetensorsSource
from hf_growth.growth.io import output_dir as output_dir_module
from hf_growth.growth.io import writer as cio


def _adapter_available(model_type: str) -> bool:
    return importlib.util.find_spec(f"hf_growth.growth.adapters.{model_type}") is not None


def make_model(arch: str, dtype=torch.float32):
    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(cfg).to(dtype)
    if arch == "llama-tied":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg).to(dtype)
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
        return Qwen2ForCausalLM(cfg).to(dtype)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
        return GPT2LMHeadModel(cfg).to(dtype)
    if arch == "resformer":
        from hf_growth import ResFormerConfig, ResFormerForCausalLM

        cfg = ResFormerConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            value_residual="learnable",
            tie_word_embeddings=False,
        )
        return ResFormerForCausalLM(cfg).to(dtype)
    raise AssertionError(arch)


def save(model, path, max_shard_size="8KB"):
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return path


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def grow_both(model, plan, tmp_path, *, seed=3, max_shard_size="6KB", src_shard="8KB"):
    from hf_growth.growth import grow_model
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(model, tmp_path / "src", src_shard)
    before = digest(src)
    out = grow_checkpoint(src, plan, tmp_path / "out", seed=seed, max_shard_size=max_shard_size, quiet=True)
    assert digest(src) == before  # the source is never modified
    grown = grow_model(model, plan, seed=seed)
    return out, grown


def assert_same_tensors(out, grown):
    streamed = SafetensorsSource(out)
    expected = grown.state_dict()
    if getattr(grown.config, "tie_word_embeddings", False):
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    assert set(streamed) == set(expected)
    for name, tensor in expected.items():
        got = streamed[name]
        assert got.dtype == tensor.dtype, name
        assert torch.equal(got, tensor), f"{name} differs from the in-memory path"


LLAMA_PLANS = {
    "mlp_width": [{"mlp_width": 96}],
    "num_heads": [{"num_heads": {"to": 8, "num_key_value_heads": 2}}],
    "head_dim": [{"head_dim": 16}],
    "hidden_size": [{"hidden_size": 48}],
    "num_layers": [{"num_layers": {"to": 6, "where": "interleave"}}],
    "num_layers_copy": [{"num_layers": {"to": 5, "where": "top", "init": "copy"}}],
    "stack": [{"stack": {"to": 6, "block_size": 1, "where": "middle"}}],
    "all": [
        {"mlp_width": 96},
        {"num_heads": {"to": 8, "num_key_value_heads": 4}},
        {"hidden_size": 48},
        {"num_layers": {"to": 6, "where": "interleave"}},
        {"stack": {"to": 8, "block_size": 2}},
    ],
}


@pytest.mark.parametrize("step", list(LLAMA_PLANS))
def test_llama_bit_identical_to_in_memory(tmp_path, step):
    model = make_model("llama")
    out, grown = grow_both(model, LLAMA_PLANS[step], tmp_path)
    assert_same_tensors(out, grown)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == SafetensorsSource(out).total_size
    # the saved config is the in-memory model's config
    saved = json.loads((out / "config.json").read_text())
    assert saved["growth_history"] == json.loads(json.dumps(grown.config.growth_history))
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
    ):
        assert saved.get(key) == getattr(grown.config, key), key


def test_llama_streamed_loads_and_preserves_function(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_growth.growth.verify import max_logit_diff

    model = make_model("llama")
    plan = LLAMA_PLANS["all"][:4]
    out, _ = grow_both(model, plan, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.hidden_size == 48 and loaded.config.num_hidden_layers == 6
    assert max_logit_diff(model, loaded) <= 1e-5
    card = (out / "README.md").read_text()
    assert "`mlp_width`" in card and "`hidden_size`" in card and "library_name: transformers" in card
    # parameter counts before/after each step, from shapes: the last one is the loaded model's
    n = loaded.num_parameters()
    assert f"| {n / 1e3:.2f}K ({n:,}) | – |" in card  # not measured: the Δlogits column says so
    assert f"| {model.num_parameters() / 1e3:.2f}K ({model.num_parameters():,}) |" in card


def test_verify_after_growing_writes_the_figure_into_the_card(tmp_path, capsys):
    from hf_growth.growth.streaming import grow_checkpoint

    model = make_model("llama")
    src = save(model, tmp_path / "src")
    out = grow_checkpoint(src, [{"mlp_width": 96}, {"num_layers": {"to": 5}}], tmp_path / "out", verify=True)
    assert "verify: max |Δlogits|" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "Verified with `hf-growth grow --verify`: max |Δlogits| against the source: **" in card
    assert "greedy text **matches**" in card
    assert "| 2 | `num_layers` |" in card and "K (" in card.split("| 2 | `num_layers` |")[1].split("\n")[0]


@pytest.mark.parametrize("arch", ["llama-tied", "qwen2", "gpt2", "resformer"])
def test_other_architectures_bit_identical(tmp_path, arch):
    model_type = {"llama-tied": "llama"}.get(arch, arch)
    if not _adapter_available(model_type):
        pytest.skip(f"the {model_type} adapter has not landed yet")
    model = make_model(arch)
    if arch == "gpt2":
        plan = [{"mlp_width": 192}, {"hidden_size": 64}, {"stack": {"to": 4, "block_size": 1, "where": "top"}}]
    elif arch == "resformer":
        plan = [{"mlp_width": 96}, {"value_dim": 16}, {"hidden_size": 48}, {"num_layers": {"to": 5, "where": "top"}}]
    else:
        plan = [{"mlp_width": 96}, {"hidden_size": 48}, {"num_layers": {"to": 4, "where": "top"}}]
    out, grown = grow_both(model, plan, tmp_path)
    assert_same_tensors(out, grown)
    if arch == "resformer":  # the remote code travels along and the card says how to load it
        assert (out / "configuration_resformer.py").exists() and (out / "modeling_resformer.py").exists()
        assert "trust_remote_code=True" in (out / "README.md").read_text()
        from transformers import AutoModelForCausalLM

        from hf_growth.growth.verify import max_logit_diff

        loaded = AutoModelForCausalLM.from_pretrained(out)
        assert max_logit_diff(model, loaded) <= 1e-5


def test_public_api_dispatches_to_streaming(tmp_path):
    import hf_growth

    model = make_model("llama")
    src = save(model, tmp_path / "src")
    path = hf_growth.grow_model(
        str(src), [{"mlp_width": 96}], output_dir=tmp_path / "out", seed=1, max_shard_size="5KB", quiet=True
    )
    assert path == (tmp_path / "out").resolve()
    assert_same_tensors(path, hf_growth.grow_model(model, [{"mlp_width": 96}], seed=1))


def test_bf16_stays_bf16_and_single_file_output(tmp_path):
    model = make_model("llama", torch.bfloat16)
    out, grown = grow_both(model, [{"mlp_width": 96}], tmp_path, max_shard_size="5GB")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert {SafetensorsSource(out).dtype(n) for n in SafetensorsSource(out)} == {torch.bfloat16}
    assert_same_tensors(out, grown)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_stack_copies_bytes_without_decoding(tmp_path, monkeypatch):
    from hf_growth.growth.streaming import grow_checkpoint

    model = make_model("llama", torch.bfloat16)
    src = save(model, tmp_path / "src")

    def no_decoding(self, name):
        raise AssertionError(f"{name} was decoded")

    monkeypatch.setattr(SafetensorsSource, "read", no_decoding)
    out = grow_checkpoint(src, [{"stack": {"to": 6, "block_size": 1}}], tmp_path / "out", quiet=True)
    monkeypatch.undo()
    streamed = SafetensorsSource(out)
    state = model.state_dict()
    # layers 0,1,2 then copies per MIDAS; every output tensor is a source tensor's bytes
    for name in streamed:
        assert any(
            torch.equal(streamed[name], t) for k, t in state.items() if k.split(".")[-2:] == name.split(".")[-2:]
        )
    assert len([n for n in streamed if n.endswith("mlp.down_proj.weight")]) == 6


def test_side_files_copied_and_progress(tmp_path, capsys):
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "modeling_custom.py",
    ):
        (src / name).write_text(f"{name} content")
    (src / "README.md").write_text("the source's card")
    out = grow_checkpoint(src, [{"mlp_width": 80}], tmp_path / "out", quiet=False)
    err = capsys.readouterr().err
    assert "growing into out" in err  # the tqdm bar over bytes
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "modeling_custom.py",
        "generation_config.json",
    ):
        assert (out / name).read_text() == (src / name).read_text()
    assert (out / "README.md").read_text() != "the source's card"
    out2 = grow_checkpoint(src, [{"mlp_width": 80}], tmp_path / "out2", quiet=True)
    assert "growing into" not in capsys.readouterr().err
    assert digest(out) == digest(out2)  # deterministic, byte for byte


# ----------------------------------------------------------------------------- failures


def _only(tmp_path, *names):
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.mark.parametrize("failure", ["disk-full", "exception", "ctrl-c"])
def test_failure_mid_shard_leaves_nothing(tmp_path, monkeypatch, failure):
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    before = digest(src)
    calls = {"n": 0}
    real = cio._write

    def flaky_write(f, data):
        calls["n"] += 1
        if calls["n"] == 12:
            if failure == "disk-full":
                raise OSError(errno.ENOSPC, "No space left on device")
            if failure == "ctrl-c":
                raise KeyboardInterrupt
            raise RuntimeError("boom mid-shard")
        real(f, data)

    monkeypatch.setattr(cio, "_write", flaky_write)
    expected = {"disk-full": DiskFullError, "exception": RuntimeError, "ctrl-c": KeyboardInterrupt}[failure]
    with pytest.raises(expected) as info:
        grow_checkpoint(
            src, [{"mlp_width": 96}, {"hidden_size": 48}], tmp_path / "out", max_shard_size="6KB", quiet=True
        )
    assert calls["n"] >= 12
    if failure == "disk-full":
        assert "disk full while writing" in str(info.value) and "removed" in str(info.value)
    assert _only(tmp_path, "src")  # no output, no temporary directory
    assert digest(src) == before


def test_failure_in_engine_leaves_nothing(tmp_path, monkeypatch):
    from hf_growth.growth import streaming

    src = save(make_model("llama"), tmp_path / "src")
    real = cio.ShardWriter.add_tensor
    count = {"n": 0}

    def add_tensor(self, name, tensor):
        count["n"] += 1
        if count["n"] == 5:
            raise ValueError("engine failed on " + name)
        real(self, name, tensor)

    monkeypatch.setattr(cio.ShardWriter, "add_tensor", add_tensor)
    with pytest.raises(ValueError, match="engine failed on"):
        streaming.grow_checkpoint(src, [{"hidden_size": 48}], tmp_path / "out", max_shard_size="4KB", quiet=True)
    assert _only(tmp_path, "src")


def test_not_enough_disk_refused_before_writing(tmp_path, monkeypatch):
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    monkeypatch.setattr(output_dir_module.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(DiskFullError, match="not enough free disk for the output.*nothing was written"):
        grow_checkpoint(src, [{"mlp_width": 96}], tmp_path / "out", quiet=True)
    assert _only(tmp_path, "src")


def test_output_exists_inside_source_and_overwrite(tmp_path):
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        grow_checkpoint(src, [{"mlp_width": 96}], tmp_path / "out", quiet=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="is inside the source checkpoint"):
        grow_checkpoint(src, [{"mlp_width": 96}], src / "grown", quiet=True)
    assert not (src / "grown").exists()
    # overwrite replaces only a model checkpoint: a directory of notes is refused, saying why, and kept
    with pytest.raises(
        FileExistsError,
        match=r"exists and is not a model checkpoint \(it holds keep.txt and no "
        r"config.json\); overwrite replaces only a model checkpoint",
    ):
        grow_checkpoint(src, [{"mlp_width": 96}], tmp_path / "out", quiet=True, overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    grow_checkpoint(src, [{"mlp_width": 96}], tmp_path / "grown", quiet=True)
    grow_checkpoint(src, [{"mlp_width": 128}], tmp_path / "grown", quiet=True, overwrite=True)  # an earlier output
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["intermediate_size"] == 128
    assert _only(tmp_path, "src", "out", "grown")


def test_bad_inputs_name_the_file(tmp_path):
    from safetensors.torch import load_file, save_file

    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    plan = [{"mlp_width": 96}]
    # a tensor the architecture needs is missing (removed from its shard and the index)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard_name = index["weight_map"].pop("model.layers.1.mlp.up_proj.weight")
    index_path.write_text(json.dumps(index))
    tensors = load_file(src / shard_name)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, src / shard_name, metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors.index.json: the source has no tensor "
        r"'model.layers.1.mlp.up_proj.weight'",
    ):
        grow_checkpoint(src, plan, tmp_path / "out", quiet=True)
    # truncated shard
    src2 = save(make_model("llama"), tmp_path / "src2")
    shard = sorted(src2.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated or corrupt"):
        grow_checkpoint(src2, plan, tmp_path / "out", quiet=True)
    # .bin only
    src3 = tmp_path / "src3"
    src3.mkdir()
    (src3 / "config.json").write_text((src2 / "config.json").read_text())
    (src3 / "pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(CheckpointError, match=r"never unpickles.*`python -c .*save_pretrained"):
        grow_checkpoint(src3, plan, tmp_path / "out", quiet=True)
    # bad plan: fails before anything is read or written
    with pytest.raises(ValueError, match="plan step 0"):
        grow_checkpoint(tmp_path / "src2", [{"mlp_width": 8}], tmp_path / "out", quiet=True)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        grow_checkpoint(tmp_path, plan, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "plan",
    [
        [{"hidden_size": 48}],
        [
            {"mlp_width": 96},
            {"num_heads": {"to": 8, "num_key_value_heads": 4}},
            {"hidden_size": 64},
            {"num_layers": {"to": 6, "where": "interleave"}},
        ],
    ],
)
def test_row_chunks_of_large_tensors_are_bit_identical(tmp_path, monkeypatch, plan):
    """Embeddings and lm_head are streamed in row chunks (and their free values drawn in row blocks): every
    chunking gives the in-memory tensors, and a chunk alone equals the rows of the whole tensor."""
    from hf_growth.growth import free_values as engine_module
    from hf_growth.growth import streaming
    from hf_growth.growth.engine import GrowthEngine, StateDictSource

    monkeypatch.setattr(engine_module, "FREE_BLOCK_ELEMENTS", 7 * 48)  # several free blocks per tensor
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 5 * 48 * 4)  # chunks that cut free blocks in the middle
    model = make_model("llama")
    out, grown = grow_both(model, plan, tmp_path)
    assert_same_tensors(out, grown)
    view = GrowthEngine(model.config, plan, seed=3).view(StateDictSource(model.state_dict()))
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        assert view.row_local(name)
        whole = view.get(name)
        for start, stop in ((0, 1), (3, 17), (40, 64)):
            assert torch.equal(view.get_rows(name, start, stop, whole.shape[0]), whole[start:stop]), (name, start)


# ----------------------------------------------------------------------------- start-up and speed paths

ARCH_PLANS = {
    "llama": [{"mlp_width": 96}, {"hidden_size": 48}, {"num_layers": {"to": 6}}, {"stack": {"to": 8, "block_size": 2}}],
    "llama-tied": [{"mlp_width": 96}, {"hidden_size": 48}],
    "qwen2": [{"mlp_width": 96}, {"hidden_size": 48}, {"num_layers": {"to": 4, "where": "top"}}],
    "gpt2": [{"mlp_width": 192}, {"hidden_size": 64}, {"stack": {"to": 4, "block_size": 1, "where": "top"}}],
    "resformer": [{"mlp_width": 96}, {"value_dim": 16}, {"hidden_size": 48}, {"num_layers": {"to": 5, "where": "top"}}],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("arch", list(ARCH_PLANS))
def test_config_and_card_are_the_in_memory_paths_byte_for_byte(tmp_path, arch, dtype):
    """The streaming path reads config.json as a dict (no transformers config class) and writes it itself; the
    result is byte for byte what save_pretrained of the in-memory path's grown config writes, and so is the card
    (written without importing the Hub client)."""
    from hf_growth.growth import grow_model
    from hf_growth.growth.streaming import grow_checkpoint

    model = make_model(arch, dtype)
    src = save(model, tmp_path / "src")
    streamed = grow_checkpoint(src, ARCH_PLANS[arch], tmp_path / "stream", seed=3, quiet=True)
    grow_model(model, ARCH_PLANS[arch], seed=3, output_dir=tmp_path / "mem")
    for name in ("config.json", "README.md"):
        assert (streamed / name).read_bytes() == (tmp_path / "mem" / name).read_bytes(), name


def test_config_json_without_defaults_loads_as_the_in_memory_paths(tmp_path):
    """A config.json written by an older transformers (torch_dtype, rope_theta, keys left at their defaults): the
    adapter fills in the defaults it needs, and the grown config loads as the in-memory path's grown config."""
    from transformers import AutoConfig

    from hf_growth.growth import grow_model
    from hf_growth.growth.streaming import grow_checkpoint

    model = make_model("llama")
    src = save(model, tmp_path / "src")
    legacy = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "transformers_version": "4.40.0",
    }
    (src / "config.json").write_text(json.dumps(legacy))
    plan = [{"mlp_width": 96}, {"hidden_size": 48}, {"num_layers": {"to": 6}}]
    out = grow_checkpoint(src, plan, tmp_path / "out", seed=3, quiet=True)
    grown = grow_model(model, plan, seed=3)
    assert_same_tensors(out, grown)
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "float32" and "torch_dtype" not in saved
    assert saved["rms_norm_eps"] == grown.config.rms_norm_eps  # the default 1e-6, rescaled by 32/48
    loaded = AutoConfig.from_pretrained(out).to_dict()
    expected = grown.config.to_dict()
    for key in set(loaded) | set(expected):
        if key not in ("_name_or_path", "transformers_version"):
            assert loaded.get(key) == expected.get(key), key


def test_dict_config_is_checked_like_the_config_class(tmp_path):
    """Without the config class, the adapter's pure-Python check refuses what LlamaConfig refuses, with its words."""
    from hf_growth.growth.streaming import grow_checkpoint

    src = save(make_model("llama"), tmp_path / "src")
    with pytest.raises(
        ValueError,
        match=r"plan step 0 \(hidden_size\): the grown config is not a valid LlamaConfig: "
        r"The hidden size \(50\) is not a multiple of the number of attention heads",
    ):
        grow_checkpoint(src, [{"hidden_size": 50}], tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", supported_model_types())
def test_adapter_defaults_are_the_config_classes(model_type):
    """The defaults an adapter fills into a config.json dict are those of the transformers config class."""
    from hf_growth.growth.adapters import get_adapter

    adapter = get_adapter(model_type)
    defaults = adapter.config_class()().to_dict()
    assert adapter.config_class_name == adapter.config_class().__name__
    for key, value in adapter.config_defaults.items():
        assert defaults[key] == value, key


_IMPORT_CHECK = r"""
import json, sys
from hf_growth.growth.streaming import grow_checkpoint
grow_checkpoint(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], max_shard_size="8KB", quiet=True)
heavy = ("torch", "transformers", "transformers.models.llama", "torch._dynamo", "sympy", "huggingface_hub.hf_api")
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


@pytest.mark.parametrize(
    "plan, allowed",
    [
        ([{"stack": {"to": 6, "block_size": 1}}], []),  # a copy-only plan: no torch at all
        (
            [
                {"mlp_width": 96},
                {"num_heads": {"to": 8, "num_key_value_heads": 2}},
                {"hidden_size": 48},
                {"num_layers": {"to": 6}},
            ],
            ["torch"],
        ),  # torch, but no transformers, no torch._dynamo / sympy (meta passes)
    ],
)
def test_streaming_imports_only_what_it_needs(tmp_path, plan, allowed):
    import subprocess
    import sys

    src = save(make_model("llama", torch.bfloat16), tmp_path / "src")
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(src), json.dumps(plan), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == allowed
    assert SafetensorsSource(tmp_path / "out").total_size > 0


def test_free_values_do_not_depend_on_the_number_of_threads(tmp_path, monkeypatch):
    """The free blocks of a tensor are drawn on several threads; each block has its own generator, so the tensors
    are the same with one thread (and bit-identical to the in-memory path)."""
    from hf_growth.growth import free_values as engine_module

    monkeypatch.setattr(engine_module, "FREE_BLOCK_ELEMENTS", 5 * 32)  # many blocks per tensor
    model = make_model("llama", torch.bfloat16)
    plan = [
        {"mlp_width": 96},
        {"num_heads": {"to": 8, "num_key_value_heads": 4}},
        {"hidden_size": 48},
        {"num_layers": {"to": 6}},
    ]
    digests = []
    for threads in (3, 1):
        monkeypatch.setattr(engine_module, "FREE_THREADS", threads)
        out, grown = grow_both(model, plan, tmp_path / str(threads))
        assert_same_tensors(out, grown)
        digests.append({k: v for k, v in digest(out).items() if k.endswith(".safetensors")})
    assert digests[0] == digests[1]


def test_stack_copies_are_aligned_with_their_source(tmp_path, monkeypatch):
    """Each shard's header is padded so that copied tensors sit at their source offset modulo COPY_ALIGNMENT (the
    page cache copies aligned folios fastest); the shards stay valid safetensors files."""
    from safetensors.torch import load_file

    from hf_growth.growth.streaming import grow_checkpoint

    monkeypatch.setattr(cio, "COPY_ALIGNMENT", 256)  # so that a tiny checkpoint is worth aligning
    model = make_model("llama", torch.bfloat16)
    src = save(model, tmp_path / "src", max_shard_size="10KB")
    out = grow_checkpoint(
        src, [{"stack": {"to": 6, "block_size": 1}}], tmp_path / "out", max_shard_size="20KB", quiet=True
    )
    source, grown = SafetensorsSource(src), SafetensorsSource(out)
    aligned = total = 0
    for name in grown:
        info = grown.info(name)
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        origin = name if layer is None else None
        for candidate in source:  # the source tensor with the same bytes
            if candidate.split(".")[-2:] == name.split(".")[-2:] and torch.equal(source[candidate], grown[name]):
                origin = candidate
                break
        total += info.nbytes
        aligned += info.nbytes * ((info.start - source.info(origin).start) % 256 == 0)
    assert aligned > total / 2
    state = model.state_dict()
    for shard in out.glob("*.safetensors"):
        assert (int.from_bytes(shard.read_bytes()[:8], "little") + 8) % 8 == 0
        for name, tensor in load_file(shard).items():
            assert tensor.dtype == torch.bfloat16 and any(torch.equal(tensor, t) for t in state.values()), name
