"""Model cards and pushing (HfApi monkeypatched: no network)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

from hf_growth import hub
from hf_growth.cli import main

HISTORY = [
    {
        "step": {"mlp_width": {"to": 128}},
        "seed": 0,
        "before": {"mlp": 64, "layers": 2},
        "after": {"mlp": 128, "layers": 2},
        "num_params_before": 20000,
        "num_params_after": 26000,
    },
    {
        "step": {"num_layers": {"to": 4, "where": "top", "init": "copy"}},
        "before": {"layers": 2},
        "after": {"layers": 4},
    },
    {"step": {"stack": {"to": 6, "block_size": 2, "where": "middle"}}, "before": {"layers": 4}, "after": {"layers": 6}},
]


def llama_config(**kw):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        **kw,
    )
    cfg.growth_history = HISTORY
    return cfg


def test_card_metadata_lineage_and_citations():
    card = hub.build_model_card(
        llama_config(),
        base_model="HuggingFaceTB/SmolLM2-135M",
        repo_id="me/grown",
        verification={"max_logit_diff": 2.5e-6, "greedy_match": True, "prompt": "Hi"},
        num_params=123456,
    )
    assert isinstance(card, ModelCard)
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert data["library_name"] == "transformers"
    assert data["tags"][0] == "hf-growth"
    for tag in ("function-preserving-growth", "mlp-width-growth", "depth-growth", "llama-pro", "midas"):
        assert tag in data["tags"]
    text = card.text
    assert "| 1 | `mlp_width` | to: 128 | mlp: 64 → 128 | 20.00K (20,000) | 26.00K (26,000) |" in text
    assert "| 2 | `num_layers` | to: 4, where: top, init: copy | layers: 2 → 4 |" in text
    assert "changes the function (by design)" in text
    assert "2.5e-06" in text and "**matches**" in text
    assert "arXiv:2308.06103" in text and "arXiv:2409.19044" in text and "arXiv:2401.02415" in text
    assert "arXiv:2410.17897" not in text  # not a ResFormer
    assert 'from_pretrained("me/grown")' in text and "trust_remote_code" not in text
    # round trip through the file format
    again = ModelCard(str(card))
    assert again.data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_card_resformer_needs_remote_code():
    from transformers import LlamaConfig

    cfg = LlamaConfig()
    cfg.model_type = "resformer"  # the card only looks at model_type and growth_history
    cfg.growth_history = [
        {"step": "hidden_size", "params": {"to": 64}, "before": {"hidden": 32}, "after": {"hidden": 64}}
    ]
    card = hub.build_model_card(cfg)
    assert "trust_remote_code=True" in card.text
    assert "resformer" in card.data.tags and "arXiv:2410.17897" in card.text
    assert card.data.base_model is None
    assert "hidden: 32 → 64" in card.text


def test_card_without_history():
    from transformers import GPT2Config

    card = hub.build_model_card(GPT2Config())
    assert "No growth history" in card.text


def test_guess_base_model(tmp_path):
    assert (
        hub.guess_base_model("/x/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/abc") == "HuggingFaceTB/SmolLM2-135M"
    )
    assert hub.guess_base_model(tmp_path) is None
    assert hub.guess_base_model("org/model") == "org/model"


@pytest.fixture
def saved_model(tmp_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config())
    path = tmp_path / "grown"
    model.save_pretrained(path)
    return path


class FakeApi:
    calls: list = []
    existing: dict = {}  # repo_id -> private, for repositories that exist before the push

    def __init__(self, token=None, **kw):
        FakeApi.calls.append(("init", {"token": token}))

    def repo_exists(self, repo_id, **kw):
        return repo_id in FakeApi.existing

    def repo_info(self, repo_id, **kw):
        return type("ModelInfo", (), {"private": FakeApi.existing[repo_id]})()

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        FakeApi.existing.setdefault(repo_id, bool(kw.get("private", False)))  # the account default: public
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        FakeApi.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        from pathlib import Path

        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        FakeApi.calls.append(("upload_folder", {**kw, "files": files}))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/1"})()


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    FakeApi.existing = {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_grown_writes_card_and_uploads(saved_model, fake_api):
    hub.push_grown(saved_model, "me/grown", private=True, token="tok", revision="v1")
    kinds = [c[0] for c in fake_api.calls]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    assert fake_api.calls[0][1]["token"] == "tok"
    assert fake_api.calls[1][1] == {"repo_id": "me/grown", "repo_type": "model", "exist_ok": True, "private": True}
    upload = fake_api.calls[3][1]
    assert upload["repo_id"] == "me/grown" and upload["revision"] == "v1"
    assert upload["files"] == ["README.md", "config.json", "generation_config.json", "model.safetensors"]
    card = ModelCard.load(saved_model / "README.md")
    assert "`stack`" in card.text and "hf-growth" in card.data.tags


def test_push_without_private_does_not_pass_it(saved_model, fake_api):
    hub.push_grown(saved_model, "me/grown")
    assert "private" not in fake_api.calls[1][1]
    assert [c[0] for c in fake_api.calls] == ["init", "create_repo", "upload_folder"]


def test_push_refuses_non_model_dir(tmp_path, fake_api):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hub.push_grown(tmp_path, "me/x")
    assert fake_api.calls == []


def test_push_cli_dry_run(saved_model, fake_api, capsys):
    assert main(["push", str(saved_model), "me/grown", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "model.safetensors" in out and "config.json" in out
    assert "README.md  (model card, written before upload)" in out
    assert fake_api.calls == []
    assert not (saved_model / "README.md").exists()


def test_push_cli_uploads(saved_model, fake_api, capsys):
    assert main(["push", str(saved_model), "me/grown", "--private"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "created private repository me/grown" and "commit/1" in out
    assert fake_api.calls[1][1]["private"] is True


def test_push_says_whether_the_repository_is_private(saved_model, fake_api, capsys):
    """A push said nothing about visibility: whether a new repository was public was left to guess."""
    assert main(["push", str(saved_model), "me/new", "--dry-run"]) == 0
    assert "if me/new is new, it will be created with your account's default visibility" in capsys.readouterr().out
    assert main(["push", str(saved_model), "me/new", "--public", "--dry-run"]) == 0
    assert "if me/new is new, it will be public (--public)" in capsys.readouterr().out
    assert main(["push", str(saved_model), "me/new"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "created public repository me/new"
    # it exists now, public: --private does not change it, and the push says so
    assert main(["push", str(saved_model), "me/new", "--private"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "me/new exists (public)"
    assert lines[1].startswith("note: --private does not change an existing repository")
    result = hub.push_grown(saved_model, "me/new")
    assert (result.created, result.private, result.commit_url) == (
        False,
        False,
        "https://huggingface.co/me/new/commit/1",
    )


def test_push_cli_error_is_clean(tmp_path, capsys):
    assert main(["push", str(tmp_path / "missing"), "me/x"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_card_template_ships_in_package():
    """The template is package data: the card is rendered from it, every placeholder filled."""
    text = hub.TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "{{ lineage_table }}" in text and "{{ citations }}" in text
    card = hub.model_card_text(llama_config())
    assert "{{" not in card and "## Growth lineage" in card and "| 3 | `stack` |" in card


def _rows(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_card_credits_what_measured_and_fills_the_step_column():
    """The 'all' row said `hf-growth verify` whatever measured it, and the per-step column was always empty."""
    one_step = [{**HISTORY[0], "run": 0}]
    cfg = llama_config()
    cfg.growth_history = one_step
    text = hub.model_card_text(cfg, verification={"max_logit_diff": 3e-6, "measured_by": "hf-growth grow --verify"})
    rows = _rows(text)
    assert rows[1].endswith("| 3e-06 |")  # a one-step plan: the whole-plan figure is that step's
    assert rows[2] == (
        "| all | whole plan | | | 20.00K (20,000) | 26.00K (26,000) | 3e-06 (whole plan, measured by "
        "`hf-growth grow --verify`) |"
    )
    assert "Verified with `hf-growth grow --verify`: max |Δlogits| against the source: **3e-06**." in text
    assert "`hf-growth verify`" not in text
    demo = hub.model_card_text(cfg, verification={"max_logit_diff": 1e-5, "measured_by": "hf-growth demo"})
    assert "measured by `hf-growth demo`" in demo and "Verified with `hf-growth demo`" in demo
    anonymous = hub.model_card_text(cfg, verification={"max_logit_diff": 1e-5})
    assert "(whole plan, measured) |" in anonymous and "Measured: max |Δlogits|" in anonymous
    assert "hf-growth verify" not in anonymous
    # several steps in the run: a whole-plan figure is not one step's; recorded figures show, others '–'
    cfg.growth_history = [
        {**HISTORY[0], "run": 0, "max_logit_diff": 2e-7},
        {**HISTORY[1], "run": 0},
        {**HISTORY[2], "run": 0},
    ]
    rows = _rows(hub.model_card_text(cfg, verification={"max_logit_diff": 4e-6, "measured_by": "hf-growth verify"}))
    assert [row.rsplit(" | ", 1)[1] for row in rows[1:4]] == ["2e-07 |", "– |", "changes the function (by design) |"]
    assert rows[4].endswith("4e-06 (whole plan, measured by `hf-growth verify`) |")


def test_resformer_conversion_is_a_lineage_step(tmp_path):
    """Converting a grown Llama to ResFormer dropped growth_history and its card showed no conversion."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from hf_growth import convert_llama_to_resformer, freeze_original, grow_model
    from hf_growth.growth.sources import export_model
    from hf_growth.growth.verify import max_logit_diff

    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    grown = grow_model(llama, [{"mlp_width": 96}], seed=0)
    resformer = convert_llama_to_resformer(grown, value_residual="learnable").eval()
    history = resformer.config.growth_history
    assert history[:-1] == grown.config.growth_history and len(history) == 2
    step = history[-1]
    assert step["step"] == {"convert_to_resformer": {"value_residual": "learnable"}} and step["run"] == 1
    assert step["before"] == {"model_type": "llama", "value_residual": "none"}
    assert step["after"] == {"model_type": "resformer", "value_residual": "learnable"}
    assert (step["num_params_before"], step["num_params_after"]) == (grown.num_parameters(), resformer.num_parameters())
    lambdas = sorted(n for n, _ in resformer.named_parameters() if ".lambda_" in n)
    assert lambdas and sorted(step["new_slices"]) == lambdas
    assert grown.config.growth_history[-1]["step"] == {"mlp_width": {"to": 96}}  # the source is untouched
    counts = freeze_original(resformer)  # the last run's new parameters: the lambdas
    assert counts["whole"] == len(lambdas) and counts["masked"] == 0
    # saved: config.json keeps the lineage, the card shows the conversion
    out = export_model(resformer, tmp_path / "resformer")
    card = (out / "README.md").read_text()
    assert (
        "| 2 | `convert_to_resformer` | value_residual: learnable | model_type: llama → resformer<br>"
        "value_residual: none → learnable |" in card
    )
    assert "resformer" in card and "arXiv:2410.17897" in card and "`mlp_width`" in card
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    assert [r["step"] for r in again.config.growth_history] == [r["step"] for r in history]
    assert max_logit_diff(llama, again) < 1e-5
    # growing the converted model continues the lineage
    regrown = grow_model(again, [{"num_layers": {"to": 3, "where": "top"}}])
    assert [r.get("run") for r in regrown.config.growth_history] == [0, 1, 2]
