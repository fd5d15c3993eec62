"""hf_growth.analysis: matrix entropy, value statistics, head-emergence callback, plots, `hf-growth analyze`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_growth.analysis import (
    HeadEmergenceCallback,
    layer_entropy,
    plot_head_emergence,
    plot_layer_entropy,
    plot_value_statistics,
    value_statistics,
)
from hf_growth.analysis.entropy import matrix_entropy
from hf_growth.analysis.probes import retrieval_vocab_size, synthetic_retrieval

VOCAB = 40


def tiny_llama(seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=None, eos_token_id=None
    )
    return GPT2LMHeadModel(config)


def reference_entropy(z: np.ndarray) -> float:
    eigenvalues = np.clip(np.linalg.eigvalsh(z.astype(np.float64) @ z.T.astype(np.float64)), 0, None)
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# --- matrix entropy -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(5, 8), (8, 8), (3, 16)])
def test_orthogonal_rows_give_maximal_entropy(n, d):
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    raw, norm = matrix_entropy(q[:n] * 2.5)
    assert float(raw) == pytest.approx(math.log(n), abs=1e-9)
    assert float(norm) == pytest.approx(1.0, abs=1e-9)


def test_rank_one_gives_zero_entropy():
    z = torch.randn(7, 1) @ torch.randn(1, 12)
    raw, norm = matrix_entropy(z)
    assert float(raw) == pytest.approx(0.0, abs=1e-6)
    assert float(norm) == pytest.approx(0.0, abs=1e-6)
    assert float(matrix_entropy(torch.zeros(4, 6))[0]) == 0.0


@pytest.mark.parametrize("t, d", [(6, 10), (10, 6)])  # both Gram orientations
def test_entropy_matches_direct_reference(t, d):
    z = torch.randn(3, t, d)
    raw, norm = matrix_entropy(z)
    for b in range(3):
        expected = reference_entropy(z[b].numpy())
        assert float(raw[b]) == pytest.approx(expected, rel=1e-6)
        assert float(norm[b]) == pytest.approx(expected / math.log(min(t, d)), rel=1e-6)


def test_entropy_mask_drops_padded_rows():
    z = torch.randn(2, 9, 5)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    raw, _ = matrix_entropy(z, mask)
    assert float(raw[0]) == pytest.approx(reference_entropy(z[0, :6].numpy()), rel=1e-6)
    assert float(raw[1]) == pytest.approx(reference_entropy(z[1].numpy()), rel=1e-6)


def test_layer_entropy_tiny_model_and_padding():
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (3, 10))
    entropy = layer_entropy(model, [ids[:2], ids[2:]])
    assert len(entropy) == len(entropy.raw) == 4 and entropy.num_sequences == 3
    assert all(0 < x <= 1 for x in entropy)
    # right padding with a mask leaves every real token's representation, hence the entropy, unchanged
    padded = torch.cat([ids[:1, :7], torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    a = layer_entropy(model, {"input_ids": padded, "attention_mask": mask})
    b = layer_entropy(model, ids[:1, :7])
    assert a.raw == pytest.approx(b.raw, rel=1e-4)
    assert json.loads(json.dumps(a.to_dict()))["num_sequences"] == 1


# --- value statistics ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_value_statistics(make):
    model = make()
    before = model.config._attn_implementation
    ids = torch.randint(0, VOCAB, (4, 12))
    stats = value_statistics(model, [ids[:2], ids[2:]])
    hooks = sum(len(m._forward_hooks) for m in model.modules())  # transformers adds its own on first use
    assert stats["value_cos_to_first"][0] == pytest.approx(1.0, abs=1e-9)
    assert stats["layers"] == [0, 1, 2] and stats["num_sequences"] == 4 and stats["lambdas"] == {}
    for key in ("attention_entropy", "first_token_attention", "first_token_value_norm", "first_token_hidden_norm"):
        assert len(stats[key]) == 3 and all(np.isfinite(stats[key]))
    assert all(0 <= x <= 1 for x in stats["first_token_attention"])
    assert all(0 < x <= math.log(12) + 1e-9 for x in stats["attention_entropy"])
    assert model.config._attn_implementation == before  # eager only during the call
    assert value_statistics(model, ids)["value_cos_to_first"] == pytest.approx(
        value_statistics(model, ids)["value_cos_to_first"]
    )
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks  # ours are removed after each call


def test_gpt2_values_are_the_value_third_of_c_attn():
    model = tiny_gpt2().eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    stats = value_statistics(model, ids)
    with torch.no_grad():
        h = model.transformer.wte(ids) + model.transformer.wpe(torch.arange(8))
        v0 = model.transformer.h[0].attn.c_attn(model.transformer.h[0].ln_1(h))[..., 64:]
    assert stats["first_token_value_norm"][0] == pytest.approx(float(v0[0, 0].norm()), rel=1e-5)


def test_value_statistics_reads_resformer_lambdas():
    model = tiny_llama()
    for i, layer in enumerate(model.model.layers[1:], start=1):
        layer.self_attn.register_parameter("value_residual_lambda", torch.nn.Parameter(torch.tensor([0.1 * i, 0.9])))
    stats = value_statistics(model, torch.randint(0, VOCAB, (2, 6)))
    assert stats["lambdas"]["model.layers.2.self_attn.value_residual_lambda"] == pytest.approx([0.2, 0.9])


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="VALUE_ROLES"):
        value_statistics(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))


# --- head emergence callback ---------------------------------------------------------------------------------
def test_callback_records_steps_and_shapes(tmp_path):
    from transformers import Trainer, TrainingArguments

    num_nodes, num_pairs = 12, 3
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=retrieval_vocab_size(num_nodes, 2),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    data = synthetic_retrieval(48, num_pairs=num_pairs, num_nodes=num_nodes, hops=(1, 2))
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(data["input_ids"], data["labels"])]
    probe = synthetic_retrieval(5, num_pairs=num_pairs, num_nodes=num_nodes, hops=2, seed=1)
    callback = HeadEmergenceCallback(
        probe["input_ids"],
        probe["important"],
        query_mask=probe["query_mask"],
        every=3,
        steps=[4],
        layers=[1],
        heads=[0, 2],
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
    assert callback.steps == [0, 3, 4, 6]
    t = probe["input_ids"].shape[1]
    assert [s.shape for s in callback.scores] == [(2, 4)] * 4
    assert [m.shape for m in callback.maps] == [(1, 2, t, t)] * 4
    assert np.allclose(callback.maps[-1].sum(-1), 1, atol=1e-4)  # attention rows are distributions
    assert all(((s >= 0) & (s <= 1 + 1e-6)).all() for s in callback.scores)
    assert not np.allclose(callback.scores[0], callback.scores[-1])  # training changed the attention
    assert model.training and model.config._attn_implementation != "eager"
    saved = json.loads(callback.save(tmp_path / "heads.json").read_text())
    assert saved["steps"] == [0, 3, 4, 6] and len(saved["maps"]) == 4
    assert len(callback.emergence_steps(0.0)) == 2
    image = plot_head_emergence(saved, tmp_path / "heads.png")
    pixels = _pixels(image)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels[..., :3].std() > 0.01  # a picture, not a blank


def test_callback_score_is_mass_on_important_keys():
    model = tiny_llama(layers=2)
    ids = torch.randint(0, VOCAB, (2, 6))
    everything = torch.ones(2, 6, dtype=torch.bool)
    callback = HeadEmergenceCallback(ids, everything, steps=[0])
    callback.record(model, 0)
    assert np.allclose(callback.scores[0], 1.0, atol=1e-5)  # all keys matter -> full mass
    nothing = HeadEmergenceCallback(ids, ~everything, steps=[0])
    nothing.record(model, 0)
    assert np.allclose(nothing.scores[0], 0.0)
    with pytest.raises(ValueError):
        HeadEmergenceCallback(ids, everything[:, :3], steps=[0])


# --- plots ---------------------------------------------------------------------------------------------------------
def _pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the plot functions save (closed after saving, still readable)."""
    from hf_growth.analysis import plots

    saved = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kw: saved.append(fig) or real(fig, path, **kw))
    return saved


