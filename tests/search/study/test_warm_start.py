"""Warm start: an earlier study's best configurations queued first, mapped onto today's space."""

from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from maskopt.cli import cli
from maskopt.errors import MaskoptError, StorageError
from maskopt.search.space import parse_space
from maskopt.search.study import record
from maskopt.search.study.record import StudyRecord, TrialRecord, WarmStartOrigin
from maskopt.search.study.warm_start import check_warm_start, enqueue_warm_start
from maskopt.storage import create_or_load_study, open_storage

# Today's space searches lr in [1e-3, 1e-1], loss among two, batch size 16..64 by 16; it fixes aug_strength.
SEARCHED = {"lr": {"low": 1e-3, "high": 0.1, "log": True}, "loss": ["ce", "label_smoothing"],
            "batch_size": {"low": 16, "high": 64, "step": 16}}


# How the earlier studies searched: wider, with a loss and a parameter that are gone today.
EARLIER = {"lr": FloatDistribution(1e-5, 1.0, log=True), "loss": CategoricalDistribution(("ce", "label_smoothing", "focal")),
           "batch_size": IntDistribution(8, 128), "aug_strength": FloatDistribution(0.0, 1.0),
           "momentum": FloatDistribution(0.0, 1.0)}


def study_in(url: str, name: str) -> optuna.Study:
    return create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name=name)


def add_trial(study: optuna.Study, value: float | None, params: dict, state=TrialState.COMPLETE, **attrs) -> None:
    """A trial as a finished maskopt search leaves it: its parameters, per-fold scores and score."""
    study.add_trial(create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=params,
        distributions={name: EARLIER[name] for name in params},
        user_attrs={record.FOLD_F1: [value or 0.0] * 2, **attrs}))


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'w.db'}"


@pytest.fixture
def space(space_dict):
    return parse_space(space_dict(params=SEARCHED), check_names=False)


def warm(study, space, url, **kwargs):
    return enqueue_warm_start(study, space, storage=url, source_study="earlier", **kwargs)


def test_the_best_complete_trials_run_first_best_first(space, url):
    earlier = study_in(url, "earlier")
    add_trial(earlier, 0.5, {"lr": 0.01, "loss": "ce", "batch_size": 16})  # trial 0
    add_trial(earlier, 0.9, {"lr": 0.02, "loss": "ce", "batch_size": 32})  # 1: best
    add_trial(earlier, 0.7, {"lr": 0.03, "loss": "label_smoothing", "batch_size": 48})  # 2
    add_trial(earlier, 0.3, {"lr": 0.04, "loss": "ce", "batch_size": 64})  # 3: fourth, left out by top=3
    add_trial(earlier, None, {"lr": 0.05, "loss": "ce", "batch_size": 16}, state=TrialState.PRUNED)
    add_trial(earlier, 0.95, {"lr": 0.06, "loss": "ce", "batch_size": 16}, **{record.PRUNED_AFTER_FOLDS: 1})
    study = study_in(url, "now")

    result = warm(study, space, url, top=3)

    assert [origin.trial for origin, _ in result.enqueued] == [1, 2, 0]
    assert result.notes == ("warm start: 3 configuration(s) of study 'earlier' in " + url + " (trials 1, 2, 0) "
                            "queued to run first",)
    # The sampler's trials come after: the first three asked are the earlier study's best, in order.
    ran = []
    for _ in range(4):
        trial = study.ask()
        ran.append(space.suggest(trial))
        study.tell(trial, 0.5)
    assert [(p.lr, p.loss, p.batch_size) for p in ran[:3]] == [(0.02, "ce", 32), (0.03, "label_smoothing", 48),
                                                              (0.01, "ce", 16)]
    assert [StudyRecord.of(study).trials()[i].warm_start for i in range(4)] == [
        WarmStartOrigin("earlier", 1), WarmStartOrigin("earlier", 2), WarmStartOrigin("earlier", 0), None]


