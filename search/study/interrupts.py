"""Ctrl-C and SIGTERM stop a search, and the signal cannot be lost on the way.

Both raise ``KeyboardInterrupt``, so Optuna marks the running trial FAIL before the worker exits.
A signal handler's exception surfaces wherever Python happens to be when the handler runs. If
that is a garbage-collection callback or a ``__del__`` (SQLAlchemy registers such callbacks),
Python prints "Exception ignored" and carries on, and the search would run to its end as if no
signal had come. So the handler also records the request, and the search's safe points (after
every epoch and every trial, and while waiting for other workers) raise it again with
``raise_if_interrupted``: a swallowed signal stops the search at most one epoch late, and its
dropped exception is not printed (it would look like a crash).
"""

from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a stop signal came inside ``interrupts_stop_the_search``."""
    if _requested.is_set():
        raise KeyboardInterrupt


class interrupts_stop_the_search:
    """Within this block, Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` and are remembered.

    Handlers can only be set from the main thread; elsewhere (a search started in a thread)
    the block changes nothing.
    """

    def __enter__(self):
        self.main_thread = threading.current_thread() is threading.main_thread()
        if self.main_thread:
            _requested.clear()
            self.previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
            self.previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc):
        if self.main_thread:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)
            sys.unraisablehook = self.previous_hook
            _requested.clear()
        return False

    def _unraisable(self, info) -> None:
        if info.exc_type is KeyboardInterrupt and _requested.is_set():
            return  # our own, dropped by Python: raise_if_interrupted raises it again
        self.previous_hook(info)


def _stop(signum, frame):
    _requested.set()
    raise KeyboardInterrupt
