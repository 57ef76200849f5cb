"""What a maskopt study records in the storage, in one place.

The objective writes a trial's results as Optuna user attributes (so optuna-dashboard shows
them); the runner writes what every trial shares (the space, the dataset's layout and class
names) and the export writes where the model went, as study attributes. Everything reads them
back through the typed records here, :class:`TrialRecord` and :class:`StudyRecord`: no other
module reads ``user_attrs`` or ``system_attrs`` by key, and the keys are named in this file only.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
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
from maskopt.storage import StudySummary, list_studies, load_existing_study, open_storage

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
DEVICE_SHARE = "device_share"  # the GPU and how many worker processes shared it (DeviceShare), or None
FAST_PATH = "fast_path"
PARAM_COUNT = "param_count"
TRAINABLE_PARAM_COUNT = "trainable_param_count"
FREEZE_DEPTH_EFFECTIVE = "freeze_depth_effective"
OOM_RETRY = "oom_retry"
NOTE_ERROR = "note_error"
OOF_ERROR = "oof_error"
FAILED_BEFORE_TRAINING = "failed_before_training"  # the sampler or the set-up failed: no epoch ran
# A sampled trial that found the study's total already started by other workers (they finished
# trials at the same moment and each started one more): FAIL, not run, not counted.
BEYOND_TOTAL = "beyond_total"
LATENCY = "latency"  # CPU inference latency of the architecture at its image size (train/latency.py)
PAUSED = "paused"  # {step, rung}: the asha pruner stopped it at a rung with its checkpoint kept (scheduler.py)
CONTINUES = "continues"  # Continuation: a promoted paused trial, continued from its checkpoint
WARM_START = "warm_start"  # {study, trial}: the earlier study's trial whose configuration was enqueued (warm_start.py)

# Optuna system attributes set by its retry of a trial whose worker died.
RETRIED_FROM = "failed_trial"  # the number of the first trial of the retry chain
RETRY_HISTORY = "retry_history"
QUEUED = "fixed_params"  # Optuna's: the parameters of an enqueued trial (a retry has RETRIED_FROM)

# Study user attributes.
SPACE = "maskopt_space"  # the space as a dict (SearchSpace.to_dict), written by the runner
LAYOUT = "maskopt_layout"
CLASS_NAMES = "maskopt_class_names"
EXPORT = "maskopt_export"  # the last export (ExportRecord), written by the export

OBJECTIVE_NAME = "macro F1"
# Each objective a space may name: its name in Optuna's records (the dashboard shows it) and direction.
OBJECTIVE_NAMES = {"macro_f1": OBJECTIVE_NAME, "latency": "CPU latency, ms per image"}
OBJECTIVE_DIRECTIONS = {"macro_f1": "maximize", "latency": "minimize"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# Every value is checked as it is read back: the storage is shared and may hold anything (a hand
# edit, another program, a hostile user). A missing or malformed value reads as None (or an empty
# tuple for a list), so garbage never raises here and never reaches the report, the export or the
# command line.
MAX_FOLDS = 1000
"""A per-fold list longer than this reads as malformed: no study has that many folds."""
_MAX_COUNT = 10**12  # a confusion-matrix cell; a matrix of such counts still sums in int64


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> int | None:
    """A whole number of at least 0, else None."""
    return int(value) if _is_int(value) and value >= 0 else None


def _amount(value) -> float | None:
    """A finite number of at least 0, else None."""
    return float(value) if _is_number(value) and value >= 0 else None


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _ints(value, low: int = 0) -> tuple[int, ...] | None:
    """A list of whole numbers of at least ``low`` (missing: empty), else None."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and len(value) <= MAX_FOLDS and all(_is_int(v) and v >= low for v in value):
        return tuple(int(v) for v in value)
    return None


def _scores(value) -> tuple[float, ...]:
    """Per-fold scores, each from 0 to 1; empty when missing or malformed."""
    if isinstance(value, (list, tuple)) and len(value) <= MAX_FOLDS and all(_is_number(v) and 0 <= v <= 1
                                                                            for v in value):
        return tuple(float(v) for v in value)
    return ()


