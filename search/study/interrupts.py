"""Ctrl-C and SIGTERM stop a search, at a moment where nothing stored is left half-done.

Both raise ``KeyboardInterrupt`` inside a trial's training, so the objective keeps the trial's
checkpoint and Optuna marks the trial FAIL; the runner then queues it again, and the next run
resumes it. Two things make this reliable under load:

- **Only inside training is the signal raised at once.** Elsewhere (Optuna creating a trial,
  recording a result, the runner's bookkeeping) the handler only records the request, and the
  next safe point raises it: the start of the next trial's training, the end of a trial, or the
  wait for other workers. A ``KeyboardInterrupt`` raised while Optuna was creating a trial left it
  RUNNING without a worker stamp: no run could tell it was dead, and it counted towards the total
  forever.
- **A signal that Python swallows still stops the search.** A handler's exception surfaces
  wherever Python happens to be; in a garbage-collection callback or a ``__del__`` (SQLAlchemy
  registers such callbacks) Python prints "Exception ignored" and carries on. The recorded request
  is raised again at the next safe point (after every epoch too), so a swallowed signal stops the
  search at most one epoch late, and its dropped exception is not printed (it would look like a
  crash). And an interruption that surfaced as another error inside training (a storage call cut
  mid-transaction) is still an interruption: ``stop_requested`` tells the objective so.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
_training = threading.Event()  # inside ``interruptible``: a signal raises at once


def stop_requested() -> bool:
    """True once Ctrl-C or SIGTERM came inside ``interrupts_stop_the_search``."""
    return _requested.is_set()


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a stop signal came inside ``interrupts_stop_the_search``."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within this block (a trial's training), a stop signal raises ``KeyboardInterrupt`` at once.

    A signal that came before the block is raised on entering it.
    """
    raise_if_interrupted()
    _training.set()
    try:
        raise_if_interrupted()  # a signal between the check above and setting the flag
        yield
    finally:
        _training.clear()


class interrupts_stop_the_search:
    """Within this block, Ctrl-C and SIGTERM stop the search (see the module docstring).

    Handlers can only be set from the main thread; elsewhere (a search started in a thread)
    the block changes nothing.
    """

    def __enter__(self):
        self.stopped = False
        self.main_thread = threading.current_thread() is threading.main_thread()
        if self.main_thread:
            _requested.clear()
            _training.clear()
            self.previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
            self.previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc):
        self.stopped = _requested.is_set()  # for the caller's error handling, after the block
        if self.main_thread:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            sys.unraisablehook = self.previous_hook
            _requested.clear()
            _training.clear()
        return False

    def _unraisable(self, info) -> None:
        if info.exc_type is KeyboardInterrupt and _requested.is_set():
            return  # our own, dropped by Python: raise_if_interrupted raises it again
        self.previous_hook(info)


def _stop(signum, frame):
    _requested.set()
    if _training.is_set():
        raise KeyboardInterrupt
