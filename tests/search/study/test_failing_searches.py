"""Searches that cannot work end with a clear error: a read-only SQLite file, trials that all fail."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from maskopt.cli import cli


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs folder holding ``study.db`` (made by the test), then remounted read-only."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): no read-only filesystem to test against")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_search_on_a_read_only_sqlite_file_fails_cleanly(read_only_mount, write_space, demo_data, cache_dir):
    space = write_space(study={"data": str(demo_data), "name": "ro"})
    args = ["search", "--space", str(space), "--device", "cpu", "--cache-dir", str(cache_dir), "--quiet",
            "--no-export", "--threads", "1"]
    made = read_only_mount.parent / "study.db"
    first = CliRunner().invoke(cli, [*args, "--trials", "1", "--storage", f"sqlite:///{made}"])
    assert first.exit_code == 0, first.output
    # Copied, because this process still holds the first file open and a busy mount cannot turn read-only.
    shutil.copy(made, read_only_mount / "study.db")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    url = f"sqlite:///{read_only_mount / 'study.db'}"
    before = hashlib.sha256((read_only_mount / "study.db").read_bytes()).hexdigest()

    result = CliRunner().invoke(cli, [*args, "--trials", "2", "--storage", url])
    assert result.exit_code == 1
    assert "cannot be written" in result.output and "read-only" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert hashlib.sha256((read_only_mount / "study.db").read_bytes()).hexdigest() == before


def test_search_whose_every_trial_fails_exits_non_zero_with_the_reason_even_quiet(write_space, demo_data, cache_dir,
                                                                                   tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 64)  # not a safetensors header
    space = write_space(study={"data": str(demo_data), "name": "broken", "pretrained": True, "weights": str(broken)})
    result = CliRunner().invoke(cli, ["search", "--space", str(space), "--device", "cpu", "--cache-dir", str(cache_dir),
                                      "--quiet", "--no-export", "--threads", "1", "--trials", "2",
                                      "--storage", f"sqlite:///{tmp_path / 'broken.db'}"])
    assert result.exit_code == 1
    assert "no trial of study 'broken' completed" in result.output
    assert f"2 trials: MaskoptError: cannot read weights file {broken}" in result.output
    assert "Traceback" not in result.output
