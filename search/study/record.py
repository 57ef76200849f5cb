"""What a maskopt study records in the storage, in one place.

The objective writes a trial's results as Optuna user attributes (so optuna-dashboard shows
them); the runner writes what every trial shares (the space, the dataset's layout and class
names) and the export writes where the model went, as study attributes. Everything reads them
back through the typed records here, :class:`TrialRecord` and :class:`StudyRecord`: no other
module reads ``user_attrs`` or ``system_attrs`` by key, and the keys are named in this file only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from maskopt.errors import DataError, NotAMaskoptStudy, SpaceError
from maskopt.search.data.dataset import ImageDataset, load_dataset
from maskopt.search.space import SearchSpace, parse_space
from maskopt.storage import load_existing_study, open_storage

# Trial user attributes, written by the objective.
FOLD_F1 = "fold_f1"  # best-epoch macro F1 of each finished fold
FOLD_ACCURACY = "fold_accuracy"
BEST_EPOCH = "best_epoch"  # per fold, counting from 1
EPOCHS_TRAINED = "epochs_trained"  # over all folds, inherited epochs of a resumed trial included
EPOCHS_TRAINED_HERE = "epochs_trained_here"  # by this trial's own worker
SECONDS = "seconds"
IMAGES_PER_SECOND = "images_per_second"
PEAK_MEMORY_MB = "peak_memory_mb"
CONFUSION = "confusion"  # out-of-fold confusion matrix, rows: true class
PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"  # set when the trial failed on its own (not when its worker died)
PRUNED_AFTER_FOLDS = "pruned_after_folds"  # a per-fold pruner stopped it: COMPLETE, but not every fold ran
WORKER = "worker"  # host:pid of the process that ran it
RESUMED = "resumed"  # {from_trial, fold, epochs_inherited} or None
CHECKPOINT_NOTE = "checkpoint_note"
OOF_ARTIFACT = "oof_artifact"  # artifact id of the out-of-fold probabilities
DEVICE = "device"
FAST_PATH = "fast_path"
PARAM_COUNT = "param_count"
TRAINABLE_PARAM_COUNT = "trainable_param_count"
FREEZE_DEPTH_EFFECTIVE = "freeze_depth_effective"
OOM_RETRY = "oom_retry"
NOTE_ERROR = "note_error"
OOF_ERROR = "oof_error"

# Optuna system attributes set by its retry of a trial whose worker died.
RETRIED_FROM = "failed_trial"  # the number of the first trial of the retry chain
RETRY_HISTORY = "retry_history"

# Study user attributes.
SPACE = "maskopt_space"  # the space as a dict (SearchSpace.to_dict), written by the runner
LAYOUT = "maskopt_layout"
CLASS_NAMES = "maskopt_class_names"
EXPORT = "maskopt_export"  # the last export (ExportRecord), written by the export

OBJECTIVE_NAME = "macro F1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _ints(value) -> tuple[int, ...]:
    return tuple(int(v) for v in value or ())


def _floats(value) -> tuple[float, ...]:
    return tuple(float(v) for v in value or ())


@dataclass(frozen=True)
class TrialRecord:
    """One trial as maskopt reads it back (attributes a trial lacks are empty or None)."""

    number: int
    state: TrialState
    value: float | None
    params: dict
    fold_f1: tuple[float, ...]
    fold_accuracy: tuple[float, ...]
    best_epoch: tuple[int, ...]
    epochs_trained: int | None
    epochs_trained_here: int | None
    seconds: float | None
    images_per_second: float | None
    confusion: list | None
    prune_reason: str | None
    fail_reason: str | None
    pruned_after_folds: int | None
    worker: str | None
    resumed: dict | None
    oof_artifact: str | None
    origin: int  # the trial this one retries, or its own number
    retry_history: tuple[int, ...]  # the trials this one retries, oldest first

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        a, s = trial.user_attrs, trial.system_attrs
        return cls(
            number=trial.number, state=trial.state, value=trial.value, params=dict(trial.params),
            fold_f1=_floats(a.get(FOLD_F1)), fold_accuracy=_floats(a.get(FOLD_ACCURACY)),
            best_epoch=_ints(a.get(BEST_EPOCH)), epochs_trained=a.get(EPOCHS_TRAINED),
            epochs_trained_here=a.get(EPOCHS_TRAINED_HERE),
            seconds=a.get(SECONDS), images_per_second=a.get(IMAGES_PER_SECOND), confusion=a.get(CONFUSION),
            prune_reason=a.get(PRUNE_REASON), fail_reason=a.get(FAIL_REASON),
            pruned_after_folds=a.get(PRUNED_AFTER_FOLDS), worker=a.get(WORKER), resumed=a.get(RESUMED),
            oof_artifact=a.get(OOF_ARTIFACT),
            origin=s.get(RETRIED_FROM, trial.number), retry_history=_ints(s.get(RETRY_HISTORY)),
        )

    @property
    def failed_on_its_own(self) -> bool:
        """FAIL for a reason of its own (out of memory twice, a bug), not because its worker died."""
        return self.state == TrialState.FAIL and self.fail_reason is not None

    @property
    def ran_every_fold(self) -> bool:
        """COMPLETE with every fold trained (a per-fold pruner may complete a trial early)."""
        return self.state == TrialState.COMPLETE and self.pruned_after_folds is None

    @property
    def counts(self) -> bool:
        """Counts towards the study's total.

        Finished, running and waiting trials count, and so do trials that failed on their own.
        A trial left FAIL by a killed or interrupted worker does not: it is re-run (by the
        heartbeat retry, or by the next run).
        """
        return self.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING) or self.failed_on_its_own


def retried_from(trial: optuna.Trial) -> int:
    """The number of the trial a running trial retries (after its worker died), or its own number."""
    attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    return attrs.get(RETRIED_FROM, trial.number)


@dataclass(frozen=True)
class ExportRecord:
    """Where a study's last export went, as the export recorded it on the study."""

    trial: int
    path: Path
    cv_macro_f1: float | None
    models: tuple[str, ...]
    tta: bool

    def to_attr(self) -> dict[str, Any]:
        return {"trial": self.trial, "path": str(self.path), "cv_macro_f1": self.cv_macro_f1,
                "models": list(self.models), "tta": self.tta}

    @classmethod
    def from_attr(cls, value) -> ExportRecord | None:
        """The record, or None when the attribute is missing or not of the shape an export writes."""
        if not isinstance(value, dict):
            return None
        trial, path, score, models = value.get("trial"), value.get("path"), value.get("cv_macro_f1"), value.get("models")
        if (type(trial) is not int or not isinstance(path, str) or not isinstance(models, list)
                or not all(isinstance(m, str) for m in models)
                or (score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))))):
            return None
        return cls(trial, Path(path), None if score is None else float(score), tuple(models), value.get("tta") is True)


