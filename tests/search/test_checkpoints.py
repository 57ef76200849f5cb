"""Per-epoch checkpoints: a killed or preempted trial resumes from its last epoch, with the score
an uninterrupted run gets, and the disk holds at most one checkpoint per running trial."""

from __future__ import annotations

import signal

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from worker_processes import (
    finish, finished_and_running, kill, load, make_tiny_data, run_to_completion, start_worker, wait_for_running_trial,
)

from maskopt.search.study.checkpoints import CheckpointStore, default_checkpoint_dir
from maskopt.search.space import parse_space
from maskopt.search.train.loop import TrainConfig, TrainingData, train_fold

CPU = torch.device("cpu")
EPOCHS = 4
SPACE = f"""\
study: {{name: NAME, folds: 2, epochs: {EPOCHS}, seed: 0, pruner: none, sampler: random}}
params:
  backbone: mobilenetv3_small_050
  image_size: 32
  batch_size: 16
  aug_strength: 0.3
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("checkpoints") / "data")


def write_space(tmp_path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SPACE.replace("NAME", name))
    return path


# --- the training loop ------------------------------------------------------------------------

def test_a_fold_resumed_from_any_epoch_ends_exactly_as_an_uninterrupted_one(tmp_path, space_dict):
    space = parse_space(space_dict(study={"epochs": 3}, params={"batch_size": 8, "aug_strength": 0.5,
                                                                "optimizer": "sgd"}))
    params, settings = space.params_from({}), space.study
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (36, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 18, 36)
    data = TrainingData(images, np.arange(26), labels[:26], np.arange(26, 36), labels[26:])
    store = CheckpointStore(tmp_path, "fold")
    kwargs = dict(config=TrainConfig.of(settings), num_classes=18, device=CPU, seed=5)

    saved = []
    whole, whole_model = train_fold(params, data, on_checkpoint=lambda state: saved.append(
        store.save(len(saved), {"fingerprint": {}, "train": state})), **kwargs)
    assert len(saved) == 3  # one checkpoint per epoch
    for epoch in (1, 2):
        state, note = store.load(epoch - 1, {})
        assert note is None
        resumed, model = train_fold(params, data, resume=state["train"], **kwargs)
        assert resumed.f1_history == whole.f1_history
        assert resumed.best_epoch == whole.best_epoch
        assert np.array_equal(resumed.best_predictions, whole.best_predictions)
        for a, b in zip(model.state_dict().values(), whole_model.state_dict().values()):
            assert torch.equal(a, b)


def test_unusable_checkpoints_are_ignored_with_a_reason(tmp_path):
    store = CheckpointStore(tmp_path, "s")
    store.save(0, {"fingerprint": {"epochs": 3}, "train": None})
    assert store.load(0, {"epochs": 3})[0] is not None
    state, note = store.load(0, {"epochs": 4})
    assert state is None and "other settings" in note
    store.path(1).write_bytes(store.path(0).read_bytes()[:100])  # a save cut short
    state, note = store.load(1, {"epochs": 3})
    assert state is None and "cannot be read" in note and "starting from zero" in note
    torch.save({"format": "maskopt-trial-checkpoint/1", "fingerprint": {}, "evil": optuna.distributions.IntDistribution(1, 2)},
               store.path(2))  # needs unpickling of code: weights_only refuses it
    state, note = store.load(2, {})
    assert state is None and "cannot be read" in note
    assert store.load(3, {}) == (None, None)


def test_sweep_keeps_live_trials_and_removes_the_rest(tmp_path):
    store = CheckpointStore(tmp_path, "s")
    for origin in (0, 1, 2):
        store.save(origin, {"fingerprint": {}})
    (store.folder / ".trial-1-abc.tmp").write_bytes(b"x")  # a save in progress for a live trial
    (store.folder / ".trial-2-abc.tmp").write_bytes(b"x")  # left by a save killed mid-write
    (store.folder / "notes.txt").write_text("mine")  # not ours: never touched
    assert store.sweep(keep={1}) == 3
    assert sorted(p.name for p in store.folder.iterdir()) == [".trial-1-abc.tmp", "notes.txt", "trial-1.pt"]


def test_default_folder_is_beside_a_sqlite_file(tmp_path):
    assert default_checkpoint_dir(f"sqlite:///{tmp_path}/runs/a.db") == tmp_path / "runs" / "a-checkpoints"
    assert default_checkpoint_dir("postgresql://u:p@host/db").name == "maskopt-checkpoints"


# --- through the CLI, with real processes ---------------------------------------------------

def uninterrupted_value(tiny_data, tmp_path, name: str) -> float:
    storage = f"sqlite:///{tmp_path / 'whole.db'}"
    worker = start_worker(write_space(tmp_path, name), tiny_data, storage, 1, tmp_path / "cache")
    out = finish(worker)
    assert worker.returncode == 0, out
    (trial,) = load(storage, name).get_trials()
    assert trial.user_attrs["epochs_trained"] == 2 * EPOCHS and trial.user_attrs["resumed"] is None
    return trial.value


def kill_after_epochs(storage: str, name: str, worker, epochs: int, sig=signal.SIGKILL):
    """Kill ``worker`` once its trial has reported ``epochs`` epochs (so a checkpoint of them exists)."""
    doomed = wait_for_running_trial(storage, name, worker, until=lambda t: len(t.intermediate_values) >= epochs)
    kill(worker, sig)
    return doomed


@pytest.mark.slow
def test_sigkill_mid_fold_then_rerun_resumes_and_scores_as_uninterrupted(tiny_data, tmp_path):
    name = "resume"
    (tmp_path / "whole").mkdir()
    expected = uninterrupted_value(tiny_data, tmp_path / "whole", name)
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    space = write_space(tmp_path, name)
    victim = start_worker(space, tiny_data, storage, 1, tmp_path / "cache")
    doomed = kill_after_epochs(storage, name, victim, EPOCHS + 1)  # inside the second fold
    folder = tmp_path / "kill-checkpoints" / name
    # One per running trial (and maybe the temporary file of a save the kill cut short).
    assert [p.name for p in folder.glob("*.pt")] == [f"trial-{doomed.number}.pt"]

    run_to_completion(space, tiny_data, storage, 1, tmp_path / "cache")
    finished, running = finished_and_running(storage, name)
    assert running == [] and len(finished) == 1  # the total holds: the retry replaced the killed trial
    (retry,) = finished
    assert retry.system_attrs["failed_trial"] == doomed.number and retry.params == doomed.params
    inherited = retry.user_attrs["resumed"]["epochs_inherited"]
    assert inherited >= EPOCHS + 1 and retry.user_attrs["resumed"]["fold"] == 2
    assert retry.user_attrs["epochs_trained_here"] == 2 * EPOCHS - inherited  # only the remaining epochs
    assert retry.user_attrs["epochs_trained"] == 2 * EPOCHS
    assert sorted(retry.intermediate_values) == list(range(2 * EPOCHS))  # the inherited curve, reported again
    assert retry.value == expected
    assert list(folder.iterdir()) == []  # removed when the trial finished, a cut-short save swept


@pytest.mark.slow
def test_sigterm_queues_the_trial_and_the_rerun_resumes_it(tiny_data, tmp_path):
    name = "preempt"
    storage = f"sqlite:///{tmp_path / 'term.db'}"
    space = write_space(tmp_path, name)
    worker = start_worker(space, tiny_data, storage, 1, tmp_path / "cache")
    doomed = kill_after_epochs(storage, name, worker, 2, sig=signal.SIGTERM)
    out = finish(worker, timeout=60)
    assert worker.returncode == 130, out
    assert f"trial {doomed.number} resumes from its last epoch" in out and "Traceback" not in out
    trials = load(storage, name).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]

    out = run_to_completion(space, tiny_data, storage, 1, tmp_path / "cache")
    trials = load(storage, name).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed"]["epochs_inherited"] >= 2


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_noted_and_the_trial_starts_from_zero(tiny_data, tmp_path):
    name = "corrupt"
    storage = f"sqlite:///{tmp_path / 'bad.db'}"
    space = write_space(tmp_path, name)
    victim = start_worker(space, tiny_data, storage, 1, tmp_path / "cache")
    doomed = kill_after_epochs(storage, name, victim, 1)
    checkpoint = tmp_path / "bad-checkpoints" / name / f"trial-{doomed.number}.pt"
    checkpoint.write_bytes(b"not a checkpoint")

    out = run_to_completion(space, tiny_data, storage, 1, tmp_path / "cache")
    assert "cannot be read" in out and "starting from zero" in out
    (retry,) = finished_and_running(storage, name)[0]
    assert retry.user_attrs["resumed"] is None and retry.user_attrs["epochs_trained_here"] == 2 * EPOCHS
    assert "cannot be read" in retry.user_attrs["checkpoint_note"]
    assert not checkpoint.exists()
