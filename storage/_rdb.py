"""Opening an Optuna RDBStorage: engine settings per backend, schema races, clear errors."""

from __future__ import annotations

import errno
import os
import random
import re
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.event
import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from maskopt.errors import StorageError

from ._urls import _scrub, _with_driver, redact, resolve_url

# Long enough that a few worker processes writing the same SQLite file wait for each other
# instead of failing with "database is locked".
_SQLITE_TIMEOUT_S = 60
# Per worker process. Optuna holds one connection per thread doing storage work plus one for
# the heartbeat; PostgreSQL's default max_connections (100) then fits about 15 workers
# ("too many clients": optuna #1347, #1115).
_POOL_SIZE = 2
_MAX_OVERFLOW = 4
# libpq's connect timeout: without one an unreachable host blocks for minutes.
_CONNECT_TIMEOUT_S = 10
# A worker cut off from the server in the middle of a transaction (a network partition, a
# machine that lost power) leaves its session "idle in transaction", holding row locks that
# every other worker then waits on forever: TCP takes hours to notice a silent peer. The server
# ends such a session after a minute, and probes idle connections every 30 s so it also notices
# the dead peer itself; maskopt's own transactions last milliseconds.
_SESSION_OPTIONS = ("-c idle_in_transaction_session_timeout=60s -c tcp_keepalives_idle=30 "
                    "-c tcp_keepalives_interval=10 -c tcp_keepalives_count=3")

# Workers that open a fresh database at the same instant race on creating the schema; the
# losers see these. Retrying finds the tables (or the alembic stamp) the winner made.
_SCHEMA_ATTEMPTS = 6
_BACKOFF_S = (0.05, 0.3)

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_CREATE_DATABASE = {
    "postgresql": "`createdb -h {host} -p {port} -U {user} {database}`",
    "mysql": "`mysql -h {host} -P {port} -u {user} -p -e 'CREATE DATABASE {database}'`",
}
_START_SERVER = {
    "postgresql": "on a Debian/Ubuntu machine `sudo pg_ctlcluster 15 main start`",
    "mysql": "e.g. `sudo systemctl start mysql`",
}

# Driver message pattern -> (what failed, what to do). Checked in order; the first match wins.
_CONNECT_FAILURES = (
    (
        re.compile(r"password authentication failed|access denied for user|role .* does not exist"),
        "The {server} rejected user {user!r}",
        "Check the user name and password in the storage URL (`storage` or MASKOPT_STORAGE); "
        "percent-encode special characters in the password (@ as %40).",
    ),
    (
        re.compile(r"database .* does not exist|unknown database"),
        "Database {database!r} does not exist on the {server}",
        "Create it, e.g. {create_database}, or fix the database name in the storage URL.",
    ),
    (
        re.compile(r"could not translate host name|name or service not known|unknown .*host"),
        "Host name {host!r} could not be resolved",
        "Fix the host in the storage URL.",
    ),
    (
        re.compile(
            r"connection refused|can't connect|could not connect|timeout expired|timed out|"
            r"no such file or directory|is the server running"
        ),
        "Cannot reach the {server}",
        "Start the server ({start_server}), or fix the host and port in the storage URL.",
    ),
)


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = None,
    max_retry: int = 2,
    create: bool = True,
) -> optuna.storages.RDBStorage:
    """Open (creating its tables if needed) the Optuna storage at ``url``.

    SQLite waits up to a minute for a locked file instead of failing. PostgreSQL and MySQL get
    ``pool_pre_ping`` (connections dropped while idle are replaced) and a small bounded
    connection pool per process. When ``heartbeat_interval`` is set, a worker that dies
    mid-trial leaves a RUNNING trial whose heartbeat stops; the next worker of the study to
    start a trial in ``study.optimize`` marks it FAIL and re-queues its parameters
    (``RetryHeartbeatStaleTrialCallback``), up to ``max_retry`` times per trial.

    Several processes may open the same fresh, empty database at the same instant: the race
    on creating its tables is retried with a short random back-off.

    Args:
        url: A SQLAlchemy URL (``sqlite:///FILE``, ``postgresql://USER:PASSWORD@HOST/DB``,
            ``mysql://...``), or None / "" for ``DEFAULT_STORAGE_URL``. A URL naming no
            driver uses the first installed one (psycopg, psycopg2 or pg8000 for PostgreSQL).
        heartbeat_interval: Seconds between a running trial's heartbeats; None disables them
            (for readers such as the dashboard, which run no trials).
        grace_period: Seconds without a heartbeat before a trial counts as dead; None means
            Optuna's default, twice ``heartbeat_interval``.
        max_retry: How many times a trial whose worker died is re-queued.
        create: If False, a SQLite file that does not exist is an error instead of being
            created empty (for commands that only read).

    Returns:
        The storage, ready for ``create_or_load_study`` or ``optuna.load_study``.

    Raises:
        StorageError: For an unsupported scheme, a missing driver, an unreachable server, wrong
            credentials, a missing database or folder, or an incompatible schema. The message
            names the URL with its password replaced by ``***`` and says what to do.

    Example:
        >>> storage = open_storage("sqlite:///maskopt.db", heartbeat_interval=None)
    """
    url = resolve_url(url)
    driver_url = _with_driver(url)
    parsed = make_url(driver_url)
    if not create:
        _require_sqlite_file(parsed, url)
    else:
        _require_writable_sqlite(parsed, url)

    attempt = 0
    while True:
        attempt += 1
        try:
            with warnings.catch_warnings():
                # The heartbeat API is marked experimental; we chose it knowingly, and a
                # warning on every command would only be noise.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = None
                if heartbeat_interval is not None:
                    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                storage = optuna.storages.RDBStorage(
                    driver_url,
                    engine_kwargs=_engine_kwargs(parsed),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback,
                )
                _report_failed_sqlite_writes(storage, parsed, url)
                return storage
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            if attempt < _SCHEMA_ATTEMPTS and _is_schema_race(e):
                time.sleep(random.uniform(*_BACKOFF_S) * attempt)
                continue
            raise _storage_error(e, parsed, url) from e
        except RuntimeError as e:
            # Optuna's schema version check: its message says to run `optuna storage upgrade`.
            raise StorageError(f"Storage {redact(url)}: {_scrub(str(e), url)}") from e