def _confusion(value) -> list[list[int]] | None:
    """A square matrix of counts, at least 2 x 2, else None."""
    if isinstance(value, (list, tuple)) and len(value) >= 2 and all(
            isinstance(row, (list, tuple)) and len(row) == len(value)
            and all(_is_int(c) and 0 <= c <= _MAX_COUNT for c in row) for row in value):
        return [[int(c) for c in row] for row in value]
    return None


@dataclass(frozen=True)
class LatencyRecord:
    """A complete trial's CPU inference latency: its architecture at its image size, any weights."""

    ms_per_image: dict[int, float]  # batch size -> milliseconds per image (how it is timed: train/latency.py)
    threads: int  # torch CPU threads it was measured with
    params: int  # parameter count

    @classmethod
    def read(cls, value) -> LatencyRecord | None:
        """The record of a stored ``Latency.to_dict()``, or None when missing or malformed."""
        if not isinstance(value, dict) or not isinstance(value.get("ms_per_image"), dict):
            return None
        per_batch = {}
        for batch, ms in value["ms_per_image"].items():
            if not (isinstance(batch, str) and batch.isdigit() and len(batch) < 6 and _is_number(ms) and ms > 0):
                return None
            per_batch[int(batch)] = float(ms)
        threads, params = _count(value.get("threads")), _count(value.get("params"))
        if not per_batch or not threads or params is None:
            return None
        return cls(per_batch, threads, params)


@dataclass(frozen=True)
class DeviceShare:
    """The GPU a trial trained on and how many worker processes of its machine shared that GPU."""

    gpu: str  # the GPU as CUDA_VISIBLE_DEVICES names it: an index, or a UUID
    workers: int  # worker processes of the trial's machine given this GPU, the trial's own included

    def to_attr(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "workers": self.workers}

    @classmethod
    def read(cls, value) -> DeviceShare | None:
        """The record of a stored ``to_attr()``, or None when missing or malformed."""
        if not isinstance(value, dict):
            return None
        gpu, workers = _text(value.get("gpu")), _count(value.get("workers"))
        if not gpu or len(gpu) > 100 or not workers:
            return None
        return cls(gpu, workers)


@dataclass(frozen=True)
class Continuation:
    """The paused trial a promoted trial continues from its checkpoint (see scheduler.py)."""

    trial: int  # the paused trial
    origin: int  # whose checkpoint file it is (the paused trial's own origin)
    step: int | None  # the step it was paused at

    def to_attr(self) -> dict[str, Any]:
        return {"trial": self.trial, "origin": self.origin, "step": self.step}

    @classmethod
    def read(cls, value) -> Continuation | None:
        """The record of a stored ``to_attr()``, or None when missing or malformed."""
        if not isinstance(value, dict):
            return None
        trial, origin = _count(value.get("trial")), _count(value.get("origin"))
        return None if trial is None or origin is None else cls(trial, origin, _count(value.get("step")))

    @classmethod
    def of_running(cls, trial: optuna.Trial) -> Continuation | None:
        """A running trial's continuation, or None when it is not a promotion."""
        return cls.read(trial.study._storage.get_trial_user_attrs(trial._trial_id).get(CONTINUES))


