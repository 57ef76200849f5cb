"""Running studies: per-fold attributes, pruning, resuming to a total, faults kept inside trials."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from conftest import logged_lines
from optuna.trial import TrialState

from maskopt.cli import cli
from maskopt.errors import SpaceError
from maskopt.search.data.dataset import load_dataset
from maskopt.search.space import load_space, parse_space
from maskopt.search.study import record
from maskopt.search.study.record import StudyRecord
from maskopt.search.study.runner import run_search, sampler_seed
from maskopt.search.train import loop as training
from maskopt.search.train.losses import LOSSES
from maskopt.search.train.resources import _busy_cores, free_cores, threads_per_worker

FOLD_ATTRS = ("fold_f1", "fold_accuracy", "best_epoch")


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def search(space, tmp_path, cache_dir, *, trials: int, db: str = "s.db", **kwargs):
    """``run_search`` on one CPU thread, quietly; returns the study and the logged lines."""
    url = f"sqlite:///{tmp_path / db}"
    with logged_lines() as lines:
        run_search(space, trials=trials, storage=url, device="cpu", cache_dir=cache_dir, threads=1,
                   heartbeat_interval=None, quiet=True, **kwargs)
    return load(url, space.study.name), lines


def counted_trials(study) -> int:
    return StudyRecord.of(study).counted


def top_trials(study, n: int = 5):
    return StudyRecord.of(study).top(n)


# --- the main study: 3 trials, 2 folds, on a SQLite file -----------------------------------------


def test_main_study_completes_with_one_weak_trial_pruned(main_study):
    study = load(main_study.url, "main")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.params for t in study.trials] == [
        {"lr": 0.01, "loss": "ce"}, {"lr": 0.01, "loss": "label_smoothing"}, {"lr": 1e-8, "loss": "ce"}]
    assert counted_trials(study) == 3
    assert "'main': 3/3 trials in sqlite:///" in main_study.output


def test_complete_trials_carry_the_per_fold_attributes(main_study):
    for trial in load(main_study.url, "main").get_trials(states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        for key in FOLD_ATTRS:
            assert len(attrs[key]) == 2, key
        assert all(0.0 <= f <= 1.0 for f in attrs["fold_f1"] + attrs["fold_accuracy"])
        assert all(1 <= e <= 6 for e in attrs["best_epoch"])
        assert trial.value == pytest.approx(np.mean(attrs["fold_f1"]), abs=1e-5)
        assert attrs["seconds"] > 0 and attrs["images_per_second"] > 0 and attrs["peak_memory_mb"] > 0
        assert isinstance(attrs["param_count"], int) and attrs["param_count"] > 100_000
        assert attrs["device"] == "cpu"
        assert attrs["fast_path"] == {"amp": "off", "channels_last": True, "compile": False, "cudnn_benchmark": False}
        assert attrs["epochs_trained"] == 12
        assert np.asarray(attrs["confusion"]).shape == (18, 18)
        # Epoch reporting: one value per epoch of every fold, steps 0..11.
        assert sorted(trial.intermediate_values) == list(range(12))
        assert "oom_retry" not in attrs and "fail_reason" not in attrs


def test_weak_trial_is_pruned_with_its_reason(main_study):
    study = load(main_study.url, "main")
    weak = study.trials[2]
    assert weak.state == TrialState.PRUNED
    assert weak.user_attrs["prune_reason"].startswith("pruned at fold 1 epoch ")
    assert "running mean macro F1" in weak.user_attrs["prune_reason"]
    step = max(weak.intermediate_values)
    assert step < 12 and weak.user_attrs["epochs_trained"] == step + 1
    complete = [t.intermediate_values[step] for t in study.trials[:2]]
    assert weak.intermediate_values[step] < np.median(complete)
    assert weak.value == weak.intermediate_values[step]  # Optuna keeps a pruned trial's last report


def test_study_stores_its_space(main_study):
    study = load(main_study.url, "main")
    assert study.user_attrs[record.SPACE] == load_space(main_study.space_path).to_dict()
    assert study.user_attrs[record.SPACE]["params"]["lr"] == {"low": 1e-8, "high": 0.1, "log": True}


def test_study_stores_what_its_trials_share(main_study):
    """Layout and class names live with the study: the report reads them, never the data on disk."""
    study = load(main_study.url, "main")
    dataset = load_dataset(main_study.data)
    assert study.user_attrs[record.LAYOUT] == "competition"
    assert study.user_attrs[record.CLASS_NAMES] == list(dataset.class_names)
    best = top_trials(study, 1)[0]
    assert best.ran_every_fold and len(best.fold_f1) == 2 and best.oof_artifact
    assert best.epochs_trained == 2 * 6 and best.origin == best.number


def test_complete_trials_record_their_cpu_latency_and_size(main_study):
    for trial in top_trials(load(main_study.url, "main")):
        assert set(trial.latency.ms_per_image) == {1, 32} and all(ms > 0 for ms in trial.latency.ms_per_image.values())
        assert trial.latency.threads == 1 and trial.latency.params > 100_000  # mobilenetv3_small_050: 0.6 M


def test_search_exports_the_best_trial_when_it_reaches_its_total(main_study):
    best = top_trials(load(main_study.url, "main"), 1)[0]
    assert f"exported trial {best.number} of study 'main'" in main_study.output
    assert (main_study.export / "config.json").is_file()
    assert (main_study.export / "submission.csv").is_file()


# --- resuming ---------------------------------------------------------------------------------------


def test_rerun_adds_trials_up_to_the_total(write_space, demo_data, cache_dir, tmp_path):
    space_path = write_space(study={"data": str(demo_data)}, params={"lr": {"low": 1e-3, "high": 3e-2, "log": True}})
    url = f"sqlite:///{tmp_path / 'resume.db'}"

    def run(trials: int, path=space_path):
        return CliRunner().invoke(cli, ["search", "--space", str(path), "--storage", url, "--trials", str(trials),
                                        "--device", "cpu", "--cache-dir", str(cache_dir), "--no-export", "--quiet"])

    first = run(2)
    assert first.exit_code == 0, first.output
    assert len(load(url, "tiny").trials) == 2 and "2/2 trials" in first.output
    second = run(3)
    assert second.exit_code == 0, second.output
    trials = load(url, "tiny").trials
    assert len(trials) == 3, "a rerun continues to the total; it does not add --trials more"
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    third = run(3)
    assert third.exit_code == 0 and len(load(url, "tiny").trials) == 3  # nothing left to do

    # The study remembers its space; another space under the same name is refused, and nothing runs.
    other = write_space("other.yaml", study={"data": str(demo_data), "epochs": 2},
                        params={"lr": {"low": 1e-3, "high": 3e-2, "log": True}})
    refused = run(4, other)
    assert refused.exit_code == 1
    assert refused.output.startswith(f"Error: study 'tiny' was created from a different search space than {other}")
    assert "Use the same space to resume it, or give a new --study name." in refused.output
    assert len(load(url, "tiny").trials) == 3


def test_resuming_with_another_dataset_path_is_allowed(space_dict, tmp_path):
    # Machines of one study may keep the data in different places: only what is trained must match.
    first = parse_space(space_dict(study={"data": "/a/data"}))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'b.db'}", study_name="tiny", direction="maximize")
    StudyRecord.of(study).bind_space(first)
    StudyRecord.of(study).bind_space(parse_space(space_dict(study={"data": "/elsewhere"})))
    with pytest.raises(SpaceError, match=r"study 'tiny' was created from a different search space than <space>"):
        StudyRecord.of(study).bind_space(parse_space(space_dict(study={"data": "/a/data"}, params={"batch_size": 8})))


def test_a_study_stored_by_an_earlier_maskopt_resumes(space_dict, tmp_path):
    """Keys a newer maskopt added to the space (with their defaults) do not make an earlier study's
    stored space differ from the same file read today."""
    space = parse_space(space_dict())
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'old.db'}", study_name="tiny", direction="maximize")
    earlier = space.to_dict()
    del earlier["study"]["workers_per_gpu"]  # a key it did not know yet
    study.set_user_attr(record.SPACE, earlier)
    StudyRecord.of(study).bind_space(space)  # resumes
    with pytest.raises(SpaceError, match="different search space"):
        StudyRecord.of(study).bind_space(parse_space(space_dict(study={"warmup_epochs": 0.5})))


def test_enqueued_trials_run_even_when_they_fill_the_total(space_dict, demo_data, cache_dir, tmp_path):
    # Waiting trials (enqueued, or re-queued after a dead worker) count towards the total: they
    # must run, not be left waiting because the count is already reached.
    space = parse_space(space_dict(study={"data": str(demo_data)}, params={"batch_size": [8, 16]}))
    url = f"sqlite:///{tmp_path / 'q.db'}"
    optuna.create_study(storage=url, study_name="tiny", direction="maximize").enqueue_trial({"batch_size": 8})
    study, _ = search(space, tmp_path, cache_dir, trials=1, db="q.db")
    assert [(t.state, t.params) for t in study.trials] == [(TrialState.COMPLETE, {"batch_size": 8})]


# --- faults stay inside their trial ---------------------------------------------------------------


@pytest.fixture
def gpu_that_fits_8_images(monkeypatch):
    """Training micro-batches of more than 8 images raise CUDA's out-of-memory error."""
    real = training.prepare_batch
    seen: list[int] = []

    def prepare_batch(images, rows, *args, augment=None, **kwargs):
        if augment is not None:  # a training batch (validation batches are not augmented)
            seen.append(len(rows))
            if len(rows) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(images, rows, *args, augment=augment, **kwargs)

    monkeypatch.setattr(training, "prepare_batch", prepare_batch)
    return seen


