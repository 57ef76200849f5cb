"""create_or_load_study, load_existing_study, list_studies and artifact_store."""

import math

import optuna
import pytest
from optuna.trial import TrialState

from maskopt.errors import StorageError
from maskopt.storage import (
    DEFAULT_ARTIFACT_DIR,
    artifact_store,
    create_or_load_study,
    list_studies,
    load_existing_study,
    open_storage,
)


@pytest.fixture
def storage(storage_url):
    """Each test runs on a SQLite file and on a PostgreSQL database."""
    return open_storage(storage_url, heartbeat_interval=None)


def add_trials(study, states_and_values):
    for state, value in states_and_values:
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params={"x": 0.5},
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            )
        )


def test_create_then_load_the_same_study(storage):
    first = create_or_load_study(storage=storage, study_name="s", direction="minimize")
    again = create_or_load_study(storage=storage, study_name="s", direction="minimize")
    assert first._study_id == again._study_id
    assert again.direction == optuna.study.StudyDirection.MINIMIZE


def test_existing_study_with_another_direction_is_an_error(storage):
    create_or_load_study(storage=storage, study_name="s", direction="minimize")
    with pytest.raises(StorageError, match=r"Study 's' .* is set to minimize, but this run wants to maximize"):
        create_or_load_study(storage=storage, study_name="s", direction="maximize")


def test_load_existing_study_by_name_and_the_only_one(storage):
    create_or_load_study(storage=storage, study_name="only")
    assert load_existing_study(storage=storage, study_name=None).study_name == "only"
    assert load_existing_study(storage=storage, study_name="only").study_name == "only"


def test_load_existing_study_from_an_empty_storage(storage):
    with pytest.raises(StorageError, match=r"holds no study\. Create one with `maskopt search`"):
        load_existing_study(storage=storage, study_name=None)


def test_load_existing_study_lists_the_studies(storage):
    for name in ("alpha", "beta"):
        create_or_load_study(storage=storage, study_name=name)
    with pytest.raises(StorageError, match=r"holds 2 studies: alpha, beta\. Name one"):
        load_existing_study(storage=storage, study_name=None)
    with pytest.raises(StorageError, match=r"No study 'gamma' in .*Studies there: alpha, beta\."):
        load_existing_study(storage=storage, study_name="gamma")


def test_list_studies_counts_trials_by_state(storage):
    study = create_or_load_study(storage=storage, study_name="counted", direction="maximize")
    add_trials(
        study,
        [(TrialState.COMPLETE, 0.25), (TrialState.COMPLETE, 0.75), (TrialState.COMPLETE, 0.5),
         (TrialState.PRUNED, None), (TrialState.PRUNED, None), (TrialState.FAIL, None)],
    )
    study.enqueue_trial({"x": 0.1})  # WAITING
    study.ask()  # RUNNING (the enqueued one)
    study.ask()  # RUNNING
    create_or_load_study(storage=storage, study_name="empty", direction="minimize")

    counted, empty = list_studies(storage)
    assert (counted.name, counted.direction) == ("counted", "maximize")
    assert (counted.n_complete, counted.n_pruned, counted.n_fail, counted.n_running, counted.n_waiting) == (3, 2, 1, 2, 0)
    assert counted.n_trials == 8
    assert math.isclose(counted.best_value, 0.75)
    assert counted.first_start is not None and counted.last_complete >= counted.first_start

    assert (empty.name, empty.direction, empty.n_trials, empty.best_value) == ("empty", "minimize", 0, None)
    assert empty.first_start is None and empty.last_complete is None
    assert empty.to_dict()["first_start"] is None
    assert isinstance(counted.to_dict()["first_start"], str)


def test_list_studies_counts_waiting_trials_and_minimize_best(storage):
    study = create_or_load_study(storage=storage, study_name="m", direction="minimize")
    add_trials(study, [(TrialState.COMPLETE, 3.0), (TrialState.COMPLETE, -1.5)])
    study.enqueue_trial({"x": 0.2})
    (summary,) = list_studies(storage)
    assert summary.n_waiting == 1
    assert summary.best_value == -1.5


def test_list_studies_multi_objective_has_no_best_value(storage):
    optuna.create_study(storage=storage, study_name="mo", directions=["minimize", "maximize"])
    (summary,) = list_studies(storage)
    assert summary.direction == "minimize,maximize"
    assert summary.best_value is None


def test_artifact_store_creates_its_folder(tmp_path):
    folder = tmp_path / "deep" / DEFAULT_ARTIFACT_DIR
    store = artifact_store(folder)
    assert folder.is_dir()
    assert isinstance(store, optuna.artifacts.FileSystemArtifactStore)
