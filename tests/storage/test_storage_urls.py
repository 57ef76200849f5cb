"""resolve_url and redact: the default storage, and passwords never shown."""

import pytest

from maskopt.storage import DEFAULT_STORAGE_URL, redact, resolve_url


@pytest.mark.parametrize("url", [None, ""])
def test_resolve_url_defaults_to_sqlite_file_here(url):
    assert resolve_url(url) == DEFAULT_STORAGE_URL == "sqlite:///maskopt.db"


def test_resolve_url_keeps_a_given_url():
    assert resolve_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql+psycopg2://user:secret@10.0.0.5:6543/db?sslmode=require",
         "postgresql+psycopg2://user:***@10.0.0.5:6543/db?sslmode=require"),
        ("mysql+pymysql://root:s3cr%40t%2Fx@db.example.org/optuna",
         "mysql+pymysql://root:***@db.example.org/optuna"),
        # Raw special characters: the whole password goes, not just the part before an "@".
        ("postgresql://user:p@ss:w/rd!#@host/db", "postgresql://user:***@host/db"),
        ("postgresql://:only-password@host/db", "postgresql://:***@host/db"),
        ("Error: cannot reach postgresql://u:hunter2@db:5432/x (refused). Retry later.",
         "Error: cannot reach postgresql://u:***@db:5432/x (refused). Retry later."),
        ("a=postgresql://a:one@h1/x b=mysql://b:two@h2/y",
         "a=postgresql://a:***@h1/x b=mysql://b:***@h2/y"),
        ("dbname=x user=u password=secret host=h", "dbname=x user=u password=*** host=h"),
        ("postgresql://u@h/db?password=secret&sslmode=require",
         "postgresql://u@h/db?password=***&sslmode=require"),
    ],
)
def test_redact_hides_passwords(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["sqlite:///maskopt.db", "postgresql://user@host:5432/db", "no url at all", "user@example.org"],
)
def test_redact_leaves_text_without_passwords_alone(text):
    assert redact(text) == text


def test_redact_hides_a_password_with_spaces_in_a_whole_url():
    assert redact("postgresql://u:p ss w0rd@host/db") == "postgresql://u:***@host/db"
    assert redact("  mysql://u:a b@host/db") == "  mysql://u:***@host/db"


# A raw "@" in a password: SQLAlchemy ends the password at the first "@" and reads the rest as the
# host, which the driver's "could not resolve host" message would print. Each is refused before any
# connection, with the password hidden; MySQL and other separators the same.
RAW_AT_URLS = [
    "postgresql://u:p@ss@w0rd@nowhere.invalid/db",
    "postgresql+psycopg://u:p@ss@w0rd@nowhere.invalid:5432/db",
    "mysql://u:p@ss@w0rd@nowhere.invalid/db",
    "postgresql://u:p@ss/w0rd@nowhere.invalid/db",
    "postgresql://u:p@ss?w0rd@nowhere.invalid/db",
    "postgresql://u:p@ss#w0rd@nowhere.invalid/db",
]


@pytest.mark.parametrize("url", RAW_AT_URLS)
def test_a_raw_at_in_the_password_is_refused_without_printing_it(url, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from maskopt.cli import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert 'has a raw "@" in its password' in result.output and "%40" in result.output
    for piece in ("p@ss", "ss@w0rd", "w0rd"):
        assert piece not in result.output, result.output
    assert "u:***@nowhere.invalid" in result.output


@pytest.mark.parametrize(
    ("url", "pieces"),
    [
        ("postgresql://u:pqz9 w0rd s3cret@nowhere.invalid/db", ("pqz9", "w0rd", "s3cret")),  # raw spaces
        ("postgresql://u:pqz9:w0rd/s3cret@nowhere.invalid/db", ("pqz9", "w0rd", "s3cret")),  # raw ":" and "/"
        ("postgresql://u@nowhere.invalid/db?password=pqz9@w0rd@s3cret", ("pqz9", "w0rd", "s3cret")),  # in the query
        ("postgresql://me@corp:s3cret@nowhere.invalid/db", ("s3cret",)),  # a raw "@" in the user name only
    ],
)
def test_other_raw_passwords_reach_the_server_and_stay_hidden(url, pieces, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from maskopt.cli import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["studies", "--storage", url])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Host name 'nowhere.invalid' could not be resolved" in result.output, result.output
    for piece in pieces:
        assert piece not in result.output, result.output
