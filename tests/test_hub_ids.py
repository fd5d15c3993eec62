"""Growing a Qwen3 or Mistral model by its Hub id, from a Hugging Face cache laid out in a temporary directory
(``HF_HUB_OFFLINE=1``, no network), and the one-line refusals for a missing, gated or ``.bin``-only repository:
exit 2 from the CLI and nothing written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_growth_llama_family import tiny_model  # tests/ is on sys.path (pytest's rootdir-less import mode)
from transformers import AutoModelForCausalLM

from hf_growth.cli import main
from hf_growth.growth import grow_model
from hf_growth.growth.verify import max_logit_diff

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PLAN = [{"mlp_width": 96}, {"hidden_size": 72}, {"num_layers": 3}]


def _cache_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repository in the huggingface_hub cache layout: blobs, ``refs/main`` and a snapshot of links."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob = repo / "blobs" / f"{abs(hash((repo_id, name))):x}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def _saved_files(model, directory: Path) -> dict[str, bytes]:
    model.save_pretrained(directory)
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty offline cache under ``tmp_path/hf``: the environment and huggingface_hub's constants point to it."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*"))


@pytest.mark.parametrize("arch,repo_id", [("qwen3", "Qwen/Qwen3-Tiny"), ("mistral", "mistralai/Mistral-Tiny")])
def test_grow_by_hub_id_from_the_cache(arch, repo_id, hub_cache, tmp_path, capsys):
    model = tiny_model(arch, bias=True)
    snapshot = _cache_repo(hub_cache, repo_id, _saved_files(model, tmp_path / "saved"))
    cached = _files_under(hub_cache)
    out = grow_model(repo_id, PLAN, output_dir=tmp_path / "grown", seed=2, quiet=True)
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(grown) is type(model) and grown.config.num_hidden_layers == 3
    assert max_logit_diff(model, grown) <= 1e-5
    assert max_logit_diff(grow_model(model, PLAN, seed=2), grown) == 0.0  # the in-memory path's model
    card = (out / "README.md").read_text()
    assert f"base_model: {repo_id}" in card
    # the CLI takes the id too; the cache is not written into
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    assert main(["grow", repo_id, str(plan), str(tmp_path / "cli"), "--seed", "2"]) == 0
    assert f"base_model: {repo_id}" in (tmp_path / "cli" / "README.md").read_text()
    assert max_logit_diff(grown, AutoModelForCausalLM.from_pretrained(tmp_path / "cli")) == 0.0
    assert _files_under(hub_cache) == cached and snapshot.is_dir()


def _refused(argv_source: str, tmp_path: Path, capsys) -> str:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    before = _files_under(tmp_path)
    capsys.readouterr()  # (the test's own saving printed progress)
    code = main(["grow", argv_source, str(plan), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert _files_under(tmp_path) == before  # nothing written
    assert err.count("\n") == 1, err  # one line
    return err.strip()


def test_missing_repository_is_one_line_and_writes_nothing(hub_cache, tmp_path, capsys):
    assert _refused("Qwen/Qwen3-Absent", tmp_path, capsys) == (
        "hf-growth grow: error: model source 'Qwen/Qwen3-Absent': no local directory 'Qwen/Qwen3-Absent', not an "
        "embedded model (smollm2, gemma3-270m), and the Hub repository is not in the local cache (HF_HUB_OFFLINE=1)"
    )


def test_gated_repository_is_one_line_and_writes_nothing(hub_cache, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, **kwargs):
        url = f"https://huggingface.co/api/models/{repo_id}"
        response = SimpleNamespace(headers={}, request=None, status_code=401)  # what the error reads of it
        raise GatedRepoError(f"401 Client Error.\n\nCannot access gated repo for url {url}.", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    assert _refused("mistralai/Mistral-Gated", tmp_path, capsys) == (
        "hf-growth grow: error: model source 'mistralai/Mistral-Gated': no local directory 'mistralai/Mistral-Gated', "
        "not an embedded model (smollm2, gemma3-270m), and the Hub repository is gated: accept its terms on its Hub "
        "page and log in (`hf auth login`) or pass a token"
    )


def test_bin_only_repository_is_one_line_and_writes_nothing(hub_cache, tmp_path, capsys):
    model = tiny_model("qwen3")
    files = _saved_files(model, tmp_path / "saved")
    del files["model.safetensors"]
    files["pytorch_model.bin"] = b"a pickle, never read"
    _cache_repo(hub_cache, "Qwen/Qwen3-Bin", files)
    message = (
        "model source 'Qwen/Qwen3-Bin': the Hub repository has no safetensors weights (only pickle weights: "
        "pytorch_model.bin) and hf-growth never unpickles; use a repository or revision with safetensors (the "
        "Hub's conversion pull requests, refs/pr/N) or convert it once where you trust the file"
    )
    assert _refused("Qwen/Qwen3-Bin", tmp_path, capsys) == f"hf-growth grow: error: {message}"
    with pytest.raises(ValueError) as error:
        grow_model("Qwen/Qwen3-Bin", PLAN, output_dir=tmp_path / "out")
    assert str(error.value) == message and not (tmp_path / "out").exists()
