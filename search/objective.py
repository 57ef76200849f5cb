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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from maskopt.search.data import PreparedData
from maskopt.search.models import count_parameters
from maskopt.search.notes import record_trial_note
from maskopt.search.pruning import reports_per_fold
from maskopt.search.space import SearchSpace, TrialParams
from maskopt.search.training import NonFiniteLoss, TrainingData, fast_path, is_out_of_memory, train_fold


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
    """

    space: SearchSpace
    data: PreparedData
    device: torch.device
    epoch_bar: object = None
    artifact_dir: str | Path | None = None

    def __call__(self, trial: optuna.Trial) -> float:
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
        trial.set_user_attr("device", str(self.device))
        trial.set_user_attr("fast_path", fast_path(self.device, settings))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it, for crash forensics

        fold_f1: list[float] = []
        fold_accuracy: list[float] = []
        best_epochs: list[int] = []
        speeds: list[float] = []
        epochs_trained = 0
        out_of_fold = np.full(len(dataset), -1, dtype=np.int64)
        bar = self.epoch_bar(settings.folds * settings.epochs, trial.number) if self.epoch_bar else None

        def record(**extra) -> None:
            attrs = {
                "fold_f1": fold_f1, "fold_accuracy": fold_accuracy, "best_epoch": best_epochs,
                "epochs_trained": epochs_trained, "seconds": round(time.perf_counter() - started, 3),
                "images_per_second": round(float(np.mean(speeds)), 1) if speeds else 0.0,
                "peak_memory_mb": _peak_memory_mb(self.device), **extra,
            }
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

        try:
            for fold, (train_idx, val_idx) in enumerate(folds):
                fold_data = TrainingData(images, train_idx, train_labels[train_idx], val_idx, dataset.labels[val_idx])
                best_in_fold = [0.0]

                def on_epoch(epoch: int, f1: float, accuracy: float, fold=fold, best_in_fold=best_in_fold) -> None:
                    nonlocal epochs_trained
                    epochs_trained += 1
                    best_in_fold[0] = max(best_in_fold[0], f1)
                    if per_fold:
                        return
                    running = float(np.mean(fold_f1 + best_in_fold))
                    step = fold * settings.epochs + epoch
                    trial.report(running, step)
                    # After the last epoch of the last fold the work is done: pruning then would
                    # save nothing and only turn a finished trial into a pruned one.
                    last_step = fold + 1 == len(folds) and epoch + 1 == settings.epochs
                    if not last_step and trial.should_prune():
                        raise optuna.TrialPruned(
                            f"pruned at fold {fold + 1} epoch {epoch + 1}: running mean macro F1 {running:.4f}")

                result, model = self._fit_fold(trial, params, fold_data, fold, on_epoch, bar)
                total, trainable = count_parameters(model)
                trial.set_user_attr("param_count", total)
                trial.set_user_attr("trainable_param_count", trainable)
                trial.set_user_attr("freeze_depth_effective", model.freeze_depth)
                del model
                fold_f1.append(round(result.best_f1, 6))
                fold_accuracy.append(round(result.best_accuracy, 6))
                best_epochs.append(result.best_epoch)
                speeds.append(result.images_per_second)
                out_of_fold[val_idx] = result.best_predictions
                if per_fold:
                    trial.report(result.best_f1, fold)
                    if fold + 1 < len(folds) and trial.should_prune():
                        record(pruned_after_folds=fold + 1)
                        return float(np.mean(fold_f1))
            scored = out_of_fold >= 0
            confusion = _confusion(dataset.labels[scored], out_of_fold[scored], dataset.num_classes)
            record(confusion=confusion)
            self._note(trial, params, fold_f1, fold_accuracy, time.perf_counter() - started, speeds, confusion)
            return float(np.mean(fold_f1))
        except optuna.TrialPruned as pruned:
            record(prune_reason=str(pruned))
            raise
        except NonFiniteLoss as e:
            record(prune_reason=str(e))
            raise optuna.TrialPruned(str(e)) from e
        except Exception as e:
            record(fail_reason=f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            if bar is not None:
                bar.close()
            release_memory(self.device)

    def _note(self, trial, params: TrialParams, fold_f1, fold_accuracy, seconds, speeds, confusion) -> None:
        """The dashboard note and confusion-matrix artifact; a failure here must not fail the trial."""
        try:
            record_trial_note(trial, params=params.as_dict(), fold_f1=fold_f1, fold_accuracy=fold_accuracy,
                              seconds=seconds, images_per_second=float(np.mean(speeds)) if speeds else 0.0,
                              class_names=self.data.dataset.class_names, confusion=confusion,
                              artifact_dir=self.artifact_dir)
        except Exception as e:  # a full disk or an unwritable artifact folder: keep the trial's score
            trial.set_user_attr("note_error", f"{type(e).__name__}: {e}"[:500])

    def _fit_fold(self, trial, params: TrialParams, fold_data: TrainingData, fold: int, on_epoch, bar):
        settings = self.space.study
        seed = fold_seed(settings.seed, trial.number, fold)
        kwargs = dict(settings=settings, num_classes=self.data.dataset.num_classes, device=self.device, seed=seed,
                      on_epoch=on_epoch, progress=bar)
        try:
            return train_fold(params, fold_data, **kwargs)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            first = f"{type(e).__name__}: {e}"
        # The classic too-large batch: try once more at half the batch, accumulating two
        # micro-batches per update so the optimiser sees the same effective batch. The retry runs
        # outside the except clause: the exception's traceback holds the failed attempt's tensors.
        release_memory(self.device)
        half = max(1, params.batch_size // 2)
        trial.set_user_attr("oom_retry", f"fold {fold + 1}: out of memory at batch {params.batch_size}; "
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
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()
