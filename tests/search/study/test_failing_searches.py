"""Searches that cannot work end with a clear error: a read-only SQLite file, trials that all fail."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from maskopt.cli import cli


@pytest.fixture
def read_only_mount(tmp_path, tmpfs):
    """A tmpfs folder holding ``study.db`` (made by the test), then remounted read-only."""
    return tmpfs(tmp_path / "ro", "4m")


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


def test_a_sampler_that_fails_every_trial_stops_the_search_with_the_reason(monkeypatch, write_space, demo_data,
                                                                           cache_dir, tmp_path):
    """A sampler that cannot propose (an option it cannot use that only shows when it samples) fails
    each trial before any training: the search stops after a few with the reason, instead of looping."""
    import optuna

    from maskopt.search.study import runner

    class Broken(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            raise TypeError("'int' object is not callable")

    monkeypatch.setattr(runner, "build_sampler", lambda component, seed: Broken(seed=seed))
    space = write_space(study={"data": str(demo_data), "name": "broken-sampler"}, params={"lr": [0.01, 0.02]})
    url = f"sqlite:///{tmp_path / 'b.db'}"
    result = CliRunner().invoke(cli, ["search", "--space", str(space), "--device", "cpu", "--cache-dir",
                                      str(cache_dir), "--quiet", "--no-export", "--threads", "1", "--trials", "20",
                                      "--storage", url])
    assert result.exit_code == 1
    assert result.output.startswith("Error: the search stopped: trials 0, 1, 2 failed before training, with: the "
                                    "sampler failed: TypeError: 'int' object is not callable.")
    assert "another --study name" in result.output and "Traceback" not in result.output
    assert len(optuna.load_study(study_name="broken-sampler", storage=url).trials) == 3


@pytest.fixture
def full_disk(tmp_path, tmpfs):
    """A tmpfs folder too small for a checkpoint."""
    return tmpfs(tmp_path / "full", "64k")


@pytest.mark.parametrize("where", ["full disk", "a file in the way"])
def test_checkpoints_that_cannot_be_saved_are_a_warning_and_trials_train_on(where, request, write_space, demo_data,
                                                                            cache_dir, tmp_path):
    if where == "full disk":
        checkpoints = request.getfixturevalue("full_disk") / "checkpoints"
    else:
        (tmp_path / "blocked").write_text("a file where the checkpoint folder should be")
        checkpoints = tmp_path / "blocked" / "checkpoints"
    space = write_space(study={"data": str(demo_data), "name": "nockpt", "epochs": 2})
    url = f"sqlite:///{tmp_path / 'n.db'}"
    result = CliRunner().invoke(cli, ["search", "--space", str(space), "--device", "cpu", "--cache-dir",
                                      str(cache_dir), "--quiet", "--no-export", "--threads", "1", "--trials", "1",
                                      "--storage", url, "--checkpoints", str(checkpoints)])
    assert result.exit_code == 0, result.output
    assert "warning: trial 0: cannot save checkpoints in" in result.stderr
    assert "training on without them" in result.stderr and "--checkpoints elsewhere" in result.stderr
    assert result.stderr.count("cannot save checkpoints") == 1  # once per trial, not once per epoch
    import optuna

    (trial,) = optuna.load_study(study_name="nockpt", storage=url).trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["epochs_trained"] == 4
    assert "cannot save checkpoints" in trial.user_attrs["checkpoint_note"]
    if where == "full disk":
        assert not any(checkpoints.rglob("*.tmp"))  # the failed save left no temporary file


def _plant(path, kind: str) -> None:
    import os

    import optuna
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a malformed structure":
        torch.save({"format": "maskopt-trial-checkpoint/1", "fingerprint": {}, "fold": 3, "done": [], "train": {}},
                   path)
    else:  # code: an object only unpickling can rebuild
        torch.save({"format": "maskopt-trial-checkpoint/1", "evil": optuna.distributions.IntDistribution(1, 2)}, path)


@pytest.mark.parametrize("kind, said", [("a FIFO", "is not a regular file"), ("a folder", "is not a regular file"),
                                        ("a malformed structure", "other settings or data"),
                                        ("code", "holds objects other than tensors")])
def test_a_checkpoint_that_cannot_be_used_is_a_warning_and_the_trial_trains_from_zero(kind, said, write_space,
                                                                                      demo_data, cache_dir, tmp_path):
    """Whatever sits where trial 0's checkpoint would be, the search neither waits on it, nor fails,
    nor passes on torch's advice to load it unsafely."""
    import signal

    import optuna

    space = write_space(study={"data": str(demo_data), "name": "planted"})
    checkpoints = tmp_path / "checkpoints"
    _plant(checkpoints / "planted" / "trial-0.pt", kind)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    signal.alarm(240)  # a search that waits on the FIFO fails the test instead of hanging the suite
    try:
        result = CliRunner().invoke(cli, ["search", "--space", str(space), "--device", "cpu", "--cache-dir",
                                          str(cache_dir), "--quiet", "--no-export", "--threads", "1", "--trials", "1",
                                          "--storage", url, "--checkpoints", str(checkpoints)])
    finally:
        signal.alarm(0)
    assert result.exit_code == 0, result.output
    assert f"warning: trial 0: checkpoint {checkpoints / 'planted' / 'trial-0.pt'}" in result.stderr
    assert said in result.stderr and "starting from zero" in result.stderr
    assert "weights_only" not in result.stderr and "Traceback" not in result.output
    (trial,) = optuna.load_study(study_name="planted", storage=url).trials
    # The trial's note is its last word on checkpoints: for a folder in the way, that its saves failed too.
    assert trial.state.name == "COMPLETE" and trial.user_attrs["checkpoint_note"].startswith(("checkpoint",
                                                                                             "cannot save"))
