"""The safetensors source, the shard writer and the atomic output directory (no growth engine needed)."""

from __future__ import annotations

import errno
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_growth.growth import checkpoint_io as cio
from hf_growth.growth.checkpoint_io import (
    CheckpointError,
    DiskFullError,
    SafetensorsSource,
    ShardWriter,
    atomic_output_dir,
    check_free_space,
    check_output_dir,
    copy_side_files,
    parse_size,
)


def tiny_llama(tmp_path, *, max_shard_size="20KB", dtype=torch.float32, name="src"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(dtype)
    path = tmp_path / name
    model.save_pretrained(path, max_shard_size=max_shard_size)
    return model, path


def test_source_single_and_sharded_equal_state_dict(tmp_path):
    model, sharded = tiny_llama(tmp_path)
    assert (sharded / "model.safetensors.index.json").exists()
    _, single = tiny_llama(tmp_path, max_shard_size="10GB", name="single")
    assert (single / "model.safetensors").exists()
    state = model.state_dict()
    for path in (sharded, single):
        src = SafetensorsSource(path)
        assert set(src) == set(state)
        for name in src:
            assert src.shape(name) == tuple(state[name].shape)
            assert src.dtype(name) == state[name].dtype
            assert torch.equal(src[name], state[name])
        assert src.total_size == sum(t.numel() * t.element_size() for t in state.values())


def test_source_bf16(tmp_path):
    model, path = tiny_llama(tmp_path, dtype=torch.bfloat16)
    src = SafetensorsSource(path)
    w = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert src["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert torch.equal(src["model.layers.0.mlp.up_proj.weight"], w)


def test_truncated_shard_names_the_file(tmp_path):
    _, path = tiny_llama(tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated or corrupt: tensor .* ends at data byte"):
        SafetensorsSource(path)


def test_corrupt_header_names_the_file(tmp_path):
    _, path = tiny_llama(tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[9:14] = b"#####"  # break the JSON
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors header"):
        SafetensorsSource(path)
    shard.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt or truncated safetensors file: header length"):
        SafetensorsSource(path)
    shard.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match=rf"{shard.name}: not a safetensors file"):
        SafetensorsSource(path)


def test_index_naming_missing_file_or_tensor(tmp_path):
    _, path = tiny_llama(tmp_path)
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    index_path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: names shard 'model-00099-of-00099.safetensors'.* does not exist"):
        SafetensorsSource(path)
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["model.layers.7.ghost.weight"] = index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"names tensor 'model.layers.7.ghost.weight' in model-0000\d-of-0000\d.safetensors, but"):
        SafetensorsSource(path)
    index_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: corrupt safetensors index"):
        SafetensorsSource(path)


def test_mixed_dtypes_across_shards(tmp_path):
    _, path = tiny_llama(tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"different floating-point dtypes \(.*{shard.name}: BF16"):
        SafetensorsSource(path)


def test_bin_only_refused_with_conversion_hint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin.*never unpickles.*save_pretrained\(dst, safe_serialization=True\)"):
        SafetensorsSource(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        SafetensorsSource(tmp_path / "nope")


def test_writer_shards_index_and_raw_copy(tmp_path):
    model, path = tiny_llama(tmp_path)
    src = SafetensorsSource(path)
    out = tmp_path / "out"
    with ShardWriter(out, max_shard_size="12KB", quiet=True) as writer:
        for i, name in enumerate(src):
            if i % 2:
                writer.add_raw(name, src.info(name))  # bytes copied, never decoded
            else:
                writer.add_tensor(name, src[name])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 2 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == src.total_size
    for shard in shards:  # each shard is at most max_shard_size of data unless one tensor is larger
        tensors = load_file(out / shard)
        assert sum(t.numel() * t.element_size() for t in tensors.values()) <= 12000 or len(tensors) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no spill / temp files left
    reread = SafetensorsSource(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reread[name], tensor)
    # transformers loads it
    from transformers import AutoModelForCausalLM

    (out / "config.json").write_text((path / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_writer_chunked_copy_fallback(tmp_path, monkeypatch):
    _, path = tiny_llama(tmp_path, max_shard_size="10GB")
    src = SafetensorsSource(path)
    monkeypatch.setattr(cio, "_copy_file_range_ok", False)
    with ShardWriter(tmp_path / "out", quiet=True) as writer:
        for name in src:
            writer.add_raw(name, src.info(name))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.safetensors"]
    # byte-identical data to the source: same tensors in the same order
    for name, t in load_file(tmp_path / "out" / "model.safetensors").items():
        assert torch.equal(t, src[name])


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size(123) == 123
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")


def test_check_output_dir(tmp_path):
    _, src = tiny_llama(tmp_path)
    with pytest.raises(ValueError, match="is inside the source checkpoint"):
        check_output_dir(src / "grown", src)
    with pytest.raises(ValueError, match="contains the source checkpoint"):
        check_output_dir(tmp_path, src, overwrite=True)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        check_output_dir(tmp_path / "exists", src)
    assert check_output_dir(tmp_path / "exists", src, overwrite=True) == (tmp_path / "exists").resolve()


def test_check_free_space(tmp_path, monkeypatch):
    check_free_space(tmp_path / "a" / "b", 1000)
    monkeypatch.setattr(cio.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**6})())
    with pytest.raises(DiskFullError, match=r"not enough free disk for the output: .* GB needed"):
        check_free_space(tmp_path, 10**9)


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "out")


@pytest.mark.parametrize("failure", ["exception", "ctrl-c", "disk-full"])
def test_atomic_dir_cleans_up_mid_shard(tmp_path, monkeypatch, failure):
    _, path = tiny_llama(tmp_path)
    src = SafetensorsSource(path)
    calls = {"n": 0}
    real_write = cio._write

    def failing_write(f, data):
        calls["n"] += 1
        if calls["n"] == 7:  # somewhere in the middle of the second shard
            if failure == "exception":
                raise RuntimeError("boom")
            if failure == "ctrl-c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data)

    monkeypatch.setattr(cio, "_write", failing_write)
    expected = {"exception": RuntimeError, "ctrl-c": KeyboardInterrupt, "disk-full": DiskFullError}[failure]
    with pytest.raises(expected) as info:
        with atomic_output_dir(tmp_path / "out") as tmp:
            with ShardWriter(tmp, max_shard_size="8KB", quiet=True) as writer:
                for name in src:
                    writer.add_tensor(name, src[name])
    if failure == "disk-full":
        assert "disk full while writing" in str(info.value) and "partial output was removed" in str(info.value)
    assert calls["n"] >= 7
    assert _leftovers(tmp_path) == []


def test_atomic_overwrite_replaces_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("fail")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == ["out"]


def test_copy_side_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja",
                 "modeling_resformer.py", "config.json", "model.safetensors", "pytorch_model.bin", "README.md",
                 "model.safetensors.index.json", ".hidden"]:
        (src / name).write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    assert copy_side_files(src, out) == ["chat_template.jinja", "generation_config.json", "modeling_resformer.py",
                                         "tokenizer.json", "tokenizer_config.json"]


def test_planned_writer_writes_straight_into_shards_the_same_bytes(tmp_path):
    """With the layout planned up front every tensor goes straight into its shard (no spill file); the files
    are byte for byte those of the spilling writer, raw copies included; a tensor out of plan is refused."""
    import hashlib

    from safetensors.torch import save_file

    save_file({"raw": torch.arange(700, dtype=torch.float32)}, tmp_path / "src.safetensors")
    raw = SafetensorsSource(tmp_path / "src.safetensors").info("raw")
    tensors = {f"t{i}": torch.randn(100 + 37 * i) for i in range(6)}
    planned = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    planned.insert(3, ("raw", torch.float32, (700,)))
    planned.append(("big", torch.float32, (50, 40)))
    for name, kwargs in (("spill", {}), ("direct", {"planned": planned})):
        with ShardWriter(tmp_path / name, max_shard_size="3KB", quiet=True, **kwargs) as writer:
            for n, _, _ in planned:
                if n == "raw":
                    writer.add_raw(n, raw)
                elif n == "big":
                    writer.add_tensor_chunks(n, (50, 40), torch.float32, (torch.ones(10, 40) * k for k in range(5)))
                else:
                    writer.add_tensor(n, tensors[n])
        assert not list((tmp_path / name).glob(".*"))
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}  # noqa: E731
    assert digest(tmp_path / "spill") == digest(tmp_path / "direct") and len(digest(tmp_path / "direct")) > 3
    with pytest.raises(RuntimeError, match="planned"):
        with ShardWriter(tmp_path / "bad", quiet=True, planned=planned) as writer:
            writer.add_tensor("t1", tensors["t1"])
    assert not [p for p in (tmp_path / "bad").iterdir()]
