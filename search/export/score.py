"""Scoring a submission (ImageID,ans) against a solution file: the competition's metric."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from maskopt.errors import ExportError, shorten
from maskopt.search.data import labels as L
from maskopt.search.export.config import read_capped, show_value
from maskopt.search.train import metrics


@dataclass(frozen=True)
class Score:
    """Scores of a submission against a solution.

    Attributes:
        macro_f1: Mean of the per-class F1 over the classes in truth or prediction (the
            competition metric, scikit-learn's f1_score with average="macro"):
            :func:`maskopt.search.train.metrics.macro_f1` with the PRESENT policy, the same
            function and policy as the search's fold scores and the out-of-fold scores.
        accuracy: Fraction of exact matches.
        task_f1: Macro F1 of each task: mask (3 classes), gender (2), age (3), same policy.
        confusion: 18x18 counts, rows true class, columns predicted.
        count: Rows scored.
    """

    macro_f1: float
    accuracy: float
    task_f1: dict[str, float]
    confusion: list[list[int]]
    count: int

    def to_dict(self) -> dict:
        return {"macro_f1": self.macro_f1, "accuracy": self.accuracy, "task_f1": self.task_f1,
                "count": self.count, "confusion": self.confusion}


def score(submission: str | Path, solution: str | Path) -> Score:
    """Score a competition submission (``ImageID,ans``) against a solution file.

    Raises:
        ExportError: Missing files, wrong headers, values outside 0..17, or ids that differ
            from the solution's (in count or order).
    """
    return score_submission(submission, solution)


def score_submission(submission: str | Path, solution: str | Path) -> Score:
    """:func:`score`, under the name the implementation has always had."""

    sub_ids, predicted = _read_answers(Path(submission))
    sol_ids, truth = _read_answers(Path(solution))
    if len(sub_ids) != len(sol_ids):
        raise ExportError(f"{submission} has {len(sub_ids)} rows but {solution} has {len(sol_ids)}; "
                          f"a submission needs one row per eval image, in info.csv order")
    for line, (a, b) in enumerate(zip(sub_ids, sol_ids), start=2):
        if a != b:
            raise ExportError(f"{submission}, line {line}: ImageID {show_value(a)} where {solution} has "
                              f"{show_value(b)}; keep the rows in info.csv order")
    y_true, y_pred = np.asarray(truth), np.asarray(predicted)
    parts_true, parts_pred = L.decode(y_true), L.decode(y_pred)
    task_sizes = {"mask": len(L.MASK_NAMES), "gender": len(L.GENDER_NAMES), "age": len(L.AGE_NAMES)}  # 3, 2, 3
    task_f1 = {task: metrics.macro_f1(t, p, n_classes=n)
               for (task, n), t, p in zip(task_sizes.items(), parts_true, parts_pred)}
    return Score(
        macro_f1=metrics.macro_f1(y_true, y_pred, n_classes=L.NUM_CLASSES),
        accuracy=float(np.mean(y_true == y_pred)),
        task_f1=task_f1,
        confusion=confusion_matrix(y_true, y_pred, labels=list(range(L.NUM_CLASSES))).tolist(),
        count=len(y_true),
    )


# A submission of the 12,600 eval images is under 1 MB; the cap keeps memory small whatever the file.
_ANSWERS_MAX_BYTES = 64 << 20
_ASCII_CLASS = re.compile(r"[0-9]{1,2}")  # int() also takes '٣' and str.isdigit() takes '²': ASCII only


def _read_answers(path: Path) -> tuple[list[str], list[int]]:
    """The ImageID and ans columns of a submission or solution (UTF-8, with or without a BOM).

    Raises:
        ExportError: Naming the file, the line and the (shortened) value.
    """
    if not path.is_file():
        raise ExportError(f"{path} is missing")
    data = read_capped(path, _ANSWERS_MAX_BYTES, "a submission")
    if data.startswith(codecs.BOM_UTF8):  # spreadsheet programs write one; same as encoding 'utf-8-sig'
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ExportError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r}); "
                          f"a submission is a CSV file 'ImageID,ans'") from None
    ids, answers = [], []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        names = [h.strip() for h in header or []]
        if names[:2] != ["ImageID", "ans"]:
            got = shorten(",".join(names), 80) or "(empty file)"
            raise ExportError(f"{path}: header must be 'ImageID,ans', got {got}")
        duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
        if duplicated:  # which of the two columns would be read is a guess: refuse
            raise ExportError(f"{path}: header names column {show_value(duplicated[0])} more than once; "
                              f"header must be 'ImageID,ans'")
        for line, row in enumerate(reader, start=2):
            if len(row) < 2:
                raise ExportError(f"{path}, line {line}: expected 'ImageID,ans', got {show_value(','.join(row))}")
            value = row[1].strip()
            if not _ASCII_CLASS.fullmatch(value) or int(value) >= L.NUM_CLASSES:
                raise ExportError(f"{path}, line {line}: ans {show_value(value)} is not a class 0..{L.NUM_CLASSES - 1}")
            ids.append(row[0].strip())
            answers.append(int(value))
    except csv.Error as e:  # e.g. a field over csv's size limit
        raise ExportError(f"{path}, line {reader.line_num}: not a valid CSV row ({e})") from None
    return ids, answers
