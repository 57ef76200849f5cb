"""`maskopt studies` and `maskopt dashboard`."""

import json
import socket
import subprocess
import sys
import time
import types
import urllib.request

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from maskopt.cli import cli
from maskopt.storage import create_or_load_study, open_storage


@pytest.fixture
def sqlite_url(tmp_path):
    """A SQLite storage with a study of 3 complete, 1 pruned and 1 failed trials."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    study = create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name="masks-resnet")
    for state, value in [(TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.875), (TrialState.COMPLETE, 0.625),
                         (TrialState.PRUNED, None), (TrialState.FAIL, None)]:
        study.add_trial(optuna.trial.create_trial(state=state, value=value))
    return url


def test_help_texts_name_the_library_defaults():
    # The command module repeats them so that `maskopt --help` need not import optuna.
    from maskopt.storage import DEFAULT_ARTIFACT_DIR, DEFAULT_STORAGE_URL

    assert DEFAULT_STORAGE_URL in CliRunner().invoke(cli, ["studies", "--help"]).output
    assert DEFAULT_ARTIFACT_DIR in CliRunner().invoke(cli, ["dashboard", "--help"]).output


def test_studies_table(sqlite_url):
    result = CliRunner().invoke(cli, ["studies", "--storage", sqlite_url])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"1 study in {sqlite_url}"
    assert lines[1].split() == ["NAME", "DIR", "COMPLETE", "PRUNED", "FAIL", "RUNNING", "BEST", "MS/IMG"]
    assert lines[2].split() == ["masks-resnet", "max", "3", "1", "1", "0", "0.875", "-"]  # not a maskopt study
    assert all(len(line) <= 80 for line in lines)


def test_studies_table_fits_80_columns_with_long_names(tmp_path):
    url = f"sqlite:///{tmp_path / 'long.db'}"
    create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name="x" * 120)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()[1:]  # the first line names the storage, however long
    assert all(len(line) <= 80 for line in table)
    name, direction = table[1].split()[:2]
    assert (name[-3:], set(name[:-3]), direction) == ("...", {"x"}, "max")
    assert "--json shows them whole" in result.stdout


def test_studies_json_reads_the_storage_from_the_environment(sqlite_url):
    result = CliRunner(env={"MASKOPT_STORAGE": sqlite_url}).invoke(cli, ["studies", "--json"])
    assert result.exit_code == 0, result.output
    (study,) = json.loads(result.stdout)
    assert study["name"] == "masks-resnet"
    assert (study["n_complete"], study["n_pruned"], study["n_fail"], study["n_running"]) == (3, 1, 1, 0)
    assert study["best_value"] == 0.875
    assert study["direction"] == "maximize"


def test_studies_on_an_empty_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_storage(url, heartbeat_interval=None)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "No studies in" in result.stdout and "maskopt search" in result.stdout


def test_studies_without_a_storage_file_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"MASKOPT_STORAGE": None}).invoke(cli, ["studies"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: No SQLite storage at {tmp_path / 'maskopt.db'} (sqlite:///maskopt.db).")
    assert not (tmp_path / "maskopt.db").exists()


def test_studies_error_hides_the_password(postgres_url):
    url = make_url(postgres_url).set(password="cli-secret-pw").render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 1
    assert "Error: The postgresql server" in result.stderr
    assert "cli-secret-pw" not in result.output


def fake_dashboard(monkeypatch, run_server):
    """Replace optuna_dashboard (slow to import) by a module holding only ``run_server``."""
    monkeypatch.setitem(sys.modules, "optuna_dashboard", types.SimpleNamespace(run_server=run_server))


def test_dashboard_warns_off_loopback_and_prints_the_url_first(sqlite_url, tmp_path, monkeypatch):
    calls = []
    fake_dashboard(monkeypatch, lambda storage, **kw: calls.append((storage, kw)))
    result = CliRunner().invoke(
        cli, ["dashboard", "--storage", sqlite_url, "--host", "0.0.0.0", "--port", "8099", "--artifacts", str(tmp_path / "art")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("optuna-dashboard: http://0.0.0.0:8099/")
    assert "no authentication" in result.stderr
    ((storage, kwargs),) = calls
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() is None
    assert (kwargs["host"], kwargs["port"]) == ("0.0.0.0", 8099)
    assert isinstance(kwargs["artifact_store"], optuna.artifacts.FileSystemArtifactStore)
    assert (tmp_path / "art").is_dir()


def test_dashboard_on_loopback_does_not_warn(sqlite_url, tmp_path, monkeypatch):
    fake_dashboard(monkeypatch, lambda storage, **kw: None)
    result = CliRunner().invoke(cli, ["dashboard", "--storage", sqlite_url, "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("optuna-dashboard: http://127.0.0.1:8080/")
    assert result.stderr == ""


def test_dashboard_port_in_use(sqlite_url, tmp_path, monkeypatch):
    def busy(storage, **kw):
        raise OSError(98, "Address already in use")

    fake_dashboard(monkeypatch, busy)
    result = CliRunner().invoke(cli, ["dashboard", "--storage", sqlite_url, "--artifacts", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert "Error: cannot listen on 127.0.0.1:8080 (Address already in use). Choose another --port" in result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study(sqlite_url, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "maskopt", "dashboard", "--storage", sqlite_url, "--port", str(port),
         "--artifacts", str(tmp_path / "artifacts")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    studies = json.load(response)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not answer within 30 s"
                time.sleep(0.2)
        assert [s["study_name"] for s in studies] == ["masks-resnet"]
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=10)
    assert out.startswith(f"optuna-dashboard: http://127.0.0.1:{port}/")
