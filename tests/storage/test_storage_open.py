"""open_storage: engine settings, the heartbeat, and errors that say what to do."""

import importlib.util
import io
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from maskopt.errors import StorageError
from maskopt.storage import open_storage


def test_sqlite_file_is_created(tmp_path):
    path = tmp_path / "studies.db"
    storage = open_storage(f"sqlite:///{path}")
    assert path.is_file()
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.engine_kwargs["connect_args"]["timeout"] >= 30


def test_default_is_maskopt_db_in_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_storage(None, heartbeat_interval=None)
    assert (tmp_path / "maskopt.db").is_file()


def test_create_false_refuses_a_missing_sqlite_file(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match=r"No SQLite storage at .*missing\.db.*maskopt search"):
        open_storage(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_heartbeat_uses_the_optuna_5_callback_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated name would raise FutureWarning here
        storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=5, grace_period=20, max_retry=3)
    assert storage.get_heartbeat_interval() == 5
    assert storage.grace_period == 20
    callback = storage.get_heartbeat_stale_trial_callback()
    assert type(callback) is optuna.storages.RetryHeartbeatStaleTrialCallback
    assert callback._max_retry == 3


def test_no_heartbeat_means_no_callback(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=None)
    assert storage.get_heartbeat_interval() is None
    assert storage.get_heartbeat_stale_trial_callback() is None


def test_missing_sqlite_folder(tmp_path):
    with pytest.raises(StorageError, match=r"folder does not exist .* Create the folder"):
        open_storage(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")


@pytest.mark.parametrize("url", ["redis://:secret-pw@localhost/0", "oracle://u:secret-pw@h/db"])
def test_unknown_scheme_lists_the_supported_ones(url):
    with pytest.raises(StorageError, match=r"Unsupported storage scheme .* Supported: sqlite, postgresql, mysql") as info:
        open_storage(url)
    assert "secret-pw" not in str(info.value)


def test_a_path_is_not_a_url():
    with pytest.raises(StorageError, match=r"'maskopt\.db' is not a URL.*sqlite:///maskopt\.db"):
        open_storage("maskopt.db")


def test_unparsable_url_shows_no_part_of_the_password():
    with pytest.raises(StorageError, match=r"Cannot parse storage URL .*percent-encode") as info:
        open_storage("postgresql://u:p@ss:w/rd@h:5/db")
    assert "ss:w" not in str(info.value) and "rd@" not in str(info.value)


def test_missing_named_driver_says_what_to_pip_install():
    assert importlib.util.find_spec("pg8000") is None, "this test needs pg8000 absent"
    with pytest.raises(StorageError, match=r"'pg8000' .* not installed .* `pip install pg8000`") as info:
        open_storage("postgresql+pg8000://u:secret-pw@localhost/db")
    assert "secret-pw" not in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_missing_mysql_driver_says_what_to_pip_install():
    if any(importlib.util.find_spec(m) for m in ("MySQLdb", "pymysql", "mysql")):
        pytest.skip("a MySQL driver is installed")
    with pytest.raises(StorageError, match=r"No mysql driver is installed .*`pip install mysqlclient`") as info:
        open_storage("mysql://u:secret-pw@localhost/db")
    assert "secret-pw" not in str(info.value)


def test_bare_postgresql_url_works_in_maskopt_and_in_optunas_own_tools(fresh_postgres_url):
    # SQLAlchemy 2.1 maps postgresql:// to psycopg (3); maskopt installs it, so Optuna and
    # optuna-dashboard, which pass the URL to SQLAlchemy as it is, open the same study.
    bare = make_url(fresh_postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    storage = open_storage(bare)
    assert storage.engine.dialect.driver == "psycopg"
    optuna.create_study(storage=storage, study_name="shared").set_user_attr("written_by", "maskopt")
    assert optuna.load_study(storage=bare, study_name="shared").user_attrs == {"written_by": "maskopt"}
    import optuna_dashboard

    app = optuna_dashboard.wsgi(bare)
    statuses = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "wsgi.input": io.BytesIO(),
                         "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO()},
                        lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("200") and b'"shared"' in body


def test_postgresql_engine_settings(postgres_url):
    storage = open_storage(postgres_url)
    assert storage.engine_kwargs["pool_pre_ping"] is True
    assert storage.engine_kwargs["pool_size"] + storage.engine_kwargs["max_overflow"] <= 8
    assert storage.engine_kwargs["connect_args"]["connect_timeout"] > 0


def test_server_down():
    url = "postgresql+psycopg://maskopt:down-secret-pw@127.0.0.1:1/maskopt_test"
    with pytest.raises(StorageError, match=r"Cannot reach the postgresql server at 127\.0\.0\.1:1 .*Start the server") as info:
        open_storage(url)
    message = str(info.value)
    assert "down-secret-pw" not in message
    assert "maskopt:***@127.0.0.1:1/maskopt_test" in message


def test_wrong_password(postgres_url):
    url = make_url(postgres_url).set(password="wrong-secret-pw").render_as_string(hide_password=False)
    with pytest.raises(StorageError, match=r"rejected user 'maskopt'.*Check the user name and password") as info:
        open_storage(url)
    assert "wrong-secret-pw" not in str(info.value)
    assert info.value.__cause__ is not None


def test_missing_database(postgres_url):
    url = make_url(postgres_url).set(database="no_such_db_here").render_as_string(hide_password=False)
    password = make_url(postgres_url).password
    with pytest.raises(StorageError, match=r"Database 'no_such_db_here' does not exist.*`createdb .* no_such_db_here`") as info:
        open_storage(url)
    assert password not in str(info.value)


def test_heartbeat_requeues_the_trial_of_a_dead_worker(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1, max_retry=1)
    study = optuna.create_study(storage=storage, study_name="hb")
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() stands in for a worker's optimize()
        dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.1)  # past the grace period, with no heartbeat: that worker is dead

    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)

    failed, retried = study.get_trials()
    assert failed.state == TrialState.FAIL
    assert retried.state == TrialState.COMPLETE
    assert retried.params == failed.params
    assert retried.system_attrs["failed_trial"] == failed.number


def test_postgres_sessions_cannot_hold_locks_forever(postgres_url):
    """A worker cut off mid-transaction must not block the others: the server ends its session."""
    import sqlalchemy

    storage = open_storage(postgres_url, heartbeat_interval=None)
    with storage.engine.connect() as connection:
        show = lambda name: connection.execute(sqlalchemy.text(f"SHOW {name}")).scalar()  # noqa: E731
        assert show("idle_in_transaction_session_timeout") == "1min"
        assert show("tcp_keepalives_idle") == "30"