def test_out_of_memory_is_retried_at_half_batch_then_recorded(gpu_that_fits_8_images, space_dict, demo_data,
                                                               cache_dir, tmp_path):
    space = parse_space(space_dict(study={"data": str(demo_data)}, params={"batch_size": [8, 16, 64]}))
    url = f"sqlite:///{tmp_path / 's.db'}"
    queued = optuna.create_study(storage=url, study_name="tiny", direction="maximize")
    for batch_size in (16, 64, 8):
        queued.enqueue_trial({"batch_size": batch_size})
    study, lines = search(space, tmp_path, cache_dir, trials=3)

    retried, failed, fine = study.trials
    # 16 does not fit; 8 x 2 accumulation does, with the same effective batch.
    assert retried.state == TrialState.COMPLETE and retried.value is not None
    assert retried.user_attrs["oom_retry"].endswith("out of memory at batch 16; retried at 8 x 2 accumulation")
    assert len(retried.user_attrs["fold_f1"]) == 2
    # 64 does not fit, and neither does 32: the trial fails with the reason, the study goes on.
    assert failed.state == TrialState.FAIL
    reason = failed.user_attrs["fail_reason"]
    assert "out of memory in fold 1 at batch 64, and again at 32 x 2 accumulation" in reason
    assert "lower batch_size or image_size" in reason and "Tried to allocate 2.00 GiB" in reason
    assert fine.state == TrialState.COMPLETE and "oom_retry" not in fine.user_attrs
    assert counted_trials(study) == 3  # a trial that failed on its own counts towards the total
    assert any("trial   1 FAIL" in line and "out of memory" in line for line in lines)
    assert max(gpu_that_fits_8_images) == 64 and 32 in gpu_that_fits_8_images


