"""Every command's `--help` at 80 columns reads like Typer's own docs: no `<bool>` type after a
flag, and no option name cut with an ellipsis (`--no-augment-rota…`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.cli.main import app

#: An option name that rich cut short.
CUT_NAME = re.compile(r"-[\w-]*…")


def _commands() -> Iterator[tuple[list[str], object]]:
    """(the words that name it, the click command) for the root and every command under it."""
    def walk(path: list[str], command: object) -> Iterator[tuple[list[str], object]]:
        yield path, command
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                yield from walk([*path, name], sub)

    yield from walk([], typer.main.get_command(app))


COMMANDS = list(_commands())


def _check(text: str, command: object, where: str) -> None:
    assert "<bool>" not in text, f"`{where} --help` shows <bool>:\n{text}"
    assert not CUT_NAME.search(text), f"`{where} --help` cuts an option name:\n{text}"
    assert "…" not in text, f"`{where} --help` cuts something short:\n{text}"
    assert "9223372036854775807" not in text, f"`{where} --help` shows the database's integer bound:\n{text}"
    for param in getattr(command, "params", []):
        for name in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if name.startswith("--") and not getattr(param, "hidden", False):
                assert name in text, f"`{where} --help` does not show {name} whole:\n{text}"


def test_the_walk_finds_the_commands() -> None:
    # The checks below would pass vacuously on an empty tree.
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"", "status", "submit train", "models show", "models tree", "datasets show"} <= names
    assert len(names) > 20


@pytest.mark.parametrize("path,command", COMMANDS, ids=lambda v: " ".join(v) or "rodin"
                         if isinstance(v, list) else "")
def test_help_at_80_columns(path: list[str], command: object) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"},
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    _check(result.stdout, command, " ".join(["rodin", *path]))


@pytest.mark.parametrize("path", [[], ["submit", "train"], ["datasets", "show"]], ids=" ".join)
def test_help_of_the_real_cli(path: list[str]) -> None:
    """The console script's own process, as a user at an 80-column terminal starts it."""
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("TERMINAL_WIDTH", None)
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *path, "--help"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = dict((tuple(p), c) for p, c in COMMANDS)[tuple(path)]
    _check(result.stdout, command, " ".join(["rodin", *path]))
    if path == ["submit", "train"]:
        assert "--no-augment-rotate" in result.stdout


def test_a_negative_flag_stands_under_its_positive_name() -> None:
    """One column of names: the help text keeps most of an 80-column line."""
    result = CliRunner().invoke(app, ["submit", "train", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"},
                                catch_exceptions=False)
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "--augment-rotate" in line and "--no-" not in line)
    assert lines[at + 1].index("--no-augment-rotate") == lines[at].index("--augment-rotate")
    # The help column keeps more than 35 of the 80 columns.
    assert lines[at].index("Rotate") < 45
