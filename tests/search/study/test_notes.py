"""Trial notes and confusion-matrix artifacts, as optuna-dashboard reads them."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna_dashboard import get_note
from PIL import Image

from maskopt.search.data.labels import class_names
from maskopt.search.study.notes import record_trial_note, trial_note

PARAMS = {"backbone": "resnet10t", "lr": 0.00125, "batch_size": 32, "loss": "focal", "image_size": 48}
FOLD_F1 = [0.7123, 0.6889, 0.7301]
FOLD_ACCURACY = [0.81, 0.79, 0.83]


def confusion(n: int = 18) -> np.ndarray:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, size=(n, n))
    matrix[np.diag_indices(n)] += 15
    return matrix


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'notes.db'}", study_name="notes", direction="maximize")


def record(trial, artifact_dir, matrix=None, names=None):
    matrix = confusion() if matrix is None else matrix
    return record_trial_note(trial, params=PARAMS, fold_f1=FOLD_F1, fold_accuracy=FOLD_ACCURACY, seconds=754.2,
                             images_per_second=612.4, class_names=names or class_names(), confusion=matrix.tolist(),
                             artifact_dir=artifact_dir)


def test_note_and_artifact_are_stored_with_the_trial(study, tmp_path):
    artifacts = tmp_path / "artifacts"
    trial = study.ask()
    artifact_id = record(trial, artifacts)
    study.tell(trial, float(np.mean(FOLD_F1)))

    note = get_note(trial)
    assert note.startswith(f"## Trial {trial.number}: macro F1 {np.mean(FOLD_F1):.4f} ± {np.std(FOLD_F1):.4f}")
    assert "Trained in 12 min 34 s at 612 images per second." in note
    assert "| 2 | 0.6889 | 0.7900 |" in note
    assert "| lr | `0.00125` |" in note and "| backbone | `resnet10t` |" in note
    assert "Out-of-fold accuracy" in note

    frozen = study.trials[trial.number]
    metas = optuna.artifacts.get_all_artifact_meta(frozen, storage=study._storage)
    assert [m.artifact_id for m in metas] == [artifact_id]
    assert metas[0].filename == f"confusion-trial-{trial.number}.png" and metas[0].mimetype == "image/png"
    stored = artifacts / artifact_id
    assert stored.is_file()
    with Image.open(stored) as image:
        assert image.format == "PNG" and min(image.size) > 400


def test_without_artifact_dir_only_the_note(study):
    trial = study.ask()
    assert record(trial, None) is None
    study.tell(trial, 0.7)
    assert "macro F1" in get_note(trial)
    assert optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage) == []


def test_other_class_counts_and_names(study, tmp_path):
    trial = study.ask()
    matrix = confusion(4)
    artifact_id = record(trial, tmp_path / "a", matrix=matrix, names=["cat", "dog", "fox", "owl"])
    study.tell(trial, 0.7)
    assert (tmp_path / "a" / artifact_id).is_file()


def test_notes_of_two_trials_stay_apart(study):
    first, second = study.ask(), study.ask()
    record(first, None)
    record_trial_note(second, params={"lr": 0.5}, fold_f1=[0.1], fold_accuracy=[0.2], seconds=5.0,
                      images_per_second=1.0, class_names=["a", "b"], confusion=[[1, 0], [0, 1]], artifact_dir=None)
    assert "| lr | `0.5` |" in get_note(second) and "resnet10t" not in get_note(second)
    assert "resnet10t" in get_note(first)


def test_finished_trials_refuse_artifacts(study, tmp_path):
    trial = study.ask()
    study.tell(trial, 0.5)
    with pytest.raises(RuntimeError, match="finished"):  # so the objective must call it before returning
        record(trial, tmp_path / "a", matrix=confusion(2), names=["a", "b"])


def test_trial_note_markdown_without_confusion():
    text = trial_note(3, params={"loss": "ce"}, fold_f1=[0.5, 0.6], fold_accuracy=[0.7], seconds=7200.0,
                      images_per_second=50.0)
    assert text.splitlines()[0] == "## Trial 3: macro F1 0.5500 ± 0.0500"
    assert "Trained in 2 h 00 min" in text and "| 2 | 0.6000 |  |" in text and "accuracy" in text