def test_non_finite_loss_prunes_with_its_reason(monkeypatch, space_dict, demo_data, cache_dir, tmp_path):
    def nan_loss(logits, y):
        return torch.nn.functional.cross_entropy(logits, y) * float("nan")

    monkeypatch.setitem(LOSSES, "ce", nan_loss)
    space = parse_space(space_dict(study={"data": str(demo_data), "epochs": 2}))
    study, lines = search(space, tmp_path, cache_dir, trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] == "training loss became nan in epoch 1"
    assert trial.user_attrs["epochs_trained"] == 0
    assert any("PRUNED" in line and "training loss became nan" in line for line in lines)


@pytest.mark.parametrize("pruning_from_step, state", [(2, TrialState.PRUNED), (3, TrialState.COMPLETE)])
def test_a_trial_is_never_pruned_after_its_last_epoch(monkeypatch, pruning_from_step, state, space_dict, demo_data,
                                                      cache_dir, tmp_path):
    """2 folds x 2 epochs = steps 0-3. A pruner that stops every trial from step 2 on stops this one
    at step 2; from step 3, the last, there is nothing left to save and the trial completes."""
    from maskopt.search.study import runner

    monkeypatch.setattr(runner, "build_pruner", lambda settings: optuna.pruners.ThresholdPruner(
        lower=2.0, n_warmup_steps=pruning_from_step))
    space = parse_space(space_dict(study={"data": str(demo_data), "epochs": 2}))
    study, _ = search(space, tmp_path, cache_dir, trials=1)
    (trial,) = study.trials
    assert trial.state == state
    assert max(trial.intermediate_values) == pruning_from_step  # the last step reported, either way


