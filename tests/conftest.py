"""Shared fixtures: fresh PostgreSQL databases on the local server; one CPU thread per process.

The server and the `maskopt` role come from scripts/start-postgres (run by `make test`). Tests
that need PostgreSQL skip, saying why, when no server can be reached. MASKOPT_TEST_POSTGRES_URL
points them at another server: a URL to a database whose user may CREATE DATABASE.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests start worker subprocesses beside the pytest process on a 2-core machine; torch threads
# that outnumber the cores spin-wait and run tens of times slower. One thread each, everywhere.
os.environ.setdefault("MASKOPT_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)
POSTGRES_ADMIN_URL = os.environ.get(
    "MASKOPT_TEST_POSTGRES_URL",
    "postgresql://maskopt:maskopt-test-pw@127.0.0.1:5432/maskopt_test",
)


def _connect_error(url: str) -> str | None:
    """None if `url` accepts a connection, else why not (one line, password hidden)."""
    import sqlalchemy

    from maskopt.storage import redact

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except Exception as e:  # noqa: BLE001 -- any failure means: no server for these tests
        reason = " ".join(str(getattr(e, "orig", None) or e).split())
        return redact(f"{url}: {reason}")
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def _postgres_admin():
    """An engine on the admin database, or the reason there is none."""
    import sqlalchemy

    error = _connect_error(POSTGRES_ADMIN_URL)
    if error is not None:
        # A clean machine: start the server once (the script exits 0 even when it cannot).
        script = subprocess.run(
            [str(ROOT / "scripts" / "start-postgres")], capture_output=True, text=True, timeout=120
        )
        error = _connect_error(POSTGRES_ADMIN_URL)
        if error is not None and script.stdout.strip():
            error += f" (scripts/start-postgres said: {script.stdout.strip().splitlines()[-1]})"
    if error is not None:
        yield error
        return
    engine = sqlalchemy.create_engine(
        POSTGRES_ADMIN_URL, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    yield engine
    engine.dispose()


def _fresh_database(admin):
    """Yield a URL to a new empty database; drop it afterwards."""
    import sqlalchemy

    if isinstance(admin, str):
        pytest.skip(f"PostgreSQL not available: {admin}")
    name = f"maskopt_t_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        # FORCE: a test that failed may have left connections open.
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url(_postgres_admin):
    """A URL to a fresh database, shared by the whole session."""
    yield from _fresh_database(_postgres_admin)


@pytest.fixture
def fresh_postgres_url(_postgres_admin):
    """A URL to a new, empty database for one test."""
    yield from _fresh_database(_postgres_admin)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """A fresh, empty storage URL: a SQLite file, then a PostgreSQL database (the same test twice).

    The PostgreSQL case skips, saying why, only where no server can be started.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'storage.db'}"
    else:
        yield from _fresh_database(request.getfixturevalue("_postgres_admin"))


# Markers (registered in pyproject.toml) come from what a test uses, so none can be forgotten:
# `-m "not slow"` is the quick loop while editing; `-m postgres` or `-m browser` picks a part.
POSTGRES_FIXTURES = {"postgres_url", "fresh_postgres_url", "_postgres_admin"}


def pytest_collection_modifyitems(items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & POSTGRES_FIXTURES or getattr(item, "callspec", None) and \
                item.callspec.params.get("storage_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)
