"""Every write path, through the real CLI: only regular files are replaced, temporary files are
unpredictable and removed, a full disk or a read-only storage is a clean error naming the folder,
and an export replaces only the files of the export it replaces, one export at a time.

The full and read-only disks are real: tmpfs mounts, which need root (the tests skip, saying so,
elsewhere).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BACKBONE, fill_disk

from maskopt.cli import cli
from maskopt.files import printable

pytestmark = pytest.mark.usefixtures("main_study")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its path relative to it, with its content hash."""
    return {str(p.relative_to(root)): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def storage(main_study, tmp_path) -> str:
    """A copy of the main study's storage: an export notes itself there."""
    db = tmp_path / "main.db"
    shutil.copy(main_study.db, db)
    return f"sqlite:///{db}"


def export_cli(main_study, storage: str, *args):
    return invoke("export-best", "--storage", storage, "--device", "cpu", "--cache-dir", main_study.cache_dir,
                  "--quiet", *args)


def clean_error(result) -> str:
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert result.output.startswith("Error: ") and "Traceback" not in result.output
    return result.output


# --- targets that are not regular files -----------------------------------------------------------


def plant(kind: str, target: Path, victim: Path) -> None:
    """Put a ``kind`` node at ``target``: a symlink to ``victim``, a FIFO, or /dev/null's twin."""
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a character device needs root")
        os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null


def writing_command(command: str, main_study, target: Path) -> list:
    """The CLI arguments of ``command`` writing ``target`` (label-issues: with --force)."""
    if command == "report":
        return ["report", "--storage", main_study.url, "--out", target]
    if command == "predict":
        return ["predict", "--model", main_study.export, "--data", main_study.data, "--out", target, "--device", "cpu",
                "--cache-dir", main_study.cache_dir, "--quiet"]
    return ["label-issues", "--storage", main_study.url, "--artifacts", main_study.root / "maskopt-artifacts",
            "--write-corrections", target, "--force"]


KIND_WORDS = {"symlink": "a symlink", "fifo": "a FIFO", "device": "a character device"}


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
@pytest.mark.parametrize("command", ["report", "predict", "label-issues"])
def test_a_target_that_is_not_a_regular_file_is_refused_and_left_as_it_is(command, kind, main_study, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not to be lost")
    target = tmp_path / "out.csv"
    plant(kind, target, victim)
    before = os.lstat(target)

    output = clean_error(invoke(*writing_command(command, main_study, target)))
    option = "--write-corrections" if command == "label-issues" else "--out"
    assert f"{target} is {KIND_WORDS[kind]}, not a regular file, and was left as it is; give {option} the path of " \
           f"a regular file" in output
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert victim.read_text() == "not to be lost"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "victim.txt"]  # no temporary file


def test_links_planted_at_temporary_names_are_never_written_through(main_study, tmp_path, monkeypatch):
    """The old temporary name (``.NAME.tmp<pid>``) and the first name ``mkstemp`` will try both hold
    a link to a victim: the report is created exclusively under another name and renamed into place."""
    victim = tmp_path / "victim.txt"
    victim.write_text("not to be lost")
    out = tmp_path / "report.html"
    (tmp_path / f".report.html.tmp{os.getpid()}").symlink_to(victim)
    (tmp_path / ".report.html.planted.tmp").symlink_to(victim)
    names = tempfile._get_candidate_names()
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["planted", *(next(names) for _ in range(99))]))

    result = invoke("report", "--storage", main_study.url, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert victim.read_text() == "not to be lost"
    assert out.is_file() and not out.is_symlink() and "<html" in out.read_text()[:200]
    assert {p.name for p in tmp_path.iterdir()} == {
        f".report.html.tmp{os.getpid()}", ".report.html.planted.tmp", "report.html", "victim.txt"}


def test_an_escape_sequence_in_a_name_is_shown_escaped(main_study, tmp_path):
    target = tmp_path / "\x1b[2Jout.html"
    target.symlink_to(tmp_path / "elsewhere")
    output = clean_error(invoke("report", "--storage", main_study.url, "--out", target))
    assert "\x1b" not in output and f"{tmp_path}/\\x1b[2Jout.html is a symlink" in output
    assert printable("a\tb\u202ec\udcff") == "a\\tb\\u202ec\\udcff"


# --- full and read-only disks ----------------------------------------------------------------------


def test_export_to_a_full_disk_is_a_clean_error_that_leaves_nothing(main_study, storage, tmpfs, tmp_path):
    full = tmpfs(tmp_path / "full")
    out = full / "export"
    output = clean_error(export_cli(main_study, storage, "--out", out))
    assert f"Error: cannot write {out}: the disk is full (in {full}); nothing was changed there. Free space there, " \
           f"or give --out a path elsewhere" in output
    assert list(full.iterdir()) == []  # the staging folder is gone


def test_weights_import_to_a_full_disk_is_a_clean_error_that_leaves_nothing(tmpfs, tmp_path):
    import timm
    import torch

    src = tmp_path / "tiny.pth"
    torch.save(timm.create_model(BACKBONE).state_dict(), src)
    full = tmpfs(tmp_path / "full")
    output = clean_error(invoke("weights", "import", src, "--backbone", BACKBONE, "--out", full))
    assert f"Error: cannot write {full / BACKBONE}.safetensors: the disk is full (in {full}); nothing was changed " \
           f"there. Free space there, or give --out a path elsewhere" in output
    assert list(full.iterdir()) == []


@pytest.mark.parametrize("command", ["report", "predict", "label-issues"])
def test_a_file_written_to_a_full_disk_is_a_clean_error_that_leaves_nothing(command, main_study, tmpfs, tmp_path):
    full = tmpfs(tmp_path / "full")
    fill_disk(full)
    target = full / "out.csv"
    output = clean_error(invoke(*writing_command(command, main_study, target)))
    option = "--write-corrections" if command == "label-issues" else "--out"
    assert f"Error: cannot write {target}: the disk is full (in {full}); nothing was changed there. Free space " \
           f"there, or give {option} a path elsewhere" in output
    assert [p.name for p in full.iterdir()] == ["filler"]  # no temporary file


@pytest.fixture
def full_storage(main_study, tmpfs, tmp_path) -> tuple[str, Path]:
    """The main study's storage on a disk with no byte left: (URL, file)."""
    size = (main_study.db.stat().st_size // 4096 + 16) * 4096
    folder = tmpfs(tmp_path / "full", str(size))
    db = folder / "main.db"
    shutil.copy(main_study.db, db)
    fill_disk(folder)
    return f"sqlite:///{db}", db


def test_search_on_a_full_sqlite_disk_is_a_clean_storage_error(main_study, full_storage):
    url, db = full_storage
    before = digest(db)
    result = invoke("search", "--space", main_study.space_path, "--storage", url, "--trials", "4", "--device", "cpu",
                    "--cache-dir", main_study.cache_dir, "--quiet", "--no-export", "--threads", "1")
    output = clean_error(result)
    assert f"SQLite storage {db} ({url}) cannot be written: the disk holding {db.parent} is full, and the last " \
           f"change was not stored. Free space there" in output
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["filler", "main.db"]  # no journal left


def test_export_whose_storage_disk_fills_up_finishes_with_a_warning(main_study, full_storage, tmp_path):
    """The export is complete when the storage refuses its note: it is kept, and the warning says
    what is missing (a read-only storage, below, is refused before any work instead)."""
    url, db = full_storage
    out = tmp_path / "export"
    result = export_cli(main_study, url, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"warning: the export in {out} is complete, but the study does not note it" in result.output
    assert f"the disk holding {db.parent} is full" in result.output
    assert {"config.json", "model.safetensors", "submission.csv"} <= set(os.listdir(out))


def test_export_refuses_a_read_only_storage_before_any_work(main_study, tmpfs, tmp_path):
    folder = tmpfs(tmp_path / "ro", "4m")
    db = folder / "main.db"
    shutil.copy(main_study.db, db)
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    out = tmp_path / "export"
    output = clean_error(export_cli(main_study, f"sqlite:///{db}", "--out", out))
    assert f"SQLite storage {db}" in output and "cannot be written" in output and "Read-only file system" in output
    assert not out.exists() and not list(tmp_path.glob(".export*"))


# --- replacing an export ---------------------------------------------------------------------------


def test_export_replaces_only_the_files_of_the_export_it_replaces(main_study, storage, tmp_path):
    from maskopt.search.export.config import ExportConfig

    out = tmp_path / "exports" / "main"
    shutil.copytree(main_study.export, out)
    # The old export listed one more model than the new one will write: it goes, as its own.
    shutil.copy(out / "model.safetensors", out / "extra.safetensors")
    old = ExportConfig.from_json(out)
    dataclasses.replace(old, models=(*old.models, "extra.safetensors")).to_json(out)
    predicted = invoke("predict", "--model", out, "--data", main_study.data, "--device", "cpu", "--cache-dir",
                       main_study.cache_dir, "--quiet")
    assert predicted.exit_code == 0, predicted.output
    (out / "notes").mkdir()
    (out / "notes" / "run.txt").write_text("mine")
    foreign = {k: v for k, v in tree(out).items() if k in ("predictions.csv", "notes/run.txt")}
    assert len(foreign) == 2

    result = export_cli(main_study, storage, "--out", out, "--force")
    assert result.exit_code == 0, result.output + repr(result.exception)
    after = tree(out)
    assert set(after) == {"config.json", "model.safetensors", "submission.csv", "predictions.csv", "notes/run.txt"}
    assert {k: after[k] for k in foreign} == foreign
    assert ExportConfig.from_json(out).models == ("model.safetensors",)
    assert [p.name for p in out.parent.iterdir()] == ["main"]  # no staging folder or lock left


def test_a_file_of_the_same_name_that_the_old_export_did_not_write_is_kept(main_study, storage, tmp_path):
    from maskopt.search.export.config import ExportConfig

    out = tmp_path / "exports" / "main"
    shutil.copytree(main_study.export, out)
    old = ExportConfig.from_json(out)
    os.rename(out / "model.safetensors", out / "old.safetensors")  # the new export writes model.safetensors
    dataclasses.replace(old, models=("old.safetensors",)).to_json(out)
    (out / "model.safetensors").write_text("a file the old export does not list")
    before = tree(out)

    output = clean_error(export_cli(main_study, storage, "--out", out, "--force"))
    assert f"Error: {out} holds model.safetensors, which the export there did not write" in output
    assert tree(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["main"]  # no staging folder or lock left


def test_a_move_into_place_that_fails_midway_is_undone(main_study, storage, tmp_path, monkeypatch):
    out = tmp_path / "exports" / "main"
    shutil.copytree(main_study.export, out)
    (out / "predictions.csv").write_text("mine")
    before = tree(out)
    real_rename, calls = os.rename, []

    def rename(src, dst):  # the fifth rename in exports/ (the new submission.csv moving in) fails
        if Path(dst).parent.parent == out.parent:
            calls.append(src)
        if len(calls) == 5 and Path(dst).parent == out:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    output = clean_error(export_cli(main_study, storage, "--out", out, "--force"))
    assert f"Error: cannot write {out}: Input/output error" in output
    assert len(calls) == 9  # 3 old files out, 2 new files in, those 5 undone
    assert tree(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["main"]  # no staging folder or lock left


def waiting_on(lock: Path) -> int:
    """How many processes wait to flock ``lock`` (from /proc/locks: ``N: -> FLOCK ... MAJ:MIN:INODE ...``)."""
    inode = f":{os.stat(lock).st_ino} "
    return sum(" -> FLOCK " in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.slow
def test_two_exports_racing_to_one_folder_both_end_cleanly(main_study, storage, tmp_path):
    """Two real processes export to one folder and reach the move into place together: the test
    holds the export's lock until both wait on it. Without --force, to a new folder, both passed the
    first check: the first in writes the folder, the second is refused cleanly by the check under
    the lock. With --force, both succeed, one after the other, and a foreign file survives both.
    Nothing hidden is left, not even the lock."""
    import fcntl

    if not Path("/proc/locks").is_file():
        pytest.skip("no /proc/locks here: cannot see when both exports wait on the lock")
    out = tmp_path / "exports" / "main"
    out.parent.mkdir()
    command = [sys.executable, "-m", "maskopt", "export-best", "--storage", storage, "--device", "cpu", "--cache-dir",
               str(main_study.cache_dir), "--quiet", "--out", str(out)]

    def race(*extra):
        with open(out.parent / ".main.lock", "a") as lock:  # as the export locks it, but kept: they remove it
            fcntl.flock(lock, fcntl.LOCK_EX)
            processes = [subprocess.Popen([*command, *extra], cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for _ in range(2)]
            while waiting_on(out.parent / ".main.lock") < 2:  # both exports staged, at the door
                assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
                time.sleep(0.1)
        return sorted((p.wait(timeout=600), *p.communicate()) for p in processes)

    first, second = race()
    assert first[0] == 0 and f"to {out}/" in first[1], first
    assert second[0] == 1 and second[2] == f"Error: {out} already exists; pass --force to replace it, or --out " \
                                           f"another folder\n", second
    assert {"config.json", "model.safetensors", "submission.csv"} == set(os.listdir(out))
    assert [p.name for p in out.parent.iterdir()] == ["main"]  # no staging folder or lock left

    (out / "predictions.csv").write_text("mine")
    results = race("--force")
    assert [code for code, _, _ in results] == [0, 0], results
    assert {"config.json", "model.safetensors", "submission.csv", "predictions.csv"} == set(os.listdir(out))
    assert (out / "predictions.csv").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["main"]  # no staging folder or lock left
