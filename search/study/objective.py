"""The Optuna objective: one configuration trained on every fold, scored by mean macro F1.

Faults stay inside their trial: an out-of-memory error retries the fold once at half the batch
with two-step gradient accumulation (the effective batch is unchanged); a second one fails the
trial with the reason in its attributes. A non-finite loss prunes the trial with its reason.
Memory is released after every trial, so a long study does not grow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn.metrics import confusion_matrix

from maskopt.errors import MaskoptError
from maskopt.search.data.prepared import PreparedData
from maskopt.search.space import PruningSteps, SearchSpace, TrialParams
from maskopt.search.space.asha import AshaPruner
from maskopt.search.study import record
from maskopt.search.study.checkpoints import CheckpointStore, FoldCheckpoint, FoldOutcome
from maskopt.search.study.interrupts import interruptible, raise_if_interrupted, stop_requested
from maskopt.search.study.notes import record_trial_note
from maskopt.search.study.oof import OutOfFold, save_oof
from maskopt.search.study.recovery import this_worker
from maskopt.search.study.seeds import fold_seed
from maskopt.search.train.loop import (
    FoldState,
    NonFiniteLoss,
    TrainingData,
    UnusableCheckpoint,
    fast_path,
    is_out_of_memory,
    train_fold,
)
from maskopt.search.train.latency import Latency, measure_latency
from maskopt.search.train.models import build_model, count_parameters
from maskopt.search.train.resources import peak_memory_mb, release_memory

logger = logging.getLogger(__name__)
LATENCY_CONSTRAINT = "latency_ms_over_budget"  # Optuna constraint: the trial is feasible at 0 or less


@dataclass
class Objective:
    """Callable objective for ``study.optimize``.

    Attributes:
        space: The (layout-adjusted) search space.
        data: The prepared dataset.
        device: Where to train.
        epoch_bar: A factory ``(total, trial number) -> tqdm`` for the epoch bar, or None.
        artifact_dir: Where trial artifacts (confusion-matrix images) go; None: notes only.
        checkpoints: Where each fold's state is saved after every epoch, for a retried trial
            to resume from; None: no checkpoints.
        device_share: The GPU and the worker processes sharing it, recorded on every trial;
            None for a search that is not one of several workers on GPUs.
    """

    space: SearchSpace
    data: PreparedData
    device: torch.device
    epoch_bar: object = None
    artifact_dir: str | Path | None = None
    checkpoints: CheckpointStore | None = None
    device_share: record.DeviceShare | None = None
    total: int | None = None  # the study's total of trials (``--trials``), for workers that race to it
    last_trial: int | None = None  # the number of the trial this worker ran last

    def __call__(self, trial: optuna.Trial) -> float:
        self.last_trial = trial.number
        # First: a retry arrives carrying its dead original's "worker", and another worker's
        # recovery would fail this live trial as dead while that attribute stays.
        trial.set_user_attr(record.WORKER, this_worker())
        with interruptible():  # a stop signal raises at once only from here (see interrupts.py)
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float:
        self._check_total(trial)
        try:
            params = self.space.suggest(trial)
        except MaskoptError:  # the storage's own clean error (a full disk): not the sampler's fault
            raise
        except Exception as e:  # a sampler option it cannot work with: say so, and let the runner stop
            if stop_requested():
                raise KeyboardInterrupt from e
            trial.set_user_attr(record.FAILED_BEFORE_TRAINING, True)
            trial.set_user_attr(record.FAIL_REASON, f"the sampler failed: {type(e).__name__}: {e}"[:2000])
            raise
        settings = self.space.study
        steps = PruningSteps.of(settings)
        reporting = not settings.multi_objective  # Optuna's pruners compare one value: none with two
        folds = self.data.folds(n_folds=settings.folds, seed=settings.seed)
        images = self.data.images(params.image_size, self.device)
        dataset = self.data.dataset
        train_labels = dataset.training_labels(params.age_old)
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        trial.set_user_attr(record.DEVICE, str(self.device))
        trial.set_user_attr(record.DEVICE_SHARE, self.device_share.to_attr() if self.device_share else None)
        trial.set_user_attr(record.FAST_PATH, fast_path(self.device, settings.train_config()))
        # A retry (its worker died) resumes from its original's checkpoint; it trains with the same
        # seeds as any trial of the same configuration (seeds.fold_seed), so it scores as the
        # original would have.
        origin = record.origin_of(trial)
        fingerprint = {"params": params.as_dict(), "folds": settings.folds, "epochs": settings.epochs,
                       "seed": settings.seed, "images": len(dataset)}

        done: list[FoldOutcome] = []
        out_of_fold = np.full((len(dataset), dataset.num_classes), np.nan, dtype=np.float32)
        fold_of = np.full(len(dataset), -1, dtype=np.int64)
        bar = self.epoch_bar(settings.folds * settings.epochs, trial.number) if self.epoch_bar else None
        resume = self._resume(trial, origin, fingerprint)
        partial: FoldState | None = None
        if resume is not None:
            done, partial = list(resume.done), resume.train
            for k, (outcome, (_, val_idx)) in enumerate(zip(done, folds)):
                out_of_fold[val_idx], fold_of[val_idx] = outcome.probs, k
            if bar is not None:
                bar.update(sum(len(d.f1_history) for d in done))
            trial.set_user_attr(record.RESUMED, {"from_trial": origin, "fold": resume.fold + 1,
                                                 "epochs_inherited": resume.epochs_trained})
        else:
            trial.set_user_attr(record.RESUMED, None)  # a retry carries its original's attributes
        epochs_inherited = epochs_trained = resume.epochs_trained if resume is not None else 0
        keep_checkpoint = False
        checkpoint_failed = False
        stopped_at: int | None = None  # the step at which the pruner stopped the trial

        def write_attrs(extra: dict | None = None) -> None:
            attrs = {
                record.FOLD_F1: [d.f1 for d in done], record.FOLD_ACCURACY: [d.accuracy for d in done],
                record.BEST_EPOCH: [d.best_epoch for d in done],
                record.EPOCHS_TRAINED: epochs_trained, record.EPOCHS_TRAINED_HERE: epochs_trained - epochs_inherited,
                record.SECONDS: round(time.perf_counter() - started, 3),
                record.IMAGES_PER_SECOND: round(float(np.mean([d.images_per_second for d in done])), 1) if done else 0.0,
                record.PEAK_MEMORY_MB: peak_memory_mb(self.device), **(extra or {}),
            }
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

        try:
            latency = self._latency(trial, params)  # before training: an infeasible configuration trains nothing
            if resume is not None and reporting:
                judged = self._replay_reports(trial, steps, done, partial)
                if judged is not None and trial.should_prune():
                    stopped_at = judged  # the checkpoint holds this step: a pausing pruner keeps it
                    raise optuna.TrialPruned(f"pruned at step {judged} after resuming from trial {origin}")
            first_fold = len(done)  # the fold a resumed trial continues; every later fold starts afresh
            for fold, (train_idx, val_idx) in enumerate(folds):
                if fold < first_fold:
                    continue
                fold_data = TrainingData(images, train_idx, train_labels[train_idx], val_idx, dataset.labels[val_idx])
                fold_resume = partial if fold == first_fold else None
                finished_f1 = [d.f1 for d in done]
                best_in_fold = [max(fold_resume.result.f1_history, default=0.0) if fold_resume else 0.0]

                def on_epoch(epoch: int, f1: float, accuracy: float, fold=fold, best_in_fold=best_in_fold,
                             finished_f1=finished_f1) -> None:
                    nonlocal epochs_trained, stopped_at
                    raise_if_interrupted()  # a signal whose KeyboardInterrupt was swallowed
                    epochs_trained += 1
                    best_in_fold[0] = max(best_in_fold[0], f1)
                    if steps.per_fold or not reporting:
                        return
                    running = steps.running_mean(finished_f1, best_in_fold[0])
                    step = steps.epoch_step(fold, epoch)
                    trial.report(running, step)
                    if step < steps.last and trial.should_prune():
                        stopped_at = step
                        raise optuna.TrialPruned(
                            f"pruned at fold {fold + 1} epoch {epoch + 1}: running mean macro F1 {running:.4f}")

                def on_checkpoint(state: FoldState, fold=fold) -> None:
                    nonlocal checkpoint_failed
                    if self.checkpoints is not None and not checkpoint_failed:
                        saved = self._save_checkpoint(trial, origin, FoldCheckpoint(fingerprint, fold, tuple(done), state))
                        checkpoint_failed = not saved  # warned once; no more tries this trial

                result, model = self._fit_fold(trial, params, fold_data, fold, on_epoch, on_checkpoint,
                                               fold_resume, bar)
                total, trainable = count_parameters(model)
                trial.set_user_attr(record.PARAM_COUNT, total)
                trial.set_user_attr(record.TRAINABLE_PARAM_COUNT, trainable)
                trial.set_user_attr(record.FREEZE_DEPTH_EFFECTIVE, model.freeze_depth)
                del model
                done.append(FoldOutcome.of(result))
                out_of_fold[val_idx], fold_of[val_idx] = result.best_probs, fold
                if steps.per_fold:
                    trial.report(done[-1].f1, fold)
                    if fold < steps.last and trial.should_prune():
                        write_attrs({record.PRUNED_AFTER_FOLDS: fold + 1})
                        return float(np.mean([d.f1 for d in done]))
            fold_f1 = [d.f1 for d in done]
            scored = fold_of >= 0
            confusion = _confusion(dataset.labels[scored], out_of_fold[scored].argmax(1), dataset.num_classes)
            write_attrs({record.CONFUSION: confusion})
            self._save_oof(trial, OutOfFold(out_of_fold, dataset.labels, fold_of, dataset.fingerprint()))
            self._note(trial, params, done, time.perf_counter() - started, confusion)
            if settings.multi_objective:
                return float(np.mean(fold_f1)), latency.ms_per_image[1]
            return float(np.mean(fold_f1))
        except optuna.TrialPruned as pruned:
            pause = self._pause(trial, stopped_at) if not checkpoint_failed else None
            keep_checkpoint = pause is not None
            write_attrs({record.PRUNE_REASON: str(pruned) if pause is None else f"{pruned}; {pause}", **(
                record.pause_attrs(stopped_at, trial.study.pruner.rungs.index(stopped_at)) if pause else {})})
            raise
        except NonFiniteLoss as e:
            write_attrs({record.PRUNE_REASON: str(e)})
            raise optuna.TrialPruned(str(e)) from e
        except KeyboardInterrupt:
            keep_checkpoint = True  # Ctrl-C or SIGTERM (preemption): the rerun resumes from it
            raise
        except Exception as e:
            if stop_requested():  # an interruption that surfaced as another error (a storage call cut short)
                keep_checkpoint = True
                raise KeyboardInterrupt from e
            write_attrs({record.FAIL_REASON: f"{type(e).__name__}: {e}"[:2000]})
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.checkpoints is not None and not keep_checkpoint:
                self.checkpoints.remove(origin)
            release_memory(self.device)

    def _check_total(self, trial: optuna.Trial) -> None:
        """Refuse to run a sampled trial beyond the study's total.

        Each worker looks at the count before it starts a trial, and two that finish trials at the
        same moment both see room for one more: the trial numbered later of the two (the storage
        numbers them atomically) is FAIL, not run and not counted.
        """
        frozen = trial.study._storage.get_trial(trial._trial_id)
        if self.total is None or record.TrialRecord.of(frozen).queued:
            return
        if record.StudyRecord.of(trial.study).is_beyond_total(trial.number, self.total):
            trial.set_user_attr(record.BEYOND_TOTAL, True)
            reason = f"not run: other workers had already started the study's {self.total} trials"
            trial.set_user_attr(record.FAIL_REASON, reason)
            raise BeyondTotal(reason)

    def _latency(self, trial: optuna.Trial, params: TrialParams) -> Latency:
        """Time the configuration's architecture at its image size on one CPU thread (whatever the search
        uses, so that every trial's figure compares; its weights do not matter), record it, and apply
        the study's latency budget: over it, the trial is pruned before any training."""
        model = build_model(params.backbone, num_classes=self.data.dataset.num_classes, head=params.head)
        latency = measure_latency(model, image_size=params.image_size, threads=1)
        del model
        trial.set_user_attr(record.LATENCY, latency.to_dict())
        budget, ms = self.space.study.max_latency_ms, latency.ms_per_image[1]
        if budget is not None:
            trial.set_constraint(LATENCY_CONSTRAINT, ms - budget)  # feasible at 0 or less
            if ms > budget:
                raise optuna.TrialPruned(f"CPU latency {ms:.3g} ms per image is over study.max_latency_ms "
                                         f"{budget:g}: not trained")
        return latency

    def _pause(self, trial: optuna.Trial, step: int | None) -> str | None:
        """How the trial is paused (its checkpoint kept, for a promotion to continue), or None
        when it is stopped for good: a pruner that does not pause, no checkpoint of this step."""
        pruner = trial.study.pruner
        if (step is None or not isinstance(pruner, AshaPruner) or pruner.max_paused == 0
                or self.checkpoints is None or step not in pruner.rungs):
            return None
        return f"paused at rung {pruner.rungs.index(step) + 1} with its checkpoint, to continue if promoted"

    def _resume(self, trial: optuna.Trial, origin: int, fingerprint: dict) -> FoldCheckpoint | None:
        """The checkpoint this trial continues from, or None (with a note when one was unusable)."""
        if self.checkpoints is None:
            return None
        checkpoint, note = self.checkpoints.load(origin, fingerprint)
        if note is None and checkpoint is None and origin != trial.number:
            note = (f"no checkpoint of trial {origin} in {self.checkpoints.folder} (it stopped before its first "
                    f"epoch, or the checkpoint is on another machine or was deleted); starting from zero")
        if note is not None:
            self._checkpoint_note(trial, note)
        return checkpoint

    def _save_checkpoint(self, trial: optuna.Trial, origin: int, checkpoint: FoldCheckpoint) -> bool:
        """Save ``checkpoint``; a save that fails (a full disk) is a warning, and the trial trains on."""
        try:
            self.checkpoints.save(origin, checkpoint)
            return True
        except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError of its writer
            self._checkpoint_note(trial, f"cannot save checkpoints in {self.checkpoints.folder} ({type(e).__name__}: "
                                         f"{str(e)[:200]}); training on without them: a re-run of this trial "
                                         f"starts from zero. Free space there, or pass `checkpoints` elsewhere")
            return False

    @staticmethod
    def _checkpoint_note(trial: optuna.Trial, note: str) -> None:
        trial.set_user_attr(record.CHECKPOINT_NOTE, note)
        logger.warning("trial %d: %s", trial.number, note)

    def _replay_reports(self, trial: optuna.Trial, steps: PruningSteps, done: list[FoldOutcome],
                        partial: FoldState | None) -> int | None:
        """Report the intermediate values of the epochs a resumed trial inherits, as they were;
        returns the last inherited step if the pruner must be asked about it, else None.

        The pruner then sees the same curve as for an uninterrupted trial, and is asked once more
        about the last inherited step, whose answer the killed worker may not have acted on;
        not when a promotion continues from the step it was paused at (it was judged then).
        """
        histories = [d.f1_history for d in done] + ([partial.result.f1_history] if partial else [])
        reports = steps.curve([d.f1 for d in done], histories)
        for step, value in reports:
            trial.report(value, step)
        continued = record.Continuation.of_running(trial)
        if not reports or reports[-1][0] >= steps.last or (continued and reports[-1][0] == continued.step):
            return None
        return reports[-1][0]

    def _save_oof(self, trial, oof: OutOfFold) -> None:
        """Keep the OOF probabilities for ensembles, calibration and label issues (see oof.py)."""
        if self.artifact_dir is None:
            return
        try:
            save_oof(trial, oof, self.artifact_dir)
        except Exception as e:  # a full disk: the trial's score still counts
            trial.set_user_attr(record.OOF_ERROR, f"{type(e).__name__}: {e}"[:500])

    def _note(self, trial, params: TrialParams, done: list[FoldOutcome], seconds: float, confusion) -> None:
        """The dashboard note and confusion-matrix artifact; a failure here must not fail the trial."""
        try:
            record_trial_note(trial, params=params.as_dict(), fold_f1=[d.f1 for d in done],
                              fold_accuracy=[d.accuracy for d in done], seconds=seconds,
                              images_per_second=float(np.mean([d.images_per_second for d in done])) if done else 0.0,
                              class_names=self.data.dataset.class_names, confusion=confusion,
                              artifact_dir=self.artifact_dir)
        except Exception as e:  # a full disk or an unwritable artifact folder: keep the trial's score
            trial.set_user_attr(record.NOTE_ERROR, f"{type(e).__name__}: {e}"[:500])

    def _fit_fold(self, trial, params: TrialParams, fold_data: TrainingData, fold: int, on_epoch,
                  on_checkpoint, resume: FoldState | None, bar):
        settings = self.space.study
        kwargs = dict(config=settings.train_config(), num_classes=self.data.dataset.num_classes, device=self.device,
                      seed=fold_seed(settings.seed, params, fold), on_epoch=on_epoch, on_checkpoint=on_checkpoint,
                      progress=bar)
        try:
            try:
                return train_fold(params, fold_data, resume=resume,
                                  accumulation=resume.accumulation if resume else 1, **kwargs)
            except UnusableCheckpoint as e:  # other shapes: this fold starts from zero
                self._checkpoint_note(trial, f"the checkpoint of fold {fold + 1} cannot be resumed: {e}; "
                                             f"training the fold from zero")
                if bar is not None:
                    bar.reset(total=bar.total)
                return train_fold(params, fold_data, **kwargs)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            first = f"{type(e).__name__}: {e}"
        # The classic too-large batch: try once more at half the batch, accumulating two
        # micro-batches per update so the optimiser sees the same effective batch. The retry runs
        # outside the except clause: the exception's traceback holds the failed attempt's tensors.
        release_memory(self.device)
        half = params.batch_size // 2
        if half < 2:  # BatchNorm cannot train on micro-batches of one image: nothing smaller to try
            raise RuntimeError(f"out of memory in fold {fold + 1} at batch {params.batch_size}; lower image_size "
                               f"or use a smaller backbone ({first[:500]})")
        trial.set_user_attr(record.OOM_RETRY, f"fold {fold + 1}: out of memory at batch {params.batch_size}; "
                                              f"retried at {half} x 2 accumulation")
        try:
            return train_fold(params, fold_data, accumulation=2, **kwargs)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise RuntimeError(f"out of memory in fold {fold + 1} at batch {params.batch_size}, and again at "
                               f"{half} x 2 accumulation; lower batch_size or image_size ({first[:500]})") from e


class BeyondTotal(Exception):
    """A sampled trial found the study's total already started (workers raced to the last one)."""


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()
