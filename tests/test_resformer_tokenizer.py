"""Loading the (ordinary) tokenizer saved next to a ResFormer, without a custom-code prompt.

Why a prompt can appear: ``AutoTokenizer.from_pretrained`` (transformers 5.17 and 5.25) always loads the folder's
model config through ``AutoConfig`` first. A ResFormer's config.json has ``model_type: "resformer"``, which
transformers does not know, and ``auto_map.AutoConfig`` (the remote code that lets the model load without
hf_growth), so with ``trust_remote_code`` unset ``AutoConfig`` asks ``[y/N]``. The tokenizer files carry no
``auto_map``. No prompt where ``hf_growth`` is imported (it registers ``resformer``), and none with
``trust_remote_code=False`` (the config falls back to a plain ``PreTrainedConfig``; the tokenizer is unchanged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_resformer import REPO, tiny_model

SCRIPT = textwrap.dedent(
    """
    import builtins, json, sys
    def no_prompt(*args, **kwargs):
        raise SystemExit("PROMPTED: " + str(args[0])[-80:])
    builtins.input = no_prompt
    path, mode = sys.argv[1], sys.argv[2]
    if mode == "hf_growth":
        import hf_growth
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kwargs = {"trust_remote_code": False} if mode == "trust_remote_code=False" else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    print("RESULT" + json.dumps(dict(ids=tokenizer("w3 w5 w7")["input_ids"], model=type(model).__module__)))
    """
)


def save_with_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({**{f"w{i}": i for i in range(97)}, "[UNK]": 96}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(path)
    tiny_model("learnable").save_pretrained(path)


def load(path: Path, mode: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if mode == "hf_growth":
        env["PYTHONPATH"] = str(REPO)
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), mode],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.compat
@pytest.mark.slow
def test_tokenizer_loads_without_custom_code_prompt(tmp_path):
    path = tmp_path / "resformer"
    save_with_tokenizer(path)
    assert "auto_map" not in json.loads((path / "tokenizer_config.json").read_text())
    assert "AutoConfig" in json.loads((path / "config.json").read_text())["auto_map"]

    prompted = load(path, "plain", tmp_path)  # the behaviour this file explains: transformers asks
    assert prompted.returncode != 0 and "PROMPTED" in prompted.stderr, prompted.stderr[-2000:]
    for mode, module in (
        ("hf_growth", "hf_growth.resformer.modeling_resformer"),
        ("trust_remote_code=False", "transformers_modules."),
    ):
        proc = load(path, mode, tmp_path)
        assert proc.returncode == 0, (mode, proc.stderr[-3000:])
        result = json.loads(proc.stdout.split("RESULT", 1)[1])
        assert result["ids"] == [3, 5, 7], mode
        assert result["model"].startswith(module), (mode, result["model"])
