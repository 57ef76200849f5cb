"""The replay simulator on synthetic tables whose right answers are known, and on a real finished study."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from maskopt.errors import MaskoptError
from maskopt.search.space import Choice, Component, Range
from maskopt.search.study.record import StudyRecord
from maskopt.search.study.replay import Curves, replay, study_curves

LRS = (1e-4, 3e-4, 1e-3, 3e-3)
AUGS = (0.0, 0.25, 0.5)
LOSSES = ("ce", "label_smoothing")


def grid(f1: np.ndarray, seconds: np.ndarray | None = None) -> Curves:
    """The 4 x 3 x 2 grid with the given curves, ``[24, folds, epochs]``."""
    configs = tuple({"lr": lr, "aug_strength": aug, "loss": loss}
                    for lr, aug, loss in itertools.product(LRS, AUGS, LOSSES))
    return Curves(dims={"lr": Choice(LRS), "aug_strength": Choice(AUGS), "loss": Choice(LOSSES)}, configs=configs,
                  f1=f1, seconds=np.ones_like(f1) if seconds is None else seconds)


def random_grid(seed: int = 0, *, best: int = 17) -> Curves:
    """Noisy rising curves, row ``best`` strictly best at every epoch of every fold."""
    rng = np.random.default_rng(seed)
    f1 = np.sort(rng.uniform(0.1, 0.6, (24, 2, 3)), axis=2)
    f1[best] = 0.7 + 0.05 * np.arange(3)
    return grid(f1, rng.uniform(0.5, 2.0, (24, 2, 3)))


def test_a_grid_maps_every_proposal_to_its_own_configuration():
    curves = random_grid()
    assert curves.is_grid
    assert [curves.nearest(c) for c in curves.configs] == list(range(24))
    missing_one = Curves(dims=curves.dims, configs=curves.configs[:23], f1=curves.f1[:23], seconds=curves.seconds[:23])
    assert not missing_one.is_grid


def test_off_the_grid_a_proposal_maps_to_the_nearest_configuration_in_normalised_space():
    curves = Curves(dims={"lr": Range(1e-4, 1e-2, log=True), "loss": Choice(LOSSES)},
                    configs=({"lr": 1e-4, "loss": "ce"}, {"lr": 1e-3, "loss": "ce"}, {"lr": 1e-2, "loss": "focal"}),
                    f1=np.zeros((3, 1, 1)), seconds=np.ones((3, 1, 1)))
    assert not curves.is_grid
    assert curves.nearest({"lr": 2e-4, "loss": "ce"}) == 0  # log scale: nearer 1e-4 than 1e-3
    assert curves.nearest({"lr": 5e-4, "loss": "ce"}) == 1
    assert curves.nearest({"lr": 9e-3, "loss": "ce"}) == 1  # a different loss is a whole unit away


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
@pytest.mark.parametrize("pruner", ["none", "median", "hyperband"])
def test_every_sampler_that_samples_the_best_configuration_finds_it(sampler, pruner):
    curves = random_grid(best=17)
    run = replay(curves, sampler=Component(sampler), pruner=Component(pruner), trials=30, seed=3)
    sampled = 17 in [t.row for t in run.trials]
    assert sampled == (run.best_config == 17)
    assert sampled == (run.best == pytest.approx(curves.values[17]))
    assert all(not t.pruned for t in run.trials if t.row == 17)  # best at every step: never pruned


def test_the_median_pruner_stops_exactly_the_trials_below_the_median_at_the_step_it_first_may():
    # Rows trained in this order, each flat at one F1: 0.9 and 0.7 finish (the 2 start-up trials);
    # at step 2 (the first after 2 warm-up steps) 0.75 is below their median 0.8 and stops; 0.85
    # is above it and finishes; 0.5 is below the median of 0.9, 0.7 and 0.85 and stops.
    levels = {0: 0.9, 1: 0.7, 2: 0.75, 3: 0.85, 4: 0.5}
    f1 = np.full((24, 2, 3), 0.1)
    for row, level in levels.items():
        f1[row] = level
    curves = grid(f1)
    pruner = Component("median", (("n_startup_trials", 2), ("n_warmup_steps", 2)))
    run = replay(curves, sampler=Component("random"), pruner=pruner, order=list(levels), trials=5)
    assert [t.row for t in run.trials] == [0, 1, 2, 3, 4]
    assert [t.pruned for t in run.trials] == [False, False, True, False, True]
    assert [t.epochs for t in run.trials] == [6, 6, 3, 6, 3]  # pruned at step 2: 3 epochs of fold 1
    # One worker, one second an epoch: a pruned trial frees its worker at the step it stopped.
    assert [(t.start, t.end) for t in run.trials] == [(0, 6), (6, 12), (12, 15), (15, 21), (21, 24)]
    assert run.seconds == 24 and run.epochs == 24 and run.finished == 3
    assert run.curve == ((6, 0.9),) and run.best_config == 0


def test_four_workers_finish_equal_trials_exactly_four_times_sooner():
    curves = grid(random_grid().f1, np.full((24, 2, 3), 1.5))
    one = replay(curves, sampler=Component("random"), pruner=Component("none"), workers=1, trials=8)
    four = replay(curves, sampler=Component("random"), pruner=Component("none"), workers=4, trials=8)
    assert one.seconds == 8 * 9.0 and four.seconds == 2 * 9.0
    assert one.seconds == 4 * four.seconds
    assert [t.row for t in one.trials] == [t.row for t in four.trials]  # random search proposes the same rows


def test_a_budget_counts_only_trials_that_end_within_it():
    curves = grid(random_grid().f1)  # 6 s a trial
    run = replay(curves, sampler=Component("random"), pruner=Component("none"), workers=2, budget_seconds=15)
    assert [t.end for t in run.trials] == [6, 6, 12, 12, None, None]
    assert run.finished == 4 and run.seconds == 15 and all(t <= 15 for t, _ in run.curve)


@pytest.mark.parametrize("sampler, pruner", [("tpe", "hyperband"), ("random", "median"), ("tpe", "wilcoxon")])
def test_a_replay_is_deterministic_for_a_seed(sampler, pruner):
    curves = random_grid()
    runs = [replay(curves, sampler=Component(sampler), pruner=Component(pruner), workers=4, seed=seed,
                   budget_seconds=60) for seed in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert [t.row for t in runs[0].trials] != [t.row for t in runs[2].trials]


def test_unknown_names_and_limits_out_of_range_are_refused():
    curves = random_grid()
    with pytest.raises(MaskoptError, match="unknown `pruner` 'threshold'; choose from median"):
        replay(curves, sampler=Component("tpe"), pruner=Component("threshold"))
    with pytest.raises(MaskoptError, match="`workers`"):
        replay(curves, sampler=Component("tpe"), pruner=Component("none"), workers=0)
    with pytest.raises(MaskoptError, match="`folds` and `epochs`"):
        replay(curves, sampler=Component("tpe"), pruner=Component("none"), epochs=4)


def test_a_table_survives_writing_and_reading(tmp_path):
    curves = random_grid()
    again = Curves.read(curves.write(tmp_path / "t.json.gz", about={"command": "made here"}))
    assert again.dims == curves.dims and again.configs == curves.configs and again.about == {"command": "made here"}
    np.testing.assert_allclose(again.f1, curves.f1, atol=1e-5)
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(MaskoptError, match="cannot read the curves table"):
        Curves.read(tmp_path / "bad.json.gz")


# --- a finished study ------------------------------------------------------------------------------


def test_a_study_table_recovers_each_folds_curve_from_the_reports_and_says_what_it_left_out():
    import optuna
    from conftest import tiny_space_dict
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from maskopt.search.space import parse_space
    from maskopt.search.study import record as keys

    space = parse_space(tiny_space_dict(study={"folds": 2, "epochs": 2, "pruner": "median"},
                                        params={"lr": {"low": 1e-4, "high": 0.1, "log": True},
                                                "loss": ["ce", "label_smoothing"]}), check_names=False)
    study = optuna.create_study(direction="maximize")
    StudyRecord.of(study).bind_space(space)
    distributions = {"lr": FloatDistribution(1e-4, 0.1, log=True),
                     "loss": CategoricalDistribution(["ce", "label_smoothing"])}

    def add(state, reports, fold_f1, **attrs):
        study.add_trial(create_trial(
            state=state, value=float(np.mean(fold_f1)) if state == TrialState.COMPLETE else None,
            params={"lr": 1e-3, "loss": "ce"}, distributions=distributions,
            intermediate_values=dict(enumerate(reports)),
            user_attrs={keys.FOLD_F1: fold_f1, keys.SECONDS: 8.0, keys.EPOCHS_TRAINED_HERE: 4, **attrs}))

    # Fold F1 per epoch [[0.2, 0.5], [0.4, 0.3]]: fold bests 0.5 and 0.4; reported 0.2, 0.5, then the
    # mean of 0.5 and fold 2's best so far: 0.45 twice.
    add(TrialState.COMPLETE, [0.2, 0.5, 0.45, 0.45], [0.5, 0.4])
    add(TrialState.COMPLETE, [0.2, 0.5, 0.45, 0.7], [0.5, 0.4])  # its last report disagrees with fold 2's 0.4
    add(TrialState.FAIL, [0.1], [], **{keys.FAIL_REASON: "RuntimeError: out of memory"})
    add(TrialState.PRUNED, [0.1, 0.1], [])
    add(TrialState.COMPLETE, [0.3, 0.3, 0.3, 0.3], [0.3, 0.3])
    table = study_curves(StudyRecord.of(study))
    assert table.trials == (0, 4)
    np.testing.assert_allclose(table.curves.f1[0], [[0.2, 0.5], [0.4, 0.4]])  # each fold's best so far
    np.testing.assert_allclose(table.curves.seconds, 2.0)  # 8 s shared by 4 epochs
    assert table.left_out == ("1 trial with epoch reports missing or at odds with their per-fold scores: 1",
                              "1 trial failed (RuntimeError: out of memory): 2",
                              "1 trial pruned (their curves stop where they were stopped): 3")


# --- a real finished study -------------------------------------------------------------------------


@pytest.fixture
def study_copy(tmp_path, main_study):
    """The main study's database, copied: nothing here may change the shared one."""
    db = tmp_path / "main.db"
    shutil.copy(main_study.db, db)
    return f"sqlite:///{db}"


