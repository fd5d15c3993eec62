"""Model cards for grown models, and pushing them to the Hugging Face Hub.

>>> from transformers import LlamaConfig
>>> cfg = LlamaConfig(hidden_size=64, num_hidden_layers=4)
>>> cfg.growth_history = [{"step": "num_layers", "params": {"to": 4}, "before": {"num_hidden_layers": 2},
...                        "after": {"num_hidden_layers": 4}}]
>>> card = build_model_card(cfg, base_model="HuggingFaceTB/SmolLM2-135M")
>>> card.data.base_model, "hf-growth" in card.data.tags
('HuggingFaceTB/SmolLM2-135M', True)
>>> "num_hidden_layers: 2 → 4" in card.text
True
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # huggingface_hub.ModelCard pulls in the Hub client (a fifth of a second): imported when used
    from huggingface_hub import ModelCard

TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "grown_model.md"

# step kind -> (tags, citation keys)
_TECHNIQUES: dict[str, tuple[list[str], list[str]]] = {
    "mlp_width": (["function-preserving-growth", "mlp-width-growth"], ["gesmundo2023"]),
    "num_heads": (["function-preserving-growth", "head-growth"], ["gesmundo2023"]),
    "head_dim": (["function-preserving-growth", "head-dim-growth"], ["gesmundo2023"]),
    "qk_dim": (["function-preserving-growth", "qk-dim-growth"], ["gesmundo2023"]),
    "value_dim": (["function-preserving-growth", "value-dim-growth"], ["gesmundo2023"]),
    "hidden_size": (["function-preserving-growth", "hidden-size-growth"], ["gesmundo2023"]),
    "num_layers": (["function-preserving-growth", "depth-growth"], ["gesmundo2023"]),
    "stack": (["midas", "gradual-stacking"], ["saunshi2024"]),
    "experts": (["moe", "mixture-of-experts", "sparse-upcycling"], ["komatsuzaki2023upcycling"]),
    "convert_to_resformer": (["resformer", "value-residual"], ["zhou2024resformer"]),
}

CITATIONS: dict[str, str] = {
    "gesmundo2023": """@article{gesmundo2023composable,
  title   = {Composable Function-preserving Expansions for Transformer Architectures},
  author  = {Gesmundo, Andrea and Maile, Kaitlin},
  journal = {arXiv preprint arXiv:2308.06103},
  year    = {2023}
}""",
    "saunshi2024": """@inproceedings{saunshi2024midas,
  title     = {On the Inductive Bias of Stacking Towards Improving Reasoning},
  author    = {Saunshi, Nikunj and Karp, Stefani and Krishnan, Shankar and Miryoosefi, Sobhan and
               Reddi, Sashank J. and Kumar, Sanjiv},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  note      = {arXiv:2409.19044}
}""",
    "wu2024llamapro": """@article{wu2024llamapro,
  title   = {LLaMA Pro: Progressive LLaMA with Block Expansion},
  author  = {Wu, Chengyue and Gan, Yukang and Ge, Yixiao and Lu, Zeyu and Wang, Jiahao and Feng, Ye and
             Luo, Ping and Shan, Ying},
  journal = {arXiv preprint arXiv:2401.02415},
  year    = {2024}
}""",
    "samragh2024hypercloning": """@article{samragh2024scaling,
  title   = {Scaling Smart: Accelerating Large Language Model Pre-training with Small Model Initialization},
  author  = {Samragh, Mohammad and Mirzadeh, Iman and Vahid, Keivan Alizadeh and Faghri, Fartash and
             Cho, Minsik and Nabi, Moin and Naik, Devang and Farajtabar, Mehrdad},
  journal = {arXiv preprint arXiv:2409.12903},
  year    = {2024}
}""",
    "komatsuzaki2023upcycling": """@inproceedings{komatsuzaki2023sparse,
  title     = {Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints},
  author    = {Komatsuzaki, Aran and Puigcerver, Joan and Lee-Thorp, James and Riquelme Ruiz, Carlos and
               Mustafa, Basil and Ainslie, Joshua and Tay, Yi and Dehghani, Mostafa and Houlsby, Neil},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023},
  note      = {arXiv:2212.05055}
}""",
    "zhou2024resformer": """@inproceedings{zhou2025value,
  title     = {Value Residual Learning},
  author    = {Zhou, Zhanchao and Wu, Tianyi and Jiang, Zhiyun and Obeid, Fares and Lan, Zhenzhong},
  booktitle = {Proceedings of the Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2025},
  note      = {arXiv:2410.17897}
}""",
}

_SIZE_KEYS = (
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "n_inner",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "qk_head_dim",
    "v_head_dim",
)


def _get(entry: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if isinstance(entry, Mapping) and key in entry and entry[key] is not None:
            return entry[key]
        if not isinstance(entry, Mapping) and getattr(entry, key, None) is not None:
            return getattr(entry, key)
    return default


def step_kind(entry: Mapping[str, Any]) -> str:
    """The step name of one ``growth_history`` entry (``"mlp_width"``, ``"stack"``, ...)."""
    kind = _get(entry, "step", "kind", "op", "type", "name")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, Mapping) and len(kind) == 1:
        return str(next(iter(kind)))
    known = [k for k in entry if k in _TECHNIQUES]
    return known[0] if known else "?"


def _step_params(entry: Mapping[str, Any]) -> Any:
    params = _get(entry, "params", "args", "spec", "arguments")
    if params is None:
        kind = _get(entry, "step", "kind", "op")
        if isinstance(kind, Mapping) and len(kind) == 1:
            params = next(iter(kind.values()))
        elif step_kind(entry) in entry:
            params = entry[step_kind(entry)]
    return params


def _fmt_params(params: Any) -> str:
    if params is None:
        return ""
    if isinstance(params, Mapping):
        return ", ".join(f"{k}: {_fmt_value(v)}" for k, v in params.items() if v is not None)
    return _fmt_value(params)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, …]"
    return str(value)


def _fmt_count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "" if n is None else str(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit} ({int(n):,})"
    return f"{int(n):,}"


def _size_changes(entry: Mapping[str, Any]) -> str:
    before = _get(entry, "before", "sizes_before", "old", default={}) or {}
    after = _get(entry, "after", "sizes_after", "new", default={}) or {}
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return ""
    keys = [k for k in after if k in before and before[k] != after[k]] or [k for k in after if k not in before]
    keys = sorted(keys, key=lambda k: (_SIZE_KEYS.index(k) if k in _SIZE_KEYS else len(_SIZE_KEYS), k))
    return "<br>".join(f"{k}: {_fmt_value(before.get(k, '–'))} → {_fmt_value(after[k])}" for k in keys)


def _logit_diff_of(entry: Mapping[str, Any]) -> Any:
    value = _get(entry, "max_logit_diff", "max_abs_logit_diff", "measured_error")
    return f"{value:.3g}" if isinstance(value, (int, float)) else ("" if value is None else str(value))


def measured_by(verification: Mapping[str, Any] | None) -> str:
    """What measured a verification figure, as the card credits it: ``"measured by `hf-growth demo`"`` when the
    result says (``verification["measured_by"]``), else plain ``"measured"``: a figure is never credited to a
    tool that did not produce it.

    >>> measured_by({"max_logit_diff": 0.0, "measured_by": "hf-growth grow --verify"})
    'measured by `hf-growth grow --verify`'
    >>> measured_by({"max_logit_diff": 0.0})
    'measured'
    """
    tool = (verification or {}).get("measured_by")
    return f"measured by `{tool}`" if tool else "measured"


def _last_run_steps(history: Sequence[Any]) -> int:
    """How many records at the end of ``history`` belong to its last growth run."""
    runs = [(e if isinstance(e, Mapping) else vars(e)).get("run") for e in history]
    if not runs or runs[-1] is None:
        return 1
    count = 0
    for run in reversed(runs):
        if run != runs[-1]:
            break
        count += 1
    return count


def lineage_table(
    history: Sequence[Mapping[str, Any]],
    verification: Mapping[str, Any] | None = None,
    param_counts: Sequence[tuple[int, int]] | None = None,
) -> str:
    """A markdown table, one row per growth step: step, parameters, old → new sizes, parameter
    count before/after and the max |Δlogits| measured for that step. ``param_counts`` gives
    ``(before, after)`` for the last ``len(param_counts)`` steps when the history lacks them.

    A step's figure is the one its history record carries (an approximate step's, or one measured while
    growing); a whole-plan ``verification`` also fills the last step when the last run had that one step
    (then it measured exactly that step), and adds an ``all`` row that says what measured it
    (:func:`measured_by`). Unmeasured exact steps show ``–``.

    >>> rows = lineage_table([{"step": {"mlp_width": {"to": 8}}, "run": 0, "before": {"mlp": 4},
    ...                        "after": {"mlp": 8}, "exact": True}],
    ...                      {"max_logit_diff": 1e-7, "measured_by": "hf-growth grow --verify"}).splitlines()
    >>> rows[2].split(" | ")[-1], rows[3].split(" | ")[-1]
    ('1e-07 |', '1e-07 (whole plan, measured by `hf-growth grow --verify`) |')
    """
    if not history:
        return "_No growth history recorded in the config._"
    rows = [
        "| # | step | parameters | sizes (old → new) | parameters before | parameters after | max \\|Δlogits\\| |",
        "|---|---|---|---|---|---|---|",
    ]
    counts = list(param_counts or [])
    offset = len(history) - len(counts)
    whole = verification.get("max_logit_diff") if verification else None
    single_step_run = _last_run_steps(history) == 1
    first_before = last_after = None
    for i, entry in enumerate(history, start=1):
        entry = entry if isinstance(entry, Mapping) else vars(entry)
        if i - 1 >= offset and counts:
            before, after = counts[i - 1 - offset]
            entry = {"num_params_before": before, "num_params_after": after, **entry}
        diff = _logit_diff_of(entry)
        if not diff and step_kind(entry) == "stack":
            diff = "changes the function (by design)"
        elif not diff and whole is not None and i == len(history) and single_step_run:
            diff = f"{float(whole):.3g}"
        elif not diff:
            diff = "–"
        n_before = _get(entry, "num_params_before", "params_before", "parameters_before")
        n_after = _get(entry, "num_params_after", "params_after", "parameters_after")
        first_before = first_before if first_before is not None else n_before
        last_after = n_after if n_after is not None else last_after
        cells = [
            str(i),
            f"`{step_kind(entry)}`",
            _fmt_params(_step_params(entry)),
            _size_changes(entry),
            _fmt_count(n_before),
            _fmt_count(n_after),
            diff,
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") if c and "\\|" not in c else c for c in cells) + " |")
    if whole is not None:
        rows.append(
            f"| all | whole plan | | | {_fmt_count(first_before)} | {_fmt_count(last_after)} | "
            f"{float(whole):.3g} (whole plan, {measured_by(verification)}) |"
        )
    return "\n".join(rows)


def techniques(config: Any) -> tuple[list[str], list[str]]:
    """``(tags, citation keys)`` for a grown config: from its growth history and model type."""
    tags = ["hf-growth"]
    cites: list[str] = []
    for entry in getattr(config, "growth_history", None) or []:
        entry = entry if isinstance(entry, Mapping) else vars(entry)
        kind = step_kind(entry)
        kind_tags, kind_cites = _TECHNIQUES.get(kind, ([kind.replace("_", "-")], []))
        tags += kind_tags
        cites += kind_cites
        params = _step_params(entry)
        if kind == "num_layers" and isinstance(params, Mapping) and params.get("init") == "copy":
            tags.append("llama-pro")
            cites.append("wu2024llamapro")
        if kind == "hidden_size" and getattr(config, "model_type", None) == "gpt2":
            tags.append("hypercloning")
            cites.append("samragh2024hypercloning")
    if getattr(config, "model_type", None) == "resformer":
        tags += ["resformer", "value-residual"]
        cites.append("zhou2024resformer")
    return list(dict.fromkeys(tags)), list(dict.fromkeys(cites))


def _render(template: str, values: Mapping[str, str]) -> str:
    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"model card template uses {{{{ {key} }}}}, which build_model_card does not provide")
        return values[key]

    return re.sub(r"\{\{\s*(\w+)\s*\}\}", sub, template)


def guess_base_model(source: str | os.PathLike | None, config: Any = None) -> str | None:
    """A Hub repo id for the source when it can be known: a ``models--org--name`` cache path, or
    a ``_name_or_path`` of the form ``org/name`` that is not a local path."""
    for candidate in (source, getattr(config, "_name_or_path", None) if config is not None else None):
        if not candidate:
            continue
        text = str(candidate)
        match = re.search(r"models--([^/\\]+)--([^/\\]+)", text)
        if match:
            return f"{match.group(1)}/{match.group(2)}"
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not Path(text).exists():
            return text
    return None


def build_model_card(
    config: Any,
    *,
    base_model: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    verification: Mapping[str, Any] | None = None,
    num_params: int | None = None,
    param_counts: Sequence[tuple[int, int]] | None = None,
    license: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    """Build the model card of a grown model from its (grown) config (:func:`model_card_text` as a
    ``huggingface_hub.ModelCard``).

    ``verification`` may hold ``max_logit_diff``, ``greedy_match``, ``prompt`` and ``measured_by`` (what measured
    them, e.g. ``"hf-growth verify"``, ``"hf-growth grow --verify"``, ``"hf-growth demo"``: the card credits it);
    ``num_params`` is the grown model's parameter count when known; ``param_counts`` the
    ``(before, after)`` parameter counts of the plan's steps (see :func:`lineage_table`).

    >>> from transformers import GPT2Config
    >>> card = build_model_card(GPT2Config(n_layer=2), verification={"max_logit_diff": 3e-6, "greedy_match": True})
    >>> "3e-06" in card.text and card.data.library_name
    'transformers'
    """
    from huggingface_hub import ModelCard

    return ModelCard(
        model_card_text(
            config,
            base_model=base_model,
            model_name=model_name,
            repo_id=repo_id,
            verification=verification,
            num_params=num_params,
            param_counts=param_counts,
            license=license,
            template_path=template_path,
        )
    )


def model_card_text(
    config: Any,
    *,
    base_model: str | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    verification: Mapping[str, Any] | None = None,
    num_params: int | None = None,
    param_counts: Sequence[tuple[int, int]] | None = None,
    license: str | None = None,
    template_path: str | os.PathLike | None = None,
) -> str:
    """The text of :func:`build_model_card`'s card (what ``ModelCard.save`` writes), without importing the Hub
    client: the streaming path writes it while the weights are copied."""
    history = list(getattr(config, "growth_history", None) or [])
    tags, cite_keys = techniques(config)
    model_type = getattr(config, "model_type", None) or "model"
    remote_code = model_type == "resformer" or bool(getattr(config, "auto_map", None))
    from huggingface_hub.repocard_data import ModelCardData

    card_data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=license,
    )
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"Grown {model_type}")
    steps = ", ".join(f"`{step_kind(e if isinstance(e, Mapping) else vars(e))}`" for e in history) or "no steps"
    summary = (
        f"A {model_type} model grown from "
        + (f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a smaller checkpoint")
        + f" by {len(history)} growth step(s) ({steps}) with hf-growth."
    )
    if num_params is not None:
        summary += f" It has {_fmt_count(num_params)} parameters."
    if any(step_kind(e if isinstance(e, Mapping) else vars(e)) == "stack" for e in history):
        summary += (
            " Stacking steps (MIDAS / gradual stacking) copy blocks of layers and change the model's function: "
            "train it before use."
        )
    else:
        summary += " Every step is function-preserving: before training it computes the same function as its source."
    verify_text = ""
    if verification:
        parts = []
        if verification.get("max_logit_diff") is not None:
            parts.append(f"max |Δlogits| against the source: **{float(verification['max_logit_diff']):.3g}**")
        if verification.get("greedy_match") is not None:
            parts.append("greedy text " + ("**matches**" if verification["greedy_match"] else "**differs**"))
        if verification.get("prompt"):
            parts.append(f"prompt: `{verification['prompt']}`")
        tool = verification.get("measured_by")
        verify_text = (f"Verified with `{tool}`: " if tool else "Measured: ") + "; ".join(parts) + "."
    version = _version()
    citations = "\n\n".join(f"```bibtex\n{CITATIONS[k]}\n```" for k in cite_keys) or "_No papers used._"
    values = {
        "card_data": card_data.to_yaml(),
        "model_name": name,
        "summary": summary,
        "lineage_table": lineage_table(history, verification, param_counts),
        "verification": verify_text,
        "repo_or_path": repo_id or "path/to/this/model",
        "load_kwargs": ", trust_remote_code=True" if remote_code else "",
        "load_note": (
            "\n`trust_remote_code=True` is needed: the model code (`*.py`) ships with the checkpoint "
            "(or `import hf_growth` first, which registers the ResFormer classes).\n"
            if remote_code
            else ""
        ),
        "hf_growth_version": version,
        "citations": citations,
    }
    template = Path(template_path or TEMPLATE_PATH).read_text(encoding="utf-8")
    return _render(template, values)


def _version() -> str:
    try:
        from hf_growth import __version__

        return __version__
    except Exception:  # pragma: no cover
        return ""


def write_model_card(directory: str | os.PathLike, config: Any = None, **kwargs: Any) -> Path:
    """Write ``README.md`` (the model card) into a saved grown model's directory; return its path."""
    directory = Path(directory)
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    card = build_model_card(config, **kwargs)
    path = directory / "README.md"
    card.save(path)
    return path