def test_values_the_space_no_longer_allows_are_dropped_with_a_note(space, url):
    earlier = study_in(url, "earlier")
    add_trial(earlier, 0.9, {"lr": 0.5, "loss": "focal", "batch_size": 24, "aug_strength": 0.25, "momentum": 0.9})
    add_trial(earlier, 0.8, {"lr": 0.01, "loss": "focal", "batch_size": 32})
    add_trial(earlier, 0.7, {"lr": 0.01, "batch_size": 32, "aug_strength": 0.5})  # trial 1 once both are dropped
    add_trial(earlier, 0.6, {"lr": 0.02, "loss": "ce", "batch_size": 48})  # its configuration is here already
    study = study_in(url, "now")
    study.enqueue_trial({"lr": 0.02, "loss": "ce", "batch_size": 48})

    result = warm(study, space, url)

    assert result.notes == (
        "warm start: trial 0 of 'earlier': lr=0.5 dropped: outside this space's range [0.001, 0.1]",
        "warm start: trial 0 of 'earlier': loss=focal dropped: not one of this space's choices (ce, label_smoothing)",
        "warm start: trial 0 of 'earlier': batch_size=24 dropped: off this space's step 16 from 16",
        ("warm start: trial 0 of 'earlier': aug_strength=0.25 dropped: this space does not search it: it fixes "
         "aug_strength to 0"),
        "warm start: trial 0 of 'earlier': momentum=0.9 dropped: maskopt has no such parameter",
        "warm start: trial 0 of 'earlier' keeps no parameter this space searches: skipped",
        "warm start: trial 1 of 'earlier': loss=focal dropped: not one of this space's choices (ce, label_smoothing)",
        ("warm start: trial 2 of 'earlier': aug_strength=0.5 dropped: this space does not search it: it fixes "
         "aug_strength to 0"),
        "warm start: trial 2 of 'earlier' is trial 1's configuration once its dropped values are gone: queued once",
        "warm start: trial 3 of 'earlier': this study holds its configuration already: not queued",
        f"warm start: 1 configuration(s) of study 'earlier' in {url} (trials 1) queued to run first",
    )
    assert result.enqueued == ((WarmStartOrigin("earlier", 1), {"lr": 0.01, "batch_size": 32}),)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"lr": 0.02, "loss": "ce", "batch_size": 48},
                                                                 {"lr": 0.01, "batch_size": 32}]
    # The parameter it dropped is the sampler's to propose.
    trial = study.ask()
    trial = study.ask()
    assert trial.number == 1 and space.suggest(trial).lr == 0.01 and "loss" in trial.params


def test_a_rerun_queues_nothing_again(space, url):
    earlier = study_in(url, "earlier")
    add_trial(earlier, 0.9, {"lr": 0.01})
    add_trial(earlier, 0.8, {"lr": 0.02})
    study = study_in(url, "now")
    assert len(warm(study, space, url).enqueued) == 2
    trial = study.ask()  # the first warm-start trial ran; the second still waits
    study.tell(trial, 0.5)

    again = warm(study, space, url)

    assert again.enqueued == ()
    assert again.notes == (("warm start: study 'now' was warm-started from 'earlier' before (its trials 0, 1): "
                            "nothing queued again"),)
    assert len(study.trials) == 2


def test_the_total_leaves_room_for_so_many(space, url):
    earlier = study_in(url, "earlier")
    for i in range(3):
        add_trial(earlier, 0.9 - i / 10, {"lr": 0.01 * (i + 1)})
    study = study_in(url, "now")

    result = warm(study, space, url, room=2)

    assert [origin.trial for origin, _ in result.enqueued] == [0, 1]
    assert "warm start: `trials` leaves room for 2 more trial(s): the configurations of trials 2 of 'earlier' are " \
           "left out" in result.notes
    assert warm(study_in(url, "full"), space, url, room=0).enqueued == ()


def test_a_source_without_a_complete_trial_is_a_note(space, url):
    earlier = study_in(url, "earlier")
    add_trial(earlier, None, {"lr": 0.01}, state=TrialState.PRUNED)

    result = warm(study_in(url, "now"), space, url)

    assert result.enqueued == ()
    assert result.notes == (("warm start: study 'earlier' has no complete trial that ran every fold: nothing to "
                             "warm-start from"),)


def test_a_study_cannot_warm_start_from_itself(space, url, tmp_path, monkeypatch):
    study = study_in(url, "now")
    with pytest.raises(MaskoptError, match="study 'now' cannot warm-start from itself"):
        enqueue_warm_start(study, space, storage=url, source_study="now")
    # The same file, spelled another way.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MaskoptError, match="cannot warm-start from itself"):
        check_warm_start("now", "sqlite:///w.db", 5, study="now", storage=url)


def test_a_missing_source_names_the_study_and_the_storage(space, url, tmp_path):
    study_in(url, "earlier")
    with pytest.raises(StorageError, match=r"cannot warm-start from study 'missing' in sqlite:///.*w\.db: No study "
                                           r"'missing' in .* Studies there: earlier\."):
        check_warm_start("missing", None, 5, study="now", storage=url)
    with pytest.raises(StorageError, match="No SQLite storage at"):
        check_warm_start("earlier", f"sqlite:///{tmp_path / 'none.db'}", 5, study="now", storage=url)
    assert not (tmp_path / "none.db").exists()  # read only: a typo makes no file
    with pytest.raises(MaskoptError, match="`warm_start_top` must be a whole number of at least 1, got 0"):
        check_warm_start("earlier", None, 0, study="now", storage=url)
    with pytest.raises(MaskoptError, match="give that study's name in `warm_start` too"):
        check_warm_start(None, url, 5, study="now", storage=url)


