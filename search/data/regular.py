"""Reading the files a user names: only regular files are opened.

A FIFO where an image is expected blocks any reader forever (Pillow's ``Image.open`` included),
and ``/dev/zero`` never ends. So the loaders check every path with ``stat`` (``path_problem``),
and decoders open it with ``open_regular``: checked, opened without blocking, then checked again
on the open descriptor, in case it was swapped in between. (Writing is ``maskopt.files``'s.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from maskopt.files import kind_of

MISSING = "does not exist"
"""What ``path_problem`` says of a path that is not there."""


class NotARegularFile(OSError):
    """A path names a FIFO, a device, a socket or a folder where a file is expected."""


def path_problem(path: str | Path, expected: str = "an image file", *, is_wanted=stat.S_ISREG) -> str | None:
    """None if ``path`` is ``expected`` (a regular file; with ``is_wanted=stat.S_ISDIR``, a folder),
    else what it is instead; symbolic links are followed.

    The answer completes a sentence that starts with the path: ``does not exist``,
    ``is a FIFO, not an image file``, ``cannot be read (File name too long)``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return MISSING
    except OSError as e:  # a name too long, a loop of links, a file where a folder should be on the way
        return f"cannot be read ({e.strerror or e})"
    except ValueError as e:  # a NUL character in the name
        return f"cannot be read ({e})"
    return None if is_wanted(mode) else f"is {kind_of(mode)}, not {expected}"


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading in binary, refused unless it is a regular file.

    Raises:
        NotARegularFile: It is a FIFO, a device, a socket or a folder.
        OSError: It cannot be opened.
    """
    _refuse_unless_regular(os.stat(path).st_mode)  # before opening: opening a device may do things
    # O_NONBLOCK: should a FIFO replace the file after the check, opening it must not wait for a
    # writer, and fstat refuses it; reading a regular file ignores the flag.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_unless_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"is {kind_of(mode)}, not a regular file")