# --- determinism, Wilcoxon, other layouts ---------------------------------------------------------


def test_same_seed_gives_same_parameters_and_scores(space_dict, demo_data, cache_dir, tmp_path):
    space = parse_space(space_dict(study={"data": str(demo_data), "seed": 3},
                                   params={"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "loss": ["ce", "focal"]}))

    def outcome(db):
        study, _ = search(space, tmp_path, cache_dir, trials=2, db=db)
        return [(t.params, t.value, t.user_attrs["fold_f1"], t.user_attrs["best_epoch"]) for t in study.trials]

    first, second = outcome("a.db"), outcome("b.db")
    assert first == second
    assert first[0][0] != first[1][0]  # the sampler did draw two configurations


def test_a_configuration_scores_the_same_whichever_trial_number_runs_it(space_dict, demo_data, cache_dir, tmp_path):
    """Seeds come from (study seed, parameters, fold), not the trial number: two workers that take
    the same configurations in swapped order score each configuration identically."""
    space = parse_space(space_dict(study={"data": str(demo_data), "seed": 3, "epochs": 2},
                                   params={"lr": [0.003, 0.02], "aug_strength": 0.3}))

    def scores(db, order):
        url = f"sqlite:///{tmp_path / db}"
        queued = optuna.create_study(storage=url, study_name="tiny", direction="maximize")
        for lr in order:
            queued.enqueue_trial({"lr": lr})
        study, _ = search(space, tmp_path, cache_dir, trials=2, db=db)
        return {t.params["lr"]: (t.value, t.user_attrs["fold_f1"], t.intermediate_values) for t in study.trials}

    in_order, swapped = scores("a.db", [0.003, 0.02]), scores("b.db", [0.02, 0.003])
    assert in_order == swapped
    assert in_order[0.003][0] != in_order[0.02][0]  # two configurations that train differently


def test_wilcoxon_reports_per_fold_and_stops_a_worse_trial_early(space_dict, demo_data, cache_dir, tmp_path):
    space = parse_space(space_dict(
        study={"data": str(demo_data), "folds": 3, "pruner": {"name": "wilcoxon", "p_threshold": 0.9}},
        params={"lr": {"low": 1e-8, "high": 0.1, "log": True}}))
    url = f"sqlite:///{tmp_path / 's.db'}"
    queued = optuna.create_study(storage=url, study_name="tiny", direction="maximize")
    queued.enqueue_trial({"lr": 0.01})
    study, _ = search(space, tmp_path, cache_dir, trials=1)  # no best trial yet: nothing to compare to

    (first,) = study.trials
    assert first.state == TrialState.COMPLETE
    assert sorted(first.intermediate_values) == [0, 1, 2]  # steps are folds
    assert list(first.intermediate_values.values()) == pytest.approx(first.user_attrs["fold_f1"], abs=1e-6)
    assert "pruned_after_folds" not in first.user_attrs

    # A reference that no real trial can match (F1 1.0 on every fold), so the comparison below does
    # not depend on how well a tiny trial happens to learn.
    perfect = optuna.trial.create_trial(
        params={"lr": 0.01}, distributions={"lr": optuna.distributions.FloatDistribution(1e-8, 0.1, log=True)},
        value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}, user_attrs={"fold_f1": [1.0, 1.0, 1.0]})
    study.add_trial(perfect)
    study.enqueue_trial({"lr": 1e-3})
    study, _ = search(space, tmp_path, cache_dir, trials=3)

    weak = study.trials[2]
    # After two folds worse than the best trial's, it stops. Optuna's advice for Wilcoxon is to
    # return the mean so far: the trial is COMPLETE, marked, and never the best to export.
    assert weak.state == TrialState.COMPLETE and weak.user_attrs["pruned_after_folds"] == 2
    assert weak.value == pytest.approx(np.mean(weak.user_attrs["fold_f1"]), abs=1e-5)
    assert sorted(weak.intermediate_values) == [0, 1]
    assert [t.number for t in top_trials(study)] == [1, 0]


def test_class_folder_dataset_fixes_competition_only_params_with_a_note(space_dict, demo_data, cache_dir, tmp_path):
    # Three classes by mask state, one image per person and class.
    root = tmp_path / "folders"
    for person in sorted((demo_data / "train" / "images").iterdir()):
        if person.name.startswith("."):
            continue
        for stem, label in (("mask1", "mask"), ("incorrect_mask", "incorrect"), ("normal", "none")):
            (root / label).mkdir(parents=True, exist_ok=True)
            (image,) = [p for p in person.iterdir() if p.stem == stem and not p.name.startswith(".")]
            shutil.copy(image, root / label / f"{person.name}{image.suffix}")
    space = parse_space(space_dict(study={"data": str(root)},
                                   params={"age_old": [58, 60], "head": ["single", "multi"]}))
    study, lines = search(space, tmp_path, cache_dir, trials=1)

    assert "note: age_old is fixed to 60: it applies to the competition layout only" in lines
    assert "note: head is fixed to 'single': it applies to the competition layout only" in lines
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.params == {}
    stored = study.user_attrs[record.SPACE]["params"]
    assert (stored["age_old"], stored["head"]) == (60, "single")
    assert np.asarray(trial.user_attrs["confusion"]).shape == (3, 3)


def test_missing_dataset_writes_no_storage(write_space, tmp_path):
    path = write_space(study={"data": str(tmp_path / "nowhere")})
    db = tmp_path / "x.db"
    result = CliRunner().invoke(cli, ["search", "--space", str(path), "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: dataset not found: {tmp_path / 'nowhere'} does not exist")
    assert not db.exists()


def test_sampler_seed_counts_finished_trials_not_a_starting_workers_running_one():
    study = optuna.create_study()
    fresh = sampler_seed(0, 1, study)
    running = study.ask()  # another worker, started at the same time, already made its first trial
    assert sampler_seed(0, 1, study) == fresh
    study.tell(running, 0.5)
    assert sampler_seed(0, 1, study) != fresh  # a rerun of a resumed study draws new points
    assert sampler_seed(0, 0, study) != sampler_seed(0, 1, study)


# --- threads: the cores that are free when a search or an export starts -------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="measures the cores in use from /proc/stat (Linux), and needs 2 cores to see one busy")
def test_a_core_busy_right_now_is_not_counted_as_free():
    # The 1-minute load average would not see this process for tens of seconds.
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert _busy_cores(0.25) >= 0.8
        assert free_cores() <= os.cpu_count() - 1
        assert threads_per_worker(os.cpu_count()) == 1
    finally:
        spinner.kill()
        spinner.wait()
