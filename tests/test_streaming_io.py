"""The safetensors source, the shard writer and the atomic output directory (no growth engine needed)."""

from __future__ import annotations

import errno
import json
import os
import stat
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_growth.growth.io import (
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
from hf_growth.growth.io import output_dir as output_dir_module
from hf_growth.growth.io import writer as cio


def tiny_llama(tmp_path, *, max_shard_size="20KB", dtype=torch.float32, name="src"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
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
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors.index.json: names shard "
        r"'model-00099-of-00099.safetensors'.* does not exist",
    ):
        SafetensorsSource(path)
    bad = json.loads(json.dumps(index))
    bad["weight_map"]["model.layers.7.ghost.weight"] = index["weight_map"]["model.norm.weight"]
    index_path.write_text(json.dumps(bad))
    with pytest.raises(
        CheckpointError,
        match=r"names tensor 'model.layers.7.ghost.weight' in "
        r"model-0000\d-of-0000\d.safetensors, but",
    ):
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


def test_bin_only_refused_with_a_conversion_command_that_works(tmp_path):
    """The error names a command that converts the .bin checkpoint (run here as the message gives it)."""
    import re
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    src = tmp_path / "old model"
    model.config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError,
        match=r"only pickle weights \(pytorch_model.bin\), no safetensors; streaming "
        r"growth reads safetensors only and never unpickles",
    ) as info:
        SafetensorsSource(src)
    assert "transformers.commands" not in str(info.value) and "\n" not in str(info.value)
    command = re.search(r"`(python -c .*?)`", str(info.value)).group(1)
    subprocess.run(
        sys.executable + command[len("python") :],
        shell=True,
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    converted = SafetensorsSource(tmp_path / "old model-safetensors")
    state = model.state_dict()
    assert set(converted) == set(state) and all(torch.equal(converted[n], state[n]) for n in state)
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
    assert check_output_dir(tmp_path / "exists", src, overwrite=True) == (tmp_path / "exists").resolve()  # empty
    (tmp_path / "exists" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not a model checkpoint \(it holds notes.txt and no config.json\)"):
        check_output_dir(tmp_path / "exists", src, overwrite=True)


def test_check_free_space(tmp_path, monkeypatch):
    check_free_space(tmp_path / "a" / "b", 1000)
    monkeypatch.setattr(output_dir_module.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**6})())
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


def _fake_checkpoint(directory):
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.ones(2)}, directory / "model.safetensors")


def test_atomic_overwrite_replaces_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out)
    with pytest.raises(FileExistsError):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("fail")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert _leftovers(tmp_path) == ["out"]


def test_atomic_output_dir_gets_the_mode_mkdir_would_give(tmp_path):
    """mkdtemp makes 0700 directories; a written checkpoint must be readable as save_pretrained's is."""
    old = os.umask(0o022)
    try:
        (tmp_path / "plain").mkdir()
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
        os.umask(0o077)
        with atomic_output_dir(tmp_path / "private") as tmp:
            pass
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == mode(tmp_path / "plain") == 0o755
    assert mode(tmp_path / "private") == 0o700


def test_copy_side_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "modeling_resformer.py",
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "README.md",
        "model.safetensors.index.json",
        ".hidden",
    ]:
        (src / name).write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    assert copy_side_files(src, out) == [
        "chat_template.jinja",
        "generation_config.json",
        "modeling_resformer.py",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


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


def _write_planned(directory, planned, tensors, raw, **kwargs):
    with ShardWriter(directory, max_shard_size="3KB", quiet=True, planned=planned, **kwargs) as writer:
        for n, *_ in planned:
            if n == "raw":
                writer.add_raw(n, raw)
            else:
                writer.add_tensor(n, tensors[n])


def test_background_writer_same_bytes_and_errors_reach_the_caller(tmp_path, monkeypatch):
    """Direct mode writes on a thread of its own: the same files as writing in the caller's thread; an error on
    that thread (a full disk) is raised in the caller, and nothing is left behind."""
    import hashlib

    from safetensors.torch import save_file

    save_file({"raw": torch.arange(700, dtype=torch.float32)}, tmp_path / "src.safetensors")
    raw = SafetensorsSource(tmp_path / "src.safetensors").info("raw")
    tensors = {f"t{i}": torch.randn(100 + 37 * i) for i in range(8)}
    planned = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    planned.insert(3, ("raw", "F32", (700,), raw.start))  # dtype as a safetensors name, with the source offset
    digests = []
    for name, background in (("thread", True), ("inline", False)):
        _write_planned(tmp_path / name, planned, tensors, raw, background=background, max_pending_bytes=500)
        files = sorted((tmp_path / name).iterdir())
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert digests[0] == digests[1] and len(digests[0]) > 3
    assert torch.equal(SafetensorsSource(tmp_path / "thread")["raw"], torch.arange(700, dtype=torch.float32))

    calls = {"n": 0}
    real = cio._write

    def full_disk(f, data):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(cio, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _write_planned(tmp_path / "full", planned, tensors, raw)
    assert calls["n"] == 5 and not list((tmp_path / "full").iterdir())


def test_header_padding_aligns_most_copied_bytes():
    entries = [
        cio._Entry("a", "BF16", (8,), 16, source_offset=None),
        cio._Entry("b", "BF16", (1 << 20,), 2 << 20, source_offset=3 * cio.COPY_ALIGNMENT + 72),
        cio._Entry("c", "BF16", (1 << 19,), 1 << 20, source_offset=5 * cio.COPY_ALIGNMENT + 200),
    ]
    pad = cio._header_padding(100, entries)
    data_start = 8 + 100 + pad
    assert data_start % 8 == 0 and pad < cio.COPY_ALIGNMENT
    assert (data_start + 16 - entries[1].source_offset) % cio.COPY_ALIGNMENT == 0  # the most bytes: b
    # nothing copied (or too little to be worth the spaces): 8-byte alignment only
    assert cio._header_padding(100, entries[:1]) == 4
    small = [cio._Entry("s", "BF16", (8,), 16, source_offset=12345 * 8)]
    assert cio._header_padding(100, small) == 4


def test_checkpoint_io_imports_no_torch_until_a_tensor_is_decoded(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import save_file

    save_file({"w": torch.eye(3)}, tmp_path / "model.safetensors")
    code = (
        "import sys; from hf_growth.growth.io import SafetensorsSource, ShardWriter\n"
        "s = SafetensorsSource(sys.argv[1]); assert s.shape('w') == (3, 3) and s.info('w').dtype == 'F32'\n"
        "w = ShardWriter(sys.argv[2], quiet=True, planned=[('w', 'F32', (3, 3))]); w.add_raw('w', s.info('w'))\n"
        "w.close(); print('torch' in sys.modules)\n"
        "print(s['w'].sum().item(), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(tmp_path / "out")], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "False" and out[1] == "3.0 True"
    assert torch.equal(SafetensorsSource(tmp_path / "out")["w"], torch.eye(3))
