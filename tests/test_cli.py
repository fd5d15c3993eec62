"""The `hf-growth` dispatcher: every sub-command is registered, and bad input exits 2 with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hf_growth.cli import COMMANDS, build_parser, main


def test_every_command_is_registered():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(COMMANDS)


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- mlp_width: 128\n")
    assert main(["grow", str(tmp_path / "missing"), str(plan), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-growth grow: error:") and "missing" in err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "hf_growth", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
    with pytest.raises(SystemExit):
        main(["no-such-command"])
