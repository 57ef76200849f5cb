"""Writing a user's files safely, and showing their names safely.

Every file maskopt writes for a user (a report, a submission, an export's config, a corrections
draft, imported weights) goes through :func:`write_atomically`: the content goes to an
unpredictable, exclusively created temporary file in the target's own folder, is flushed to disk,
and is then renamed over the target, so the target is either the old file or the whole new one,
never half of it. A target that is not a regular file (a symlink, a device such as
``/dev/null``, a FIFO, a folder) is refused and left as it is: renaming over it would replace the
node, and writing through it would change a file the user did not name. A failure (a full disk, a
read-only folder) removes the temporary file and is reported with the folder and what to do.

Every name a message shows that may come from outside (a path, a value in a file) goes through
:func:`printable`, so control characters cannot drive the terminal that shows the message.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

from maskopt.errors import MaskoptError

# errno -> (what went wrong, what to do about it); other errors show their own text.
_REASONS = {
    errno.ENOSPC: ("the disk is full", "free space there"),
    errno.EDQUOT: ("the disk quota is used up", "free space there"),
    errno.EROFS: ("the filesystem is read-only", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
}


def printable(text: object) -> str:
    """``text`` with every character that is not printable (terminal escapes, newlines, bidi
    overrides, undecodable bytes of a file name) shown as its Python escape, such as ``\\x1b``."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def write_failed(path: str | Path, e: BaseException, *, error: type[MaskoptError] = MaskoptError,
                 option: str = "out") -> MaskoptError:
    """The error to raise when writing ``path`` failed with ``e``: the path, its folder, the
    reason and what to do (``option`` is the argument that names the path)."""
    path = Path(path)
    code = getattr(e, "errno", None)
    if code is None:  # safetensors says an OS error in words: "... No space left on device (os error 28)"
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else None
    reason, todo = _REASONS.get(code, (None, "check that folder"))
    if reason is None:
        reason = printable(getattr(e, "strerror", None) or e)
    return error(f"cannot write {printable(path)}: {reason} (in {printable(path.parent.resolve())}); nothing "
                 f"was changed there. {todo.capitalize()}, or give `{option}` a path elsewhere")


def check_target(path: str | Path, *, error: type[MaskoptError] = MaskoptError, option: str = "out") -> None:
    """Refuse ``path`` unless it is missing or a regular file (see the module docstring).

    Called before long work that ends in writing ``path``, so the refusal comes first; the
    write checks again.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise write_failed(path, e, error=error, option=option) from None
    if stat.S_ISREG(mode):
        return
    raise error(f"{printable(path)} is {kind_of(mode)}, not a regular file, and was left as it is; give `{option}` "
                f"the path of a regular file")


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a ``st_mode`` describes, as words: ``a FIFO``, ``a folder``, ``a symlink`` (from ``lstat``)..."""
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "a special file")


def write_atomically(path: str | Path, data: str | bytes, *, error: type[MaskoptError] = MaskoptError,
                     option: str = "out") -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` as the module docstring says; its folder is created.

    Args:
        path: The file to write or replace.
        data: Its whole content.
        error: The error class to raise.
        option: The argument that named ``path``, for the messages.

    Returns:
        ``path``.

    Raises:
        error: ``path`` is not a regular file, or it cannot be written (the message names the
            folder, the reason and what to do); nothing is left behind.
    """
    path = Path(path)
    check_target(path, error=error, option=option)
    content = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failed(path, e, error=error, option=option) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it private; these files are not secret
        os.replace(tmp, path)  # renames over a link or device planted meanwhile, never through it
    except OSError as e:
        os.unlink(tmp)
        raise write_failed(path, e, error=error, option=option) from None
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o077)  # briefly the strictest mask, never a looser one
    os.umask(mask)
    return mask
