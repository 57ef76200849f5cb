"""What optuna-dashboard shows on a trial's page: a markdown note and a confusion-matrix image.

Both live in the study storage (the note) and the artifact folder (the image), so workers write
them with no dashboard running, and ``optuna-dashboard URL --artifact-dir DIR`` shows them later.
They must be written while the trial is RUNNING: a finished trial's attributes are read-only,
and an artifact is linked to its trial through them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna_dashboard import save_note

from maskopt.storage import artifact_store


def record_trial_note(
    trial: optuna.Trial,
    *,
    params: dict,
    fold_f1: Sequence[float],
    fold_accuracy: Sequence[float],
    seconds: float,
    images_per_second: float,
    class_names: Sequence[str],
    confusion,
    artifact_dir: str | Path | None,
) -> str | None:
    """Save a trial's note and, with ``artifact_dir``, its confusion matrix as a PNG artifact.

    Args:
        trial: The RUNNING trial (from the objective).
        params: Every parameter the trial trained with, constants included.
        fold_f1: Best macro F1 of each fold.
        fold_accuracy: Accuracy at that epoch, per fold.
        seconds: The trial's training time.
        images_per_second: Mean training throughput.
        class_names: Name of each class index (rows and columns of ``confusion``).
        confusion: Out-of-fold confusion counts, rows true class, columns predicted.
        artifact_dir: The artifact folder the dashboard is given (``--artifact-dir``); None
            saves the note only.

    Returns:
        The artifact id of the uploaded image, or None without ``artifact_dir``.

    Example:
        >>> record_trial_note(trial, params=params.as_dict(), fold_f1=[0.71, 0.69], fold_accuracy=[0.8, 0.79],
        ...                   seconds=93.0, images_per_second=640.0, class_names=names, confusion=matrix,
        ...                   artifact_dir="maskopt-artifacts")
    """

    matrix = np.asarray(confusion, dtype=np.int64)
    save_note(trial, trial_note(trial.number, params=params, fold_f1=fold_f1, fold_accuracy=fold_accuracy,
                                seconds=seconds, images_per_second=images_per_second, confusion=matrix))
    if artifact_dir is None:
        return None


    with tempfile.TemporaryDirectory(prefix="maskopt-note-") as tmp:
        # The file's name is what the dashboard lists, so it says what and which trial.
        path = Path(tmp) / f"confusion-trial-{trial.number}.png"
        confusion_png(matrix, list(class_names), path, title=f"Trial {trial.number}: out-of-fold confusion matrix")
        return optuna.artifacts.upload_artifact(artifact_store=artifact_store(artifact_dir), file_path=str(path),
                                                study_or_trial=trial, mimetype="image/png")


def trial_note(number: int, *, params: dict, fold_f1: Sequence[float], fold_accuracy: Sequence[float],
               seconds: float, images_per_second: float, confusion: np.ndarray | None = None) -> str:
    """The markdown of a trial's note: score, time, per-fold table, parameters."""
    f1 = [float(v) for v in fold_f1]
    accuracy = [float(v) for v in fold_accuracy]
    mean = f"{np.mean(f1):.4f} ± {np.std(f1):.4f}" if f1 else "–"
    lines = [f"## Trial {number}: macro F1 {mean}", "",
             f"Trained in {_duration(seconds)} at {images_per_second:,.0f} images per second.", ""]
    if confusion is not None and confusion.sum():
        lines += [f"Out-of-fold accuracy {np.trace(confusion) / confusion.sum():.4f} over "
                  f"{int(confusion.sum()):,} images (confusion matrix in the artifacts).", ""]
    lines += ["| fold | macro F1 | accuracy |", "|---:|---:|---:|"]
    for k, score in enumerate(f1):
        acc = f"{accuracy[k]:.4f}" if k < len(accuracy) else ""
        lines.append(f"| {k + 1} | {score:.4f} | {acc} |")
    lines += ["", "| parameter | value |", "|---|---|"]
    lines += [f"| {name} | `{_value(value)}` |" for name, value in params.items()]
    return "\n".join(lines) + "\n"


def confusion_png(matrix: np.ndarray, class_names: list[str], path: str | Path, *, title: str) -> Path:
    """Draw a confusion matrix (counts, shaded by share of the row) to a PNG file."""
    # A bare Figure, not pyplot: no global backend or figure registry touched inside a worker.

    n = len(matrix)
    if len(class_names) != n:
        class_names = [f"class {i}" for i in range(n)]
    totals = matrix.sum(1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    side = max(4.0, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fontsize = 7 if n > 10 else 9
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=fontsize)
    ax.set_yticks(range(n), class_names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