def test_the_origin_reads_back_only_in_the_shape_it_is_written():
    assert WarmStartOrigin.read({"study": "a", "trial": 3}) == WarmStartOrigin("a", 3)
    for value in (None, "a", {"study": "a"}, {"study": "", "trial": 1}, {"study": "a", "trial": -1},
                  {"study": 1, "trial": 1}, {"study": "a", "trial": True}):
        assert WarmStartOrigin.read(value) is None


# --- the command line ------------------------------------------------------------------------------


def search(*args: str):
    return CliRunner().invoke(cli, ["search", "--device", "cpu", "--no-export", *args])


def test_the_cli_runs_the_earlier_best_first_once(write_space, demo_data, cache_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    earlier = study_in(url, "earlier")
    add_trial(earlier, 0.4, {"lr": 0.02, "loss": "ce"})
    add_trial(earlier, 0.6, {"lr": 0.005, "loss": "label_smoothing"})
    path = write_space(study={"data": str(demo_data)},
                       params={"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "loss": ["ce", "focal"]})
    common = ("--space", str(path), "--storage", url, "--cache-dir", str(cache_dir), "--warm-start", "earlier")

    first = search(*common, "--trials", "2", "--warm-start-top", "1")

    assert first.exit_code == 0, first.output
    assert "note: warm start: trial 1 of 'earlier': loss=label_smoothing dropped: not one of this space's choices " \
           "(ce, focal)" in first.output
    assert f"note: warm start: 1 configuration(s) of study 'earlier' in {url} (trials 1) queued to run first" \
        in first.output
    assert "(warm start: trial 1 of 'earlier')" in first.output  # the trial's own line
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert trials[0].params["lr"] == 0.005 and TrialRecord.of(trials[0]).warm_start == WarmStartOrigin("earlier", 1)
    assert TrialRecord.of(trials[1]).warm_start is None

    again = search(*common, "--trials", "3")

    assert again.exit_code == 0, again.output
    assert "note: warm start: study 'tiny' was warm-started from 'earlier' before (its trials 0): nothing queued " \
           "again" in again.output
    assert [TrialRecord.of(t).warm_start for t in optuna.load_study(study_name="tiny", storage=url).trials] == [
        WarmStartOrigin("earlier", 1), None, None]


def test_cli_errors_name_the_study_and_storage_without_a_traceback_or_password(write_space, demo_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'err.db'}"
    path = write_space(study={"data": str(demo_data)})
    secret = "postgresql://me:s3cret-pw@127.0.0.1:1/maskopt"

    unreachable = search("--space", str(path), "--storage", url, "--warm-start", "earlier",
                         "--warm-start-storage", secret)
    itself = search("--space", str(path), "--storage", url, "--warm-start", "tiny")

    assert unreachable.exit_code == 1 and itself.exit_code == 1
    assert unreachable.output.startswith("Error: cannot warm-start from study 'earlier' in "
                                         "postgresql://me:***@127.0.0.1:1/maskopt: Cannot reach")
    assert "(--warm-start names the earlier study, --warm-start-storage its storage" in unreachable.output
    assert itself.output.startswith("Error: study 'tiny' cannot warm-start from itself: give --warm-start an earlier")
    for result in (unreachable, itself):
        assert "s3cret-pw" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "err.db").exists()  # refused before the search touched its storage


@pytest.mark.slow  # two real worker processes
def test_several_workers_queue_the_warm_start_once(space_dict, demo_data, cache_dir, tmp_path):
    import maskopt

    url = f"sqlite:///{tmp_path / 'workers.db'}"
    earlier = study_in(url, "earlier")
    add_trial(earlier, 0.6, {"lr": 0.01})
    add_trial(earlier, 0.5, {"lr": 0.02})
    space = parse_space(space_dict(study={"data": str(demo_data)}, params={"lr": {"low": 1e-3, "high": 3e-2}}))

    result = maskopt.search(space, trials=2, storage=url, workers=2, threads=1, device="cpu", cache_dir=cache_dir,
                            heartbeat_interval=None, warm_start="earlier", export=False, quiet=True)

    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert result.counted_trials == 2 and len(trials) == 2  # queued once: not once per worker
    assert sorted((TrialRecord.of(t).warm_start.trial, t.params["lr"]) for t in trials) == [(0, 0.01), (1, 0.02)]
    assert "warm start: 2 configuration(s) of study 'earlier'" in result.notes[-1]
