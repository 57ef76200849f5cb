"""The README cannot drift from the code: every `maskopt` command it shows must parse.

Each command line in the README's code blocks is resolved to its click command, and every option
it uses must be one that command accepts. What the commands do is exercised by the other tests
and by `make demo`; the files the README names must exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from maskopt.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)  # (language, text)


def readme_commands() -> list[list[str]]:
    commands = []
    for language, block in BLOCKS:
        if language not in ("", "sh"):
            continue
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("maskopt "):
                commands.append(shlex.split(line))
    return commands


COMMAND_LINES = readme_commands()


def test_the_readme_shows_commands():
    used = {argv[1] for argv in COMMAND_LINES}
    assert {"search", "export-best", "predict", "score", "dashboard", "studies", "eda", "report"} <= used


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=[" ".join(a[:2]) for a in COMMAND_LINES])
def test_readme_command_parses(argv):
    name = argv[1]
    assert name in COMMANDS, f"README uses unknown command {name!r}"
    command = cli.get_command(None, name)
    rest = argv[2:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:  # a group: its subcommand
        command, rest = command.commands[rest[0]], rest[1:]
    accepted = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    for token in rest:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in accepted, f"`{' '.join(argv)}`: {name} has no option {option}"


def test_files_named_in_the_readme_exist():
    for path in ("spaces/demo.yaml", "spaces/full.yaml", "spaces/baseline.yaml", "corrections/mask-competition.csv",
                 "BENCHMARKS.md", "scripts/start-postgres"):
        assert path in README
        assert (ROOT / path).exists(), path


def test_readme_space_keys_are_the_real_ones():
    import dataclasses

    from maskopt.search.space import PARAMS, StudySettings

    for key in PARAMS:
        assert f"| `{key}` |" in README, f"params key {key} is not documented in the README"
    for field in dataclasses.fields(StudySettings):
        assert f"| `{field.name}` |" in README, f"study key {field.name} is not documented in the README"


@pytest.mark.slow
def test_the_python_example_runs(tmp_path, monkeypatch):
    """The README's Python example, as written, in a fresh folder that has the repository's spaces."""
    (code,) = [block for language, block in BLOCKS if language == "python"]
    (tmp_path / "spaces").symlink_to(ROOT / "spaces")
    monkeypatch.chdir(tmp_path)
    printed = []
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
    exec(compile(code, "README.md", "exec"), {})
    assert printed[-2].startswith("best trial ") and "exported to exports/from-python" in printed[-2]
    assert printed[-1].startswith("CalibrationReport(")
    assert (tmp_path / "exports" / "from-python" / "submission.csv").is_file()
    assert (tmp_path / "exports" / "from-python-ensemble" / "config.json").is_file()