class StudyRecord:
    """A study as maskopt reads it back: its typed space, dataset facts, export and trials.

    ``StudyRecord.open(storage, name)`` loads a study that must exist (a missing SQLite file is
    an error, not a new empty database); ``StudyRecord.of(study)`` wraps one already loaded.
    The Optuna study itself is ``.study``.
    """

    def __init__(self, study: optuna.Study):
        self.study = study

    @classmethod
    def open(cls, storage: str | None, name: str | None) -> StudyRecord:
        """The study ``name`` of ``storage`` (None: the SQLite default; a name may be omitted
        when the storage holds one study).

        Raises:
            StorageError: No such storage or study.
        """
        opened = open_storage(storage, heartbeat_interval=None, create=False)  # a typo must not make a file
        return cls(load_existing_study(storage=opened, study_name=name))

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls(study)

    @property
    def name(self) -> str:
        return self.study.study_name

    # --- what every trial shares -------------------------------------------------------------

    @property
    def has_space(self) -> bool:
        return isinstance(self.study.user_attrs.get(SPACE), dict)

    @property
    def space(self) -> SearchSpace:
        """The search space the study was created from.

        Raises:
            NotAMaskoptStudy: The study stores no space (``maskopt search`` did not make it).
            SpaceError: The stored space is not one maskopt can read.
        """
        stored = self.study.user_attrs.get(SPACE)
        if not isinstance(stored, dict):
            raise NotAMaskoptStudy(f"study {self.name!r} was not made by maskopt search "
                                   f"(it has no stored search space)")
        return parse_space(stored, source=f"study {self.name!r}", check_names=False)

    @property
    def layout(self) -> str | None:
        """The dataset layout the search ran on (None for a study from before it was stored)."""
        layout = self.study.user_attrs.get(LAYOUT)
        return layout if isinstance(layout, str) else None

    @property
    def class_names(self) -> tuple[str, ...] | None:
        names = self.study.user_attrs.get(CLASS_NAMES)
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return tuple(names)
        return None

    def dataset(self, data: str | Path | None = None) -> ImageDataset:
        """The study's dataset, read with its space's layout, corrections and exclusions.

        Args:
            data: Another path to the same data (default: the path the study was run on).

        Raises:
            NotAMaskoptStudy: No stored space.
            DataError: The study records no path and none was given, or the data cannot be read.
        """
        settings = self.space.study
        path = data if data is not None else settings.data
        if path is None:
            raise DataError(f"study {self.name!r} records no dataset path; pass `data`")
        return load_dataset(path, layout=settings.layout, corrections=settings.corrections,
                            exclude_broken=settings.exclude_broken)

    def bind_space(self, space: SearchSpace) -> None:
        """Store ``space`` with a new study; refuse to resume a study made from another space."""
        stored = self.study.user_attrs.get(SPACE)
        current = space.to_dict()
        if stored is None:
            self.study.set_user_attr(SPACE, current)
            with warnings.catch_warnings():  # experimental since Optuna 3.2; optuna-dashboard reads it
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names([OBJECTIVE_NAME])
        elif not isinstance(stored, dict) or stored.get("params") != current["params"] \
                or _trained_part(stored) != _trained_part(current):
            raise SpaceError(
                f"study {self.name!r} was created from a different search space than {space.source}. "
                f"Use the same space to resume it, or give a new `study` name.")

    def set_dataset_facts(self, layout: str, class_names: Iterable[str]) -> None:
        """Record the layout and class names every trial shares (for the report and the export)."""
        for key, value in ((LAYOUT, layout), (CLASS_NAMES, list(class_names))):
            if self.study.user_attrs.get(key) != value:
                self.study.set_user_attr(key, value)

    # --- the export --------------------------------------------------------------------------

    @property
    def export(self) -> ExportRecord | None:
        return ExportRecord.from_attr(self.study.user_attrs.get(EXPORT))

    def record_export(self, export: ExportRecord, note: str) -> None:
        """Note the export on the study and, as a dashboard note, on its trial."""
        from optuna_dashboard import save_note

        self.study.set_user_attr(EXPORT, export.to_attr())
        # A finished trial's attributes are read-only; dashboard notes live in study attributes.
        trial = self.study._storage.get_trial(self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, export.trial))
        save_note(optuna.Trial(self.study, trial._trial_id), note)

    # --- trials ------------------------------------------------------------------------------

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[TrialRecord]:
        return [TrialRecord.of(t) for t in self.study.get_trials(deepcopy=False, states=states)]

    def top(self, n: int = 5) -> list[TrialRecord]:
        """The best COMPLETE trials that ran every fold, best first."""
        complete = [t for t in self.trials((TrialState.COMPLETE,)) if t.ran_every_fold]
        return sorted(complete, key=lambda t: t.value, reverse=True)[:n]

    @property
    def counted(self) -> int:
        """Trials that count towards the study's total (see :attr:`TrialRecord.counts`)."""
        return sum(t.counts for t in self.trials())

    @property
    def has_waiting(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def is_retried(self, number: int) -> bool:
        """True when a retry of trial ``number`` is already queued (or has run)."""
        return any(number in t.retry_history for t in self.trials())

    def failure_reasons(self) -> dict[str, int]:
        """Each distinct reason a trial failed on its own for, with how many trials."""
        reasons: dict[str, int] = {}
        for t in self.trials((TrialState.FAIL,)):
            if t.fail_reason is not None:
                reasons[t.fail_reason] = reasons.get(t.fail_reason, 0) + 1
        return reasons


def _trained_part(space_dict: dict) -> dict:
    # The dataset path may differ between machines of one study; what is trained may not.
    study = space_dict.get("study")
    return {k: v for k, v in study.items() if k not in ("data", "name")} if isinstance(study, dict) else {}