def _lines(ax):
    return {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}


def test_plots_draw_the_numbers_they_are_given(tmp_path, figures):
    a, b = tiny_llama(0), tiny_gpt2(1)
    ids = torch.randint(0, VOCAB, (2, 10))
    entropies = {"llama": layer_entropy(a, ids), "gpt2": layer_entropy(b, ids)}
    path = plot_layer_entropy(entropies, tmp_path / "e1.png", title="entropy of two")
    normalised, raw = figures[-1].axes
    assert _lines(normalised) == {k: pytest.approx(list(v)) for k, v in entropies.items()}
    assert _lines(raw) == {k: pytest.approx(v.raw) for k, v in entropies.items()}
    assert (
        normalised.get_xlabel() == "layer (0 = embedding output)"
        and figures[-1]._suptitle.get_text() == "entropy of two"
    )
    pixels = _pixels(path)
    assert pixels[..., :3].std() > 0.01 and pixels.shape[1] > pixels.shape[0]  # drawn, two panels side by side

    stats = value_statistics(b, ids)
    plot_value_statistics(stats, tmp_path / "v.png")
    axes = figures[-1].axes
    assert [ax.get_title() for ax in axes][:2] == [
        "Cosine similarity of values to layer 0",
        "Attention concentration (lower = concentrated)",
    ]
    assert _lines(axes[0]) == {"model": pytest.approx(stats["value_cos_to_first"])}
    assert _lines(axes[3]) == {
        "model: first token": pytest.approx(stats["first_token_value_norm"]),
        "model: other tokens": pytest.approx(stats["value_norm_rest"]),
    }
    assert axes[4].get_yscale() == "log"
    assert axes[5].texts[0].get_text().startswith("no value-residual λ")  # a Llama has no λ


