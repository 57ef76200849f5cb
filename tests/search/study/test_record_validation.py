"""Values read back from the storage and the artifacts are checked: garbage reads as missing, never raises.

The storage is shared: a hand edit, another program or a hostile user can put anything in a trial's
attributes or an out-of-fold file. ``TrialRecord.of`` reads a malformed value as None (or an empty
tuple), so the report skips that section with a sentence, ``export-best`` refuses a trial whose
retraining length it cannot know, and ``load_oof`` reads a file that is not what the search writes as
none. The commands run on a copy of the shared main study whose attributes were overwritten.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from maskopt.cli import cli
from maskopt.search.study import record
from maskopt.search.study.oof import load_oof
from maskopt.search.study.record import MAX_FOLDS, StudyRecord, TrialRecord
from maskopt.storage import artifact_store

NAN, INF = float("nan"), float("inf")


def trial_with(user_attrs=None, system_attrs=None) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs=user_attrs or {},
                                      system_attrs=system_attrs or {})
    trial.number = 7
    return trial


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- TrialRecord.of ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "field", "read"),
    [
        (record.FOLD_F1, [NAN, 0.5], "fold_f1", ()),
        (record.FOLD_F1, ["0.5", 0.6], "fold_f1", ()),
        (record.FOLD_F1, [1.5, 0.5], "fold_f1", ()),
        (record.FOLD_F1, [True, 0.5], "fold_f1", ()),
        (record.FOLD_F1, [0.5] * (MAX_FOLDS + 1), "fold_f1", ()),
        (record.FOLD_F1, "0.5", "fold_f1", ()),
        (record.FOLD_ACCURACY, {"fold": 0.5}, "fold_accuracy", ()),
        (record.BEST_EPOCH, "six", "best_epoch", None),
        (record.BEST_EPOCH, [0, 3], "best_epoch", None),
        (record.BEST_EPOCH, [2.5, 3], "best_epoch", None),
        (record.BEST_EPOCH, [True], "best_epoch", None),
        (record.BEST_EPOCH, [3] * (MAX_FOLDS + 1), "best_epoch", None),
        (record.EPOCHS_TRAINED, "many", "epochs_trained", None),
        (record.EPOCHS_TRAINED, -4, "epochs_trained", None),
        (record.EPOCHS_TRAINED_HERE, 2.5, "epochs_trained_here", None),
        (record.SECONDS, -5.0, "seconds", None),
        (record.SECONDS, INF, "seconds", None),
        (record.SECONDS, "12", "seconds", None),
        (record.IMAGES_PER_SECOND, NAN, "images_per_second", None),
        (record.CONFUSION, [[1, 2], [3]], "confusion", None),
        (record.CONFUSION, [[1]], "confusion", None),
        (record.CONFUSION, [["a", 1], [1, 1]], "confusion", None),
        (record.CONFUSION, [[-1, 0], [0, 1]], "confusion", None),
        (record.CONFUSION, [[1.5, 0], [0, 1]], "confusion", None),
        (record.CONFUSION, [[10**13, 0], [0, 1]], "confusion", None),
        (record.CONFUSION, "[[1, 0], [0, 1]]", "confusion", None),
        (record.FAIL_REASON, 42, "fail_reason", None),
        (record.PRUNE_REASON, ["pruned"], "prune_reason", None),
        (record.PRUNED_AFTER_FOLDS, "2", "pruned_after_folds", None),
        (record.WORKER, ["host", 1], "worker", None),
        (record.RESUMED, [1, 2], "resumed", None),
        (record.OOF_ARTIFACT, 7, "oof_artifact", None),
    ],
)
def test_a_malformed_trial_attribute_reads_as_missing(key, value, field, read):
    assert getattr(TrialRecord.of(trial_with({key: value})), field) == read


@pytest.mark.parametrize(("value", "origin", "history"), [("x", 7, ()), ([1, "a"], 7, ()), (-1, 7, ())])
def test_malformed_retry_attributes_read_as_no_retry(value, origin, history):
    trial = trial_with(system_attrs={record.RETRIED_FROM: value, record.RETRY_HISTORY: value})
    read = TrialRecord.of(trial)
    assert (read.origin, read.retry_history) == (origin, history)


def test_well_formed_attributes_are_read_as_written():
    attrs = {record.FOLD_F1: [0.5, 1], record.FOLD_ACCURACY: [0, 0.75], record.BEST_EPOCH: [3, 1],
             record.EPOCHS_TRAINED: 4, record.EPOCHS_TRAINED_HERE: 0, record.SECONDS: 12, record.IMAGES_PER_SECOND: 0.0,
             record.CONFUSION: [[3, 0], [1, 2]], record.PRUNED_AFTER_FOLDS: 1, record.WORKER: "h:1",
             record.RESUMED: {"from_trial": 2}, record.OOF_ARTIFACT: "a", record.FAIL_REASON: "oom"}
    read = TrialRecord.of(trial_with(attrs, {record.RETRIED_FROM: 2, record.RETRY_HISTORY: [2, 5]}))
    assert (read.fold_f1, read.fold_accuracy, read.best_epoch) == ((0.5, 1.0), (0.0, 0.75), (3, 1))
    assert (read.epochs_trained, read.epochs_trained_here, read.seconds, read.images_per_second) == (4, 0, 12.0, 0.0)
    assert read.confusion == [[3, 0], [1, 2]] and read.pruned_after_folds == 1 and read.worker == "h:1"
    assert read.resumed == {"from_trial": 2} and read.oof_artifact == "a" and read.fail_reason == "oom"
    assert (read.origin, read.retry_history) == (2, (2, 5))


def test_missing_attributes_read_as_empty_or_none():
    read = TrialRecord.of(trial_with())
    assert read.fold_f1 == read.best_epoch == read.retry_history == ()
    assert read.confusion is read.seconds is read.fail_reason is None and read.origin == 7


@pytest.mark.parametrize("names", [[1, 2], ["a", None], "ab", {"a": 1}])
def test_class_names_that_are_not_strings_read_as_none(names):
    study = optuna.create_study()
    study.set_user_attr(record.CLASS_NAMES, names)
    assert StudyRecord.of(study).class_names is None


# --- load_oof ------------------------------------------------------------------------------------


def stored(tmp_path, **arrays) -> TrialRecord:
    """A trial whose out-of-fold file holds ``arrays`` (as save_oof writes them, unless changed)."""
    n = 6
    probs = np.full((n, 3), 0.2)
    probs[:, 0] = 0.6
    content = {"probs": probs.astype(np.float16), "labels": np.zeros(n, np.int16),
               "folds": np.arange(n, dtype=np.int16) % 2, "dataset": np.array("fingerprint"), **arrays}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **content)
    buffer.seek(0)
    artifact_store(tmp_path).write("oof.npz", buffer)
    return TrialRecord.of(trial_with({record.OOF_ARTIFACT: "oof.npz"}))


def test_load_oof_reads_a_well_formed_file(tmp_path):
    oof = load_oof(stored(tmp_path), tmp_path)
    assert oof is not None and oof.probs.shape == (6, 3) and oof.dataset == "fingerprint"


@pytest.mark.parametrize(
    "arrays",
    [
        {"probs": np.array([[np.nan, 0.5, 0.5]] * 6, np.float16)},
        {"probs": np.array([[np.inf, 0.5, 0.5]] * 6, np.float16)},
        {"probs": np.array([[-0.5, 1.0, 0.5]] * 6, np.float16)},
        {"probs": np.full(6, 0.5, np.float16)},
        {"probs": np.zeros((6, 0), np.float16)},
        {"labels": np.zeros(5, np.int16)},
        {"labels": np.full(6, 3, np.int16)},
        {"labels": np.full(6, -1, np.int16)},
        {"folds": np.zeros((6, 2), np.int16)},
        {"folds": np.full(6, -1, np.int16)},
    ],
    ids=["nan", "inf", "negative", "1-d", "no-classes", "short-labels", "label-too-big", "label-negative",
         "2-d-folds", "negative-fold"],
)
def test_load_oof_reads_a_malformed_file_as_none(tmp_path, arrays):
    assert load_oof(stored(tmp_path, **arrays), tmp_path) is None


# --- the commands, on a copy of the main study with garbage written over the best trial -----------


def copy_of(main_study, tmp_path) -> tuple[Path, int, int]:
    """A copy of the main study's SQLite file: (path, best trial's number, the other complete trial's number)."""
    db = tmp_path / "main.db"
    shutil.copy(main_study.db, db)
    best, other = StudyRecord.open(f"sqlite:///{db}", "main").top(2)
    return db, best.number, other.number


