"""Per-epoch checkpoints: a killed or preempted trial resumes from its last epoch, with the score
an uninterrupted run gets, and the disk holds at most one checkpoint per running trial."""

from __future__ import annotations

import os
import signal

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from worker_processes import (
    finish,
    finished_and_running,
    kill,
    load,
    make_tiny_data,
    run_to_completion,
    start_worker,
    wait_for_running_trial,
)

from maskopt.search.space import parse_space
from maskopt.search.study.checkpoints import CheckpointStore, FoldCheckpoint, FoldOutcome, default_checkpoint_dir
from maskopt.search.train.loop import TrainingData, UnusableCheckpoint, train_fold

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
    kwargs = dict(config=settings.train_config(), num_classes=18, device=CPU, seed=5)

    saved = []
    whole, whole_model = train_fold(params, data, on_checkpoint=lambda state: saved.append(
        store.save(len(saved), FoldCheckpoint({}, 0, (), state))), **kwargs)
    assert len(saved) == 3  # one checkpoint per epoch
    for epoch in (1, 2):
        checkpoint, note = store.load(epoch - 1, {})
        assert note is None and checkpoint.epochs_trained == epoch
        resumed, model = train_fold(params, data, resume=checkpoint.train, **kwargs)
        assert resumed.f1_history == whole.f1_history
        assert resumed.best_epoch == whole.best_epoch
        assert np.array_equal(resumed.best_predictions, whole.best_predictions)
        for a, b in zip(model.state_dict().values(), whole_model.state_dict().values()):
            assert torch.equal(a, b)


def one_epoch_checkpoint(space_dict, fingerprint: dict) -> FoldCheckpoint:
    """A real checkpoint of a tiny model after one epoch, with one finished fold before it."""
    space = parse_space(space_dict(study={"epochs": 1}, params={"batch_size": 8}))
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 18, 20)
    data = TrainingData(images, np.arange(14), labels[:14], np.arange(14, 20), labels[14:])
    states = []
    result, _ = train_fold(space.params_from({}), data, config=space.study.train_config(), num_classes=18,
                           device=CPU, seed=1, on_checkpoint=states.append)
    return FoldCheckpoint(fingerprint, 1, (FoldOutcome.of(result),), states[0])


def test_a_checkpoint_round_trips_through_its_file(tmp_path, space_dict):
    store = CheckpointStore(tmp_path, "s")
    written = one_epoch_checkpoint(space_dict, {"epochs": 1})
    store.save(0, written)
    read, note = store.load(0, {"epochs": 1})
    assert note is None and (read.fold, read.epochs_trained) == (1, 2)
    assert read.done[0].f1 == written.done[0].f1 and np.array_equal(read.done[0].probs, written.done[0].probs)
    assert read.train.result.f1_history == written.train.result.f1_history
    assert read.to_state().keys() == {"format", "fingerprint", "fold", "done", "train"}  # the file format


def test_unusable_checkpoints_are_ignored_with_a_reason(tmp_path, space_dict):
    store = CheckpointStore(tmp_path, "s")
    store.save(0, one_epoch_checkpoint(space_dict, {"epochs": 3}))
    assert store.load(0, {"epochs": 3})[0] is not None
    state, note = store.load(0, {"epochs": 4})
    assert state is None and "other settings" in note
    store.path(1).write_bytes(store.path(0).read_bytes()[:100])  # a save cut short
    state, note = store.load(1, {"epochs": 3})
    assert state is None and "cannot be read" in note and "starting from zero" in note
    torch.save({"format": "maskopt-trial-checkpoint/1", "fingerprint": {}, "evil": optuna.distributions.IntDistribution(1, 2)},
               store.path(2))  # needs unpickling of code: weights_only refuses it
    state, note = store.load(2, {})
    assert state is None and "holds objects other than tensors" in note and "nothing is unpickled" in note
    assert "weights_only" not in note  # torch's advice to load it unsafely is not passed on
    assert store.load(3, {}) == (None, None)
    # The right format and fingerprint, but a structure no save writes: skipped, not a crash.
    torch.save({"format": "maskopt-trial-checkpoint/1", "fingerprint": {}, "fold": 1, "done": [], "train": {}},
               store.path(4))
    state, note = store.load(4, {})
    assert state is None and "malformed" in note and "starting from zero" in note
    store.path(5).mkdir()  # a folder where the file should be
    state, note = store.load(5, {})
    assert state is None and "not a regular file" in note
    store.remove(5)
    assert store.path(5).is_dir()  # a folder of that name is not ours to delete
    os.mkfifo(store.path(6))  # reading a FIFO would wait for a writer forever
    signal.alarm(20)  # a hang fails the test instead of stopping the suite
    try:
        state, note = store.load(6, {})
    finally:
        signal.alarm(0)
    assert state is None and "not a regular file" in note


