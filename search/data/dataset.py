"""Reading datasets: the competition layout, a class-folder tree, or a CSV file.

Every layout becomes one ``ImageDataset``: image paths, official labels, groups (the unit that
never straddles a fold: a person in the competition) and class names. Problems are collected over
the whole dataset and reported together, so a user fixes them in one pass.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskopt.errors import DataError, shorten
from maskopt.search.data import labels as L
from maskopt.search.data.regular import MISSING, open_regular, path_problem

LAYOUTS = ("auto", "competition", "csv", "folders")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
COMPETITION_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
CSV_COLUMNS = ("path", "label", "group")
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
            # surrogateescape: a file name may hold bytes that are not UTF-8 (they are hashed as they are).
            h.update(f"\n{path}\t{label}\t{group}".encode(errors="surrogateescape"))
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
    (or a folder holding exactly one), otherwise ``folders``.

    Raises:
        DataError: ``root`` is neither a folder nor a regular file (missing, a FIFO, a device).
    """
    root = Path(root)
    _check_root(root)
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
    _check_root(root)
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


def _check_root(root: Path) -> None:
    problem = path_problem(root, "a dataset folder or CSV file",
                           is_wanted=lambda mode: stat.S_ISDIR(mode) or stat.S_ISREG(mode))
    if problem is not None:
        raise DataError(("dataset not found: " if problem == MISSING else "")
                        + f"{root} {problem}; give the dataset folder or CSV file")


# --- the competition layout --------------------------------------------------------------------