def _engine_kwargs(parsed: URL) -> dict:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
    kwargs = {"pool_pre_ping": True, "pool_size": _POOL_SIZE, "max_overflow": _MAX_OVERFLOW}
    if parsed.get_driver_name() not in ("psycopg2", "psycopg"):
        return kwargs
    # Settings in the URL's query string win: SQLAlchemy lets connect_args override them.
    connect_args = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    if "options" not in parsed.query:
        connect_args["options"] = _SESSION_OPTIONS
    kwargs["connect_args"] = connect_args
    return kwargs


def _require_sqlite_file(parsed: URL, url: str) -> None:
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).is_file():
        raise StorageError(
            f"No SQLite storage at {Path(parsed.database).resolve()} ({redact(url)}). Run "
            "`maskopt search` first, or point `storage` (or MASKOPT_STORAGE) at an existing "
            "storage."
        )


def require_writable(url: str | None) -> None:
    """Refuse a SQLite storage that cannot be written, before work whose end writes to it.

    Each search writes every trial there, and an export notes itself there when it is done: a
    read-only file fails only at that first commit. Nothing to check for a server database.

    Raises:
        StorageError: The file or its folder cannot be written (a read-only filesystem, no
            permission); the message names them and says what to do.
    """
    url = resolve_url(url)
    _require_writable_sqlite(make_url(_with_driver(url)), url)


def _require_writable_sqlite(parsed: URL, url: str) -> None:
    # SQLite opens a read-only file without complaint and fails at the first commit, deep in a
    # trial or after an export: say so before anything runs. A real write is tried, since
    # access() says yes to root where a write fails (a root-squashed NFS share, an immutable
    # file). The folder must be writable too: SQLite writes its journal beside the file.
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).resolve()
    folder = path.parent
    if not folder.is_dir():
        return  # the connection attempt reports the missing folder
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opened for writing, nothing written
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path, url) from None
        raise _read_only(path, url, f"{e.filename or path}: {e.strerror or e}") from None


