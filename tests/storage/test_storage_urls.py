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
