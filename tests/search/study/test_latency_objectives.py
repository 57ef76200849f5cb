"""Accuracy against latency: every trial's CPU latency recorded, a latency budget, two objectives.

Latency is measured, so no test depends on its value: the budgets here are far below or above any
real figure, and the two-objective tests check shapes, not which trial is faster.
"""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from maskopt.cli import cli
from maskopt.search.report.html import pareto_front
from maskopt.search.study.record import StudyRecord


def search(write_space, cache_dir, tmp_path, *, study: dict, params: dict, trials: int = 2, export: bool = False):
    space = write_space(study={"data": str(study.pop("data")), **study}, params=params)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    result = CliRunner().invoke(cli, ["search", "--space", str(space), "--storage", url, "--trials", str(trials),
                                      "--device", "cpu", "--cache-dir", str(cache_dir), "--quiet", "--threads", "1",
                                      *([] if export else ["--no-export"])])
    return result, url


def test_a_latency_budget_no_configuration_meets_prunes_every_trial_before_training(write_space, demo_data,
                                                                                   cache_dir, tmp_path):
    result, url = search(write_space, cache_dir, tmp_path, study={"data": demo_data, "name": "budget",
                                                                   "max_latency_ms": 1e-9, "pruner": "median"},
                         params={"lr": [0.01, 0.02]})
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="budget", storage=url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert t.user_attrs["prune_reason"].endswith("is over study.max_latency_ms 1e-09: not trained")
        assert t.user_attrs["epochs_trained"] == 0 and t.constraints["latency_ms_over_budget"] > 0  # infeasible
    assert "no complete trial yet" in result.output


def test_a_budget_every_configuration_meets_trains_them_all_as_feasible(write_space, demo_data, cache_dir, tmp_path):
    result, url = search(write_space, cache_dir, tmp_path, study={"data": demo_data, "name": "roomy",
                                                                   "max_latency_ms": 1e9}, params={"lr": [0.01, 0.02]})
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="roomy", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and all(t.constraints["latency_ms_over_budget"] <= 0 for t in trials)


def test_two_objectives_record_f1_and_latency_and_the_report_draws_the_front(write_space, demo_data, cache_dir,
                                                                              tmp_path):
    result, url = search(write_space, cache_dir, tmp_path,
                         study={"data": demo_data, "name": "pareto", "objectives": ["macro_f1", "latency"],
                                "pruner": "none", "sampler": "nsga2"},
                         params={"backbone": ["mobilenetv3_small_050", "resnet10t"], "lr": 0.01}, trials=3,
                         export=True)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pareto", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for trial in study.trials:
        assert trial.values[1] == pytest.approx(trial.user_attrs["latency"]["ms_per_image"]["1"])
        assert trial.intermediate_values == {}  # nothing to prune with two objectives: nothing reported
    best = StudyRecord.of(study).top(1)[0]
    assert f"exported trial {best.number} of study 'pareto'" in result.output  # the most accurate

    report = tmp_path / "pareto.html"
    made = CliRunner().invoke(cli, ["report", "--storage", url, "--out", str(report)])
    assert made.exit_code == 0, made.output
    page = report.read_text()
    assert "Accuracy against latency" in page and '"name":"Pareto front"' in page


def test_the_pareto_front_keeps_the_points_nothing_beats():
    points = [(0.5, 10.0), (0.6, 20.0), (0.55, 25.0), (0.4, 5.0), (0.6, 30.0), (0.5, 10.0)]
    # (0.55, 25) is beaten by (0.6, 20); (0.6, 30) too; the two (0.5, 10) tie and both stay.
    assert pareto_front(points) == [3, 0, 5, 1]


@pytest.mark.parametrize("study, message", [
    ({"objectives": ["latency"]}, "macro_f1 first"),
    ({"objectives": ["macro_f1", "latency"], "pruner": "median"}, "none with several objectives"),
    ({"objectives": ["macro_f1", "latency"], "pruner": "none", "sampler": "cmaes"}, "a sampler for several objectives"),
    ({"max_latency_ms": 0}, "milliseconds per image above 0"),
])
def test_objectives_and_budgets_are_checked_when_the_space_is_read(write_space, study, message):
    result = CliRunner().invoke(cli, ["search", "--space", str(write_space(study=study)), "--trials", "1"])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_studies_shows_the_best_trials_latency(main_study):
    result = CliRunner().invoke(cli, ["studies", "--storage", main_study.url, "--json"])
    assert result.exit_code == 0, result.output
    import json

    (study,) = json.loads(result.stdout)
    best = StudyRecord.of(optuna.load_study(study_name="main", storage=main_study.url)).top(1)[0]
    assert study["best_value"] == best.value and study["best_latency_ms"] == best.latency.ms_per_image[1]


def test_export_best_within_a_latency_budget(main_study, tmp_path):
    """A budget every trial meets exports the most accurate; one none meets says how fast the fastest is."""
    import shutil

    db = tmp_path / "main.db"
    shutil.copy(main_study.db, db)
    url = f"sqlite:///{db}"
    common = ["export-best", "--storage", url, "--data", str(main_study.data), "--cache-dir", str(main_study.cache_dir),
              "--device", "cpu", "--quiet"]
    roomy = CliRunner().invoke(cli, [*common, "--max-latency-ms", "1e9", "--out", str(tmp_path / "roomy")])
    assert roomy.exit_code == 0, roomy.output
    best = StudyRecord.of(optuna.load_study(study_name="main", storage=url)).top(1)[0]
    assert f"exported trial {best.number} of study 'main'" in roomy.output

    tight = CliRunner().invoke(cli, [*common, "--max-latency-ms", "1e-9", "--out", str(tmp_path / "tight")])
    assert tight.exit_code == 1
    assert "no complete trial of study 'main' is within --max-latency-ms 1e-09: the fastest, trial" in tight.output
    assert not (tmp_path / "tight").exists()