@dataclass(frozen=True)
class WarmStartOrigin:
    """The trial of an earlier study whose configuration a warm start queued (see warm_start.py)."""

    study: str
    trial: int

    def to_attr(self) -> dict[str, Any]:
        return {"study": self.study, "trial": self.trial}

    @classmethod
    def read(cls, value) -> WarmStartOrigin | None:
        """The record of a stored ``to_attr()``, or None when missing or malformed."""
        if not isinstance(value, dict):
            return None
        study, trial = _text(value.get("study")), _count(value.get("trial"))
        if not study or trial is None:
            return None
        return cls(study, trial)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as maskopt reads it back.

    An attribute the trial lacks, or holds in a shape the search never writes (a score that is
    not a number from 0 to 1, a negative time, a confusion matrix that is not square counts, a
    list longer than :data:`MAX_FOLDS`), reads as None, or as an empty tuple for a list. The one
    exception is ``best_epoch``: empty when missing (an export then retrains for the study's
    epochs) but None when malformed, so the export can refuse a trial it cannot retrain.
    """

    number: int
    state: TrialState
    value: float | None
    params: dict
    fold_f1: tuple[float, ...]
    fold_accuracy: tuple[float, ...]
    best_epoch: tuple[int, ...] | None
    epochs_trained: int | None
    epochs_trained_here: int | None
    seconds: float | None
    images_per_second: float | None
    confusion: list[list[int]] | None
    prune_reason: str | None
    fail_reason: str | None
    pruned_after_folds: int | None
    worker: str | None
    resumed: dict | None
    oof_artifact: str | None
    origin: int  # the trial this one retries, or its own number
    retry_history: tuple[int, ...]  # the trials this one retries, oldest first
    failed_before_training: bool = False
    beyond_total: bool = False
    queued: bool = False  # it was queued (enqueued, a retry, a promotion, a warm start), not sampled
    latency: LatencyRecord | None = None
    device_share: DeviceShare | None = None  # None: not run by one of several workers on GPUs (see workers.py)
    paused_at: int | None = None  # the rung step where the asha pruner paused it (see scheduler.py)
    continues: int | None = None  # the paused trial this one continues from its checkpoint
    warm_start: WarmStartOrigin | None = None  # None: not queued by a warm start

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        a, s = trial.user_attrs, trial.system_attrs
        continued = Continuation.read(a.get(CONTINUES))
        origin = continued.origin if continued else _count(s.get(RETRIED_FROM))
        paused = a.get(PAUSED)
        return cls(
            # The first value is macro F1 in every maskopt study, one objective or several.
            number=trial.number, state=trial.state, value=trial.values[0] if trial.values else None,
            params=dict(trial.params),
            fold_f1=_scores(a.get(FOLD_F1)), fold_accuracy=_scores(a.get(FOLD_ACCURACY)),
            best_epoch=_ints(a.get(BEST_EPOCH), low=1), epochs_trained=_count(a.get(EPOCHS_TRAINED)),
            epochs_trained_here=_count(a.get(EPOCHS_TRAINED_HERE)),
            seconds=_amount(a.get(SECONDS)), images_per_second=_amount(a.get(IMAGES_PER_SECOND)),
            confusion=_confusion(a.get(CONFUSION)),
            prune_reason=_text(a.get(PRUNE_REASON)), fail_reason=_text(a.get(FAIL_REASON)),
            pruned_after_folds=_count(a.get(PRUNED_AFTER_FOLDS)), worker=_text(a.get(WORKER)),
            resumed=a.get(RESUMED) if isinstance(a.get(RESUMED), dict) else None,
            oof_artifact=_text(a.get(OOF_ARTIFACT)),
            origin=trial.number if origin is None else origin,
            retry_history=_ints(s.get(RETRY_HISTORY)) or (),
            failed_before_training=a.get(FAILED_BEFORE_TRAINING) is True,
            beyond_total=a.get(BEYOND_TOTAL) is True,
            queued=QUEUED in s or RETRIED_FROM in s,
            latency=LatencyRecord.read(a.get(LATENCY)),
            device_share=DeviceShare.read(a.get(DEVICE_SHARE)),
            paused_at=_count(paused.get("step")) if isinstance(paused, dict) and trial.state == TrialState.PRUNED
            else None,
            continues=continued.trial if continued else None,
            warm_start=WarmStartOrigin.read(a.get(WARM_START)),
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
        heartbeat retry, or by the next run). Nor does the continuation of a paused trial: the
        total counts configurations, and the paused trial counted already.
        """
        if self.continues is not None or self.beyond_total:
            return False
        return self.state in (*FINISHED, TrialState.RUNNING, TrialState.WAITING) or self.failed_on_its_own