def _report_failed_sqlite_writes(storage: optuna.storages.RDBStorage, parsed: URL, url: str) -> None:
    """Turn SQLite's "database or disk is full" and "readonly database" on any later write into a
    StorageError that names the file and says what to do (Optuna would say "invalid data")."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database).resolve()

    def on_error(context) -> None:
        error = _sqlite_failed_write(context.original_exception, path, url)
        if error is not None:
            raise error from context.original_exception

    sqlalchemy.event.listen(storage.engine, "handle_error", on_error)


def _sqlite_failed_write(e: BaseException, path: Path, url: str) -> StorageError | None:
    """The StorageError for a SQLite error that means the disk is full or the file read-only, else None."""
    reason = str(e)
    lowered = reason.lower()
    if "database or disk is full" in lowered:
        return _disk_full(path, url)
    if "readonly database" in lowered:
        return _read_only(path, url, reason)
    if "database is locked" in lowered:  # SQLite gives up at once when two writers would deadlock
        return StorageError(
            f"SQLite storage {path} ({redact(url)}) was locked by another connection when this one wrote, and the "
            f"last change was not stored. Run the command again; for several workers, or workers that stop and "
            f"start often, use PostgreSQL (`storage` postgresql://...).")
    return None


def _disk_full(path: Path, url: str) -> StorageError:
    return StorageError(
        f"SQLite storage {path} ({redact(url)}) cannot be written: the disk holding {path.parent} is full, and the "
        f"last change was not stored. Free space there, or move the file to another disk and point `storage` (or "
        f"MASKOPT_STORAGE) at it; then run the command again.")


def _read_only(path: Path, url: str, detail: str) -> StorageError:
    return StorageError(
        f"SQLite storage {path} ({redact(url)}) cannot be written ({detail}): a read-only filesystem or no write "
        f"permission. maskopt writes every trial and every export's note there: copy the file to a writable "
        f"folder and point `storage` (or MASKOPT_STORAGE) at the copy.")


def _causes(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_schema_race(e: BaseException) -> bool:
    """Whether ``e`` comes from another process creating the same tables at the same time.

    Seen: PostgreSQL ``UniqueViolation`` on ``pg_type`` or ``alembic_version`` (an
    IntegrityError); SQLite ``table studies already exists`` (an OperationalError) or a
    UNIQUE failure on ``alembic_version``. Optuna wraps some errors in StorageInternalError,
    hence the walk over causes.
    """
    for cause in _causes(e):
        if isinstance(cause, sqlalchemy.exc.IntegrityError):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and "already exists" in str(cause.orig):
            return True
    return False


def _storage_error(e: BaseException, parsed: URL, url: str) -> StorageError:
    """One paragraph: what failed, the redacted URL, what to do."""
    backend = parsed.get_backend_name()
    orig = getattr(e, "orig", None) or e
    reason = " ".join(str(orig).split()).replace("FATAL: ", "")
    lowered = reason.lower()

    if backend == "sqlite":
        path = Path(parsed.database or "").resolve()
        if "unable to open database file" in lowered:
            return StorageError(
                f"Cannot open SQLite file {path} ({redact(url)}): its folder does not exist or "
                "is not writable. Create the folder or fix the path."
            )
        failed_write = _sqlite_failed_write(orig, path, url)
        if failed_write is not None:
            return failed_write
        if "file is not a database" in lowered:
            return StorageError(
                f"{path} is not a SQLite database ({redact(url)}). Point `storage` at another "
                "file."
            )
    else:
        port = parsed.port or _DEFAULT_PORTS[backend]
        host = parsed.host or "localhost"
        server = f"{backend} server at {host}:{port}" if parsed.host else f"local {backend} server"
        names = {
            "server": server,
            "host": host,
            "port": port,
            "user": parsed.username or "",
            "database": parsed.database or "",
            "start_server": _START_SERVER[backend],
        }
        names["create_database"] = _CREATE_DATABASE[backend].format(**names)
        for pattern, what, todo in _CONNECT_FAILURES:
            if pattern.search(lowered):
                what, todo = what.format(**names), todo.format(**names)
                return StorageError(_scrub(f"{what} ({reason}): {redact(url)}. {todo}", url))
    return StorageError(
        _scrub(
            f"Cannot open storage {redact(url)} ({type(orig).__name__}: {reason}). Check the "
            "storage URL (`storage` or MASKOPT_STORAGE) and that the database is reachable.",
            url,
        )
    )