# --------------------------------------------------------------------------------------- push

IGNORED_FOR_UPLOAD = (".*", "__pycache__", "*.pyc")


def files_to_upload(path: str | os.PathLike) -> list[str]:
    """The relative paths ``push_grown`` uploads (everything but hidden files and caches), sorted."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p.suffix == ".pyc":
            continue
        out.append(rel.as_posix())
    return out


def _check_pushable(path: Path, files: Iterable[str]) -> None:
    files = set(files)
    if "config.json" not in files:
        raise FileNotFoundError(f"{path}: no config.json; is this a saved model directory?")
    if not any(f.endswith(".safetensors") for f in files):
        raise FileNotFoundError(f"{path}: no .safetensors weights to upload")


@dataclass
class PushResult:
    """What :func:`push_grown` did: the commit, whether it created the repository, and whether the repository is
    private (``None`` when the Hub did not say)."""

    repo_id: str
    commit_url: str | None
    created: bool
    private: bool | None

    def visibility(self) -> str:
        """One line for people: ``"created private repository me/x"``, ``"me/x exists (public)"``, ..."""
        kind = {True: "private", False: "public", None: "visibility unknown"}[self.private]
        return f"created {kind} repository {self.repo_id}" if self.created else f"{self.repo_id} exists ({kind})"


def push_grown(
    path: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    write_card: bool = True,
) -> PushResult:
    """Upload a saved grown model directory to the Hub (``create_repo(exist_ok=True)`` then
    ``upload_folder``); writes its model card first when ``README.md`` is missing.

    ``private`` applies when the repository is created (``None``: the account's default); an existing
    repository keeps its visibility. Returns a :class:`PushResult` saying whether the repository was created and
    whether it is private. Works with huggingface_hub 1.x and 2.x.

    >>> push_grown("grown-model", "me/grown-smollm2", private=True).visibility()  # doctest: +SKIP
    'created private repository me/grown-smollm2'
    """
    from huggingface_hub import HfApi

    root = Path(path)
    files = files_to_upload(root)
    _check_pushable(root, files)
    if write_card and "README.md" not in files:
        write_model_card(root, repo_id=repo_id)
    api = HfApi(token=token)
    existed = bool(api.repo_exists(repo_id, repo_type="model"))
    create_kwargs: dict[str, Any] = {"repo_type": "model", "exist_ok": True}
    if private is not None:
        create_kwargs["private"] = private
    api.create_repo(repo_id, **create_kwargs)
    is_private = getattr(api.repo_info(repo_id, repo_type="model"), "private", None)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(root),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or "Upload model grown with hf-growth",
        ignore_patterns=list(IGNORED_FOR_UPLOAD),
    )
    url = getattr(info, "commit_url", None) or getattr(info, "repo_url", None)
    return PushResult(
        repo_id,
        str(url) if url is not None else None,
        created=not existed,
        private=is_private if isinstance(is_private, bool) else None,
    )
