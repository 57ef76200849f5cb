"""The Optuna objective: one configuration trained on every fold, scored by mean macro F1.

Faults stay inside their trial: an out-of-memory error retries the fold once at half the batch
with two-step gradient accumulation (the effective batch is unchanged); a second one fails the
trial with the reason in its attributes. A non-finite loss prunes the trial with its reason.
Memory is released after every trial, so a long study does not grow.
"""

from __future__ import annotations

import gc
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from sklearn.metrics import confusion_matrix

from maskopt.search.data.prepared import PreparedData
from maskopt.search.space import SearchSpace, TrialParams
from maskopt.search.study import record
from maskopt.search.study.checkpoints import CheckpointStore
from maskopt.search.study.components import reports_per_fold
from maskopt.search.study.interrupts import raise_if_interrupted
from maskopt.search.study.notes import record_trial_note
from maskopt.search.study.oof import OutOfFold, save_oof
from maskopt.search.train.loop import (
    NonFiniteLoss,
    TrainConfig,
    TrainingData,
    fast_path,
    is_out_of_memory,
    train_fold,
)
from maskopt.search.train.models import count_parameters


def original_trial_number(trial: optuna.Trial) -> int:
    """The number of the trial this one retries (after its worker died), or its own number."""
    attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    return attrs.get(record.RETRIED_FROM, trial.number)