# --- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_analyze_on_saved_models(tmp_path, capsys):
    from hf_growth.cli import main

    llama_dir, gpt2_dir = tmp_path / "llama", tmp_path / "gpt2"
    tiny_llama().save_pretrained(llama_dir)
    tiny_gpt2().save_pretrained(gpt2_dir)
    out = tmp_path / "out"
    assert (
        main(
            [
                "analyze",
                "entropy",
                str(llama_dir),
                str(gpt2_dir),
                "--task",
                "random",
                "--out",
                str(out),
                "--num-examples",
                "4",
                "--max-length",
                "12",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "llama norm" in printed and "gpt2 raw" in printed
    data = json.loads((out / "entropy.json").read_text())
    assert set(data) == {"llama", "gpt2"} and len(data["llama"]["normalized"]) == 4
    assert _pixels(out / "entropy.png")[..., :3].std() > 0.01
    csv_rows = (out / "entropy.csv").read_text().splitlines()
    assert csv_rows[0] == "layer,llama norm,gpt2 norm,llama raw,gpt2 raw" and len(csv_rows) == 1 + 4
    assert float(csv_rows[1].split(",")[1]) == pytest.approx(data["llama"]["normalized"][0], rel=1e-5)

    assert (
        main(
            [
                "analyze",
                "values",
                str(gpt2_dir),
                "--task",
                "retrieval",
                "--num-pairs",
                "4",
                "--out",
                str(out),
                "--num-examples",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    values = json.loads((out / "values.json").read_text())
    assert values["gpt2"]["value_cos_to_first"][0] == pytest.approx(1.0)
    lines = printed.splitlines()
    assert lines[0] == "gpt2 (4 sequences)" and lines[1].split()[:3] == ["layer", "cos", "V0"]
    assert [float(line.split()[1]) for line in lines[2:5]] == pytest.approx(
        values["gpt2"]["value_cos_to_first"], rel=1e-3
    )
    assert lines[-1].startswith("wrote ") and max(map(len, lines[:-1])) <= 100  # a table, not a JSON line
    assert "{" not in printed
    assert (
        main(
            [
                "analyze",
                "values",
                str(gpt2_dir),
                "--task",
                "retrieval",
                "--num-pairs",
                "4",
                "--out",
                str(out),
                "--num-examples",
                "4",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == values  # --json: the numbers, as written to the file

    run_dir = tmp_path / "run"  # a training output directory: checkpoints become steps
    tiny_llama(0).save_pretrained(run_dir / "checkpoint-10")
    tiny_llama(1).save_pretrained(run_dir / "checkpoint-20")
    assert (
        main(
            [
                "analyze",
                "heads",
                str(run_dir),
                "--task",
                "retrieval",
                "--num-pairs",
                "4",
                "--out",
                str(out),
                "--num-examples",
                "4",
                "--layers",
                "0,2",
            ]
        )
        == 0
    )
    assert "H3" in capsys.readouterr().out
    heads = json.loads((out / "heads.json").read_text())
    assert heads["steps"] == [10, 20] and heads["map_layers"] == [0, 2]
    assert _pixels(out / "heads.png")[..., :3].std() > 0.01
    assert main(["analyze", "heads", str(llama_dir), "--task", "text", "--out", str(out)]) == 2  # needs positions


# --- ResFormer (written in parallel: skipped when it is not importable) -------------------------------------------
@pytest.mark.parametrize("variant", ["learnable", "svformer"])
def test_value_statistics_on_resformer(variant, tmp_path, figures):
    resformer = pytest.importorskip("hf_growth.resformer.modeling_resformer")
    from hf_growth.resformer.configuration_resformer import ResFormerConfig

    torch.manual_seed(0)
    config = ResFormerConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        value_residual=variant,
    )
    model = resformer.ResFormerForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lambda_first"):
                parameter.fill_(1.0)
            if name.endswith("lambda_own"):
                parameter.fill_(0.0)  # V'_n = V_0: the values attention reads equal layer 0's
    stats = value_statistics(model, torch.randint(0, VOCAB, (2, 8)))
    assert stats["layers"] == [0, 1, 2]
    assert stats["value_cos_to_first"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    if variant == "learnable":
        assert stats["lambdas"]["model.layers.1.self_attn.lambda_first"] == [1.0]
    assert not any("mix_values" in vars(m) for m in model.modules())  # the instance patch is undone
    plot_value_statistics({"resformer": stats}, tmp_path / "values.png")
    lambda_panel = figures[-1].axes[5]
    if variant == "learnable":  # the λ panel draws the learned λ per layer
        lines = {
            line.get_label(): (line.get_xdata().tolist(), line.get_ydata().tolist())
            for line in lambda_panel.get_lines()
        }
        assert lines["resformer: lambda_first"] == ([1, 2], [1.0, 1.0])
        assert lines["resformer: lambda_own"] == ([1, 2], [0.0, 0.0])
    else:
        assert lambda_panel.texts[0].get_text().startswith("no value-residual λ")


def test_cli_analyze_with_a_task_and_tokenizer(tmp_path, capsys):
    tasks = pytest.importorskip("hf_growth.tasks")
    from hf_growth.cli import main

    tokenizer = tasks.build_tokenizer(max_number=256)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model_dir = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    assert (
        main(
            ["analyze", "entropy", str(model_dir), "--task", "multiplication", "--out", str(out), "--num-examples", "4"]
        )
        == 0
    )
    assert (
        main(["analyze", "heads", str(model_dir), "--task", "multiplication", "--out", str(out), "--num-examples", "4"])
        == 0
    )
    assert (
        main(["analyze", "values", str(model_dir), "--task", "retrieval", "--out", str(out), "--num-examples", "4"])
        == 0
    )  # spelled with numbers: the word-level vocabulary has no letters
    assert main(["analyze", "entropy", str(model_dir), "--task", "no-such-task", "--out", str(out)]) == 2
    assert "unknown task" in capsys.readouterr().err


def test_cli_analyze_task_inputs_carry_the_pause_block(tmp_path):
    """A model trained with pauses is analysed on question + pause block + answer: from --pauses, or from the
    config's num_pause_tokens that the training script saves."""
    import json

    tasks = pytest.importorskip("hf_growth.tasks")
    from hf_growth.cli import main
    from hf_growth.commands import analyze
    from hf_growth.training.pause import pause_tokens_of

    tokenizer = tasks.build_tokenizer(max_number=256)
    pause = pause_tokens_of(tokenizer, 2)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config)
    args = analyze.add_parser(argparse_subparsers()).parse_args(
        ["entropy", "m", "--task", "multiplication", "--out", str(tmp_path), "--num-examples", "3"]
    )
    plain = analyze._inputs(args, model, tokenizer)["input_ids"]
    assert pause.start not in plain
    args.pauses = 2
    with_pauses = analyze._inputs(args, model, tokenizer)["input_ids"]
    assert (with_pauses == pause.pause).sum(1).tolist() == [2, 2, 2] and (with_pauses == pause.start).any(1).all()
    # recorded in the config: the default follows it
    args.pauses = None
    model.config.num_pause_tokens = 2
    assert torch.equal(analyze._inputs(args, model, tokenizer)["input_ids"], with_pauses)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    assert json.loads((model_dir / "config.json").read_text())["num_pause_tokens"] == 2
    assert (
        main(
            [
                "analyze",
                "entropy",
                str(model_dir),
                "--task",
                "multiplication",
                "--out",
                str(tmp_path / "o"),
                "--num-examples",
                "4",
            ]
        )
        == 0
    )
    # task options: 5x5 questions are longer than 4x4 ones (the layout: 5 + 1 + 5 tokens, pauses, 10 + EOS)
    args.task_options = "digits=5"
    five = analyze._inputs(args, model, tokenizer)["input_ids"]
    assert five.shape[1] > with_pauses.shape[1] and (five == pause.pause).sum(1).tolist() == [2, 2, 2]
    args.task_options = "digitz=5"
    with pytest.raises(ValueError, match="task-options"):
        analyze._inputs(args, model, tokenizer)
    args.task_options = "digits"
    with pytest.raises(ValueError, match="--task-options wants KEY=VALUE"):
        analyze._inputs(args, model, tokenizer)


def argparse_subparsers():
    import argparse

    return argparse.ArgumentParser().add_subparsers()


def test_cli_analyze_labels_and_skip_tokens(tmp_path):
    """Two training runs' ``final`` directories get names that tell them apart (or ``--labels``), and
    ``--skip-tokens 1`` leaves the first token out of the Gram matrix (the result changes, as the library's does)."""
    from hf_growth.analysis import layer_entropy
    from hf_growth.cli import main
    from hf_growth.commands.analyze import _labels

    assert _labels(["runs/plain/final", "runs/pause/final"]) == ["plain/final", "pause/final"]
    assert _labels(["a/m", "b/n", "smollm2"]) == ["m", "n", "SmolLM2-135M"]
    assert _labels(["a/m", "a/m"]) == ["m", "m (2)"]
    with pytest.raises(SystemExit, match="2 distinct non-empty names"):
        _labels(["a", "b"], "x")

    for name in ("plain", "pause"):
        tiny_llama(0 if name == "plain" else 1).save_pretrained(tmp_path / name / "final")
    common = ["--task", "random", "--num-examples", "4", "--max-length", "12"]
    out = tmp_path / "out"
    assert (
        main(
            [
                "analyze",
                "entropy",
                str(tmp_path / "plain" / "final"),
                str(tmp_path / "pause" / "final"),
                *common,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert set(json.loads((out / "entropy.json").read_text())) == {"plain/final", "pause/final"}
    assert (
        main(
            [
                "analyze",
                "entropy",
                str(tmp_path / "plain" / "final"),
                str(tmp_path / "pause" / "final"),
                *common,
                "--labels",
                "vanilla,Seq-VCR",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    whole = json.loads((out / "entropy.json").read_text())
    assert list(whole) == ["vanilla", "Seq-VCR"]
    assert (
        main(
            [
                "analyze",
                "entropy",
                str(tmp_path / "plain" / "final"),
                *common,
                "--skip-tokens",
                "1",
                "--labels",
                "vanilla",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    skipped = json.loads((out / "entropy.json").read_text())["vanilla"]
    assert skipped["raw"] != whole["vanilla"]["raw"]
    from hf_growth.commands.analyze import _inputs, _load, _split, add_parser

    args = add_parser(argparse_subparsers()).parse_args(["entropy", "m", *common, "--out", str(out)])
    model, tokenizer = _load(str(tmp_path / "plain" / "final"), torch.device("cpu"))
    expected = layer_entropy(model, _split(_inputs(args, model, tokenizer), args.batch_size), skip_tokens=1)
    assert skipped["raw"] == pytest.approx(expected.raw, rel=1e-6)
