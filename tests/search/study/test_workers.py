"""Many workers on one study: PostgreSQL and SQLite, crashes, signals.

Every worker here is a real `maskopt search` process (what a user starts on each machine),
training a real timm model on a tiny demo dataset.
"""

from __future__ import annotations

import signal
import time

import pytest
from optuna.trial import TrialState
from worker_processes import (
    SPACE,
    finish,
    finished_and_running,
    kill,
    load,
    make_tiny_data,
    run_to_completion,
    scored_an_epoch,
    start_worker,
    wait_for_running_trial,
    write_space,
)

from maskopt.search.study.record import TrialRecord

pytestmark = pytest.mark.slow  # real worker processes and searches, tens of seconds each


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("workers") / "data")


def test_four_workers_started_together_on_a_fresh_postgres_share_the_total(
        fresh_postgres_url, tiny_data, tmp_path):
    space = write_space(tmp_path, "shared")
    # Started at the same instant on an empty database: the schema and study creation race.
    workers = [start_worker(space, tiny_data, fresh_postgres_url, 12, tmp_path / "cache", "--worker-index", str(i))
               for i in range(4)]
    outputs = [finish(w) for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out
    # Workers that race to the last trial leave a FAIL trial that did not run (beyond_total).
    trials = [t for t in load(fresh_postgres_url, "shared").get_trials() if not TrialRecord.of(t).beyond_total]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 12
    assert len(trials) == 12, [t.state for t in trials]  # no other FAIL, nothing past the total
    assert len({t.number for t in finished}) == 12
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # the work was actually shared
    # Differently seeded samplers: the workers did not all propose the same start-up point.
    assert len({round(t.params["lr"], 12) for t in finished}) == 12


def test_sigkill_mid_trial_is_retried_by_another_worker(fresh_postgres_url, tiny_data, tmp_path):
    space = write_space(tmp_path, "crash", epochs=3)
    cache = tmp_path / "cache"
    beat = ("--heartbeat-interval", "1")
    victim = start_worker(space, tiny_data, fresh_postgres_url, 5, cache, *beat)
    doomed = wait_for_running_trial(fresh_postgres_url, "crash", victim, until=scored_an_epoch)
    kill(victim)
    time.sleep(2.5)  # past the grace period (twice the interval), so the next trial start sees it stale
    survivor = start_worker(space, tiny_data, fresh_postgres_url, 5, cache, "--worker-index", "1", *beat)
    out = finish(survivor)
    assert survivor.returncode == 0, out

    trials = {t.number: t for t in load(fresh_postgres_url, "crash").get_trials()}
    assert trials[doomed.number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == doomed.number]
    assert len(retries) == 1
    assert retries[0].params == doomed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    finished = [t for t in trials.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5  # the killed trial does not use up the total


def test_sigterm_stops_cleanly_and_a_rerun_resumes(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'term.db'}"
    space = write_space(tmp_path, "term", epochs=3)
    worker = start_worker(space, tiny_data, storage, 3, tmp_path / "cache")
    running = wait_for_running_trial(storage, "term", worker)
    worker.send_signal(signal.SIGTERM)
    out = finish(worker, timeout=60)
    assert worker.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert load(storage, "term").get_trials()[running.number].state == TrialState.FAIL

    rerun = start_worker(space, tiny_data, storage, 3, tmp_path / "cache")
    assert finish(rerun) and rerun.returncode == 0
    trials = load(storage, "term").get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # only the interrupted one


def test_two_local_workers_on_sqlite(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'two.db'}"
    space = write_space(tmp_path, "two")
    process = start_worker(space, tiny_data, storage, 4, tmp_path / "cache", "--workers", "2")
    out = finish(process)
    assert process.returncode == 0, out
    assert "SQLite serialises writes" not in out  # two local workers are what SQLite handles well
    trials = load(storage, "two").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_unreachable_storage_gives_one_paragraph_without_the_password(tiny_data, tmp_path):
    space = write_space(tmp_path, "down")
    process = start_worker(space, tiny_data, "postgresql://maskopt:s3cret-pw@127.0.0.1:1/maskopt", 1,
                           tmp_path / "cache")
    out = finish(process, timeout=60)
    assert process.returncode == 1
    assert out.startswith("Error:") or "\nError:" in out
    assert "s3cret-pw" not in out
    assert "Traceback" not in out


def test_sigkill_then_immediate_rerun_on_sqlite_finishes_the_total(tiny_data, tmp_path):
    # The default heartbeat (30 s) has not gone stale when the rerun starts: the rerun knows
    # the killed worker is gone because its process no longer exists on this machine.
    storage = f"sqlite:///{tmp_path / 'kill.db'}"
    space = write_space(tmp_path, "kill", epochs=3)
    victim = start_worker(space, tiny_data, storage, 3, tmp_path / "cache")
    doomed = wait_for_running_trial(storage, "kill", victim, until=scored_an_epoch)
    kill(victim)

    rerun = start_worker(space, tiny_data, storage, 3, tmp_path / "cache")
    out = finish(rerun)
    assert rerun.returncode == 0, out
    finished, running = finished_and_running(storage, "kill")
    assert len(finished) == 3 and running == []
    trials = load(storage, "kill").get_trials()
    assert trials[doomed.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == doomed.number]
    assert retry.params == doomed.params and retry in finished


def test_survivor_of_two_postgres_workers_waits_and_reruns_the_killed_trial(fresh_postgres_url, tiny_data, tmp_path):
    space = write_space(tmp_path, "pair", epochs=2)
    cache = tmp_path / "cache"
    survivor = start_worker(space, tiny_data, fresh_postgres_url, 6, cache)
    victim = start_worker(space, tiny_data, fresh_postgres_url, 6, cache, "--worker-index", "1")
    doomed = wait_for_running_trial(fresh_postgres_url, "pair", victim)
    kill(victim)
    out = finish(survivor, timeout=400)
    assert survivor.returncode == 0, out

    finished, running = finished_and_running(fresh_postgres_url, "pair")
    assert len(finished) == 6 and running == []  # not 5 of 6: the dead worker's trial did not count
    assert any(t.system_attrs.get("failed_trial") == doomed.number for t in finished)


def test_a_resumed_study_does_not_repeat_its_first_configuration_but_stays_reproducible(tiny_data, tmp_path):
    def lrs(db: str, *totals: int) -> list[float]:
        storage = f"sqlite:///{tmp_path / db}"
        for total in totals:
            run = start_worker(space, tiny_data, storage, total, tmp_path / "cache")
            assert finish(run) is not None and run.returncode == 0
        return [t.params["lr"] for t in load(storage, "seeded").get_trials()]

    space = write_space(tmp_path, "seeded")
    resumed = lrs("resumed.db", 1, 2)
    assert resumed[0] != resumed[1]  # the rerun's sampler was not seeded as the first run's
    assert lrs("again.db", 1, 2) == resumed  # same seed, same history: same proposals


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_rerun_after_sigkill_in_the_first_trial_never_redraws_the_killed_trials_parameters(sampler, tiny_data,
                                                                                            tmp_path):
    """The killed trial is failed (and queued again, keeping its parameters) before the rerun seeds its
    sampler; seeded while the dead trial still looked RUNNING, the sampler drew the same point again."""
    storage = f"sqlite:///{tmp_path / 'first.db'}"
    space = write_space(tmp_path, "first", epochs=2)
    space.write_text(space.read_text().replace("sampler: random", f"sampler: {sampler}"))
    victim = start_worker(space, tiny_data, storage, 3, tmp_path / "cache")
    doomed = wait_for_running_trial(storage, "first", victim, until=scored_an_epoch)
    kill(victim)

    run_to_completion(space, tiny_data, storage, 3, tmp_path / "cache")
    trials = load(storage, "first").get_trials()
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == doomed.number]
    assert retry.params == doomed.params
    fresh = [t for t in trials if t.number not in (doomed.number, retry.number)]
    assert len(fresh) == 2 and all(t.params != doomed.params for t in fresh)


def _trial_numbers(storage: str, name: str) -> set[int]:
    try:
        return {t.number for t in load(storage, name).get_trials()}
    except KeyError:  # the study does not exist yet
        return set()


def _first_running(storage: str, name: str, process, until=lambda trial: True, *, before: set[int],
                   timeout: float = 180):
    """The first RUNNING trial, not among the trials ``before`` (a killed worker's trial still looks
    RUNNING until the new worker fails it), that satisfies ``until``, stamped or not: polled fast, so
    the moment can be a trial's first instant."""
    deadline, study = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"worker exited {process.returncode} first"
        try:
            study = study or load(storage, name)  # loaded once: each poll is then one query
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if t.number not in before and until(t)]
        except KeyError:  # the study does not exist yet
            running = []
        if running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError("no such trial came")