def _load_competition(root: Path, *, corrections, exclude_broken: bool) -> ImageDataset:
    train_csv = root / "train" / "train.csv"
    images_dir = root / "train" / "images"
    rows = _read_csv(train_csv, required=TRAIN_COLUMNS)
    fixes = _read_corrections(Path(corrections)) if corrections is not None else {}

    paths, labels, groups, ages = [], [], [], []
    problems: dict[str, list[str]] = {}  # person id -> problems
    first_row_of: dict[object, tuple[int, str, tuple[str, ...]]] = {}  # person folder -> (line, person, values)
    repeated: list[str] = []  # "line 9 repeats line 2"
    for line, row in rows:
        where = f"{train_csv}, line {line}"
        person = row["id"].strip()
        folder = images_dir / row["path"].strip()
        # Two rows naming one folder would count its photos twice; with other values, also under
        # two labels or two persons, so one photo could sit in training and validation of a fold.
        values = tuple(row[column].strip() for column in TRAIN_COLUMNS)
        first = first_row_of.setdefault(_identity(folder), (line, person, values))
        if first[0] != line:
            if first[2] == values:
                repeated.append(f"line {line} repeats line {first[0]}")
            else:
                clash = (f"{train_csv}, lines {first[0]} and {line}: both name the folder {shorten(str(folder), 200)} "
                         "with different values; keep one of the two rows")
                for who in dict.fromkeys((first[1], person)):  # once when both rows name one person
                    problems.setdefault(who, []).append(clash)
            continue
        found = []
        gender = row["gender"].strip()
        if gender not in L.GENDERS:
            found.append(f"{where}: unknown gender {shorten(gender)!r} (allowed: {', '.join(L.GENDERS)})")
        age_text = row["age"].strip()
        # Without leading zeros, and at most 4 digits: int() refuses more than 4300 digits with a traceback.
        age_digits = age_text.lstrip("0")[:4] or "0"
        # isascii: str.isdigit also accepts characters such as '²' that int() rejects.
        if not (age_text.isascii() and age_text.isdigit()):
            found.append(f"{where}: age {shorten(age_text)!r} is not a whole number of years")
        elif int(age_digits) > L.MAX_AGE:
            found.append(f"{where}: age {shorten(age_text)} is outside 0..{L.MAX_AGE} years; correct it")
        stems = _person_images(folder, where, found)
        if found:
            problems.setdefault(person, []).extend(found)
            continue
        age = int(age_digits)
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
    if repeated:
        notes.append(f"{train_csv} lists {len(repeated)} person row(s) twice ({', '.join(repeated[:5])}"
                     + (", ..." if len(repeated) > 5 else "") + "): each person folder is counted once")
    notes.extend(_unread_columns(train_csv, rows, TRAIN_COLUMNS))
    if fixes:
        notes.extend(_describe_corrections(fixes, set(groups)))
    if problems:
        # dict.fromkeys: a clash of two persons' rows is one problem, listed under both.
        flat = list(dict.fromkeys(p for person_problems in problems.values() for p in person_problems))
        # A person id may name several folders (the real data's 003397 does): one broken folder
        # excludes the person whole, so no image of it trains under a person the notes call excluded.
        keep = [i for i, person in enumerate(groups) if person not in problems]
        if not exclude_broken or not keep:
            # Excluding every person would leave only "holds no images"; the problems say why.
            raise DataError(
                format_problems(f"{len(flat)} problem(s) in {train_csv} and its image folders", flat)
                + (f"\nFix them, or {EXCLUDE_BROKEN_HINT} to leave those persons out." if not exclude_broken
                   else "\nEvery person has a problem, so excluding them would leave nothing; fix them.")
            )
        paths, labels, groups, ages = ([values[i] for i in keep] for values in (paths, labels, groups, ages))
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
    problem = path_problem(folder, "a folder", is_wanted=stat.S_ISDIR)
    if problem is not None:
        problems.append(f"{where}: image folder {shorten(str(folder), 200)} {problem} (the path column names a "
                        "folder under train/images)")
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
        elif (problem := path_problem(files[0])) is not None:
            problems.append(f"{files[0]} {problem}; replace it with the photo")
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
        problem = path_problem(path)
        if problem is not None:
            missing.append(f"{info_csv}, line {line}: {shorten(str(path), 200)} "
                           + ("is missing" if problem == MISSING else problem))
        ids.append(image_id)
        paths.append(path)
    if missing:
        raise DataError(format_problems(f"{len(missing)} eval image(s) named in {info_csv} are missing or not "
                                        "image files", missing))
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
    first_row_of: dict[object, tuple[int, str, str]] = {}  # image file -> (line, label, group)
    repeated: list[str] = []  # "line 9 repeats line 2"
    for line, row in rows:
        where = f"{csv_path}, line {line}"
        path = csv_path.parent / row["path"].strip()
        label, group = row["label"].strip(), row.get("group", "").strip()
        problem = path_problem(path)
        if problem is not None:
            problems.append(f"{where}: image {shorten(str(path), 200)} {problem}")
            continue
        if not label:
            problems.append(f"{where}: the label is empty")
            continue
        # One photo under two labels or groups would sit in training and validation of a fold.
        first = first_row_of.setdefault(_identity(path), (line, label, group))
        if first[0] != line:
            if first[1:] == (label, group):
                repeated.append(f"line {line} repeats line {first[0]}")
            else:
                problems.append(f"{csv_path}, lines {first[0]} and {line}: image {shorten(str(path), 200)} twice, "
                                f"with label/group {shorten(first[1])!r}/{shorten(first[2])!r} and "
                                f"{shorten(label)!r}/{shorten(group)!r}; keep one of the two rows")
            continue
        paths.append(path)
        names.append(label)
        # Without a group column every image is its own group.
        groups.append(group or str(path))
    if problems:
        raise DataError(format_problems(f"{len(problems)} problem(s) in {csv_path}", problems)
                        + "\nPaths are relative to the CSV file's folder; fix or remove those rows.")
    notes = _unread_columns(csv_path, rows, CSV_COLUMNS)
    if repeated:
        notes.append(f"{csv_path} lists {len(repeated)} image(s) twice with the same label and group "
                     f"({', '.join(repeated[:5])}" + (", ..." if len(repeated) > 5 else "") + "): each is used once")
    return _from_names(csv_path, "csv", paths, names, groups, notes)


