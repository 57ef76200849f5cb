"""A stop signal whose KeyboardInterrupt Python swallows still stops the search.

Python runs a signal handler at the next bytecode of the main thread. When that is inside a
``__del__`` or a garbage-collection callback (SQLAlchemy has those), the handler's exception is
printed as "Exception ignored" and dropped: before this was handled, such a SIGTERM let the
search run to its end.
"""

from __future__ import annotations

import signal
import sys
import threading
import types

import optuna
import pytest
from conftest import tiny_space_dict
from optuna.trial import TrialState

from maskopt.errors import SearchInterrupted
from maskopt.search.space import parse_space
from maskopt.search.study.interrupts import interrupts_stop_the_search, raise_if_interrupted
from maskopt.search.study.runner import run_search
from maskopt.search.train import loop as training


class SignalOnCollection:
    """Sends ``signum`` to this process from its ``__del__``, where an exception is dropped."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)


@pytest.fixture
def printed(monkeypatch):
    """The dropped exceptions that would be printed ("Exception ignored in ..."), collected."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))
    return dropped


class ValueErrorInfo:
    """What Python gives ``sys.unraisablehook`` for a ValueError dropped in a ``__del__``."""

    exc_type, exc_value, exc_traceback, err_msg, object = ValueError, ValueError("x"), None, None, None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_swallowed_signal_is_raised_again_at_the_next_safe_point(signum, printed):
    previous, hook = signal.getsignal(signum), sys.unraisablehook
    with interrupts_stop_the_search():
        raise_if_interrupted()  # nothing asked yet
        del_me = SignalOnCollection(signum)
        del del_me  # the handler's KeyboardInterrupt is dropped here
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        sys.unraisablehook(ValueErrorInfo)  # what is not ours still reaches the previous hook
    assert printed == [ValueError]  # the dropped interrupt printed no "Exception ignored" traceback
    assert signal.getsignal(signum) is previous and sys.unraisablehook is hook
    raise_if_interrupted()  # the request ended with the search


def test_a_search_stops_when_the_signal_is_swallowed_mid_epoch(demo_data, cache_dir, tmp_path, monkeypatch,
                                                               printed):
    scored = training.metrics.macro_f1

    def macro_f1_then_sigterm(y_true, predicted, **kwargs):
        del_me = SignalOnCollection(signal.SIGTERM)
        del del_me
        return scored(y_true, predicted, **kwargs)

    # Only the loop's epoch scoring sends the signal: it sees this namespace as its ``metrics``.
    monkeypatch.setattr(training, "metrics", types.SimpleNamespace(macro_f1=macro_f1_then_sigterm))
    space = parse_space(tiny_space_dict(study={"name": "swallowed", "data": str(demo_data), "epochs": 3}))
    url = f"sqlite:///{tmp_path / 's.db'}"
    # Stopped after the first epoch of the first trial, whose checkpoint the rerun resumes from.
    with pytest.raises(SearchInterrupted, match="trial 0 resumes from its last epoch"):
        run_search(space, trials=3, storage=url, device="cpu", cache_dir=cache_dir, threads=1,
                   heartbeat_interval=None, quiet=True)
    assert printed == []
    trials = optuna.load_study(study_name="swallowed", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # queued again to resume


def test_a_search_in_another_thread_leaves_the_process_handlers_alone():
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], sys.unraisablehook
    seen = []

    def in_thread():
        with interrupts_stop_the_search():
            seen.append(([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)], sys.unraisablehook))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [before]