def test_a_training_state_of_other_shapes_is_refused_before_training(space_dict):
    checkpoint = one_epoch_checkpoint(space_dict, {})
    space = parse_space(space_dict(study={"epochs": 2}, params={"batch_size": 8, "backbone": "resnet10t"}))
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8))
    labels = rng.integers(0, 18, 20)
    data = TrainingData(images, np.arange(14), labels[:14], np.arange(14, 20), labels[14:])
    with pytest.raises(UnusableCheckpoint, match="does not fit this model"):
        train_fold(space.params_from({}), data, config=space.study.train_config(), num_classes=18, device=CPU,
                   seed=1, resume=checkpoint.train)


def test_sweep_keeps_live_trials_and_removes_the_rest(tmp_path, space_dict):
    store = CheckpointStore(tmp_path, "s")
    for origin in (0, 1, 2):
        store.save(origin, one_epoch_checkpoint(space_dict, {}))
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


# --- in one process: stopped after any epoch, resumed, the same score -----------------------------

def run_once(space, url, cache_dir):
    from maskopt.search.study.runner import run_search

    return run_search(space, trials=1, storage=url, device="cpu", cache_dir=cache_dir, threads=1,
                      heartbeat_interval=None, quiet=True)


@pytest.mark.parametrize("stop_after_save", [1, 2, 3])
def test_a_trial_stopped_after_any_epoch_resumes_to_the_uninterrupted_score(monkeypatch, tmp_path, space_dict,
                                                                            demo_data, cache_dir, stop_after_save):
    """2 folds x 2 epochs: stopped after epoch 1 (mid fold 1), 2 (fold 1 done) or 3 (mid fold 2), the
    rerun resumes from that checkpoint, trains every later fold from its own start, and scores exactly
    what an uninterrupted run scores."""
    from maskopt.errors import SearchInterrupted

    space = parse_space(space_dict(study={"data": str(demo_data), "epochs": 2, "sampler": "random"}))
    whole = run_once(space, f"sqlite:///{tmp_path / 'whole.db'}", cache_dir)

    saves = []
    real_save = CheckpointStore.save

    def save_then_stop(self, origin, checkpoint):
        real_save(self, origin, checkpoint)
        saves.append(checkpoint.epochs_trained)
        if len(saves) == stop_after_save:
            raise KeyboardInterrupt  # what SIGTERM raises; the checkpoint just written is kept

    url = f"sqlite:///{tmp_path / 'stopped.db'}"
    monkeypatch.setattr(CheckpointStore, "save", save_then_stop)
    with pytest.raises(SearchInterrupted, match="resumes from its last epoch"):
        run_once(space, url, cache_dir)
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    resumed = run_once(space, url, cache_dir)

    trials = load(url, "tiny").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["resumed"]["epochs_inherited"] == stop_after_save
    assert trials[1].user_attrs["epochs_trained_here"] == 4 - stop_after_save
    assert resumed.best.value == whole.best.value
    assert resumed.best.fold_f1 == whole.best.fold_f1
