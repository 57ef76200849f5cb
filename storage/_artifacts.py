"""Where trials keep files (plots, confusion matrices) that the dashboard shows."""

from __future__ import annotations

from pathlib import Path

import optuna.artifacts

DEFAULT_ARTIFACT_DIR = "maskopt-artifacts"


def artifact_store(artifact_dir: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    """An Optuna artifact store in a folder, created if missing.

    Workers upload with ``optuna.artifacts.upload_artifact(artifact_store=..., ...)``; the
    dashboard, given the same folder, shows the files next to their trials.

    Args:
        artifact_dir: The folder, e.g. ``DEFAULT_ARTIFACT_DIR``.

    Returns:
        The store.

    Example:
        >>> store = artifact_store(DEFAULT_ARTIFACT_DIR)
    """
    path = Path(artifact_dir)
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(path)
