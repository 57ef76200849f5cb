"""Storage URLs: the default, password redaction, and choosing an installed database driver."""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError

from maskopt.errors import StorageError

DEFAULT_STORAGE_URL = "sqlite:///maskopt.db"

SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql")

# Drivers tried, in order, for a URL that names none ("postgresql://"). maskopt depends on
# psycopg (3) because it is SQLAlchemy 2.1's own default: then a bare postgresql:// URL also works
# in optuna-dashboard and optuna.load_study next to maskopt. psycopg2, where installed, still works.
_DRIVER_PREFERENCE = {
    "sqlite": ("pysqlite",),
    "postgresql": ("psycopg", "psycopg2", "pg8000"),
    "mysql": ("mysqldb", "pymysql", "mysqlconnector"),
}

# SQLAlchemy driver name -> what to pip install.
_PIP_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": '"psycopg[binary]"',
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysqlconnector": "mysql-connector-python",
}

# scheme://user:PASSWORD@ -- the password runs to the last "@" before whitespace, so a raw
# (not percent-encoded) password holding "@", ":" or "/" is still hidden whole. A later "@" in
# the same word (a query string) makes it hide too much, never too little.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)\S*@")
# Text that is one URL (what the commands print): its password runs to its last "@", spaces and all.
_WHOLE_URL_PASSWORD = re.compile(r"\A(\s*[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@]*:).*@", re.DOTALL)
# What SQLAlchemy reads as "user:password@" after the "://": the password ends at its first "@".
_USERINFO = re.compile(r"[^:/]*:[^@]*@")
# libpq keyword strings and URL query parameters: password=secret
_KEYWORD_PASSWORD = re.compile(
    r"(\bpassword\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s&'\",;)]+)", re.IGNORECASE
)

# A password this short would also match unrelated text when scrubbed literally; the URL
# patterns above still hide it wherever it appears inside a URL.
_MIN_SCRUB_LENGTH = 4


def resolve_url(url: str | None) -> str:
    """Return the storage URL to use.

    Args:
        url: Any SQLAlchemy URL, or None / "" for the default.

    Returns:
        ``url``, or ``DEFAULT_STORAGE_URL`` (a SQLite file ``maskopt.db`` in the current folder)
        when it is None or empty.

    Example:
        >>> resolve_url(None)
        'sqlite:///maskopt.db'
    """
    return url or DEFAULT_STORAGE_URL


def redact(text_or_url: str) -> str:
    """Replace every password in a URL, or in text holding URLs, with ``***``.

    Also hides ``password=...`` keyword settings (libpq connection strings, query strings). In
    text that starts with a URL, the password runs to the text's last ``@``, so a password with a
    raw space is hidden whole too.

    Args:
        text_or_url: A URL, or any text (an error message, a log line) that may hold URLs.

    Returns:
        The text with each password replaced by ``***``.

    Example:
        >>> redact("cannot reach postgresql://user:secret@db:5432/optuna")
        'cannot reach postgresql://user:***@db:5432/optuna'
    """
    text = _WHOLE_URL_PASSWORD.sub(r"\1***@", text_or_url)
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def _scrub(text: str, url: str) -> str:
    """redact(text), and also hide the URL's password wherever it appears in plain form."""
    text = redact(text)
    password = _password_of(url)
    if password and len(password) >= _MIN_SCRUB_LENGTH:
        for form in {password, quote(password, safe=""), quote_plus(password)}:
            text = text.replace(form, "***")
    return text


def _password_of(url: str) -> str | None:

    try:
        return make_url(url).password
    except Exception:  # an unparsable URL has no password to find
        return None


def _parse(url: str):
    """The sqlalchemy URL for ``url``; a StorageError if unsupported or unparsable."""

    if "://" not in url:
        raise StorageError(
            f"Storage URL {redact(url)!r} is not a URL. Use a SQLAlchemy URL such as "
            f"sqlite:///{url} (a SQLite file) or postgresql://USER:PASSWORD@HOST:5432/DATABASE."
        )
    scheme = url.split("://", 1)[0]
    backend = scheme.split("+", 1)[0].lower()
    if backend not in SUPPORTED_BACKENDS:
        raise StorageError(
            f"Unsupported storage scheme {scheme!r} in {redact(url)}. Supported: "
            f"{', '.join(SUPPORTED_BACKENDS)} (e.g. sqlite:///maskopt.db, "
            "postgresql://USER:PASSWORD@HOST:5432/DATABASE)."
        )
    try:
        parsed = make_url(url)
    except Exception as e:  # make_url raises ArgumentError, ValueError (a bad port), ...
        # Not quoting the parser's message: it can echo a piece of a mangled password.
        raise StorageError(
            f"Cannot parse storage URL {redact(url)}. Expected "
            f"{backend}://USER:PASSWORD@HOST:PORT/DATABASE; percent-encode special characters "
            "in the user name and password (@ as %40, : as %3A, / as %2F)."
        ) from e
    address = url.split("://", 1)[1]
    userinfo = _USERINFO.match(address)
    if userinfo and "@" in address[userinfo.end():]:
        # Parsed, but the rest of the password was read as the host, which the driver's errors print.
        raise StorageError(
            f"Storage URL {redact(url)} has a raw \"@\" in its password (or after it), so part of the password "
            "would be read as the host. Percent-encode every \"@\" in the user name and password as %40 (and : "
            "as %3A, / as %2F)."
        )
    return parsed


def _with_driver(url: str) -> str:
    """``url`` naming an installed driver, or a StorageError saying what to pip install.

    A URL that names a driver must use that one; a URL that names none gets the first
    installed one of ``_DRIVER_PREFERENCE``.
    """

    parsed = _parse(url)
    backend = parsed.get_backend_name()
    named = parsed.drivername != backend
    candidates = (parsed.get_driver_name(),) if named else _DRIVER_PREFERENCE[backend]
    missing: list[ImportError] = []
    for driver in candidates:
        candidate = parsed.set(drivername=f"{backend}+{driver}")
        try:
            dialect = candidate.get_dialect()
        except NoSuchModuleError as e:
            raise StorageError(
                f"Unknown {backend} driver {driver!r} in {redact(url)}. Known drivers: "
                f"{', '.join(_DRIVER_PREFERENCE[backend])}; or leave the driver out "
                f"({backend}://...) to use an installed one."
            ) from e
        if dialect.is_async:
            raise StorageError(
                f"Driver {driver!r} in {redact(url)} is asynchronous, which Optuna cannot use. "
                f"Use {backend}+{_DRIVER_PREFERENCE[backend][0]}://... or leave the driver out."
            )
        try:
            dialect.import_dbapi()
        except ImportError as e:
            missing.append(e)
            continue
        if named or driver == parsed.get_driver_name():
            return url  # SQLAlchemy picks this driver itself; keep the URL as the user wrote it
        return candidate.render_as_string(hide_password=False)
    if named:
        raise StorageError(
            f"Driver {candidates[0]!r} named in {redact(url)} is not installed ({missing[0]}). "
            f"Install it: `pip install {_PIP_PACKAGES.get(candidates[0], candidates[0])}`."
        ) from missing[0]
    raise StorageError(
        f"No {backend} driver is installed for {redact(url)} (tried {', '.join(candidates)}). "
        f"Install one: `pip install {_PIP_PACKAGES[candidates[0]]}`, or another driver, named in "
        f"the URL ({backend}+DRIVER://...)."
    ) from missing[0]
