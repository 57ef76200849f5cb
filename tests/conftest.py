"""Shared fixtures: fresh PostgreSQL databases on the local server; one CPU thread per process; one tiny demo
dataset, tiny spaces, one decoded-image cache and one finished study for the search, export and report tests.

The server and the `maskopt` role come from scripts/start-postgres (run by `make test`). Tests
that need PostgreSQL skip, saying why, when no server can be reached. MASKOPT_TEST_POSTGRES_URL
points them at another server: a URL to a database whose user may CREATE DATABASE.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Tests start worker subprocesses beside the pytest process on a 2-core machine; torch threads
# that outnumber the cores spin-wait and run tens of times slower. One thread each, everywhere.
os.environ.setdefault("MASKOPT_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record):
        from maskopt.commands.output import line_of

        self.lines.append(line_of(record))


@contextlib.contextmanager
def logged_lines():
    """The lines the library logs under ``maskopt`` meanwhile, as the command line shows them."""
    lines: list[str] = []
    logger = logging.getLogger("maskopt")
    handler, level = _Lines(lines), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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


# --- the search, space and export tests: one tiny demo dataset, tiny spaces, one cache ---------------

# Everything here is sized for a shared 2-core CPU: 20 persons at 32 px, the smallest backbone
# (mobilenetv3_small_050 trains a 32 px batch about twice as fast as resnet10t with one thread),
# 2 folds and few epochs.

BACKBONE = "mobilenetv3_small_050"

# The params of a tiny trial; tests override what they search.
TINY_PARAMS = {
    "backbone": BACKBONE,
    "lr": 0.01,
    "weight_decay": 0.01,
    "batch_size": 16,
    "freeze_depth": 0,
    "sampler": "uniform",
    "aug_strength": 0.0,
    "loss": "ce",
    "optimizer": "adamw",
    "image_size": 32,
    "age_old": 60,
    "head": "single",
}
TINY_STUDY = {
    "name": "tiny",
    "folds": 2,
    "epochs": 1,
    "seed": 0,
    "sampler": "tpe",
    "pruner": "none",
    "warmup_epochs": 0.0,
    "amp": False,
}


def tiny_space_dict(*, study: dict | None = None, params: dict | None = None) -> dict:
    """A space as a dict: ``TINY_STUDY`` / ``TINY_PARAMS`` updated with ``study`` / ``params``."""
    return {"study": {**TINY_STUDY, **(study or {})}, "params": {**TINY_PARAMS, **(params or {})}}


@pytest.fixture(scope="session")
def space_dict():
    """``space_dict(study=..., params=...) -> dict``: the tiny space with some keys changed."""
    return tiny_space_dict


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo dataset every test here reads (and none may change): 20 + 6 persons at 32 px."""
    from maskopt.search.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "demo-data"
    make_demo_data(out, persons=20, eval_persons=6, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decoded-image cache for the session, so each size is decoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def write_space(tmp_path):
    """``write_space(name="space.yaml", study=..., params=..., raw=None) -> Path``.

    Writes a tiny space (updated with ``study`` and ``params``) as YAML, or ``raw`` as given
    (a dict dumped to YAML, or a string written as is).
    """

    def write(name: str = "space.yaml", *, study: dict | None = None, params: dict | None = None, raw=None) -> Path:
        path = tmp_path / name
        if raw is None:
            raw = tiny_space_dict(study=study, params=params)
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
        return path

    return write


# --- one finished study, shared by the search and export tests ----------------------------------

MAIN_ENQUEUED = (
    {"lr": 0.01, "loss": "ce"},
    {"lr": 0.01, "loss": "label_smoothing"},
    {"lr": 1e-8, "loss": "ce"},  # cannot learn: the median pruner stops it at its first report
)


@dataclass(frozen=True)
class MainStudy:
    """What ``maskopt search`` left: a 3-trial study (2 complete, 1 pruned) and its export."""

    root: Path  # the folder the command ran in
    space_path: Path
    db: Path
    url: str
    data: Path
    cache_dir: Path
    export: Path  # exports/main, written by the search when it reached its total
    output: str


@pytest.fixture(scope="session")
def main_study(tmp_path_factory, demo_data, cache_dir) -> MainStudy:
    """``maskopt search`` of a 3-trial, 2-fold, 6-epoch study on the demo data, with its export.

    Two trials that learn (the multi head learns the 18 classes from 20 persons far better than
    one 18-way layer) and one with lr 1e-8, enqueued in this order so that the run is
    deterministic: the median pruner needs 2 complete trials before it compares.
    """
    from click.testing import CliRunner

    from maskopt.cli import cli
    from maskopt.storage import create_or_load_study, open_storage

    root = tmp_path_factory.mktemp("main")
    raw = tiny_space_dict(
        study={"name": "main", "data": str(demo_data), "epochs": 6,
               "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}},
        params={"lr": {"low": 1e-8, "high": 0.1, "log": True}, "loss": ["ce", "label_smoothing"], "head": "multi"},
    )
    space_path = root / "main.yaml"
    space_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    db = root / "main.db"
    url = f"sqlite:///{db}"
    study = create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name="main")
    for params in MAIN_ENQUEUED:
        study.enqueue_trial(params)

    previous = os.getcwd()
    os.chdir(root)  # the search exports to exports/<study> under the current folder
    try:
        result = CliRunner().invoke(cli, ["search", "--space", str(space_path), "--storage", url, "--trials", "3",
                                          "--device", "cpu", "--cache-dir", str(cache_dir), "--quiet"])
    finally:
        os.chdir(previous)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return MainStudy(root, space_path, db, url, demo_data, cache_dir, root / "exports" / "main", result.output)


# --- real small disks ------------------------------------------------------------------------------


@pytest.fixture
def tmpfs():
    """``tmpfs(folder, size="300k") -> folder``: a tmpfs mounted there (a real disk that fills up, or
    that ``mount -o remount,ro`` makes read-only), unmounted after the test. Skips, saying why,
    where mounting is not allowed (it needs root)."""
    import shutil

    mounted = []

    def mount(folder: Path, size: str = "300k") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root: no full or read-only disk to test against")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def fill_disk(folder: Path) -> None:
    """Fill the disk holding ``folder`` to the last byte (a file named ``filler``)."""
    import errno

    with open(folder / "filler", "wb", buffering=0) as f, pytest.raises(OSError) as full:
        while True:
            f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
