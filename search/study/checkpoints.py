"""Per-epoch checkpoints of running trials, so that a retried trial resumes where its worker died.

A trial's checkpoint is one file, ``<folder>/<study>/trial-<origin>.pt``, where ``origin`` is
the number of the trial as first run: Optuna's heartbeat retry gives the rerun a new number but
records the original one, and the rerun reads the original's file. Each save replaces the file
atomically (a temporary file in the same folder, then ``os.replace``), so a worker killed while
writing leaves the previous checkpoint intact. The file is removed when the trial ends, so the
disk holds at most one checkpoint per running (or killed, not yet retried) trial.

The file is read with ``torch.load(weights_only=True)``: it holds tensors, numbers, strings,
lists and dicts only, and a file that needs more (or is truncated, or from another maskopt) is
ignored with a note instead of stopping the worker: the trial then starts from zero.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from sqlalchemy.engine import make_url

CHECKPOINT_FORMAT = "maskopt-trial-checkpoint/1"
DEFAULT_FOLDER = "maskopt-checkpoints"
# A checkpoint, or the temporary file of a save in progress (or killed mid-write).
_TRIAL_FILE = re.compile(r"trial-(\d+)\.pt|\.trial-(\d+)-.*\.tmp")


def default_checkpoint_dir(storage_url: str) -> Path:
    """Beside the database for a SQLite file (``maskopt.db`` -> ``maskopt-checkpoints/``).

    For a server (PostgreSQL) the default is ``maskopt-checkpoints/`` in the working folder: a
    retry on the same machine resumes, one on another machine starts from zero. Workers on
    several machines resume each other's trials only with ``--checkpoints`` on a shared folder.
    """

    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        db = Path(url.database)
        return db.with_name(f"{db.stem}-checkpoints")
    return Path(DEFAULT_FOLDER)


class CheckpointStore:
    """The checkpoint files of one study's trials.

    Args:
        root: The checkpoint folder shared by the study's workers.
        study_name: The study; its checkpoints live in ``root/study_name``.
    """

    def __init__(self, root: str | Path, study_name: str):
        self.folder = Path(root) / study_name

    def path(self, origin: int) -> Path:
        return self.folder / f"trial-{origin}.pt"

    def save(self, origin: int, state: dict) -> None:
        """Write ``state`` as trial ``origin``'s checkpoint, replacing the last one atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".trial-{origin}-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())  # the rename must not outrun the data on a power loss
            os.replace(tmp, self.path(origin))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, origin: int, fingerprint: dict) -> tuple[dict | None, str | None]:
        """Trial ``origin``'s checkpoint, or None with the reason it cannot be used.

        Returns ``(None, None)`` when there is no checkpoint. A checkpoint written for other
        settings (``fingerprint``: parameters, folds, epochs, seed, dataset size) is not used.
        """
        path = self.path(origin)
        if not path.exists():
            return None, None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, or holding more than weights: start from zero
            return None, f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); starting from zero"
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            return None, f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file; starting from zero"
        if state.get("fingerprint") != fingerprint:
            return None, f"checkpoint {path} was made for other settings or data; starting from zero"
        return state, None

    def remove(self, origin: int) -> None:
        self.path(origin).unlink(missing_ok=True)

    def sweep(self, keep: set[int]) -> int:
        """Remove the files of trials whose number is not in ``keep``; returns how many."""
        if not self.folder.is_dir():
            return 0
        removed = 0
        for path in self.folder.iterdir():
            match = _TRIAL_FILE.fullmatch(path.name)
            if match and int(match.group(1) or match.group(2)) not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