def test_a_study_becomes_a_table_of_its_trials_that_ran_every_fold(study_copy):
    from maskopt.search.space import PruningSteps

    record = StudyRecord.open(study_copy, "main")
    table = study_curves(record)
    complete = record.top(10)
    assert table.trials == tuple(sorted(t.number for t in complete)) == (0, 1)
    assert table.left_out == ("1 trial pruned (their curves stop where they were stopped): 2",)
    assert table.curves.f1.shape == (2, 2, 6) and not table.curves.is_grid
    steps = PruningSteps(2, 6, False)
    for row, trial in zip(range(2), record.study.get_trials(deepcopy=False)):
        # Equal but for the stored fold scores' rounding to 6 decimals.
        np.testing.assert_allclose(table.curves.values[row], trial.value, atol=1e-6)
        reports = steps.curve(table.curves.f1[row].max(axis=1), table.curves.f1[row])
        assert [s for s, _ in reports] == list(range(12))
        np.testing.assert_allclose([v for _, v in reports], [trial.intermediate_values[s] for s, _ in reports],
                                   atol=1e-6)


def test_the_command_replays_a_study_with_another_pruner(study_copy):
    from maskopt.cli import cli

    result = CliRunner().invoke(cli, ["replay", "--storage", study_copy, "--study", "main", "--pruner", "hyperband",
                                      "--seeds", "3", "--workers", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "study 'main': 2 trials ran every fold" in out
    assert "not a grid: each proposal maps to the nearest" in out
    assert "1 trial pruned (their curves stop where they were stopped): 2" in out
    assert "your 2 trials in their recorded order, 2 workers:" in out
    assert "median(n_startup_trials=2, n_warmup_steps=0) (the study's)" in out
    assert "searches over 3 seeds, 2 workers" in out
    assert "tpe + hyperband" in out and "random + none" in out

    bad = CliRunner().invoke(cli, ["replay", "--storage", study_copy, "--pruner", "nope"])
    assert bad.exit_code == 1 and "unknown --pruner 'nope'; choose from median" in bad.output
