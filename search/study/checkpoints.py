"""Per-epoch checkpoints of running trials, so that a retried trial resumes where its worker died.

A trial's checkpoint is one file, ``<folder>/<study>/trial-<origin>.pt``, where ``origin`` is
the number of the trial as first run: Optuna's heartbeat retry gives the rerun a new number but
records the original one, and the rerun reads the original's file. Each save replaces the file
atomically (a temporary file in the same folder, then ``os.replace``), so a worker killed while
writing leaves the previous checkpoint intact. The file is removed when the trial ends, unless
the ``asha`` pruner paused it (``scheduler.py``: a promotion continues from it), so the disk holds
at most one checkpoint per running (or killed, not yet retried) trial, plus the paused ones the
pruner's ``max_paused`` allows. A ``claim-<trial>`` file exists while a worker promotes or
evicts a paused trial.

The file is read with ``torch.load(weights_only=True)``: it holds tensors, numbers, strings,
lists and dicts only, and a file that needs more (or is truncated, or from another maskopt) is
ignored with a note instead of stopping the worker: the trial then starts from zero.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.engine import make_url

from maskopt.search.train.loop import FoldResult, FoldState, UnusableCheckpoint

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


@dataclass(frozen=True)
class FoldOutcome:
    """What a finished fold of a trial produced: its best epoch's scores and predictions."""

    f1: float
    accuracy: float
    best_epoch: int  # counting from 1
    images_per_second: float
    f1_history: tuple[float, ...]  # validation macro F1 after each epoch
    probs: np.ndarray  # float32 [validation rows, classes] at the best epoch

    @classmethod
    def of(cls, result: FoldResult) -> FoldOutcome:
        return cls(round(result.best_f1, 6), round(result.best_accuracy, 6), result.best_epoch,
                   result.images_per_second, tuple(result.f1_history), result.best_probs)

    def to_state(self) -> dict:
        return {"f1": self.f1, "accuracy": self.accuracy, "best_epoch": self.best_epoch,
                "speed": self.images_per_second, "history": list(self.f1_history),
                "probs": torch.from_numpy(self.probs)}

    @classmethod
    def from_state(cls, state) -> FoldOutcome:
        probs = state["probs"]
        if not isinstance(probs, torch.Tensor) or probs.ndim != 2:
            raise TypeError("a finished fold's probabilities are not a 2-D tensor")
        return cls(float(state["f1"]), float(state["accuracy"]), int(state["best_epoch"]), float(state["speed"]),
                   tuple(float(v) for v in state["history"]), probs.numpy())


@dataclass(frozen=True)
class FoldCheckpoint:
    """A running trial's state after an epoch: its finished folds, and the fold in training."""

    fingerprint: dict  # parameters, folds, epochs, seed and dataset size it was made for
    fold: int  # the fold in training, from 0
    done: tuple[FoldOutcome, ...]  # the folds before it
    train: FoldState

    @property
    def epochs_trained(self) -> int:
        return sum(len(d.f1_history) for d in self.done) + self.train.result.epochs_trained

    def to_state(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "fold": self.fold,
                "done": [d.to_state() for d in self.done], "train": self.train.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> FoldCheckpoint:
        """The checkpoint of a file's plain form.

        Raises:
            UnusableCheckpoint: A missing key or a value of the wrong kind.
        """
        try:
            fold, done = state["fold"], state["done"]
            if type(fold) is not int or not isinstance(done, list) or len(done) != fold:
                raise TypeError(f"fold {fold!r} does not follow {len(done) if isinstance(done, list) else '?'} "
                                f"finished folds")
            return cls(state["fingerprint"], fold, tuple(FoldOutcome.from_state(d) for d in done),
                       FoldState.from_state(state["train"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UnusableCheckpoint(f"its structure is malformed ({type(e).__name__}: {str(e)[:200]})") from e


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

    def save(self, origin: int, checkpoint: FoldCheckpoint) -> None:
        """Write ``checkpoint`` as trial ``origin``'s, replacing the last one atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".trial-{origin}-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint.to_state(), f)
                f.flush()
                os.fsync(f.fileno())  # the rename must not outrun the data on a power loss
            os.replace(tmp, self.path(origin))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, origin: int, fingerprint: dict) -> tuple[FoldCheckpoint | None, str | None]:
        """Trial ``origin``'s checkpoint, or None with the reason it cannot be used.

        Returns ``(None, None)`` when there is no checkpoint. A checkpoint written for other
        settings (``fingerprint``: parameters, folds, epochs, seed, dataset size) is not used.
        """
        path = self.path(origin)
        if not path.exists():
            return None, None
        if not path.is_file():  # a folder, or a FIFO that reading would wait on forever
            return None, f"checkpoint {path} is not a regular file; starting from zero"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # torch's message ends by advising to load unsafely: not shown
            return None, (f"checkpoint {path} cannot be read: it holds objects other than tensors and plain values, "
                          f"and nothing is unpickled here; starting from zero")
        except Exception as e:  # truncated or corrupt: start from zero
            return None, f"checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); starting from zero"
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            return None, f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file; starting from zero"
        if state.get("fingerprint") != fingerprint:
            return None, f"checkpoint {path} was made for other settings or data; starting from zero"
        try:
            return FoldCheckpoint.from_state(state), None
        except UnusableCheckpoint as e:
            return None, f"checkpoint {path} cannot be used: {e}; starting from zero"

    def claim(self, number: int) -> bool:
        """Mark paused trial ``number`` as being promoted or evicted; False when a worker holds it.

        Creating the file with ``O_EXCL`` is atomic, on a folder shared between machines too, so
        of several workers one wins (see scheduler.py); :meth:`release` ends the claim.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self._claim_mark(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def release(self, number: int) -> None:
        self._claim_mark(number).unlink(missing_ok=True)

    def _claim_mark(self, number: int) -> Path:
        return self.folder / f"claim-{number}"

    def remove(self, origin: int) -> None:
        path = self.path(origin)
        if path.is_file() or path.is_symlink():  # a folder of that name is not ours to delete
            path.unlink(missing_ok=True)

    def sweep(self, keep: set[int]) -> int:
        """Remove the files of trials whose number is not in ``keep``; returns how many."""
        if not self.folder.is_dir():
            return 0
        removed = 0
        for path in self.folder.iterdir():
            match = _TRIAL_FILE.fullmatch(path.name)
            if match and int(match.group(1) or match.group(2)) not in keep and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
                removed += 1
        return removed
