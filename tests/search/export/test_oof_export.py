"""Out-of-fold predictions stored by the search, and the exports built on them: ensembles of
the best trials and per-class offsets, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from maskopt.cli import cli
from maskopt.search.data.dataset import load_dataset
from maskopt.search.study.oof import load_oof
from maskopt.search.study.record import StudyRecord, TrialRecord
from maskopt.search.train.metrics import PRESENT, macro_f1


def run(*args: str, cwd=None):
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def complete_trials(main_study):
    study = optuna.load_study(study_name="main", storage=main_study.url)
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def test_every_complete_trial_stores_its_out_of_fold_probabilities(main_study, complete_trials):
    dataset = load_dataset(main_study.data)
    assert len(complete_trials) == 2
    for trial in map(TrialRecord.of, complete_trials):
        assert trial.oof_artifact is not None
        oof = load_oof(trial, main_study.root / "maskopt-artifacts")
        assert oof.probs.shape == (len(dataset), 18)
        assert np.allclose(oof.probs.sum(1), 1, atol=0.02)  # probabilities, kept as float16
        assert np.array_equal(oof.labels, dataset.labels)
        assert sorted(np.unique(oof.folds)) == [0, 1]  # each image predicted by its one held-out fold
        assert oof.dataset == dataset.fingerprint()
        # The stored probabilities are those the trial was scored on: its confusion matrix agrees.
        confusion = np.asarray(trial.confusion)
        assert confusion.trace() == pytest.approx(int((oof.probs.argmax(1) == oof.labels).sum()), abs=2)
    pruned = StudyRecord.open(main_study.url, "main").trials((TrialState.PRUNED,))
    assert pruned and all(t.oof_artifact is None for t in pruned)  # nothing stored for a stopped trial


def test_export_an_ensemble_with_offsets_and_predict_with_it(main_study, complete_trials, tmp_path):
    out = tmp_path / "ensemble"
    result = run("export-best", "--storage", main_study.url, "--study", "main", "--out", str(out),
                 "--ensemble", "4", "--calibrate", "--device", "cpu", "--cache-dir", str(main_study.cache_dir),
                 "--quiet", cwd=main_study.root)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "out-of-fold macro F1" in result.output and "class offsets" in result.output
    config = json.loads((out / "config.json").read_text())
    assert len(config["class_offsets"]) == 18
    calibration = config["calibration"]
    assert calibration["offsets"] == config["class_offsets"]
    assert 0 <= calibration["nested_oof_macro_f1"] <= 1
    ensemble = config.get("ensemble")
    if "members" in config:  # the selection found a second trial worth adding
        assert abs(sum(m["weight"] for m in config["members"]) - 1) < 1e-9
        assert [m["trial"] for m in config["members"]] == ensemble["trials"]
        for m in config["members"]:
            assert (out / m["folder"] / "model.safetensors").is_file()
        assert ensemble["oof_macro_f1"] > ensemble["best_single_oof_macro_f1"]
    else:
        assert "models" in config
    from maskopt.search.export import read_export_config

    assert read_export_config(out).to_dict() == config  # offsets and calibration read back typed

    again = tmp_path / "again.csv"
    result = run("predict", "--model", str(out), "--data", str(main_study.data), "--out", str(again),
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert again.read_text() == (out / "submission.csv").read_text()


def test_offsets_change_predictions_as_stored(main_study, tmp_path):
    """predict applies class_offsets: a huge offset for one class makes it every image's answer."""
    export = tmp_path / "export"
    shutil.copytree(main_study.export, export)
    config = json.loads((export / "config.json").read_text())
    config["class_offsets"] = [0.0] * 18
    config["class_offsets"][7] = 50.0
    (export / "config.json").write_text(json.dumps(config))
    out = tmp_path / "sub.csv"
    result = run("predict", "--model", str(export), "--data", str(main_study.data), "--out", str(out),
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    answers = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert set(answers) == {"7"}


def ensemble_of_copies(main_study, folder, weights):
    """An ensemble export whose members are copies of the main study's export."""
    folder.mkdir()
    single = json.loads((main_study.export / "config.json").read_text())
    members = []
    for k, w in enumerate(weights):
        shutil.copytree(main_study.export, folder / f"m{k}")
        members.append({"folder": f"m{k}", "weight": w, "trial": single["trial"]})
    config = {key: single[key] for key in ("format", "num_classes", "class_names", "layout", "tta")}
    (folder / "config.json").write_text(json.dumps({**config, "members": members}))
    return folder


def test_an_ensemble_of_identical_members_predicts_as_one(main_study, tmp_path):
    folder = ensemble_of_copies(main_study, tmp_path / "copies", [0.25, 0.75])
    out = tmp_path / "sub.csv"
    result = run("predict", "--model", str(folder), "--data", str(main_study.data), "--out", str(out),
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert out.read_text() == (main_study.export / "submission.csv").read_text()


@pytest.mark.parametrize("member, message", [
    ({"folder": "../elsewhere", "weight": 1.0}, "must be the name of a folder inside the export"),
    ({"folder": "m0", "weight": -1}, "'weight' must be a number above 0"),
    ({"folder": "m0", "weight": True}, "'weight' must be a number above 0"),
    ({"folder": "missing", "weight": 1.0}, "not a maskopt export"),
    ({"folder": "m0", "weight": 1.0, "trial": "3"}, "'trial' must be a trial number, got '3'"),
])
def test_predict_refuses_a_hostile_ensemble(main_study, tmp_path, member, message):
    folder = ensemble_of_copies(main_study, tmp_path / "bad", [1.0])
    config = json.loads((folder / "config.json").read_text())
    config["members"] = [member]
    (folder / "config.json").write_text(json.dumps(config))
    result = run("predict", "--model", str(folder), "--data", str(main_study.data), "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_ensemble_without_stored_oof_says_where_it_looked(main_study, tmp_path):
    out = tmp_path / "nothing"
    result = run("export-best", "--storage", main_study.url, "--study", "main", "--out", str(out), "--ensemble", "3",
                 "--artifacts", str(tmp_path / "empty"), "--device", "cpu", "--quiet")
    assert result.exit_code == 1
    assert "no stored out-of-fold predictions" in result.output and "--artifacts" in result.output
    assert not out.exists()


def test_pooled_oof_f1_of_the_best_trial_is_reported_honestly(main_study, complete_trials):
    """The report's 'best trial alone' is the pooled OOF macro F1 of the study's best trial."""
    best = max(complete_trials, key=lambda t: t.value)
    oof = load_oof(best, main_study.root / "maskopt-artifacts")
    from maskopt.search.export.bundle import _select_ensemble

    members, weights, report = _select_ensemble([best], [oof], 1, 18)
    assert members == [best] and weights == [1.0]
    expected = macro_f1(oof.labels, oof.probs, n_classes=18, classes=PRESENT)  # as the search scored the folds
    assert report.best_single_oof_macro_f1 == pytest.approx(expected)


@pytest.fixture(scope="module")
def complementary_study(main_study, complete_trials, tmp_path_factory):
    """The main study's two complete trials, copied with made-up OOF predictions: each is right on
    half of the classes only, so the ensemble selection must take both."""
    import tempfile

    from maskopt.search.study import record
    from maskopt.storage import artifact_store, create_or_load_study, open_storage

    root = tmp_path_factory.mktemp("complementary")
    url = f"sqlite:///{root / 'two.db'}"
    source = optuna.load_study(study_name="main", storage=main_study.url)
    study = create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name="two")
    for key, value in source.user_attrs.items():
        if key != "maskopt_export":
            study.set_user_attr(key, value)
    oof = load_oof(complete_trials[0], main_study.root / "maskopt-artifacts")
    store = artifact_store(root / "artifacts")
    for k, trial in enumerate(complete_trials[:2]):
        probs = np.full(oof.probs.shape, 0.01, dtype=np.float32)
        right = oof.labels % 2 == k  # trial k knows the classes of parity k, and is unsure elsewhere
        probs[right, oof.labels[right]] = 0.9
        probs[~right, (oof.labels[~right] + 1) % 18] = 0.2
        probs[~right, oof.labels[~right]] = 0.15
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/oof.npz"
            np.savez_compressed(path, probs=probs.astype(np.float16), labels=oof.labels.astype(np.int16),
                                folds=oof.folds.astype(np.int16), dataset=np.array(oof.dataset))
            artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=path, study_or_trial=study)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=trial.value, params=trial.params, distributions=trial.distributions,
            user_attrs={**trial.user_attrs, record.OOF_ARTIFACT: artifact_id}))
    return url, root


