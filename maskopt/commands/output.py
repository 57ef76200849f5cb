"""What a command prints of the library's logs: per-trial lines, notes, warnings.

The library logs (``logging``, under ``maskopt``) and never prints; the command line is the
program, so it decides: INFO lines to stdout, warnings to stderr as ``warning: ...``, the
dataset's notes as ``note: ...``, every `parameter` a message names shown as its option
(--parameter), every character that could drive the terminal escaped (:func:`shown`: a class,
parameter or file name from the data or the storage may hold any), and through ``tqdm.write`` so
that lines never break a progress bar. Optuna's own INFO lines would only repeat maskopt's, so a
command shows its errors alone. Both settings are restored when the command ends: a test or a
script that runs several commands in one process sees no leftover handler.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Iterator

from maskopt.files import printable

_quiet = contextvars.ContextVar("maskopt_quiet", default=False)
NOTES_LOGGER = "maskopt.search.notes"


def be_quiet() -> None:
    """For ``--quiet``: only warnings and errors from here to the end of the command."""
    _quiet.set(True)


def shown(text: str) -> str:
    """``text`` as the command line prints it: its lines kept, every other character that is not
    printable (an escape sequence, a bell, a carriage return) written as ``\\x1b`` and the like."""
    return "\n".join(printable(line) for line in text.split("\n"))


def line_of(record: logging.LogRecord) -> str:
    """A log record as the command line prints it: ``warning: ...``, ``note: ...`` or the message."""
    message = shown(record.getMessage())
    if record.levelno >= logging.WARNING:
        return f"warning: {message}"
    if record.name == NOTES_LOGGER:
        return f"note: {message}"
    return message


class _CommandHandler(logging.Handler):
    def __init__(self, with_flags: Callable[[str], str]):
        super().__init__(logging.INFO)
        self.with_flags = with_flags

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        warning = record.levelno >= logging.WARNING
        if _quiet.get() and not warning:
            return
        tqdm.write(self.with_flags(line_of(record)), file=sys.stderr if warning else sys.stdout)


@contextlib.contextmanager
def command_output(with_flags: Callable[[str], str]) -> Iterator[None]:
    """Print the library's logs while a command runs (see the module docstring)."""
    import optuna  # its logger sets its own level when first used: set it through optuna

    maskopt_logger = logging.getLogger("maskopt")
    level, optuna_verbosity = maskopt_logger.level, optuna.logging.get_verbosity()
    handler = _CommandHandler(with_flags)
    token = _quiet.set(False)
    maskopt_logger.addHandler(handler)
    maskopt_logger.setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        maskopt_logger.removeHandler(handler)
        maskopt_logger.setLevel(level)
        optuna.logging.set_verbosity(optuna_verbosity)
        _quiet.reset(token)
