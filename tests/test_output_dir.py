"""The output directory under interruption: SIGINT / SIGTERM remove the partial output (one line on stderr,
exit 130 / 143), a SIGKILLed run's leftover is removed by the next run into the same place, and nothing that
is not hf-growth's is ever deleted. Real subprocesses and signals; a copy-only plan, so the child starts fast."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from hf_growth.growth.io import SafetensorsSource, atomic_output_dir
from hf_growth.growth.io.output_dir import MARKER_NAME, clean_leftovers, why_not_replaceable

# the CLI, with the shard writer held up after its first tensor so that the signal arrives mid-write
SLOW_CLI = """
import sys, time
from hf_growth.growth.io import writer
real = writer.ShardWriter.add_raw
def slow(self, name, info):
    real(self, name, info)
    print("writing", flush=True)
    time.sleep(60)
writer.ShardWriter.add_raw = slow
from hf_growth.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture()
def src(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model.save_pretrained(tmp_path / "src")
    (tmp_path / "stack.yaml").write_text("- stack: {to: 4, block_size: 1, where: top}\n")
    return tmp_path / "src"


def _partials(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


def _start_slow_grow(tmp_path):
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_CLI,
            "grow",
            str(tmp_path / "src"),
            str(tmp_path / "stack.yaml"),
            str(tmp_path / "out"),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "writing\n", child.communicate(timeout=30)
    (partial,) = _partials(tmp_path)  # the temporary output, marked as this run's
    owner = json.loads((tmp_path / partial / MARKER_NAME).read_text())
    assert owner["pid"] == child.pid and owner["host"] == socket.gethostname()
    return child


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_removes_the_partial_output_with_one_line(tmp_path, src, signum, code):
    child = _start_slow_grow(tmp_path)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == code
    assert stderr == f"hf-growth grow: stopped by {signal.Signals(signum).name}; partial output removed\n"
    assert _partials(tmp_path) == [] and not (tmp_path / "out").exists()


def test_a_killed_runs_leftover_is_removed_by_the_next_run(tmp_path, src):
    child = _start_slow_grow(tmp_path)
    child.kill()
    child.wait(timeout=30)
    (leftover,) = _partials(tmp_path)
    foreign = tmp_path / ".out.tmp-not-ours"  # the same kind of name, but not marked: never deleted
    foreign.mkdir()
    (foreign / "data.txt").write_text("someone's")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_growth.cli",
            "grow",
            str(src),
            str(tmp_path / "stack.yaml"),
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert f"removed {tmp_path / leftover}, the partial output of an interrupted run (pid {child.pid}, gone)" in lines
    assert (
        f"{foreign} looks like the partial output of an interrupted run but is not marked as hf-growth's; left "
        "alone: remove it yourself if it is not needed"
    ) in lines
    assert _partials(tmp_path) == [foreign.name] and (foreign / "data.txt").read_text() == "someone's"
    assert SafetensorsSource(tmp_path / "out").shape("model.layers.3.mlp.up_proj.weight") == (64, 32)
    assert MARKER_NAME not in os.listdir(tmp_path / "out")


def test_leftovers_of_running_or_remote_runs_are_left_alone(tmp_path):
    running, remote = tmp_path / ".out.tmp-running", tmp_path / ".out.old-remote"
    for path, owner in (
        (running, {"pid": os.getpid(), "host": socket.gethostname()}),
        (remote, {"pid": 1, "host": "another-host"}),
    ):
        path.mkdir()
        (path / MARKER_NAME).write_text(json.dumps(owner))
    notes = clean_leftovers(tmp_path / "out")
    assert notes == [
        f"{remote} is a partial output of a run on host another-host (pid 1), which may still run; "
        "left alone: remove it yourself once that run is gone"
    ]
    assert running.is_dir() and remote.is_dir()


def test_interrupt_in_python_cleans_up_and_imports_install_no_handlers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    code = (
        "import signal, hf_growth, hf_growth.cli, hf_growth.growth.io, hf_growth.growth.streaming\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
        "signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "True True\n"


def test_cli_restores_the_signal_handlers(tmp_path, capsys):
    from hf_growth.cli import main

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.mark.parametrize(
    "files, reason",
    [
        ({"notes.txt": "mine"}, "it holds notes.txt and no config.json"),
        ({"config.json": "{}", "model.safetensors": ""}, "its config.json has no model_type"),
        (
            {"config.json": '{"model_type": "llama"}', "notes.txt": ""},
            "it has a config.json but no weight files (it holds config.json, notes.txt)",
        ),
        ({"config.json": "not json", "model.safetensors": ""}, "its config.json is not valid JSON"),
        ({"config.json": '{"model_type": "llama"}', "model.safetensors": ""}, None),
        ({"config.json": '{"model_type": "llama"}', "pytorch_model.bin": ""}, None),
        ({"config.json": '{"growth_history": [{"step": {"mlp_width": {"to": 8}}}]}'}, None),  # an earlier output
        ({}, None),
    ],
)
def test_what_overwrite_may_replace(tmp_path, files, reason):
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    assert why_not_replaceable(out) == reason
    if reason is None:
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
        assert os.listdir(out) == ["new.txt"]
    else:
        with pytest.raises(FileExistsError, match="is not a model checkpoint"):
            with atomic_output_dir(out, overwrite=True):
                pytest.fail("must not start")
        assert sorted(os.listdir(out)) == sorted(files)


def test_grow_overwrite_refuses_a_directory_of_notes(tmp_path, src, capsys):
    from hf_growth.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["grow", str(src), str(tmp_path / "stack.yaml"), str(tmp_path / "out"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"hf-growth grow: error: output directory {(tmp_path / 'out').resolve()} exists and is not a "
        "model checkpoint (it holds notes.txt and no config.json); overwrite replaces only a model "
        "checkpoint or an earlier hf-growth output: choose another output directory or remove it\n"
    )
    assert os.listdir(tmp_path / "out") == ["notes.txt"] and _partials(tmp_path) == []


def test_in_memory_save_overwrite_refuses_a_directory_of_notes(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_growth.growth import grow_model

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"not a model checkpoint \(it holds notes.txt and no config.json\)"):
        grow_model(model, [{"mlp_width": 96}], output_dir=tmp_path / "out", overwrite=True)
    assert os.listdir(tmp_path / "out") == ["notes.txt"] and _partials(tmp_path) == []