# From a trial's first instant (created, perhaps not yet stamped with its worker or given its
# parameters) to mid-epoch: the moments at which a worker is stopped, one after another, each moment
# with more than one signal and each signal at more than one moment.
KILL_MOMENTS = {
    "first instant": lambda t: True,
    "parameters stored": lambda t: bool(t.params),
    "an epoch scored": scored_an_epoch,
    "mid second fold": lambda t: len(t.intermediate_values) >= 3,
}
KILLS = [("first instant", signal.SIGTERM), ("first instant", signal.SIGKILL), ("parameters stored", signal.SIGINT),
         ("parameters stored", signal.SIGKILL), ("an epoch scored", signal.SIGTERM), ("an epoch scored", signal.SIGINT),
         ("mid second fold", signal.SIGKILL), ("mid second fold", signal.SIGTERM)]


def test_stopped_at_every_moment_of_a_trial_by_every_signal_the_study_still_reaches_its_total(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'moments.db'}"
    space = write_space(tmp_path, "moments", epochs=2)
    # A total well above the kills: a worker may finish a trial or two before the moment comes, and
    # must never reach the total first. An unstamped trial of a killed worker is dead after 2 s.
    total, beat = 12, ("--heartbeat-interval", "1")
    for moment, sig in KILLS:
        before = _trial_numbers(storage, "moments")
        worker = start_worker(space, tiny_data, storage, total, tmp_path / "cache", *beat)
        _first_running(storage, "moments", worker, KILL_MOMENTS[moment], before=before)
        worker.send_signal(sig)
        out = finish(worker, timeout=120)
        where = f"{signal.Signals(sig).name} at {moment}"
        if sig == signal.SIGKILL:
            assert worker.returncode == -signal.SIGKILL, where
        else:
            assert worker.returncode == 130, f"{where}: {out}"
            assert "interrupted" in out and "Traceback" not in out, f"{where}: {out}"
            _, running = finished_and_running(storage, "moments")
            # A clean stop records its trial FAIL, unless SQLite refused that write ("database is
            # locked": the test polls the file while the worker writes it); it then says so, and the
            # next run finds the trial dead.
            assert running == [] or "may still be marked RUNNING" in out, f"{where}: a trial left RUNNING: {out}"

    rerun = start_worker(space, tiny_data, storage, total, tmp_path / "cache", *beat)
    out = finish(rerun, timeout=300)
    assert rerun.returncode == 0, out
    finished, running = finished_and_running(storage, "moments")
    assert len(finished) == total and running == []
    trials = load(storage, "moments").get_trials()
    # Every stopped trial was failed and queued again; none counted towards the total.
    assert all(t.state in (TrialState.FAIL, TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert not any(t.user_attrs.get("fail_reason") for t in trials)


def test_workers_on_postgres_promote_each_paused_trial_once(fresh_postgres_url, tiny_data, tmp_path):
    # Three workers share a study whose asha pruner pauses most trials; they promote paused trials
    # from the shared checkpoint folder (the default beside the space for PostgreSQL) as they race.
    space = tmp_path / "asha.yaml"
    space.write_text(SPACE.format(name="asha", epochs=2).replace("pruner: none",
                                                                 "pruner: {name: asha, reduction_factor: 2}"))
    workers = [start_worker(space, tiny_data, fresh_postgres_url, 12, tmp_path / "cache", "--worker-index", str(i))
               for i in range(3)]
    for w in workers:
        out = finish(w)
        assert w.returncode == 0, out
    trials = [TrialRecord.of(t) for t in load(fresh_postgres_url, "asha").get_trials()]
    continued = [t.continues for t in trials if t.continues is not None]
    assert continued and len(continued) == len(set(continued))  # promoted, and never twice
    by_number = {t.number: t for t in trials}
    assert all(by_number[n].paused_at is not None and by_number[n].params == t.params
               for t in trials if (n := t.continues) is not None)
    assert sum(t.counts for t in trials) == 12
    # A worker that raced another to the last configuration leaves a FAIL trial that did not run.
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.beyond_total and t.epochs_trained is None)
               for t in trials)
