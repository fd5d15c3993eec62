"""scripts/train_reasoning.py end to end: single process, and DDP with two CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_reasoning.py"
TINY = [
    "--task",
    "multiplication",
    "--digits",
    "2",
    "--train-size",
    "256",
    "--validation-size",
    "32",
    "--test-size",
    "32",
    "--batch-size",
    "8",
    "--logging-steps",
    "1",
    "--seq-vcr-projection-dim",
    "64",
    "--cpu",
]


def _env():
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd, timeout):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_script_single_process(tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("train_reasoning", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    assert (
        module.main([*TINY, "--model", "gpt2-tiny", "--max-steps", "3", "--pauses", "2", "--output-dir", str(out)]) == 0
    )
    result = json.loads((out / "results.json").read_text())
    assert 0.0 <= result["exact_match"] <= 1.0 and result["num_test"] == 32
    assert result["global_steps"] == 3 and result["pauses"] == 2 and result["seq_vcr"] is True
    assert {"ce_loss", "seq_vcr_variance", "seq_vcr_covariance"} <= set(result["last_log"][0])
    # pauses and Seq-VCR off
    out2 = tmp_path / "plain"
    assert (
        module.main(
            [
                *TINY,
                "--model",
                "llama-tiny",
                "--max-steps",
                "2",
                "--pauses",
                "0",
                "--no-seq-vcr",
                "--output-dir",
                str(out2),
            ]
        )
        == 0
    )
    result = json.loads((out2 / "results.json").read_text())
    assert result["pauses"] == 0 and "seq_vcr_variance" not in result["last_log"][0]
    with pytest.raises(SystemExit):
        module.main([*TINY, "--model", str(tmp_path / "missing"), "--output-dir", str(out2)])


def test_script_grows_during_training(tmp_path):
    """--midas-stages and --grow-at plug the growth callbacks into the script's Trainer."""
    from importlib import util

    spec = util.spec_from_file_location("train_reasoning", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plan = tmp_path / "plan.yaml"
    plan.write_text("- mlp_width: 192\n")
    common = [*TINY, "--model", "llama-tiny", "--max-steps", "6", "--pauses", "0", "--no-seq-vcr"]
    assert module.main([*common, "--output-dir", str(tmp_path / "plain")]) == 0
    assert (
        module.main(
            [
                *common,
                "--midas-stages",
                "2",
                "--midas-where",
                "top",
                "--grow-at",
                f"2={plan}",
                "--output-dir",
                str(tmp_path / "grown"),
            ]
        )
        == 0
    )
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    grown = json.loads((tmp_path / "grown" / "results.json").read_text())
    assert plain["growth_history"] == []
    steps = sorted(next(iter(record["step"])) for record in grown["growth_history"])
    assert steps == ["mlp_width", "stack"], grown["growth_history"]
    assert grown["parameters"] > plain["parameters"] and grown["global_steps"] == 6


def _exit_2(module, argv, capsys) -> str:
    """Run the script expecting bad input: exit status 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, (exc.value.code, err)
    return err


def test_script_rejects_bad_growth_plans_before_training(tmp_path, capsys):
    """Every plan is checked against the model it will meet, chained in step order, before the first step
    (a run that would fail at step 100 fails at once): one line, exit 2, nothing written."""
    module = _load_script()
    out = tmp_path / "out"
    common = [*TINY, "--model", "llama-tiny", "--max-steps", "6", "--pauses", "0", "--output-dir", str(out)]

    def plan(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    assert "--grow-at expects STEP=PLAN.yaml, got 'soon'" in _exit_2(module, [*common, "--grow-at", "soon"], capsys)
    err = _exit_2(module, [*common, "--grow-at", f"4={tmp_path / 'missing.yaml'}"], capsys)
    assert f"--grow-at 4={tmp_path / 'missing.yaml'}: growth plan file" in err and "does not exist" in err
    err = _exit_2(module, [*common, "--grow-at", f"4={plan('typo.yaml', '- mlp_widht: 256')}"], capsys)
    assert "unknown step 'mlp_widht'" in err
    # valid YAML, wrong for this model: llama-tiny has hidden 64, a plan cannot shrink it
    err = _exit_2(module, [*common, "--grow-at", f"4={plan('small.yaml', '- hidden_size: 32')}"], capsys)
    assert err.startswith("train_reasoning.py: error: --grow-at 4: plan step 0 (hidden_size): ")
    # chained: fine alone, but step 2 already made the MLP 512 wide, so 256 at step 4 would shrink it
    wide, narrower = plan("wide.yaml", "- mlp_width: 512"), plan("narrow.yaml", "- mlp_width: 256")
    err = _exit_2(module, [*common, "--grow-at", f"4={narrower}", "--grow-at", f"2={wide}"], capsys)
    assert "--grow-at 4: plan step 0 (mlp_width)" in err
    assert (
        module.main(
            [
                *common,
                "--max-steps",
                "1",
                "--grow-at",
                f"4={narrower}",  # alone it is fine
                "--output-dir",
                str(tmp_path / "ok"),
            ]
        )
        == 0
    )
    # MIDAS stages count too: 2 layers cannot be stacked in the middle (chained before a --grow-at at the same step)
    err = _exit_2(module, [*common, "--midas-stages", "2"], capsys)
    assert "--midas-stages 2 (stage 2 at step 2): plan step 0 (stack)" in err
    assert not (out / "results.json").exists() and not (tmp_path / "out" / "checkpoint-2").exists()


def test_shipped_example_plans_fit_the_presets_they_name(tmp_path):
    """scripts/plans/*.yaml (the README's examples) are valid for the presets they are written for."""
    from hf_growth.growth.engine import GrowthEngine

    module = _load_script()
    plans = ROOT / "scripts" / "plans"
    for name, model in [
        ("wider.yaml", "llama-mini"),
        ("deeper.yaml", "llama-mini"),
        ("wider_tiny.yaml", "llama-tiny"),
        ("wider_tiny.yaml", "gpt2-tiny"),
    ]:
        args = module.parse_args([*TINY, "--model", model, "--grow-at", f"10={plans / name}"])
        _, net, _, _, train, _ = module.prepare(args)
        assert module.check_growth(args, net, len(train)) == [(10, "--grow-at 10")]
        grown = GrowthEngine(net.config, args.grow_at[0][1]).new_config
        assert grown.num_hidden_layers >= net.config.num_hidden_layers


def test_script_grows_width_with_seq_vcr_on(tmp_path):
    """--grow-at with a hidden_size plan while Seq-VCR (the default) trains its projection head."""
    module = _load_script()
    plan = ROOT / "scripts" / "plans" / "wider_tiny.yaml"
    out = tmp_path / "wide"
    assert (
        module.main(
            [
                *TINY,
                "--model",
                "llama-tiny",
                "--max-steps",
                "4",
                "--pauses",
                "2",
                "--max-test",
                "4",
                "--grow-at",
                f"2={plan}",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "results.json").read_text())
    assert [next(iter(r["step"])) for r in result["growth_history"]] == ["hidden_size", "mlp_width"]
    assert result["global_steps"] == 4 and math.isfinite(result["last_log"][0]["seq_vcr_variance"])


def _load_script():
    from importlib import util

    spec = util.spec_from_file_location("train_reasoning", SCRIPT)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_flags_from_the_config_dataclass(capsys):
    """The arguments come from SeqVCRConfig through HfArgumentParser; the documented short flags still work."""
    module = _load_script()
    args = module.parse_args(
        [
            "--lr",
            "1e-3",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--grad-accum",
            "2",
            "--scheduler",
            "cosine",
            "--pauses",
            "6",
            "--cpu",
            "--no-seq-vcr",
            "--save-steps",
            "10",
            "--seq-vcr-projection-dim",
            "0",
            "--digits",
            "2",
            "--no-labelled-logits",
            "--seq-vcr-layers",
            "0,1",
            "--weight-decay",
            "0.1",
            "--warmup-steps",
            "5",
        ]
    )
    c = args.training
    assert (
        c.learning_rate,
        c.num_train_epochs,
        c.per_device_train_batch_size,
        c.gradient_accumulation_steps,
        c.lr_scheduler_type.value,
        c.num_pause_tokens,
        c.use_cpu,
        c.use_seq_vcr,
    ) == (1e-3, 2.0, 16, 2, "cosine", 6, True, False)
    assert (c.save_strategy.value, c.save_steps, c.seq_vcr_projection_dim, c.seq_vcr_layers) == (
        "steps",
        10,
        None,
        [0, 1],
    )
    assert (c.per_device_eval_batch_size, c.weight_decay, c.warmup_steps) == (16, 0.1, 5)
    assert args.digits == 2 and args.labelled_logits is False
    c = module.parse_args(["--learning-rate", "2e-3", "--no-seq-vcr-compile"]).training  # the dataclass's own names
    assert (c.learning_rate, c.seq_vcr_compile, c.use_seq_vcr, c.save_strategy.value, c.seed) == (
        2e-3,
        False,
        True,
        "no",
        0,
    )
    assert "--data-on-device gathers batches on the device" in _exit_2(
        module, ["--data-on-device", "--dataloader-workers", "2"], capsys
    )
    assert "seq_vcr_statistics must be one of" in _exit_2(module, ["--seq-vcr-statistics", "tokens"], capsys)


def test_script_data_on_device(tmp_path):
    """--data-on-device (the CPU here) trains exactly as host batches do; it turns pinning off and refuses workers.
    Every run of the script leaves the per-step NaN/Inf host check off."""
    module = _load_script()
    common = [*TINY, "--model", "gpt2-tiny", "--max-steps", "3", "--max-test", "8"]
    assert module.main([*common, "--output-dir", str(tmp_path / "host")]) == 0
    assert module.main([*common, "--data-on-device", "--output-dir", str(tmp_path / "device")]) == 0
    host, device = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("host", "device"))
    assert device["train_loss"] == host["train_loss"] and device["eval_loss"] == host["eval_loss"]
    assert device["last_log"][0]["ce_loss"] == host["last_log"][0]["ce_loss"]
    assert host["tokens_seen"] == 3 * 8 * host["seq_len"] and host["train_tokens_per_s"] > 0
    assert host["seed"] == 0 and 0 < host["epochs"] <= 1
    args = module.parse_args([*common, "--data-on-device", "--output-dir", str(tmp_path / "x")])
    config = module.make_config(args)
    assert not config.dataloader_pin_memory and not config.logging_nan_inf_filter and not config.dataloader_drop_last


@pytest.mark.slow
def test_script_torch_compile_with_seq_vcr(tmp_path):
    """--torch-compile compiles the model (its Seq-VCR hooks inside) and the head + statistics; the logged terms
    match the eager run's, and the last partial batch of an epoch is dropped (no second compiled shape)."""
    import torch

    module = _load_script()
    base = [
        *TINY,
        "--model",
        "gpt2-tiny",
        "--max-steps",
        "2",
        "--data-on-device",
        "--train-size",
        "36",
        "--config-overrides",
        "resid_pdrop=0,embd_pdrop=0,attn_pdrop=0",
    ]  # compiled dropout draws other masks
    logs = {}
    for flag in ("", "--torch-compile"):
        args = module.parse_args([*base, *filter(None, [flag]), "--output-dir", str(tmp_path / (flag or "eager"))])
        torch.manual_seed(args.training.seed)
        _, model, tokenizer, _, train, valid = module.prepare(args)
        assert model.loss_type == "ForCausalLM"  # no warning (a graph break) inside each forward
        trainer = module.build_trainer(args, model, tokenizer, train, valid)
        trainer.train()
        logs[flag] = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.args.dataloader_drop_last and trainer._vcr_fn != trainer._project_and_measure
    assert len(trainer.get_train_dataloader()) == 36 // 8
    assert len(logs["--torch-compile"]) == len(logs[""]) == 2
    for got, want in zip(logs["--torch-compile"], logs[""]):
        for key in ("loss", "ce_loss", "seq_vcr_variance", "seq_vcr_covariance"):
            assert math.isfinite(got[key]) and got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-6), key


@pytest.mark.slow
def test_script_ddp_two_cpu_processes(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        str(SCRIPT),
        *TINY,
        "--model",
        "llama-tiny",
        "--max-steps",
        "3",
        "--output-dir",
        str(out),
    ]
    _run(cmd, timeout=120)
    result = json.loads((out / "results.json").read_text())
    assert result["world_size"] == 2 and result["global_steps"] == 3
    log = result["last_log"][0]
    for key in ("ce_loss", "seq_vcr_variance", "seq_vcr_covariance"):
        assert key in log and log[key] == log[key] and abs(log[key]) < 1e6