def origin_of(trial: optuna.Trial) -> int:
    """The trial whose checkpoint a running trial continues: the paused trial's origin for a
    promotion, the first trial of the retry chain for a retry (its worker died), else its own number."""
    continued = Continuation.of_running(trial)
    if continued:
        return continued.origin
    return trial.study._storage.get_trial_system_attrs(trial._trial_id).get(RETRIED_FROM, trial.number)


def continuation_attrs(paused: TrialRecord) -> dict[str, Any]:
    """The user attributes of the trial that continues ``paused`` from its checkpoint."""
    return {CONTINUES: Continuation(paused.number, paused.origin, paused.paused_at).to_attr()}


def pause_attrs(step: int, rung: int) -> dict[str, Any]:
    """The user attributes of a trial paused at rung ``rung`` (step ``step``), its checkpoint kept."""
    return {PAUSED: {"step": step, "rung": rung}}



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
        return parse_space(stored, source=f"study {self.name!r}", stored=True)

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
                self.study.set_metric_names([OBJECTIVE_NAMES[name] for name in space.study.objectives])
        elif not isinstance(stored, dict) or _trained(_filled_in(stored, self.name)) != _trained(current):
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

    def paused(self) -> list[TrialRecord]:
        """Trials the asha pruner paused that no trial continues yet (see scheduler.py)."""
        trials = self.trials()
        continued = {t.continues for t in trials if t.continues is not None}
        return [t for t in trials if t.paused_at is not None and t.number not in continued]

    @property
    def counted(self) -> int:
        """Trials that count towards the study's total (see :attr:`TrialRecord.counts`)."""
        return sum(t.counts for t in self.trials())

    def is_retried(self, number: int) -> bool:
        """True when a retry of trial ``number`` is already queued (or has run)."""
        return any(number in t.retry_history for t in self.trials())

    def is_beyond_total(self, number: int, total: int) -> bool:
        """True when sampled trial ``number`` would make the study exceed ``total``: the trials that
        count without it, before it or queued (queued ones run whatever happens), are ``total``."""
        ahead = [t for t in self.trials() if t.number != number and t.counts and (t.number < number or t.queued)]
        return len(ahead) >= total

    def failure_reasons(self) -> dict[str, int]:
        """Each distinct reason a trial failed on its own for, with how many trials."""
        reasons: dict[str, int] = {}
        for t in self.trials((TrialState.FAIL,)):
            if t.fail_reason is not None and not t.beyond_total:
                reasons[t.fail_reason] = reasons.get(t.fail_reason, 0) + 1
        return reasons


# Study settings that say where or how a study runs, not what it trains: machines of one study may
# keep the data elsewhere and share their GPUs differently.
_NOT_TRAINED = ("data", "name", "workers_per_gpu")


def _filled_in(stored: dict, name: str) -> dict:
    """A stored space with the defaults of keys added since it was stored, so that a study made by an
    earlier maskopt resumes (its stored form as it is, when it no longer reads)."""
    try:
        return parse_space(stored, source=f"study {name!r}", stored=True).to_dict()
    except SpaceError:
        return stored


def _trained(space_dict: dict) -> tuple:
    """What a space trains: its parameters and the study settings that change training."""
    study = space_dict.get("study")
    settings = {k: v for k, v in study.items() if k not in _NOT_TRAINED} if isinstance(study, dict) else {}
    return space_dict.get("params"), settings


def study_summaries(*, storage: str | None = None) -> list[StudySummary]:
    """The studies in ``storage`` with trial counts by state; for a maskopt study, its best value is
    the best macro F1 of a trial that ran every fold (a two-objective study has one too), with that
    trial's CPU latency."""
    opened = open_storage(storage, heartbeat_interval=None, create=False)
    summaries = []
    for summary in list_studies(opened):
        record = StudyRecord(optuna.load_study(study_name=summary.name, storage=opened))
        if record.has_space:
            best = record.top(1)
            latency = best[0].latency if best else None
            summary = dataclasses.replace(summary, best_value=best[0].value if best else None,
                                          best_latency_ms=latency.ms_per_image.get(1) if latency else None)
        summaries.append(summary)
    return summaries
