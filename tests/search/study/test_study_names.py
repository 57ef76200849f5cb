"""Study names name export folders: they never reach outside exports/, and an export replaces only exports."""

from __future__ import annotations

import os

import optuna
import pytest
from click.testing import CliRunner

from maskopt.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def victim(tmp_path):
    """A folder of the user's that a hostile study name points at."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


@pytest.mark.parametrize("how", ["option", "space", "absolute"])
def test_a_study_name_that_is_a_path_is_refused_before_anything_is_written(how, write_space, demo_data, victim,
                                                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "victim")  # exports/../../victim would be this folder's parent's victim
    name = str(victim) if how == "absolute" else "../../victim"
    space = write_space(study={"data": str(demo_data), **({"name": name} if how != "option" else {})})
    args = ["search", "--space", space, "--trials", "1", "--device", "cpu", "--quiet",
            "--storage", f"sqlite:///{tmp_path / 'names.db'}", *(["--study", name] if how == "option" else [])]
    result = invoke(*args)
    assert result.exit_code != 0
    assert "cannot be used: it also names the export folder" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)  # a message, not a crash
    assert sorted(os.listdir(victim)) == ["thesis.txt"] and (victim / "thesis.txt").read_text() == "years of work"
    assert not (tmp_path / "names.db").exists()  # refused before the storage was touched


def test_export_of_a_study_with_a_path_for_a_name_needs_out(main_study, tmp_path):
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name="main", from_storage=main_study.url, to_storage=url, to_study_name="../evil")
    result = invoke("export-best", "--storage", url, "--device", "cpu", "--quiet")
    assert result.exit_code != 0
    assert "cannot be used" in result.output and "--out FOLDER" in result.output


def test_export_never_replaces_a_folder_it_did_not_write(main_study, victim):
    result = invoke("export-best", "--storage", main_study.url, "--device", "cpu", "--cache-dir", main_study.cache_dir,
                    "--quiet", "--out", victim, "--force")
    assert result.exit_code != 0
    assert "is not a maskopt export" in result.output and "left as it is" in result.output
    assert sorted(os.listdir(victim)) == ["thesis.txt"]
