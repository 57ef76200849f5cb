"""Real `maskopt search` worker processes for the crash, signal and multi-host tests.

Each worker is what a user starts on a machine: the real CLI in its own process, training a
real timm model on a tiny demo dataset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SPACE = """\
study: {{name: {name}, folds: 2, epochs: {epochs}, seed: 0, pruner: none, sampler: random}}
params:
  backbone: mobilenetv3_small_050
  image_size: 32
  batch_size: 32
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  head: [single, multi]
"""


def make_tiny_data(root: Path) -> Path:
    """Ten persons of 32-pixel demo images: enough for two folds of a real model in seconds."""
    from maskopt.search.data.demo import make_demo_data

    make_demo_data(root, persons=10, eval_persons=2, size=32, seed=0)
    return root


def write_space(tmp_path: Path, name: str, epochs: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.format(name=name, epochs=epochs))
    return path


def worker_cmd(space: Path, data: Path, storage: str, trials: int, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskopt", "search", "--space", str(space), "--data", str(data),
            "--storage", storage, "--trials", str(trials), "--cache-dir", str(cache), "--no-export", "--quiet",
            *extra]


def start_worker(space: Path, data: Path, storage: str, trials: int, cache: Path, *extra: str,
                 log: Path | None = None) -> subprocess.Popen:
    """A worker whose output goes to a pipe, or to ``log`` (nobody reads a pipe of a hung worker).

    It runs in the space's folder, so what it writes beside itself (checkpoints of a PostgreSQL
    study) stays in the test's folder.
    """
    env = dict(os.environ, MASKOPT_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = worker_cmd(space, data, storage, trials, cache, *extra)
    cwd = space.parent
    if log is None:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=cwd)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = process.communicate(timeout=timeout)
    return out


def run_to_completion(space: Path, data: Path, storage: str, trials: int, cache: Path, *extra: str) -> str:
    """Run a worker until it exits; its output, once it exited 0."""
    process = start_worker(space, data, storage, trials, cache, *extra)
    out = finish(process)
    assert process.returncode == 0, out
    return out


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    process.send_signal(sig)
    process.wait(timeout=60)


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def scored_an_epoch(trial: optuna.trial.FrozenTrial) -> bool:
    """Mid-trial: the worker stamp is stored first, the parameters next, an epoch's score after them."""
    return bool(trial.intermediate_values)


def wait_for_running_trial(storage: str, name: str, process: subprocess.Popen, *, log: Path | None = None,
                           until=lambda trial: True, timeout: float = 180) -> optuna.trial.FrozenTrial:
    """The RUNNING trial of worker ``process`` (stamped host:pid) once ``until(trial)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text() if log else ""
            raise AssertionError(f"worker {process.pid} exited {process.returncode} first:\n{output}")
        try:
            for t in load(storage, name).get_trials(states=(TrialState.RUNNING,)):
                if t.user_attrs.get("worker", "").endswith(f":{process.pid}") and until(t):
                    return t
        except KeyError:  # the study does not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"worker {process.pid} never ran such a trial")


def finished_and_running(storage: str, name: str) -> tuple[list, list]:
    trials = load(storage, name).get_trials()
    return ([t for t in trials if t.state in FINISHED], [t for t in trials if t.state == TrialState.RUNNING])
