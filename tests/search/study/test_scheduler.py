"""The asha pruner and its scheduler: trials paused at a rung with their checkpoints, and promoted later.

On synthetic tables whose right answers are known (the replay runs the same scheduler functions
as a search), and in a real search, where a promoted trial must score exactly as the same
configuration trained without a stop.
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from maskopt.errors import SpaceError
from maskopt.search.export import export_best
from maskopt.search.report import report
from maskopt.search.space import Component, parse_space
from maskopt.search.space.asha import AshaPruner, ranks_on, rung_steps
from maskopt.search.study.checkpoints import CheckpointStore
from maskopt.search.study.record import StudyRecord, TrialRecord, continuation_attrs, pause_attrs
from maskopt.search.study.replay import replay
from maskopt.search.study import runner
from maskopt.search.study.runner import run_search
from tests.search.study.test_replay import grid

ASHA = Component("asha")
BLOOMER = 1  # the row that starts slowly and ends best


def late_bloomer_table():
    """Rows trained in order 0-5 over 2 folds x 3 epochs (rungs at steps 0 and 2 with eta 3):
    row 0 flat at 0.6; row 1 at 0.5 after its first two epochs, then 0.9; rows 2-5 flat at 0.3."""
    f1 = np.full((24, 2, 3), 0.3)
    f1[0] = 0.6
    f1[BLOOMER] = 0.9
    f1[BLOOMER, 0, :2] = 0.5
    return grid(f1)


def test_rungs_end_at_min_resource_times_powers_of_eta_before_the_last_step():
    assert rung_steps(min_resource=1, reduction_factor=3, last_step=7) == (0, 2)
    assert rung_steps(min_resource=1, reduction_factor=2, last_step=7) == (0, 1, 3)
    assert rung_steps(min_resource=2, reduction_factor=3, last_step=7) == (1, 5)
    assert rung_steps(min_resource=8, reduction_factor=3, last_step=7) == ()


def test_the_top_of_a_rung_is_a_third_of_its_configurations_and_at_least_the_best():
    values = {k: v for k, v in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])}
    assert [ranks_on(v, values, 3) for v in values.values()] == [True, True, False, False, False, False]
    assert ranks_on(0.5, {0: 0.5}, 3) and not ranks_on(0.4, {0: 0.5, 1: 0.4}, 3)


def test_asha_pauses_a_late_bloomer_and_promotes_it_once_enough_trials_rank_below_it():
    run = replay(late_bloomer_table(), sampler=Component("random"), pruner=ASHA, order=range(6), trials=6)
    assert [t.row for t in run.trials] == [0, 1, 2, 3, 4, 5, BLOOMER]
    assert [t.paused for t in run.trials] == [False, True, True, True, True, True, False]
    # Rung 0 holds 6 configurations after row 5: the top 2 go on, and row 1 (0.5) is second.
    continuation = run.trials[6]
    assert continuation.continues == BLOOMER and continuation.start == 11.0  # each epoch takes 1 s
    assert continuation.epochs == 5 and continuation.value == pytest.approx(0.9)  # the 1 inherited epoch is not retrained
    assert run.curve == ((6.0, 0.6), (16.0, pytest.approx(0.9)))
    assert run.best_config == BLOOMER


def test_successive_halving_without_pausing_loses_the_late_bloomer():
    # The bloomer trains fourth: Optuna's successive halving lets a trial that arrives early at a
    # rung go on (it cannot resume one later), so it must arrive after three others to be stopped.
    for pruner in (Component("successive_halving"), Component("asha", (("max_paused", 0),))):
        run = replay(late_bloomer_table(), sampler=Component("random"), pruner=pruner, order=(0, 2, 3, 1, 4, 5),
                     trials=6)
        assert run.trials[3].row == BLOOMER and run.trials[3].pruned and not run.trials[3].paused
        assert all(t.continues is None for t in run.trials)
        assert run.best == pytest.approx(0.6)


def test_max_paused_keeps_the_checkpoints_most_likely_to_be_promoted():
    # One checkpoint kept: each new 0.3 pause is evicted in turn, and the bloomer (0.5) stays promotable.
    run = replay(late_bloomer_table(), sampler=Component("random"), pruner=Component("asha", (("max_paused", 1),)),
                 order=range(6), trials=6)
    assert run.trials[6].continues == BLOOMER and run.best_config == BLOOMER


def test_a_retried_continuation_resumes_from_the_paused_trials_checkpoint():
    study = optuna.create_study(direction="maximize")
    paused = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    study.tell(paused, state=TrialState.PRUNED)
    study.enqueue_trial(paused.params, user_attrs=continuation_attrs(TrialRecord.of(study.trials[0])))
    continuation = study.ask()
    study._storage.set_trial_state_values(continuation._trial_id, state=TrialState.FAIL)  # its worker died
    with warnings.catch_warnings():  # experimental since Optuna 2.8; crash recovery uses it too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[1])
    records = StudyRecord.of(study).trials()
    assert [(t.continues, t.origin, t.counts) for t in records] == [(None, 0, True), (0, 0, False), (0, 0, False)]


def test_a_paused_trial_is_claimed_by_one_worker_at_a_time(tmp_path):
    first, second = CheckpointStore(tmp_path, "s"), CheckpointStore(tmp_path, "s")
    assert first.claim(3) and not second.claim(3)
    assert first.sweep(keep=set()) == 0  # a claim is not a checkpoint file
    first.release(3)
    assert second.claim(3)


@pytest.mark.parametrize("options, message", [
    ({"max_paused": -1}, "max_paused"), ({"reduction_factor": 1}, "reduction_factor"),
    ({"min_resource": 0}, "min_resource"), ({"eta": 3}, "eta"),
])
def test_asha_options_are_checked_like_every_pruners(space_dict, options, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(space_dict(study={"pruner": {"name": "asha", **options}}), source="space.yaml")


def test_a_promoted_trial_scores_exactly_as_the_configuration_trained_without_a_stop(demo_data, cache_dir, tmp_path,
                                                                                     space_dict):
    study = {"name": "asha", "data": str(demo_data), "epochs": 2, "sampler": "random",
             "pruner": {"name": "asha", "reduction_factor": 2}}
    space = parse_space(space_dict(study=study, params={"lr": {"low": 1e-6, "high": 0.1, "log": True}}), source="x")
    url = f"sqlite:///{tmp_path / 'asha.db'}"
    common = {"device": "cpu", "threads": 1, "quiet": True, "cache_dir": cache_dir, "heartbeat_interval": None}
    run_search(space, trials=8, storage=url, checkpoints=tmp_path / "ck", artifacts=tmp_path / "art", **common)

    trials = StudyRecord.open(url, "asha").trials()
    continuations = [t for t in trials if t.continues is not None]
    assert continuations, "the scenario must promote at least one paused trial"
    assert sum(t.counts for t in trials) == 8  # the total counts configurations, not continuations
    by_number = {t.number: t for t in trials}
    for c in continuations:
        paused = by_number[c.continues]
        assert paused.state == TrialState.PRUNED and paused.paused_at is not None and c.params == paused.params
        assert c.resumed["from_trial"] == paused.origin and c.epochs_trained_here < c.epochs_trained
    # Paused trials nobody continued keep their checkpoints (within max_paused); the rest are gone.
    waiting = {t.origin for t in StudyRecord.open(url, "asha").paused()}
    assert {p.name for p in (tmp_path / "ck" / "asha").glob("trial-*.pt")} == {f"trial-{o}.pt" for o in waiting}

    done = [c for c in continuations if c.state == TrialState.COMPLETE]
    assert done, "a promoted trial must reach the end in this scenario"
    reference = parse_space(space_dict(study={**study, "name": "plain", "pruner": "none"},
                                       params={"lr": {"low": 1e-6, "high": 0.1, "log": True}}), source="x")
    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    plain = optuna.create_study(study_name="plain", storage=plain_url, direction="maximize")
    for c in done:
        plain.enqueue_trial(c.params)
    run_search(reference, trials=len(done), storage=plain_url, checkpoints=False, **common)
    uninterrupted = StudyRecord.open(plain_url, "plain").trials()
    assert [t.fold_f1 for t in uninterrupted] == [c.fold_f1 for c in done]
    assert [t.value for t in uninterrupted] == [c.value for c in done]

    # The rest of maskopt reads the study as any other: an OOF ensemble of its two best complete
    # trials (continuations among them) exports, and the report shows paused trials as pruned.
    best = StudyRecord.open(url, "asha").top(2)
    exported = export_best(storage=url, study="asha", out=tmp_path / "export", ensemble=2,
                           artifacts=tmp_path / "art", device="cpu", threads=1, cache_dir=cache_dir, quiet=True)
    assert exported.trial_number == best[0].number and exported.ensemble is not None
    html = report(storage=url, study="asha", out=tmp_path / "report.html", artifacts=tmp_path / "art").read_text()
    assert f"{len(continuations)} promoted" in html


def test_the_pruner_ranks_configurations_not_trials():
    # Two trials of one configuration report the same values (same seeds): ranked once, "b" is
    # second of 6 configurations and goes on; ranked per trial it would be third of 7, and stop.
    lr = {"lr": optuna.distributions.CategoricalDistribution(list("abcdefg"))}
    study = optuna.create_study(direction="maximize")
    for name, value in (("a", 0.9), ("a", 0.9), ("c", 0.1), ("d", 0.1), ("e", 0.1), ("f", 0.1)):
        study.add_trial(optuna.trial.create_trial(params={"lr": name}, distributions=lr, intermediate_values={0: value},
                                                  state=TrialState.PRUNED))
    b = optuna.trial.create_trial(params={"lr": "b"}, distributions=lr, intermediate_values={0: 0.8},
                                  state=TrialState.PRUNED)
    assert not AshaPruner(max_resource=4).prune(study, b)
    study.add_trial(optuna.trial.create_trial(params={"lr": "g"}, distributions=lr, intermediate_values={0: 0.85},
                                              state=TrialState.PRUNED))
    assert AshaPruner(max_resource=4).prune(study, b)  # now third of 7 configurations: the top 2 go on


def test_a_sampled_trial_beyond_the_total_is_not_run_nor_counted(demo_data, cache_dir, tmp_path, space_dict,
                                                                  monkeypatch, caplog):
    # Two workers that finish trials at the same moment both see room for one more; the one whose
    # trial came second must not run it. Made deterministic: this worker is told there is room.
    space = parse_space(space_dict(study={"name": "race", "data": str(demo_data)}), source="x")
    url = f"sqlite:///{tmp_path / 'race.db'}"
    common = {"device": "cpu", "threads": 1, "quiet": True, "cache_dir": cache_dir, "heartbeat_interval": None,
              "checkpoints": False}
    run_search(space, trials=1, storage=url, **common)
    real, calls = runner._trials_left, []

    def room_at_first(record, trials):  # the run's first looks (promotions, then the first trial)
        calls.append(1)
        return len(calls) <= 2 or real(record, trials)

    monkeypatch.setattr(runner, "_trials_left", room_at_first)
    result = run_search(space, trials=1, storage=url, **common)
    trials = StudyRecord.open(url, "race").trials()
    assert [(t.state, t.counts, t.beyond_total) for t in trials] == [
        (TrialState.COMPLETE, True, False), (TrialState.FAIL, False, True)]
    assert trials[1].epochs_trained is None and "already started the study's 1 trials" in trials[1].fail_reason
    assert result.counted_trials == 1 and result.failures == ()


def test_a_promotion_queued_behind_other_queued_trials_runs_after_them():
    # Optuna runs the oldest queued trial first: rows 6 and 7 (enqueued by `order`) before the
    # promotion of row 1 queued when row 5 paused; each trial trains its own configuration.
    run = replay(late_bloomer_table(), sampler=Component("random"), pruner=ASHA, order=range(8), trials=8)
    assert [(t.row, t.continues) for t in run.trials] == [*((row, None) for row in range(8)), (BLOOMER, BLOOMER)]
    assert run.trials[8].epochs == 5 and run.best_config == BLOOMER


def test_a_queued_continuation_runs_even_past_the_total():
    # A promotion, or the retry of an interrupted continuation, waits in the queue after the study
    # reached its total: a rerun of the same command must still run it.
    study = optuna.create_study(direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=lr, value=0.5))
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.001}, distributions=lr, intermediate_values={0: 0.1},
                                              state=TrialState.PRUNED, user_attrs=pause_attrs(0, 0)))
    record = StudyRecord.of(study)
    assert not runner._trials_left(record, 2)
    study.enqueue_trial({"lr": 0.001}, user_attrs=continuation_attrs(record.trials()[1]))
    assert record.counted == 2 and runner._trials_left(record, 2)