def overwrite(db: Path, number: int, **attrs) -> None:
    """Write ``attrs`` over the finished trial ``number``'s user attributes, as a hand edit of the file would
    (Optuna itself refuses to change a finished trial)."""
    with sqlite3.connect(db) as connection:
        for key, value in attrs.items():
            changed = connection.execute(
                "UPDATE trial_user_attributes SET value_json = ? WHERE key = ? AND trial_id = "
                "(SELECT trial_id FROM trials WHERE number = ?)", (json.dumps(value), key, number)).rowcount
            assert changed == 1, f"trial {number} has no {key} attribute to overwrite"


def test_report_skips_what_is_malformed(main_study, tmp_path):
    db, best, _ = copy_of(main_study, tmp_path)
    overwrite(db, best, **{record.FOLD_F1: [NAN, "x"], record.FOLD_ACCURACY: [0.5] * 100_000,
                            record.CONFUSION: [[1, 2], [3]], record.SECONDS: -5, record.EPOCHS_TRAINED: "many",
                            record.IMAGES_PER_SECOND: INF, record.BEST_EPOCH: "six"})
    out = tmp_path / "report.html"
    result = run("report", "--storage", f"sqlite:///{db}", "--study", "main", "--out", out,
                 "--artifacts", main_study.root / "maskopt-artifacts")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert f"trial {best} · no per-fold scores recorded" in page
    assert (f"Trial {best} has no out-of-fold predictions recorded (its `confusion` attribute is missing, or is not "
            f"a square matrix of counts)") in page
    assert "NaN" not in re.sub(r"<script\b.*?</script>", "", page, flags=re.DOTALL), "no garbage reaches the text"


