"""A SQLite storage that cannot be written (its disk full, its filesystem read-only) is a
StorageError naming the file and what to do, whenever it shows: opening, any later write, or the
check that commands run before long work. The disks are real tmpfs mounts (root only)."""

from __future__ import annotations

import shutil
import subprocess

import optuna
import pytest
from click.testing import CliRunner
from conftest import fill_disk

from maskopt.cli import cli
from maskopt.errors import StorageError
from maskopt.storage import open_storage, require_writable


def test_a_new_storage_on_a_full_disk(tmpfs, tmp_path):
    folder = tmpfs(tmp_path / "full")
    fill_disk(folder)
    db = folder / "new.db"
    with pytest.raises(StorageError, match=rf"SQLite storage {db} \(sqlite:///{db}\) cannot be written: the disk "
                                           rf"holding {folder} is full, and the last change was not stored\. Free "
                                           rf"space there, or move the file to another disk and point `storage`"):
        open_storage(f"sqlite:///{db}")


def test_writes_to_a_storage_whose_disk_filled_up(tmpfs, tmp_path):
    folder = tmpfs(tmp_path / "full", "1m")
    url = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None), study_name="s")
    study.enqueue_trial({"x": 1.0})
    before = (folder / "study.db").read_bytes()
    fill_disk(folder)
    with pytest.raises(StorageError, match="is full, and the last change was not stored"):
        study.ask()  # Optuna retries a failed trial creation five times: a full disk fails at once
    with pytest.raises(StorageError, match="is full"):
        study.set_user_attr("note", "x" * 100_000)
    assert (folder / "study.db").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["filler", "study.db"]  # no journal left


def test_a_read_only_storage_is_refused_before_work(tmpfs, tmp_path):
    made = tmp_path / "study.db"
    optuna.create_study(storage=open_storage(f"sqlite:///{made}", heartbeat_interval=None), study_name="s")
    require_writable(f"sqlite:///{made}")  # writable: nothing to say
    folder = tmpfs(tmp_path / "ro", "1m")
    shutil.copy(made, folder / "study.db")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    url = f"sqlite:///{folder / 'study.db'}"

    with pytest.raises(StorageError, match=rf"SQLite storage {folder / 'study.db'} .* cannot be written \(.*Read-only "
                                           rf"file system\): a read-only filesystem or no write permission"):
        require_writable(url)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"1 study in {url}\n")  # reading still works


def test_a_locked_sqlite_file_is_a_storage_error_that_says_what_to_do(tmp_path):
    """SQLite answers "database is locked" at once when two writers would deadlock: a clean error."""
    import sqlite3

    from maskopt.storage._rdb import _sqlite_failed_write

    error = _sqlite_failed_write(sqlite3.OperationalError("database is locked"), tmp_path / "s.db",
                                 f"sqlite:///{tmp_path / 's.db'}")
    assert "was locked by another connection" in str(error) and "PostgreSQL" in str(error)
    assert _sqlite_failed_write(sqlite3.OperationalError("no such table: trials"), tmp_path / "s.db", "sqlite://") \
        is None
