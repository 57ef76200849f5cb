"""Optuna storages for maskopt: opening them, studies in them, artifacts next to them.

One entry point turns "nothing or a URL" into a storage (``open_storage``): a SQLite file by
default, PostgreSQL or MySQL for workers on several machines, with clear errors and passwords
never shown (``redact``).
"""

from ._artifacts import DEFAULT_ARTIFACT_DIR, artifact_store
from ._dashboard import serve_dashboard
from ._rdb import open_storage, require_writable
from ._studies import (
    StudySummary,
    create_or_load_study,
    list_studies,
    load_existing_study,
)
from ._urls import DEFAULT_STORAGE_URL, redact, resolve_url

__all__ = [
    "DEFAULT_ARTIFACT_DIR",
    "DEFAULT_STORAGE_URL",
    "StudySummary",
    "artifact_store",
    "create_or_load_study",
    "list_studies",
    "load_existing_study",
    "open_storage",
    "redact",
    "require_writable",
    "resolve_url",
    "serve_dashboard",
]
