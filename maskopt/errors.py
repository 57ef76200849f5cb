"""The one exception hierarchy of maskopt.

Library code raises these; the CLI turns them into a clean message and a non-zero exit,
without a traceback. Messages say what is wrong, where (file, key, row, value), and what to do.
A parameter the user can change is named by its Python argument in backticks (`force`, `out`);
the CLI shows each as its own option (--force, --out), so the library knows no CLI flags.
"""


class MaskoptError(Exception):
    """Base class of every error maskopt reports to a user."""


class DataError(MaskoptError):
    """A dataset is missing, malformed, or holds unreadable images."""


class SpaceError(MaskoptError):
    """A search-space YAML file is invalid."""


class StorageError(MaskoptError):
    """A study storage cannot be reached or used."""


class ExportError(MaskoptError):
    """A study cannot be exported, or an export or submission is invalid."""


class NotAMaskoptStudy(MaskoptError):
    """The study was not made by ``maskopt search``: it has no stored search space."""


class LabelIssuesError(MaskoptError):
    """The study's label issues cannot be found, or the corrections draft cannot be written."""


class SearchInterrupted(MaskoptError):
    """Ctrl-C or SIGTERM stopped the search; the running trial was marked FAIL and queued again."""


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, marking the cut.

    Every value an error message quotes from a user's file goes through this: a hostile or
    mistaken file may hold a value of any length, and the message must stay readable.
    """
    return text if len(text) <= limit else text[:limit - 3] + "..."
