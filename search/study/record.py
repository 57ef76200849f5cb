"""What a maskopt trial records in the storage, in one place.

The objective writes a trial's results as Optuna user attributes (so optuna-dashboard shows
them); the runner, the export, the report and the label-issue finder read them back through
:class:`TrialRecord`, never by string keys of their own. The study records what every trial
shares (the space, the dataset's layout and class names) as study attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

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

# Study user attributes, written by the runner.
SPACE = "maskopt_space"
LAYOUT = "maskopt_layout"
CLASS_NAMES = "maskopt_class_names"


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
    seconds: float | None
    images_per_second: float | None
    confusion: list | None
    prune_reason: str | None
    fail_reason: str | None
    pruned_after_folds: int | None
    worker: str | None
    oof_artifact: str | None
    origin: int  # the trial this one retries, or its own number

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        a = trial.user_attrs
        return cls(
            number=trial.number, state=trial.state, value=trial.value, params=dict(trial.params),
            fold_f1=tuple(a.get(FOLD_F1) or ()), fold_accuracy=tuple(a.get(FOLD_ACCURACY) or ()),
            best_epoch=tuple(a.get(BEST_EPOCH) or ()), epochs_trained=a.get(EPOCHS_TRAINED),
            seconds=a.get(SECONDS), images_per_second=a.get(IMAGES_PER_SECOND), confusion=a.get(CONFUSION),
            prune_reason=a.get(PRUNE_REASON), fail_reason=a.get(FAIL_REASON),
            pruned_after_folds=a.get(PRUNED_AFTER_FOLDS), worker=a.get(WORKER), oof_artifact=a.get(OOF_ARTIFACT),
            origin=trial.system_attrs.get(RETRIED_FROM, trial.number),
        )

    @property
    def failed_on_its_own(self) -> bool:
        """FAIL for a reason of its own (out of memory twice, a bug), not because its worker died."""
        return self.state == TrialState.FAIL and self.fail_reason is not None

    @property
    def ran_every_fold(self) -> bool:
        """COMPLETE with every fold trained (a per-fold pruner may complete a trial early)."""
        return self.state == TrialState.COMPLETE and self.pruned_after_folds is None
