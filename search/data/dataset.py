"""Reading datasets: the competition layout, a class-folder tree, or a CSV file.

Every layout becomes one ``ImageDataset``: image paths, official labels, groups (the unit that
never straddles a fold: a person in the competition) and class names. Problems are collected over
the whole dataset and reported together, so a user fixes them in one pass.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskopt.errors import DataError, shorten
from maskopt.search.data import labels as L

LAYOUTS = ("auto", "competition", "csv", "folders")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
COMPETITION_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
CORRECTION_FIXES = ("male", "female", "swap_incorrect_normal")
MAX_LISTED_PROBLEMS = 20

# How to go on when some persons are broken: said by every error that lists them.
EXCLUDE_BROKEN_HINT = "pass `exclude_broken` (or set exclude_broken: true under study: in the space)"


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset, whatever its layout on disk.

    Attributes:
        root: The folder (or CSV file) it was read from.
        layout: ``competition``, ``csv`` or ``folders``.
        paths: One path per image.
        labels: Official class index per image (the competition's age cut of 60).
        groups: Group per image (person id); folds never split a group.
        class_names: Name of each class index.
        ages: Age per image (competition only), so training labels can use another age cut.
        notes: What was skipped, corrected or excluded while reading, for the user to see.
    """

    root: Path
    layout: str
    paths: tuple[Path, ...]
    labels: np.ndarray
    groups: np.ndarray
    class_names: tuple[str, ...]
    ages: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_competition(self) -> bool:
        return self.layout == "competition"

    def training_labels(self, age_old: int = L.OFFICIAL_AGE_OLD) -> np.ndarray:
        """Labels with the age band recomputed at ``age_old`` (competition only; others unchanged)."""
        if not self.is_competition or age_old == L.OFFICIAL_AGE_OLD:
            return self.labels
        mask, gender, _ = L.decode(self.labels)
        return L.encode(mask, gender, L.age_band(self.ages, age_old)).astype(np.int64)

    def relative_paths(self) -> list[str]:
        """Each image's path relative to the dataset's folder (a CSV's own folder), with ``/``.

        relpath, not relative_to: a CSV may name images outside its own folder, or absolute paths.
        """
        base = self.root if self.root.is_dir() else self.root.parent
        return [Path(os.path.relpath(path, base)).as_posix() for path in self.paths]

    def fingerprint(self) -> str:
        """Hash of the relative image paths, labels and groups: which data a model was trained on."""
        h = hashlib.sha256(self.layout.encode())
        for path, label, group in zip(self.relative_paths(), self.labels, self.groups):
            h.update(f"\n{path}\t{label}\t{group}".encode())
        return h.hexdigest()[:16]

    def without_groups(self, groups, reason: str) -> ImageDataset:
        """A copy without the images of ``groups``, with a note saying why."""
        drop = np.isin(self.groups, list(groups))
        keep = np.flatnonzero(~drop)
        note = f"excluded {len(set(groups))} group(s), {int(drop.sum())} image(s): {reason}"
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in keep),
            labels=self.labels[keep],
            groups=self.groups[keep],
            ages=None if self.ages is None else self.ages[keep],
            notes=self.notes + (note,),
        )


@dataclass(frozen=True)
class EvalSet:
    """The competition's unlabelled evaluation images, in ``info.csv`` order."""

    image_ids: tuple[str, ...]
    paths: tuple[Path, ...]
    info_csv: Path


def detect_layout(root: Path) -> str:
    """``competition`` if ``train/train.csv`` or ``train/images/`` exists, ``csv`` for a CSV file
    (or a folder holding exactly one), otherwise ``folders``."""
    root = Path(root)
    if root.is_file():
        return "csv"
    # train/images alone counts too: a competition tree that lost its train.csv must fail with
    # "train.csv is missing", not load as two classes named "train" and "eval".
    if (root / "train" / "train.csv").is_file() or (root / "train" / "images").is_dir():
        return "competition"
    if len(_visible_csvs(root)) == 1:
        return "csv"
    return "folders"


