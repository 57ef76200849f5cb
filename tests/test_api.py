"""The Python face: ``import maskopt`` gives the CLI's capabilities as functions."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import logged_lines

import maskopt


def test_import_is_light_and_names_what_it_offers():
    # `maskopt --help` imports the package: it must not pull in torch, timm or optuna.
    code = "import sys, maskopt; print(sorted(m for m in ('torch', 'timm', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert {"search", "export_best", "load_space", "make_demo_data", "__version__"} <= set(maskopt.__all__)
    assert maskopt.__version__[0].isdigit()
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        maskopt.nothing


def test_search_then_export_from_python(tmp_path, monkeypatch, space_dict):
    monkeypatch.chdir(tmp_path)
    summary = maskopt.make_demo_data("data", persons=10, eval_persons=2, size=32)
    assert summary.persons == 10
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(study={"name": "api", "epochs": 1}), sort_keys=False))
    space = maskopt.load_space(path)
    with logged_lines() as lines:
        result = maskopt.search(space, trials=2, data="data", quiet=True)
    assert result.counted_trials == 2 and result.reached_total
    assert result.export is not None and (result.export.out / "submission.csv").is_file()
    assert result.export.out.resolve() == tmp_path / "exports" / "api"
    assert any(line.startswith("trial ") for line in lines)  # one line per trial, logged
    assert f"retraining trial {result.best.number} on all data and exporting it" in lines

    # Rerunning continues the same study: nothing new to run, and no export without asking.
    again = maskopt.search(path, trials=2, data="data", quiet=True, export=False)
    assert again.counted_trials == 2 and again.export is None

    exported = maskopt.export_best(study="api", out="exports/again", quiet=True)
    assert exported.trial_number == result.best.number


def test_library_errors_are_maskopt_errors(tmp_path):
    with pytest.raises(maskopt.SpaceError, match="cannot read search space"):
        maskopt.load_space(tmp_path / "missing.yaml")


def test_library_errors_name_arguments_and_the_cli_shows_its_options(tmp_path):
    """The library names what to change by its argument, whose name is the option's; the CLI shows the option."""
    with pytest.raises(maskopt.StorageError) as raised:
        maskopt.export_best(storage=f"sqlite:///{tmp_path / 'none.db'}")
    message = str(raised.value)
    assert "`storage`" in message and "--storage" not in message

    from click.testing import CliRunner

    from maskopt.cli import cli

    result = CliRunner().invoke(cli, ["export-best", "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 1
    assert "--storage" in result.output and "`storage`" not in result.output


# Each command and the function of the same name on `maskopt`; options only the command line has
# (an output format, the negative spelling of a library flag) are named with what they set.
FACES = {"search": "search", "export-best": "export_best", "export-onnx": "export_onnx_folder",
         "predict": "predict", "score": "score", "studies": "studies", "dashboard": "dashboard", "report": "report",
         "label-issues": "label_issues", "eda": "eda", "make-demo-data": "make_demo_data",
         "weights import": "import_weights", "replay": "replay"}
CLI_ONLY = {"as_json": "prints JSON", "no_checkpoints": "checkpoints=False", "no_export": "export=False"}


@pytest.mark.parametrize("command", list(FACES))
def test_every_command_is_a_function_with_the_same_names(command):
    import inspect

    from maskopt.cli import cli

    group, _, sub = command.partition(" ")
    click_command = cli.get_command(None, group)
    if sub:
        click_command = click_command.commands[sub]
    from maskopt import api

    function = getattr(api, FACES[command])  # maskopt.search is the same function, as a callable package
    accepted = set(inspect.signature(function).parameters)
    options = {p.name for p in click_command.params} - set(CLI_ONLY)
    assert options <= accepted, f"{command}: options without a library argument of the same name"