def test_a_two_member_ensemble_is_exported_recorded_and_predicted(main_study, complementary_study, tmp_path):
    url, root = complementary_study
    out = tmp_path / "two"
    result = run("export-best", "--storage", url, "--study", "two", "--data", str(main_study.data), "--out", str(out),
                 "--ensemble", "3", "--artifacts", str(root / "artifacts"), "--device", "cpu",
                 "--cache-dir", str(main_study.cache_dir), "--quiet")
    assert result.exit_code == 0, result.output + repr(result.exception)
    config = json.loads((out / "config.json").read_text())
    assert sorted(m["trial"] for m in config["members"]) == [0, 1] and "models" not in config
    assert [m["weight"] for m in config["members"]] == [0.5, 0.5]
    assert config["ensemble"]["oof_macro_f1"] > config["ensemble"]["best_single_oof_macro_f1"]
    assert "ensemble of trials (weights): " in result.output and result.output.count("(0.50)") == 2
    recorded = StudyRecord.open(url, "two").export
    assert sorted(recorded.models) == ["member-trial-0/model.safetensors", "member-trial-1/model.safetensors"]
    assert recorded.path == out.resolve() and recorded.tta is False
    from maskopt.search.export import EnsembleConfig, ExportConfig

    typed = EnsembleConfig.from_json(out)  # what export-best wrote reads back typed, and writes the same bytes
    assert typed.to_dict() == config and [m.trial for m in typed.members] == [m["trial"] for m in config["members"]]
    typed.to_json(tmp_path)
    assert (tmp_path / "config.json").read_text() == (out / "config.json").read_text()
    for m in typed.members:
        member = ExportConfig.from_json(out / m.folder)
        assert member.trial == m.trial and member.to_dict() == json.loads((out / m.folder / "config.json").read_text())
    again = tmp_path / "again.csv"
    result = run("predict", "--model", str(out), "--data", str(main_study.data), "--out", str(again),
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert again.read_text() == (out / "submission.csv").read_text()
    page = tmp_path / "report.html"
    result = run("report", "--storage", url, "--study", "two", "--artifacts", str(root / "artifacts"), "--out", str(page))
    assert result.exit_code == 0, result.output  # the report reads an ensemble's export too
    assert "member-trial-0/model.safetensors" in page.read_text()