def load_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    corrections: str | Path | None = None,
    exclude_broken: bool = False,
) -> ImageDataset:
    """Read a dataset in any supported layout.

    Args:
        root: The data folder (competition: the folder holding ``train/`` and ``eval/``;
            class folders: the folder holding one folder per class) or a CSV file.
        layout: ``auto`` (recognise it), ``competition``, ``csv`` or ``folders``.
        corrections: A label-corrections CSV (``id,fix``; competition only).
        exclude_broken: Leave out persons whose folders have problems, with a note, instead
            of failing.

    Raises:
        DataError: The folder is missing, malformed, or empty; every problem is listed.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset not found: {root} does not exist; give the dataset folder or CSV file")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if corrections is not None and layout != "competition":
        raise DataError(f"label corrections apply to the competition layout only, but {root} is a {layout} dataset")
    if layout == "competition":
        dataset = _load_competition(root, corrections=corrections, exclude_broken=exclude_broken)
    elif layout == "csv":
        dataset = _load_csv(root)
    else:
        dataset = _load_folders(root)
    if len(dataset) == 0:
        expected = {
            "competition": f"{root / 'train' / 'train.csv'} lists no persons; add one row per person folder",
            "csv": "its CSV file lists no images; add one row per image (path,label)",
            "folders": "expected ROOT/<class>/<image> with image files ("
                       + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")",
        }[layout]
        raise DataError(f"the dataset at {root} holds no images: {expected}")
    return dataset


# --- the competition layout --------------------------------------------------------------------


def _load_competition(root: Path, *, corrections, exclude_broken: bool) -> ImageDataset:
    train_csv = root / "train" / "train.csv"
    images_dir = root / "train" / "images"
    rows = _read_csv(train_csv, required=TRAIN_COLUMNS)
    fixes = _read_corrections(Path(corrections)) if corrections is not None else {}

    paths, labels, groups, ages = [], [], [], []
    problems: dict[str, list[str]] = {}  # person id -> problems
    for line, row in rows:
        where = f"{train_csv}, line {line}"
        person = row["id"].strip()
        found = []
        gender = row["gender"].strip()
        if gender not in L.GENDERS:
            found.append(f"{where}: unknown gender {gender!r} (allowed: {', '.join(L.GENDERS)})")
        age_text = row["age"].strip()
        # isascii: str.isdigit also accepts characters such as '²' that int() rejects.
        if not (age_text.isascii() and age_text.isdigit()):
            found.append(f"{where}: age {age_text!r} is not a whole number of years")
        folder = images_dir / row["path"].strip()
        stems = _person_images(folder, where, found)
        if found:
            problems.setdefault(person, []).extend(found)
            continue
        age = int(age_text)
        fix = fixes.get(person)
        if fix in ("male", "female"):
            gender = fix
        for stem in L.STEMS:
            mask = L.MASK_OF_STEM[stem]
            if fix == "swap_incorrect_normal" and mask != 0:
                mask = 3 - mask  # incorrect (1) <-> not wear (2)
            paths.append(stems[stem])
            labels.append(L.encode(mask, L.GENDERS[gender], L.age_band(age)))
            groups.append(person)
            ages.append(age)

    notes = []
    hidden = _count_hidden(root / "train") + sum(_count_hidden(p) for p in images_dir.iterdir() if p.is_dir()) \
        if images_dir.is_dir() else 0
    if hidden:
        notes.append(f"skipped {hidden} hidden file(s) (names starting with '.', such as macOS '._' files)")
    if fixes:
        notes.extend(_describe_corrections(fixes, set(groups)))
    if problems:
        flat = [p for person_problems in problems.values() for p in person_problems]
        if not exclude_broken or not paths:
            # Excluding every person would leave only "holds no images"; the problems say why.
            raise DataError(
                format_problems(f"{len(flat)} problem(s) in {train_csv} and its image folders", flat)
                + (f"\nFix them, or {EXCLUDE_BROKEN_HINT} to leave those persons out." if not exclude_broken
                   else "\nEvery person has a problem, so excluding them would leave nothing; fix them.")
            )
        notes.append(f"excluded {len(problems)} person(s) with problems: " + "; ".join(flat[:5])
                     + (" ..." if len(flat) > 5 else ""))
    return ImageDataset(
        root=root,
        layout="competition",
        paths=tuple(paths),
        labels=np.asarray(labels, dtype=np.int64),
        groups=np.asarray(groups, dtype=object),
        class_names=L.class_names(),
        ages=np.asarray(ages, dtype=np.int64),
        notes=tuple(notes),
    )


def _person_images(folder: Path, where: str, problems: list[str]) -> dict[str, Path]:
    """The seven images of a person folder by stem, matched by stem whatever the extension."""
    if not folder.is_dir():
        problems.append(f"{where}: image folder {folder} does not exist (the path column names a folder "
                        "under train/images)")
        return {}
    by_stem: dict[str, list[Path]] = {}
    for p in folder.iterdir():
        if p.name.startswith(".") or p.suffix.lower() not in COMPETITION_IMAGE_EXTENSIONS:
            continue
        by_stem.setdefault(p.stem, []).append(p)
    for stem in L.STEMS:
        files = by_stem.get(stem, [])
        if not files:
            problems.append(f"{folder}: no image for {stem!r} (expected {stem}.jpg, .jpeg or .png)")
        elif len(files) > 1:
            names = ", ".join(sorted(f.name for f in files))
            problems.append(f"{folder}: {len(files)} files for {stem!r} ({names}); keep one")
    return {stem: files[0] for stem, files in by_stem.items() if len(files) == 1}


def _read_corrections(path: Path) -> dict[str, str]:
    """``id -> fix`` from a corrections CSV with columns ``id,fix``."""
    fixes = {}
    problems = []
    for line, row in _read_csv(path, required=("id", "fix")):
        fix = row["fix"].strip()
        if fix not in CORRECTION_FIXES:
            problems.append(f"{path}, line {line}: unknown fix {fix!r} (allowed: {', '.join(CORRECTION_FIXES)})")
        fixes[row["id"].strip()] = fix
    if problems:
        raise DataError(format_problems(f"{len(problems)} problem(s) in corrections file", problems))
    return fixes


def _describe_corrections(fixes: dict[str, str], present: set[str]) -> list[str]:
    notes = []
    for fix in CORRECTION_FIXES:
        ids = sorted(i for i, f in fixes.items() if f == fix and i in present)
        if ids:
            what = "incorrect_mask/normal swapped" if fix == "swap_incorrect_normal" else f"gender set to {fix}"
            notes.append(f"corrections: {what} for {len(ids)} person(s): {', '.join(ids)}")
    missing = sorted(set(fixes) - present)
    if missing:
        notes.append(f"corrections: {len(missing)} id(s) not in this dataset, ignored: {', '.join(missing[:10])}")
    return notes


def load_eval(root: str | Path) -> EvalSet:
    """The competition's ``eval/info.csv`` and its images, in file order.

    Raises:
        DataError: ``info.csv`` is missing or malformed, or images it names are missing
            (all of them are listed).
    """
    root = Path(root)
    info_csv = root / "eval" / "info.csv"
    images_dir = root / "eval" / "images"
    rows = _read_csv(info_csv, required=("ImageID",))
    ids, paths, missing = [], [], []
    for line, row in rows:
        image_id = row["ImageID"].strip()
        path = images_dir / image_id
        if not path.is_file():
            missing.append(f"{info_csv}, line {line}: {path} is missing")
        ids.append(image_id)
        paths.append(path)
    if missing:
        raise DataError(format_problems(f"{len(missing)} eval image(s) named in {info_csv} are missing", missing))
    if not ids:
        raise DataError(f"{info_csv} lists no images")
    return EvalSet(image_ids=tuple(ids), paths=tuple(paths), info_csv=info_csv)


# --- a CSV file --------------------------------------------------------------------------------


def _load_csv(root: Path) -> ImageDataset:
    if root.is_file():
        csv_path = root
    else:
        csvs = _visible_csvs(root)
        if len(csvs) != 1:
            raise DataError(f"expected exactly one CSV file in {root}, found {len(csvs)}; pass the CSV file itself")
        csv_path = csvs[0]
    rows = _read_csv(csv_path, required=("path", "label"))
    paths, names, groups, problems = [], [], [], []
    for line, row in rows:
        path = csv_path.parent / row["path"].strip()
        if not path.is_file():
            problems.append(f"{csv_path}, line {line}: image {path} does not exist")
            continue
        if not row["label"].strip():
            problems.append(f"{csv_path}, line {line}: the label is empty")
            continue
        paths.append(path)
        names.append(row["label"].strip())
        # Without a group column every image is its own group.
        groups.append(row.get("group", "").strip() or str(path))
    if problems:
        raise DataError(format_problems(f"{len(problems)} problem(s) in {csv_path}", problems)
                        + "\nPaths are relative to the CSV file's folder; fix or remove those rows.")
    return _from_names(csv_path, "csv", paths, names, groups)


def _load_folders(root: Path) -> ImageDataset:
    paths, names = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for p in sorted(class_dir.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                names.append(class_dir.name)
    return _from_names(root, "folders", paths, names, [str(p) for p in paths])


def _from_names(root: Path, layout: str, paths, names, groups) -> ImageDataset:
    class_names = tuple(sorted(set(names), key=_natural_key))
    if len(paths) and len(class_names) < 2:
        raise DataError(
            f"{root} holds a single class ({class_names[0]!r}); a classifier needs at least two. "
            + ("Put each class in its own folder: ROOT/<class>/<image>." if layout == "folders"
               else "Give the images of at least two labels in the label column.")
        )
    index = {name: i for i, name in enumerate(class_names)}
    return ImageDataset(
        root=root,
        layout=layout,
        paths=tuple(paths),
        labels=np.asarray([index[n] for n in names], dtype=np.int64),
        groups=np.asarray(groups, dtype=object),
        class_names=class_names,
    )


# --- helpers -----------------------------------------------------------------------------------


def _read_csv(path: Path, *, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with their line numbers; every value stays a string (ids keep zeros)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; check the path, it must be a CSV file with columns {','.join(required)}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            # DictReader keeps only the last of two same-named columns, silently dropping the other.
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if duplicated:
                raise DataError(
                    f"{path}: its header names column(s) {', '.join(shorten(repr(c)) for c in duplicated)} more than "
                    "once, so it is unclear which one to read; rename or remove the extra column(s)"
                )
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{path} lacks column(s) {', '.join(missing)}; its header is "
                    f"{shorten(','.join(header), 200) or '(empty)'}, expected {','.join(required)}"
                )
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} cannot be read as a UTF-8 CSV file ({e}); save it as UTF-8 CSV") from e
    # DictReader fills the fields a short row lacks with None, which would crash far from here.
    short = [f"{path}, line {line}: {sum(v is not None for k, v in row.items() if k is not None)} field(s), "
             f"expected {len(header)}" for line, row in rows if any(v is None for v in row.values())]
    if short:
        raise DataError(format_problems(f"{len(short)} row(s) of {path} are too short", short)
                        + "\nEvery row needs a value (possibly empty) for each column of the header.")
    return rows


def _visible_csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))


def _count_hidden(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.startswith("."))



def format_problems(title: str, problems: list[str]) -> str:
    shown = problems[:MAX_LISTED_PROBLEMS]
    more = len(problems) - len(shown)
    return title + ":\n  " + "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")


def _natural_key(name: str):
    # "class2" before "class10"; re.split puts text at even and numbers at odd positions, so
    # keys of any two names compare part by part without mixing str and int.
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]
