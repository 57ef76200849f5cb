"""Which training labels a finished study doubts, and a draft of the corrections they call for.

Every complete trial of ``maskopt search`` stores its out-of-fold (OOF) probabilities: each
training image predicted by the fold model that never saw it. :func:`label_issues`
averages those of the study's best trials, ranks the images whose given label looks wrong by
confident learning (cleanlab, :func:`maskopt.search.study.oof.find_label_issues`), and, for the
competition layout, turns the evidence per person into suggestions:

- ``male`` / ``female``: most of a person's images are predicted as the other gender;
- ``swap_incorrect_normal``: the image given as ``incorrect_mask`` looks like no mask and the
  one given as ``normal`` looks like an incorrectly worn mask;
- age bands and other mask confusions (a worn mask file that shows none, say) are listed but
  not drafted: the corrections format (``id,fix``) has no fix for them.

A suggestion needs at least one of the person's images among the confident-learning issues, so
a person the model is merely unsure about is not drafted. :func:`write_corrections_draft` writes the
drafted fixes (merged with the corrections the study already used) as a corrections CSV: a
draft for a person to review, not a verdict.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maskopt.errors import LabelIssuesError
from maskopt.files import check_target, write_atomically
from maskopt.search.data import labels as L
from maskopt.search.data.dataset import _read_corrections
from maskopt.search.study.oof import find_label_issues, load_oof
from maskopt.search.study.record import StudyRecord
from maskopt.search.train.metrics import macro_f1
from maskopt.storage import DEFAULT_ARTIFACT_DIR

MAX_TRIALS = 50
"""Most complete trials looked at for stored OOF predictions (best first)."""


@dataclass(frozen=True)
class SuspectImage:
    """One training image whose given label the OOF predictions doubt.

    Attributes:
        rank: 1 for the most suspect.
        image_id: Path relative to the dataset folder (posix).
        path: The image file.
        person: Its person (group) id.
        given, predicted: Class indices.
        given_name, predicted_name: Their names.
        self_confidence: Averaged OOF probability of the given class (lower: more suspect).
        kind: Which parts differ: ``mask``, ``gender``, ``age`` joined by ``+`` (competition),
            or ``class``.
    """

    rank: int
    image_id: str
    path: Path
    person: str
    given: int
    predicted: int
    given_name: str
    predicted_name: str
    self_confidence: float
    kind: str


@dataclass(frozen=True)
class PersonSuggestion:
    """What the predictions say about one person (competition layout).

    Attributes:
        person: The person id (the ``id`` column of ``train.csv``).
        kind: ``gender``, ``swap_incorrect_normal``, ``age`` or ``mask``.
        fix: The corrections-file fix (``male``, ``female``, ``swap_incorrect_normal``), or
            None when the format has none (age, other mask confusions) or the person already
            has another fix (one fix per person).
        evidence: A sentence for a human: what the images look like.
        flagged: How many of the person's images confident learning flagged.
    """

    person: str
    kind: str
    fix: str | None
    evidence: str
    flagged: int


@dataclass(frozen=True)
class LabelIssueReport:
    """What :func:`label_issues` found.

    Attributes:
        study_name: The study.
        data: The dataset folder read.
        layout: Its layout.
        artifact_dir: Where the OOF predictions were read from.
        trials: The trials whose OOF probabilities were averaged, best first.
        images: Training images looked at.
        oof_macro_f1: Macro F1 of the averaged OOF probabilities.
        total_issues: Images confident learning flagged (``issues`` may hold fewer: ``limit``).
        issues: The flagged images, most suspect first.
        suggestions: Per-person suggestions (competition layout), drafted ones first.
        existing_corrections: The corrections the study was run with (``id -> fix``), which the
            labels above already include and a written draft keeps.
    """

    study_name: str
    data: Path
    layout: str
    artifact_dir: Path
    trials: tuple[int, ...]
    images: int
    oof_macro_f1: float
    total_issues: int
    issues: tuple[SuspectImage, ...]
    suggestions: tuple[PersonSuggestion, ...] = ()
    existing_corrections: dict[str, str] = field(default_factory=dict)

    @property
    def corrections(self) -> dict[str, str]:
        """The drafted fixes, ``person id -> fix``."""
        return {s.person: s.fix for s in self.suggestions if s.fix is not None}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["data"] = str(self.data)
        data["artifact_dir"] = str(self.artifact_dir)
        data["issues"] = [{**asdict(i), "path": str(i.path)} for i in self.issues]
        data["corrections"] = self.corrections
        return data


# --- finding ------------------------------------------------------------------------------------


def label_issues(
    *,
    storage: str | None = None,
    study: str | None = None,
    data: str | Path | None = None,
    artifacts: str | Path | None = None,
    top: int = 1,
    limit: int | None = None,
    write_corrections: str | Path | None = None,
    force: bool = False,
) -> LabelIssueReport:
    """Rank the training images whose labels a study's OOF predictions doubt; optionally draft corrections.

    Args:
        storage: The study storage (None: ``maskopt.db`` here); opened read-only in spirit.
        study: The study's name; may be omitted when the storage holds one study.
        data: Dataset path (default: the one the study was run on, with its layout,
            corrections and ``exclude_broken``).
        artifacts: The folder the search stored OOF predictions in (None: ``maskopt-artifacts``).
        top: Average the OOF probabilities of this many of the best complete trials that have
            them for this dataset (fewer if fewer have).
        limit: Keep at most this many issues in ``issues`` (None: all); suggestions always look
            at all of them.
        write_corrections: Write the DRAFT corrections CSV (``id,fix``) here (see
            :func:`write_corrections_draft`), for a person to review.
        force: Replace an existing ``write_corrections`` file.

    Returns:
        What was found (the draft, when written, holds :func:`merged_corrections` of it).

    Raises:
        StorageError: No such storage or study.
        NotAMaskoptStudy: The study stores no search space (``maskopt search`` did not make it).
        LabelIssuesError: No complete trial has stored OOF predictions for this dataset in
            ``artifacts``, or the draft cannot be written (not the competition layout; the file
            exists without ``force``).
        DataError: The dataset cannot be read (or the study records none and ``data`` is not given).
    """
    report = study_label_issues(StudyRecord.open(storage, study), data=data, artifacts=artifacts, top=top,
                                limit=limit)
    if write_corrections is not None:
        write_corrections_draft(report, write_corrections, force=force)
    return report


def study_label_issues(record: StudyRecord, *, data: str | Path | None = None, artifacts: str | Path | None = None,
                       top: int = 1, limit: int | None = None) -> LabelIssueReport:
    """:func:`label_issues` of an opened study; writes nothing."""

    if top < 1:
        raise LabelIssuesError(f"the number of trials to average (top) must be at least 1, got {top}")
    if limit is not None and limit < 0:
        raise LabelIssuesError(f"the number of images to list (limit) must be 0 or more, got {limit}")
    artifact_dir = Path(artifacts if artifacts is not None else DEFAULT_ARTIFACT_DIR)
    settings = record.space.study
    dataset = record.dataset(data)
    data_path = data if data is not None else settings.data
    existing = _read_corrections(Path(settings.corrections)) if settings.corrections and dataset.is_competition \
        else {}

    candidates = record.top(MAX_TRIALS)
    used, oofs = [], []
    for trial in candidates:
        oof = load_oof(trial, artifact_dir, dataset)
        if oof is not None:
            used.append(trial.number)
            oofs.append(oof)
            if len(used) == top:
                break
    if not oofs:
        where = f"{artifact_dir}/" + ("" if artifact_dir.is_dir() else " (no such folder)")
        have = (f"none of its {len(candidates)} complete trial(s)" if candidates
                else "it has no complete trial")
        raise LabelIssuesError(
            f"study {record.name!r} has no stored out-of-fold predictions for the dataset {data_path} in "
            f"{where}: {have} stored them there. A search stores them in its `artifacts` folder for every complete "
            f"trial; pass `artifacts` FOLDER if it used another one, the study's own `data` if this is other data, "
            f"or run (more) trials with maskopt search")

    probs = np.mean([o.probs for o in oofs], axis=0)
    labels = dataset.labels

    try:
        with warnings.catch_warnings():  # cleanlab warns about small classes, which tiny studies always have
            warnings.simplefilter("ignore")
            found = find_label_issues(probs, labels, image_ids=[str(i) for i in range(len(labels))],
                                      person_ids=[str(g) for g in dataset.groups])
    except ValueError as e:
        raise LabelIssuesError(f"cannot look for label issues in study {record.name!r}: {e}") from None

    names = dataset.class_names
    base = dataset.root if dataset.root.is_dir() else dataset.root.parent
    issues = []
    for rank, issue in enumerate(found, start=1):
        i = int(issue.image_id)
        issues.append(SuspectImage(
            rank=rank, image_id=Path(os.path.relpath(dataset.paths[i], base)).as_posix(), path=dataset.paths[i],
            person=str(dataset.groups[i]), given=issue.given, predicted=issue.predicted,
            given_name=names[issue.given], predicted_name=names[issue.predicted] if issue.predicted < len(names)
            else str(issue.predicted), self_confidence=issue.self_confidence,
            kind=_kind(issue.given, issue.predicted, dataset.is_competition)))
    suggestions = ()
    if dataset.is_competition and dataset.num_classes == L.NUM_CLASSES:
        flagged = np.zeros(len(labels), dtype=bool)
        flagged[[int(f.image_id) for f in found]] = True
        suggestions = tuple(_suggest(probs, labels, dataset.groups, flagged, existing))
    return LabelIssueReport(
        study_name=record.name, data=Path(data_path), layout=dataset.layout, artifact_dir=artifact_dir,
        trials=tuple(used), images=len(labels), oof_macro_f1=macro_f1(labels, probs, n_classes=dataset.num_classes),
        total_issues=len(issues), issues=tuple(issues if limit is None else issues[:limit]),
        suggestions=suggestions, existing_corrections=existing)


def _kind(given: int, predicted: int, competition: bool) -> str:
    if not competition or predicted >= L.NUM_CLASSES:
        return "class"
    parts = [name for name, a, b in zip(("mask", "gender", "age"), L.decode(given), L.decode(predicted)) if a != b]
    return "+".join(parts) or "class"


MIN_RECALL_TO_DRAFT = 0.8
"""A fix is drafted only when the OOF predictions recall this share of each class it involves."""


def _worst_recall(predicted: np.ndarray, given: np.ndarray, classes: tuple[int, ...]) -> float:
    """The lowest per-class recall over ``classes`` present in ``given`` (1.0 when none is)."""
    recalls = [float(np.mean(predicted[given == c] == c)) for c in classes if (given == c).any()]
    return min(recalls, default=1.0)


def _suggest(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, flagged: np.ndarray,
             existing: dict[str, str]) -> list[PersonSuggestion]:
    """Per-person suggestions from the marginal mask / gender / age probabilities."""
    cube = probs.reshape(len(probs), 3, 2, 3)  # class = mask * 6 + gender * 3 + age
    mask_p, gender_p, age_p = cube.sum(axis=(2, 3)), cube.sum(axis=(1, 3)), cube.sum(axis=(1, 2))
    mask, gender, age = L.decode(labels)
    # A fix is drafted only where the model tells the classes involved apart: a model that calls
    # almost everyone female would otherwise draft "female" for every man.
    gender_recall = _worst_recall(gender_p.argmax(axis=1), gender, (0, 1))
    swap_recall = _worst_recall(mask_p.argmax(axis=1), mask, (1, 2))
    drafted, listed = [], []
    order: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(str(g), []).append(i)
    for person, rows in order.items():
        rows = np.asarray(rows)
        n_flagged = int(flagged[rows].sum())
        if not n_flagged:
            continue
        taken = False  # the format holds one fix per person

        def add(kind: str, fix: str | None, evidence: str, recall: float = 1.0) -> None:
            nonlocal taken
            if fix is not None and recall < MIN_RECALL_TO_DRAFT:
                evidence += (f"; not drafted: the model recognises only {recall:.0%} of the images of the rarest "
                             f"class involved (at least {MIN_RECALL_TO_DRAFT:.0%} needed)")
                fix = None
            if fix is not None and (taken or (person in existing and not _composes(existing[person], fix))):
                evidence += "; not drafted: the corrections format holds one fix per person"
                fix = None
            if fix is not None:
                taken = True
            (drafted if fix is not None else listed).append(PersonSuggestion(person, kind, fix, evidence, n_flagged))

        given_gender = int(np.bincount(gender[rows], minlength=2).argmax())
        seen_gender = gender_p[rows].argmax(axis=1)
        other = int((seen_gender != given_gender).sum())
        if other * 2 > len(rows):
            fix = L.GENDER_NAMES[1 - given_gender]
            add("gender", fix, f"{other} of {len(rows)} images look {fix} (given {L.GENDER_NAMES[given_gender]})",
                gender_recall)

        seen_mask = mask_p[rows].argmax(axis=1)
        incorrect = rows[mask[rows] == 1]
        normal = rows[mask[rows] == 2]
        swapped = (len(incorrect) == 1 and len(normal) == 1 and seen_mask[mask[rows] == 1][0] == 2
                   and seen_mask[mask[rows] == 2][0] == 1)
        if swapped:
            add("swap_incorrect_normal", "swap_incorrect_normal",
                "the incorrect_mask image looks like no mask and the normal image like an incorrectly worn mask",
                swap_recall)
        odd: dict[tuple[int, int], int] = {}
        for r, s in zip(rows, seen_mask):
            if s != mask[r] and flagged[r]:
                odd[(int(mask[r]), int(s))] = odd.get((int(mask[r]), int(s)), 0) + 1
        if odd and not swapped:
            add("mask", None, ", ".join(f"{n} image{'s' if n > 1 else ''} given {L.MASK_NAMES[g]} look"
                                        f"{'' if n > 1 else 's'} {L.MASK_NAMES[s]}" for (g, s), n in sorted(odd.items()))
                + "; no fix for these in the format")

        given_age = int(np.bincount(age[rows], minlength=3).argmax())
        seen_age = age_p[rows].argmax(axis=1)
        if int((seen_age != given_age).sum()) * 2 > len(rows):
            looks = int(np.bincount(seen_age, minlength=3).argmax())
            add("age", None, f"{int((seen_age != given_age).sum())} of {len(rows)} images look "
                             f"{L.AGE_NAMES[looks]} (given {L.AGE_NAMES[given_age]}); no fix for ages in the format")
    return drafted + listed


def _composes(old: str, new: str) -> bool:
    """Whether a new fix on top of an old one is again one fix (see :func:`merged_corrections`)."""
    genders = ("male", "female")
    return (old in genders and new in genders) or (old == new == "swap_incorrect_normal")


def merged_corrections(report: LabelIssueReport) -> dict[str, str]:
    """The study's corrections with the drafted fixes on top: what a draft file holds.

    A gender fix replaces an earlier one (both say what the gender is); a swap on a person
    already swapped undoes it, so the person leaves the file.
    """
    merged = dict(report.existing_corrections)
    for person, fix in report.corrections.items():
        if fix == "swap_incorrect_normal" and merged.get(person) == fix:
            del merged[person]
        else:
            merged[person] = fix
    return merged


# --- writing the draft --------------------------------------------------------------------------


def write_corrections_draft(report: LabelIssueReport, path: str | Path, *, force: bool = False) -> Path:
    """Write the draft corrections CSV (``id,fix``), for a human to review before using it.

    Holds the corrections the study was run with plus the drafted fixes
    (:func:`merged_corrections`), so it can replace ``study.corrections`` in the space.
    Written to a temporary file renamed over ``path`` (:func:`maskopt.files.write_atomically`).

    Raises:
        LabelIssuesError: The dataset is not in the competition layout, or ``path`` exists and
            ``force`` is not set (the file is left as it is), or it is not a regular file (a
            folder, a symlink, a device: left as it is), or it cannot be written.
    """
    path = Path(path)
    if report.layout != "competition":
        raise LabelIssuesError(f"label corrections apply to the competition layout only, but {report.data} is a "
                               f"{report.layout} dataset; there is no corrections file to draft")
    check_target(path, error=LabelIssuesError, option="write_corrections")
    if path.exists() and not force:
        raise LabelIssuesError(f"{path} already exists and was left as it is; pass `force` to replace it, "
                               f"or give another file")
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(("id", "fix"))
    writer.writerows(merged_corrections(report).items())
    return write_atomically(path, text.getvalue(), error=LabelIssuesError, option="write_corrections")
