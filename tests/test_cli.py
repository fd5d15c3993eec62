"""The `hf-growth` dispatcher: every documented sub-command answers --help with its arguments, bad input exits 2
with an error line, and help is fast (imports neither torch nor transformers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_growth.cli import main

# The commands and options the README documents (its "Command line" section).
DOCUMENTED = {
    "demo": ["--out", "--prompt", "--max-new-tokens", "--no-save", "--overwrite"],
    "grow": ["--max-shard-size", "--verify", "--overwrite", "--quiet", "--seed"],
    "verify": ["--prompt", "--tolerance"],
    "push": ["--dry-run"],
    "data": ["multiplication", "--overwrite", "--seed"],
    "analyze": ["entropy", "--out"],
}


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_each_command_has_help_naming_its_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hf-growth {command} ")
    for option in DOCUMENTED[command]:
        assert option in out, (command, option)


@pytest.mark.parametrize("command", ["grow", "verify", "push", "data", "analyze"])
def test_missing_arguments_exit_2_naming_them(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (error,) = captured.err.splitlines()  # one line, no usage block
    assert error.startswith(f"hf-growth {command}: error: the following arguments are required:")


def test_unknown_or_missing_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith("hf-growth: error:") and "'no-such-command'" in error
    for command in DOCUMENTED:
        assert f"'{command}'" in error  # the valid choices are listed
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- mlp_width: 128\n")
    assert main(["grow", str(tmp_path / "missing"), str(plan), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-growth grow: error:") and "missing" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_module_entry_point_and_fast_help():
    """``python -m hf_growth --help`` lists every command, and no --help imports torch or transformers."""
    out = subprocess.run([sys.executable, "-m", "hf_growth", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("positional arguments:")[1]
    for command in DOCUMENTED:
        assert f"\n    {command} " in listed, command
    code = (
        "import contextlib, io, json, sys\n"
        "from hf_growth.cli import main\n"
        f"for argv in [['--help']] + [[c, '--help'] for c in {sorted(DOCUMENTED)!r}]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