@pytest.mark.parametrize("best_epoch", ["six", [0, 2], [10**9, 2]], ids=["text", "zero", "absurd"])
def test_export_best_refuses_a_trial_without_usable_best_epochs(main_study, tmp_path, best_epoch):
    db, best, _ = copy_of(main_study, tmp_path)
    overwrite(db, best, **{record.BEST_EPOCH: best_epoch})
    out = tmp_path / "export"
    result = run("export-best", "--storage", f"sqlite:///{db}", "--study", "main", "--out", out, "--device", "cpu",
                 "--cache-dir", main_study.cache_dir, "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: trial {best} of study 'main' records no usable best epoch per fold" in result.output
    assert "from 1 to the study's 6 epochs" in result.output
    assert not out.exists()


def test_out_of_fold_predictions_holding_nan_are_skipped(main_study, tmp_path):
    db, best, other = copy_of(main_study, tmp_path)
    url = f"sqlite:///{db}"
    artifacts = tmp_path / "artifacts"
    shutil.copytree(main_study.root / "maskopt-artifacts", artifacts)
    artifact_id = StudyRecord.open(url, "main").top(1)[0].oof_artifact
    with np.load(artifacts / artifact_id) as data:
        content = dict(data)
    content["probs"][3, 1] = np.nan
    with (artifacts / artifact_id).open("wb") as f:
        np.savez_compressed(f, **content)

    result = run("label-issues", "--storage", url, "--study", "main", "--artifacts", artifacts, "--limit", 1)
    assert result.exit_code == 0, result.output
    assert f"out-of-fold predictions of trial {other}," in result.output, "the best trial's are skipped"

    result = run("export-best", "--storage", url, "--study", "main", "--out", tmp_path / "export", "--ensemble", 2,
                 "--artifacts", artifacts, "--device", "cpu", "--quiet")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: trial {best} of study 'main' has no stored out-of-fold predictions" in result.output