def fold_seed(study_seed: int, trial_number: int, fold: int) -> int:
    """The training seed of one fold of one trial: reproducible, distinct across trials."""
    return (study_seed * 1_000_003 + trial_number * 101 + fold) % (2**31)


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
        log: Where notes (an unusable checkpoint) go.
    """

    space: SearchSpace
    data: PreparedData
    device: torch.device
    epoch_bar: object = None
    artifact_dir: str | Path | None = None
    checkpoints: CheckpointStore | None = None
    log: Callable[[str], None] = print

    def __call__(self, trial: optuna.Trial) -> float:
        # First: a retry arrives carrying its dead original's "worker", and another worker's
        # recovery would fail this live trial as dead while that attribute stays.
        trial.set_user_attr(record.WORKER, f"{socket.gethostname()}:{os.getpid()}")
        params = self.space.suggest(trial)
        settings = self.space.study
        folds = self.data.folds(n_folds=settings.folds, seed=settings.seed)
        images = self.data.images(params.image_size, self.device)
        dataset = self.data.dataset
        train_labels = dataset.training_labels(params.age_old)
        per_fold = reports_per_fold(settings)
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        trial.set_user_attr(record.DEVICE, str(self.device))
        trial.set_user_attr(record.FAST_PATH, fast_path(self.device, settings))
        # A retry (its worker died) trains with its original's seeds, so it scores as the
        # original would have, and resumes from the original's checkpoint.
        origin = original_trial_number(trial)
        fingerprint = {"params": params.as_dict(), "folds": settings.folds, "epochs": settings.epochs,
                       "seed": settings.seed, "images": len(dataset)}

        done: list[dict] = []  # per finished fold: f1, accuracy, best_epoch, speed, history, probs
        epochs_trained = 0
        out_of_fold = np.full((len(dataset), dataset.num_classes), np.nan, dtype=np.float32)
        fold_of = np.full(len(dataset), -1, dtype=np.int64)
        bar = self.epoch_bar(settings.folds * settings.epochs, trial.number) if self.epoch_bar else None
        resume = self._resume(trial, origin, fingerprint)
        first_fold, partial = 0, None
        if resume is not None:
            done, first_fold, partial = list(resume["done"]), resume["fold"], resume["train"]
            for k, (fold_done, (_, val_idx)) in enumerate(zip(done, folds)):
                out_of_fold[val_idx], fold_of[val_idx] = fold_done["probs"].numpy(), k
            epochs_trained = sum(len(d["history"]) for d in done) + (partial["result"]["epochs_trained"] if partial else 0)
            if bar is not None:
                bar.update(sum(len(d["history"]) for d in done))
            trial.set_user_attr(record.RESUMED, {"from_trial": origin, "fold": first_fold + 1,
                                            "epochs_inherited": epochs_trained})
        else:
            trial.set_user_attr(record.RESUMED, None)  # a retry carries its original's attributes
        epochs_inherited = epochs_trained
        keep_checkpoint = False

        def write_attrs(extra: dict | None = None) -> None:
            attrs = {
                record.FOLD_F1: [d["f1"] for d in done], record.FOLD_ACCURACY: [d["accuracy"] for d in done],
                record.BEST_EPOCH: [d["best_epoch"] for d in done],
                record.EPOCHS_TRAINED: epochs_trained, record.EPOCHS_TRAINED_HERE: epochs_trained - epochs_inherited,
                record.SECONDS: round(time.perf_counter() - started, 3),
                record.IMAGES_PER_SECOND: round(float(np.mean([d["speed"] for d in done])), 1) if done else 0.0,
                record.PEAK_MEMORY_MB: _peak_memory_mb(self.device), **(extra or {}),
            }
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

        def running_mean(fold: int, best_in_fold: float) -> float:
            return float(np.mean([d["f1"] for d in done[:fold]] + [best_in_fold]))

        try:
            if resume is not None:
                self._replay_reports(trial, done, partial, per_fold)
            for fold, (train_idx, val_idx) in enumerate(folds):
                if fold < first_fold:
                    continue
                fold_data = TrainingData(images, train_idx, train_labels[train_idx], val_idx, dataset.labels[val_idx])
                fold_resume = partial if fold == first_fold else None
                best_in_fold = [max(fold_resume["result"]["f1_history"], default=0.0) if fold_resume else 0.0]

                def on_epoch(epoch: int, f1: float, accuracy: float, fold=fold, best_in_fold=best_in_fold) -> None:
                    nonlocal epochs_trained
                    raise_if_interrupted()  # a signal whose KeyboardInterrupt was swallowed
                    epochs_trained += 1
                    best_in_fold[0] = max(best_in_fold[0], f1)
                    if per_fold:
                        return
                    running = running_mean(fold, best_in_fold[0])
                    trial.report(running, fold * settings.epochs + epoch)
                    # After the last epoch of the last fold the work is done: pruning then would
                    # save nothing and only turn a finished trial into a pruned one.
                    last_step = fold + 1 == len(folds) and epoch + 1 == settings.epochs
                    if not last_step and trial.should_prune():
                        raise optuna.TrialPruned(
                            f"pruned at fold {fold + 1} epoch {epoch + 1}: running mean macro F1 {running:.4f}")

                def on_checkpoint(state: dict, fold=fold) -> None:
                    if self.checkpoints is not None:
                        self.checkpoints.save(origin, {"fingerprint": fingerprint, "fold": fold, "done": done,
                                                       "train": state})

                result, model = self._fit_fold(trial, origin, params, fold_data, fold, on_epoch, on_checkpoint,
                                               fold_resume, bar)
                total, trainable = count_parameters(model)
                trial.set_user_attr(record.PARAM_COUNT, total)
                trial.set_user_attr(record.TRAINABLE_PARAM_COUNT, trainable)
                trial.set_user_attr(record.FREEZE_DEPTH_EFFECTIVE, model.freeze_depth)
                del model
                done.append({"f1": round(result.best_f1, 6), "accuracy": round(result.best_accuracy, 6),
                             "best_epoch": result.best_epoch, "speed": result.images_per_second,
                             "history": list(result.f1_history),
                             "probs": torch.from_numpy(result.best_probs)})
                out_of_fold[val_idx], fold_of[val_idx] = result.best_probs, fold
                if per_fold:
                    trial.report(result.best_f1, fold)
                    if fold + 1 < len(folds) and trial.should_prune():
                        write_attrs({record.PRUNED_AFTER_FOLDS: fold + 1})
                        return float(np.mean([d["f1"] for d in done]))
            fold_f1 = [d["f1"] for d in done]
            scored = fold_of >= 0
            confusion = _confusion(dataset.labels[scored], out_of_fold[scored].argmax(1), dataset.num_classes)
            write_attrs({record.CONFUSION: confusion})
            self._save_oof(trial, OutOfFold(out_of_fold, dataset.labels, fold_of, dataset.fingerprint()))
            self._note(trial, params, fold_f1, [d["accuracy"] for d in done], time.perf_counter() - started,
                       [d["speed"] for d in done], confusion)
            return float(np.mean(fold_f1))
        except optuna.TrialPruned as pruned:
            write_attrs({record.PRUNE_REASON: str(pruned)})
            raise
        except NonFiniteLoss as e:
            write_attrs({record.PRUNE_REASON: str(e)})
            raise optuna.TrialPruned(str(e)) from e
        except KeyboardInterrupt:
            keep_checkpoint = True  # Ctrl-C or SIGTERM (preemption): the rerun resumes from it
            raise
        except Exception as e:
            write_attrs({record.FAIL_REASON: f"{type(e).__name__}: {e}"[:2000]})
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.checkpoints is not None and not keep_checkpoint:
                self.checkpoints.remove(origin)
            release_memory(self.device)

    def _resume(self, trial: optuna.Trial, origin: int, fingerprint: dict) -> dict | None:
        """The checkpoint this trial continues from, or None (with a note when one was unusable)."""
        if self.checkpoints is None:
            return None
        state, note = self.checkpoints.load(origin, fingerprint)
        if note is not None:
            trial.set_user_attr(record.CHECKPOINT_NOTE, note)
            self.log(f"warning: trial {trial.number}: {note}")
        return state

    def _replay_reports(self, trial: optuna.Trial, done: list[dict], partial: dict | None, per_fold: bool) -> None:
        """Report the intermediate values of the epochs a resumed trial inherits, as they were.

        The pruner then sees the same curve as for an uninterrupted trial; it is asked once more
        about the last inherited step, whose answer the killed worker may not have acted on.
        """
        epochs = self.space.study.epochs
        histories = [d["history"] for d in done] + ([partial["result"]["f1_history"]] if partial else [])
        step = None
        if per_fold:
            for fold, d in enumerate(done):
                trial.report(d["f1"], step := fold)
        else:
            for fold, history in enumerate(histories):
                best = 0.0
                for epoch, f1 in enumerate(history):
                    best = max(best, f1)
                    value = float(np.mean([d["f1"] for d in done[:fold]] + [best]))
                    trial.report(value, step := fold * epochs + epoch)
        last = (self.space.study.folds - 1 if per_fold else self.space.study.folds * epochs - 1)
        if step is not None and step < last and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} after resuming from trial {original_trial_number(trial)}")

    def _save_oof(self, trial, oof: OutOfFold) -> None:
        """Keep the OOF probabilities for ensembles, calibration and label issues (see oof.py)."""
        if self.artifact_dir is None:
            return
        try:
            save_oof(trial, oof, self.artifact_dir)
        except Exception as e:  # a full disk: the trial's score still counts
            trial.set_user_attr(record.OOF_ERROR, f"{type(e).__name__}: {e}"[:500])

    def _note(self, trial, params: TrialParams, fold_f1, fold_accuracy, seconds, speeds, confusion) -> None:
        """The dashboard note and confusion-matrix artifact; a failure here must not fail the trial."""
        try:
            record_trial_note(trial, params=params.as_dict(), fold_f1=fold_f1, fold_accuracy=fold_accuracy,
                              seconds=seconds, images_per_second=float(np.mean(speeds)) if speeds else 0.0,
                              class_names=self.data.dataset.class_names, confusion=confusion,
                              artifact_dir=self.artifact_dir)
        except Exception as e:  # a full disk or an unwritable artifact folder: keep the trial's score
            trial.set_user_attr(record.NOTE_ERROR, f"{type(e).__name__}: {e}"[:500])

    def _fit_fold(self, trial, origin: int, params: TrialParams, fold_data: TrainingData, fold: int, on_epoch,
                  on_checkpoint, resume: dict | None, bar):
        settings = self.space.study
        seed = fold_seed(settings.seed, origin, fold)
        kwargs = dict(config=TrainConfig.of(settings), num_classes=self.data.dataset.num_classes, device=self.device, seed=seed,
                      on_epoch=on_epoch, on_checkpoint=on_checkpoint, progress=bar)
        try:
            return train_fold(params, fold_data, resume=resume,
                              accumulation=resume["accumulation"] if resume else 1, **kwargs)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            first = f"{type(e).__name__}: {e}"
        # The classic too-large batch: try once more at half the batch, accumulating two
        # micro-batches per update so the optimiser sees the same effective batch. The retry runs
        # outside the except clause: the exception's traceback holds the failed attempt's tensors.
        release_memory(self.device)
        half = max(1, params.batch_size // 2)
        trial.set_user_attr(record.OOM_RETRY, f"fold {fold + 1}: out of memory at batch {params.batch_size}; "
                                         f"retried at {half} x 2 accumulation")
        try:
            return train_fold(params, fold_data, accumulation=2, **kwargs)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise RuntimeError(f"out of memory in fold {fold + 1} at batch {params.batch_size}, and again at "
                               f"{half} x 2 accumulation; lower batch_size or image_size ({first[:500]})") from e


def release_memory(device: torch.device) -> None:
    """Drop what the last trial left: Python garbage and the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[list[int]]:

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()