def _load_folders(root: Path) -> ImageDataset:
    """Images under ``root/<class>/`` (subfolders included); a class folder without images is no class.

    A class nothing trains on would still be one output of the model and one term of macro F1,
    scored zero whatever the model does; so an empty class folder is left out, with a note.
    """
    paths, names, problems, notes = [], [], [], []
    first_class_of: dict[object, tuple[Path, str]] = {}  # image file -> (path, class)
    repeated: list[str] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        name = class_dir.name
        try:
            name.encode()
        except UnicodeEncodeError:  # exports and predictions write class names as UTF-8 text
            problems.append(f"class folder {class_dir}: its name is not valid UTF-8; rename it")
            continue
        found = 0
        for p in sorted(class_dir.rglob("*")):
            if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or p.is_dir():
                continue
            problem = path_problem(p)
            if problem is not None:
                problems.append(f"{p} {problem}")
                continue
            found += 1
            first = first_class_of.setdefault(_identity(p), (p, name))
            if first[0] != p:  # one file under two names: a link, or a folder linked into another
                if first[1] == name:
                    repeated.append(f"{p} is {first[0]}")
                else:
                    problems.append(f"{p} is the same file as {first[0]}, in class "
                                    f"{name!r} and {first[1]!r}; keep it in one class")
                continue
            paths.append(p)
            names.append(name)
        if not found:
            notes.append(f"class folder {shorten(name)!r} holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                         "it is left out, as no class")
    if problems:
        raise DataError(format_problems(f"{len(problems)} problem(s) in the class folders of {root}", problems)
                        + "\nReplace those entries with image files, or remove them.")
    if repeated:
        notes.append(f"{len(repeated)} image(s) appear twice in one class under another name "
                     f"({'; '.join(repeated[:3])}" + ("; ..." if len(repeated) > 3 else "") + "): each is used once")
    return _from_names(root, "folders", paths, names, [str(p) for p in paths], notes)


def _from_names(root: Path, layout: str, paths, names, groups, notes: list[str]) -> ImageDataset:
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
        notes=tuple(notes),
    )


# --- helpers -----------------------------------------------------------------------------------


def _read_csv(path: Path, *, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with their line numbers; every value stays a string (ids keep zeros)."""
    problem = path_problem(path, "a CSV file")
    if problem is not None:
        raise DataError(f"{path} " + ("is missing; check the path, it must be" if problem == MISSING
                                      else f"{problem}; give") + f" a CSV file with columns {','.join(required)}")
    try:
        with io.TextIOWrapper(open_regular(path), newline="", encoding="utf-8-sig") as f:
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
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check its permissions") from None
    # DictReader fills the fields a short row lacks with None and keeps a long row's extra fields
    # under the key None: either would go wrong far from here (a path holding an unquoted comma).
    # Empty extra fields (trailing commas) hold nothing to lose.
    mismatched = [f"{path}, line {line}: {_field_count(row)} field(s), expected {len(header)}" for line, row in rows
                  if any(v is None for v in row.values()) or any(v.strip() for v in row.get(None, ()))]
    if mismatched:
        raise DataError(format_problems(f"{len(mismatched)} row(s) of {path} do not match its header", mismatched)
                        + "\nEvery row needs one value (possibly empty) for each column of the header; quote a "
                        "value that holds a comma.")
    return rows


def _field_count(row: dict) -> int:
    return sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, ()))


def _unread_columns(path: Path, rows, read: tuple[str, ...]) -> list[str]:
    """A note naming the columns of a CSV file that maskopt does not read, if any."""
    extra = [c for c in (rows[0][1] if rows else {}) if c is not None and c not in read]
    if not extra:
        return []
    return [(f"{path.name} has column(s) {shorten(', '.join(extra), 200)} that maskopt does not read "
             f"(it reads {', '.join(read)})")]


def _identity(path: Path) -> object:
    """What makes two paths the same file (a link, ``./a.png`` and ``a.png``): its device and inode."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # not there: its problem is reported elsewhere; the name is what it has
        return str(path)
    return st.st_dev, st.st_ino


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
