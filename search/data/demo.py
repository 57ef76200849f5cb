"""Synthetic demo data in the exact layout of the mask competition.

The real data is under a course-only licence, so maskopt makes its own: the same folders and
CSV files, the same quirks (string ids with leading zeros and ``-1`` suffixes, mixed ``.jpg``,
``.png`` and ``.jpeg`` files, macOS ``._`` files, a tiny oldest age band), and drawn portraits
whose cues are learnable but imperfect, so that a hyperparameter search has room to improve:

- mask state is easy: a patterned mask over nose and mouth, pulled down, or absent;
- gender is moderate: mostly long hair for women and short for men, with exceptions, a
  slightly wider face for men, lipstick on some women;
- age is hard: grey hair and wrinkles grow with an apparent age that is the true age plus
  several years of noise, so the cuts at 30 and 60 blur.

On request (``label_noise``), a share of the train persons get a wrong recorded label, as the
real data has: the other gender or an age in another band in the folder name and ``train.csv``,
or two photos with different mask states swapped by file name. The photos stay as the true
labels draw them, and ``label_noise.csv`` in the dataset root lists every flip, so a label-issue
finder can be scored against it. The eval set and its solution are never noisy.

Everything is drawn from seeded generators, so one seed always gives byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import math
import numbers
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from maskopt.errors import DataError
from maskopt.search.data.labels import (
    GENDERS,
    MASK_OF_STEM,
    NUM_CLASSES,
    STEMS,
    age_band,
    encode,
)

RACE = "Asian"
TRAIN_HEADER = ("id", "gender", "race", "age", "path")
EVAL_HEADER = ("ImageID", "ans")
LABEL_NOISE_FILE = "label_noise.csv"
LABEL_NOISE_HEADER = ("person", "field", "true", "given")
# make_demo_data's whole-number arguments: (least, greatest). Bounded above so that a typo cannot ask
# for terabytes of photos; seeds, like numpy's, take 32 bits.
ARGUMENT_RANGES = {"persons": (2, 100_000), "eval_persons": (1, 100_000), "size": (16, 1024), "seed": (0, 2**32 - 1)}

_FEMALE_SHARE = 0.6
_AGE_60_SHARE = 0.07
_UNDER_30_SHARE = 0.475
_SUFFIXED_ID_SHARE = 0.02
# Folder kinds by extension; the real train set has about 2.7 % .png and 1.9 % .jpeg images,
# part of the .jpeg in folders that mix them with .jpg.
_FOLDER_KINDS = ("jpg", "png", "jpeg", "mixed")
_FOLDER_KIND_SHARES = (0.955, 0.027, 0.01, 0.008)
_HIDDEN_FILES_SHARE = 0.1
_QUIRKS_GUARANTEED_FROM = 10
"""From this many persons on, every quirk (suffixed id, .png, .jpeg, age 60, ._ files) is present."""

_SUPERSAMPLE = 2
"""Pictures are drawn this many times larger, then shrunk, for smooth (anti-aliased) edges."""
_JPEG_QUALITY = 90
_TRAIN, _EVAL, _NOISE = 0, 1, 2
"""Roles that keep the random streams of train persons, eval persons and label noise apart.

Label noise draws from its own streams only, so asking for none leaves every file as it was."""
_NOISE_FIELDS = ("gender", "age", "mask")
_MASK_STATE_STEMS = (STEMS[:5], ("incorrect_mask",), ("normal",))
"""The stems of each mask state: wear, incorrect, not wear."""

_SKIN_LIGHT, _SKIN_DARK = np.array([250, 220, 190]), np.array([165, 115, 85])
_HAIR_BASES = ((22, 18, 18), (45, 32, 25), (80, 55, 35), (120, 85, 50))
_HAIR_GREY = np.array([200, 200, 205])
_MASK_PATTERNS = {"mask1": "pleated", "mask2": "plain", "mask3": "stripes", "mask4": "dots", "mask5": "checks"}
_MASK_PALETTES = {
    "pleated": ((235, 240, 245), (150, 200, 230), (240, 200, 210), (190, 225, 200)),
    "plain": ((25, 25, 30), (30, 40, 80), (110, 110, 115), (90, 30, 40)),
    "stripes": ((200, 40, 40), (40, 90, 170), (230, 190, 40), (40, 140, 90)),
    "dots": ((250, 245, 235), (60, 60, 120), (230, 130, 160), (120, 180, 220)),
    "checks": ((150, 40, 130), (40, 150, 150), (210, 110, 40), (100, 100, 40)),
}


@dataclass(frozen=True)
class DemoDataSummary:
    """What :func:`make_demo_data` wrote.

    Attributes:
        out: The dataset folder.
        persons: Train persons (folders under ``train/images``).
        eval_persons: Eval persons (seven images each under ``eval/images``).
        train_images: Train images written.
        eval_images: Eval images written.
        class_counts: Train images per class, 18 entries indexed by class, by the recorded
            (possibly noisy) labels.
        noisy_persons: Train persons with a flipped label, listed in ``label_noise.csv``.
    """

    out: Path
    persons: int
    eval_persons: int
    train_images: int
    eval_images: int
    class_counts: tuple[int, ...]
    noisy_persons: int = 0


@dataclass(frozen=True)
class _Cloth:
    """One mask's look: a pattern and its two colours."""

    pattern: str
    base: tuple[int, int, int]
    second: tuple[int, int, int]


@dataclass(frozen=True)
class _Person:
    """Who a person is and how they look: the same in all seven of their photos."""

    gender: str
    age: int
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_length: float
    fringe_depth: float
    face_width: float
    face_aspect: float
    wrinkles: float
    lipstick: tuple[int, int, int] | None
    glasses: bool
    clothes: tuple[int, int, int]
    masks: dict[str, _Cloth]
    pulled_down_mask: str
    background: Image.Image


def make_demo_data(
    out: str | Path,
    *,
    persons: int = 400,
    eval_persons: int = 60,
    size: int = 96,
    seed: int = 0,
    label_noise: float = 0.0,
    quiet: bool = False,
) -> DemoDataSummary:
    """Write a synthetic dataset in the competition's layout.

    Writes ``train/train.csv``, ``train/images/<path>/<stem>.<ext>`` (seven photos per person),
    ``eval/info.csv`` (``ans`` all 0), ``eval/images/<40 hex chars>.jpg`` and
    ``eval/solution.csv`` (the true classes, in the order of ``info.csv``). The dataset is
    written to a hidden sibling folder first and moved into place at the end, so a failure
    never leaves a half-written ``out``.

    With ``label_noise`` above 0, ``round(label_noise * persons)`` train persons, chosen by the
    seed, get one wrong label each: the other gender, an age in another band (<30, 30-59, 60),
    or two photos of different mask states swapped by file name (the file ``normal.jpg`` shows
    a worn mask, say). Folder names and ``train.csv`` show the wrong (given) labels; the photos
    show the true ones. ``label_noise.csv`` in ``out`` lists each flip as ``person,field,true,
    given``: the person's folder name as written, ``gender``, ``age`` or ``mask``, and the true
    and given gender or age; a mask swap takes two rows, one per file, with the stem the photo
    was drawn as (true) and the stem in its file name (given). A smaller ``label_noise`` with the
    same seed flips a subset of the same persons in the same way. The eval set stays clean.

    Args:
        out: Folder to create; it must not exist or be empty.
        persons: Train persons, 2 to 100,000; from 10 on, every quirk of the real data appears.
        eval_persons: Eval persons, 1 to 100,000.
        size: Width and height of the square RGB photos in pixels, 16 to 1024.
        seed: Seed, 0 to 2**32 - 1; the same seed gives byte-identical files.
        label_noise: Share of train persons with a flipped label, in [0, 1); at 0 (the
            default) the files are exactly those of a dataset made without it, and there is no
            ``label_noise.csv``.
        quiet: No progress bar.

    Returns:
        A summary of the counts written.

    Raises:
        DataError: ``out`` exists and is not an empty folder, ``label_noise`` is not a number
            in [0, 1), or another argument is not a whole number in its range.
    """
    for name, value in (("persons", persons), ("eval_persons", eval_persons), ("size", size), ("seed", seed)):
        low, high = ARGUMENT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"`{name}` must be a whole number from {low} to {high}, got {value!r}")
    if not (isinstance(label_noise, numbers.Real) and 0 <= label_noise < 1):  # NaN fails too
        raise DataError(
            f"label noise must be a share of train persons from 0 up to (not including) 1, got {label_noise!r}; "
            "0.1 flips the label of one person in ten"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out} already exists and is not an empty folder; "
            "give a new folder name, or delete this one if it holds only old demo data"
        )

    target = out.absolute()  # so that "." and "data/" name their folder too
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{seed}"
    if staging.exists():
        raise DataError(f"{staging} is left over from an interrupted run; delete it and try again")
    staging.mkdir()
    try:
        with tqdm(total=persons + eval_persons, unit="person", desc="demo data", disable=quiet) as bar:
            class_counts, noise_rows = _write_train(staging / "train", persons, size, seed, label_noise, bar)
            _write_eval(staging / "eval", eval_persons, size, seed, bar)
            if label_noise > 0:
                _write_csv(staging / LABEL_NOISE_FILE, LABEL_NOISE_HEADER, noise_rows)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DemoDataSummary(
        out=out,
        persons=persons,
        eval_persons=eval_persons,
        train_images=persons * len(STEMS),
        eval_images=eval_persons * len(STEMS),
        class_counts=tuple(int(c) for c in class_counts),
        noisy_persons=len({row[0] for row in noise_rows}),
    )


@dataclass(frozen=True)
class _Sitting:
    """One person's photo session: who sits, and where each of the seven photos goes."""

    files: dict[str, Path]
    stream: tuple[int, int, int]
    """Seed of the person's own random stream: (seed, role, index)."""
    gender: str
    age: int


@dataclass(frozen=True)
class _Flip:
    """One person's wrong label: a field and what is recorded instead of the truth."""

    field: str
    """``gender``, ``age`` or ``mask``."""
    age: int | None = None
    """The recorded age, in another band than the true one, for an ``age`` flip."""
    swap: tuple[str, str] | None = None
    """The two stems whose file names trade places, for a ``mask`` flip."""


def _draw_label_noise(seed: int, share: float, ages: list[int]) -> dict[int, _Flip]:
    """The flips by train person index; empty for a share of 0.

    The persons are the first of one seeded permutation and each flip comes from the person's
    own stream, so a smaller share flips a subset of the same persons in the same way. Nothing
    here draws from the streams of the photos, so the clean parts of the data stay as they are.
    """
    count = round(share * len(ages))
    order = np.random.default_rng([seed, _NOISE]).permutation(len(ages)) if count else []
    flips = {}
    for index in sorted(int(i) for i in order[:count]):
        rng = np.random.default_rng([seed, _NOISE, index])
        field = _NOISE_FIELDS[rng.integers(len(_NOISE_FIELDS))]
        if field == "gender":
            flips[index] = _Flip(field)
        elif field == "age":
            band = [b for b in range(3) if b != age_band(ages[index])][rng.integers(2)]
            age = _draw_young_age(rng) if band == 0 else _draw_middle_age(rng) if band == 1 else 60
            flips[index] = _Flip(field, age=age)
        else:
            first, second = rng.choice(len(_MASK_STATE_STEMS), size=2, replace=False)
            stems = (str(rng.choice(_MASK_STATE_STEMS[first])), str(rng.choice(_MASK_STATE_STEMS[second])))
            flips[index] = _Flip(field, swap=tuple(s for s in STEMS if s in stems))
    return flips


def _write_train(
    train_dir: Path, persons: int, size: int, seed: int, label_noise: float, bar: tqdm
) -> tuple[np.ndarray, list[tuple[str, str, str, str]]]:
    """Write ``train.csv``, the person folders and the ``._`` files; return images per class
    (by the recorded labels) and the rows of ``label_noise.csv``."""
    rng = np.random.default_rng([seed, _TRAIN])
    genders, ages = _draw_demographics(rng, persons)
    ids = _draw_ids(rng, persons)
    extensions = _draw_extensions(rng, persons)
    hidden = _draw_hidden_files(rng, persons)
    noise = _draw_label_noise(seed, label_noise, ages)

    images_dir = train_dir / "images"
    images_dir.mkdir(parents=True)
    _write_apple_double(train_dir / "._train.csv", rng)
    _write_apple_double(train_dir / "._images", rng)
    class_counts = np.zeros(NUM_CLASSES, dtype=int)
    rows, sittings, noise_rows = [], [], []
    for index in range(persons):
        flip = noise.get(index)
        gender, age = genders[index], ages[index]  # as recorded
        if flip is not None and flip.field == "gender":
            gender = "male" if gender == "female" else "female"
        elif flip is not None and flip.field == "age":
            age = flip.age
        folder = f"{ids[index]}_{gender}_{RACE}_{age}"
        rows.append((ids[index], gender, RACE, str(age), folder))
        person_dir = images_dir / folder
        person_dir.mkdir()
        names = {stem: person_dir / f"{stem}.{extensions[index][stem]}" for stem in STEMS}
        files = dict(names)  # where the photo drawn as each stem goes
        if flip is not None and flip.field == "mask":
            first, second = flip.swap
            files[first], files[second] = names[second], names[first]
            noise_rows += [(folder, "mask", first, second), (folder, "mask", second, first)]
        elif flip is not None:
            true, given = (genders[index], gender) if flip.field == "gender" else (ages[index], age)
            noise_rows.append((folder, flip.field, str(true), str(given)))
        sittings.append(_Sitting(files, (seed, _TRAIN, index), genders[index], ages[index]))
        for stem in STEMS:
            if stem in hidden[index]:
                _write_apple_double(person_dir / f"._{names[stem].name}", rng)
            class_counts[_label(stem, gender, age)] += 1
    _photograph(sittings, size, bar)
    _write_csv(train_dir / "train.csv", TRAIN_HEADER, rows)
    return class_counts, noise_rows


def _write_eval(eval_dir: Path, persons: int, size: int, seed: int, bar: tqdm) -> None:
    """Write the eval photos under hashed names, ``info.csv`` and ``solution.csv``."""
    rng = np.random.default_rng([seed, _EVAL])
    genders, ages = _draw_demographics(rng, persons)
    images_dir = eval_dir / "images"
    images_dir.mkdir(parents=True)
    rows, sittings = [], []
    for index in range(persons):
        # Hashed names hide person and stem, as in the real eval set.
        files = {
            stem: images_dir / (hashlib.sha1(f"{seed}/{index}/{stem}".encode()).hexdigest() + ".jpg")
            for stem in STEMS
        }
        sittings.append(_Sitting(files, (seed, _EVAL, index), genders[index], ages[index]))
        rows.extend((files[stem].name, _label(stem, genders[index], ages[index])) for stem in STEMS)
    _photograph(sittings, size, bar)
    order = rng.permutation(len(rows))
    _write_csv(eval_dir / "info.csv", EVAL_HEADER, [(rows[i][0], "0") for i in order])
    _write_csv(eval_dir / "solution.csv", EVAL_HEADER, [(rows[i][0], str(rows[i][1])) for i in order])


def _photograph(sittings: list[_Sitting], size: int, bar: tqdm) -> None:
    """Draw and save every sitting's photos on several threads.

    Threads pay off because PIL and numpy release the GIL in their heavy parts; each person
    draws from their own random stream, so the files do not depend on the scheduling.
    """

    def sit(sitting: _Sitting) -> None:
        rng = np.random.default_rng(sitting.stream)
        person = _draw_person(rng, sitting.gender, sitting.age, size)
        for stem in STEMS:
            _save(_draw_photo(person, stem, rng, size), sitting.files[stem])

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in pool.map(sit, sittings):
            bar.update()


def _label(stem: str, gender: str, age: int) -> int:
    return int(encode(MASK_OF_STEM[stem], GENDERS[gender], age_band(age)))


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_apple_double(path: Path, rng: np.random.Generator) -> None:
    """A macOS AppleDouble file: the real header, then junk; any image reader must skip it."""
    header = b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        "
    path.write_bytes(header + rng.integers(0, 256, 4096 - len(header), dtype=np.uint8).tobytes())


def _save(photo: Image.Image, path: Path) -> None:
    if path.suffix == ".png":
        photo.save(path, format="PNG")
    else:
        photo.save(path, format="JPEG", quality=_JPEG_QUALITY)


# --- who is in the data -------------------------------------------------------------------


def _draw_demographics(rng: np.random.Generator, persons: int) -> tuple[list[str], list[int]]:
    """Genders and ages 18..60 shaped like the real train set, in shuffled order.

    Shares are met as closely as the count allows, rather than drawn by chance, so even a
    small dataset has its 60 % women and its tiny band of 60-year-olds (7 %, at least one
    person from 10 persons on).
    """
    females = round(_FEMALE_SHARE * persons)
    genders = ["female"] * females + ["male"] * (persons - females)
    oldest = round(_AGE_60_SHARE * persons)
    young = round(_UNDER_30_SHARE * persons)
    ages = [60] * oldest + [_draw_young_age(rng) for _ in range(young)]
    ages += [_draw_middle_age(rng) for _ in range(persons - oldest - young)]
    return [genders[i] for i in rng.permutation(persons)], [ages[i] for i in rng.permutation(persons)]


def _draw_young_age(rng: np.random.Generator) -> int:
    """An age under 30; students dominate, as in the real data."""
    return min(29, int(rng.triangular(18, 19, 30)))


def _draw_middle_age(rng: np.random.Generator) -> int:
    """An age in 30..59; most are the students' parents, in their forties and fifties."""
    if rng.random() < 0.7:
        return min(59, int(rng.triangular(40, 54, 60)))
    return int(rng.integers(30, 60))


def _draw_ids(rng: np.random.Generator, persons: int) -> list[str]:
    """Sorted 6-digit ids with gaps; a suffixed id reuses the number before it (``000600-1``)."""
    numbers = np.sort(rng.choice(np.arange(1, 3 * persons + 10), size=persons, replace=False))
    suffixed = rng.random(persons) < _SUFFIXED_ID_SHARE
    suffixed[0] = False
    if persons >= _QUIRKS_GUARANTEED_FROM and not suffixed.any():
        suffixed[rng.integers(1, persons)] = True
    ids = []
    repeats = 0
    for index in range(persons):
        if suffixed[index]:
            numbers[index] = numbers[index - 1]
            repeats += 1
            ids.append(f"{numbers[index]:06d}-{repeats}")
        else:
            repeats = 0
            ids.append(f"{numbers[index]:06d}")
    return ids


def _draw_extensions(rng: np.random.Generator, persons: int) -> list[dict[str, str]]:
    """The file extension of every stem of every person folder."""
    kinds = list(rng.choice(_FOLDER_KINDS, size=persons, p=_FOLDER_KIND_SHARES))
    if persons >= _QUIRKS_GUARANTEED_FROM:
        for wanted in ("png", "mixed"):
            if wanted not in kinds:
                counts = Counter(kinds)
                # Take a folder whose kind stays present elsewhere, so no guarantee undoes another.
                donors = [i for i, kind in enumerate(kinds) if counts[kind] > 1]
                kinds[rng.choice(donors)] = wanted
    extensions = []
    for kind in kinds:
        if kind == "mixed":
            jpeg_stems = set(rng.choice(STEMS, size=rng.integers(1, 4), replace=False))
            extensions.append({stem: "jpeg" if stem in jpeg_stems else "jpg" for stem in STEMS})
        else:
            extensions.append(dict.fromkeys(STEMS, kind))
    return extensions


def _draw_hidden_files(rng: np.random.Generator, persons: int) -> list[set[str]]:
    """For each person folder, the stems that get a ``._`` twin."""
    has_hidden = rng.random(persons) < _HIDDEN_FILES_SHARE
    if persons >= _QUIRKS_GUARANTEED_FROM and not has_hidden.any():
        has_hidden[rng.integers(persons)] = True
    return [
        set(rng.choice(STEMS, size=rng.integers(1, len(STEMS) + 1), replace=False)) if hidden else set()
        for hidden in has_hidden
    ]


def _draw_person(rng: np.random.Generator, gender: str, age: int, size: int) -> _Person:
    """Identity features; the gender and age cues are deliberately noisy."""
    female = gender == "female"
    apparent_age = age + rng.normal(0, 5)
    greyness = float(np.clip((apparent_age - 32) / 30, 0, 1) ** 1.3)
    if rng.random() < 0.15:
        greyness *= 0.3  # dyed hair hides the age
    hair_base = np.array(_HAIR_BASES[rng.choice(len(_HAIR_BASES), p=(0.45, 0.3, 0.18, 0.07))])
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.beta(2, 3) + rng.normal(0, 6, 3)
    masks = {}
    for stem, pattern in _MASK_PATTERNS.items():
        palette = _MASK_PALETTES[pattern]
        first, second = rng.choice(len(palette), size=2, replace=False)
        masks[stem] = _Cloth(pattern, _jitter(palette[first], rng, 12), _jitter(palette[second], rng, 12))
    return _Person(
        gender=gender,
        age=age,
        skin=_colour(skin),
        hair=_colour(hair_base + (_HAIR_GREY - hair_base) * greyness),
        hair_length=float(np.clip(rng.normal(0.7, 0.25) if female else rng.normal(0.12, 0.15), 0, 1)),
        fringe_depth=float(rng.uniform(0.35, 0.75) if female else rng.uniform(0.3, 0.5)),
        face_width=float(rng.normal(0.96 if female else 1.05, 0.05)),
        face_aspect=float(rng.normal(1.3, 0.06)),
        wrinkles=float(np.clip((apparent_age - 30) / 28, 0, 1)),
        lipstick=_jitter((190, 40, 70), rng, 20) if female and rng.random() < 0.4 else None,
        glasses=bool(rng.random() < 0.2),
        clothes=_colour(rng.uniform(20, 235, 3)),
        masks=masks,
        pulled_down_mask=str(rng.choice(list(_MASK_PATTERNS))),
        background=_draw_background(rng, size),
    )


def _colour(values) -> tuple[int, int, int]:
    # Plain Python: numpy's per-call overhead dominates for three numbers, many times per photo.
    r, g, b = (min(255, max(0, round(float(v)))) for v in values)
    return r, g, b


def _jitter(colour, rng: np.random.Generator, spread: float) -> tuple[int, int, int]:
    return _colour(np.asarray(colour) + rng.normal(0, spread, 3))


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return _colour(c * factor for c in colour)


def _mix(colour, other, weight: float) -> tuple[int, int, int]:
    return _colour(c * (1 - weight) + o * weight for c, o in zip(colour, other))


def _draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    """A two-colour gradient or a blotchy wall, the same in all of a person's photos."""
    first, second = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / size
        ramp = np.clip(0.5 + (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle), 0, 1)[..., None]
        pixels = first * (1 - ramp) + second * ramp
    else:
        blotches = Image.fromarray(rng.uniform(0, 255, (5, 5, 3)).astype(np.uint8))
        noise = np.asarray(blotches.resize((size, size), Image.BICUBIC), dtype=float) / 255
        pixels = first * (1 - 0.4 * noise) + second * 0.4 * noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGBA")


# --- one photo ----------------------------------------------------------------------------


def _draw_photo(person: _Person, stem: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One ``size`` x ``size`` photo: pose, scale and lighting change from photo to photo."""
    canvas = size * _SUPERSAMPLE
    # The extra height holds the shoulders below the frame, so that turning never shows a gap.
    layer_height = size * 5 // 4
    half_width = canvas * 0.21 * rng.uniform(0.85, 1.12) * person.face_width
    half_height = half_width * person.face_aspect
    centre = (canvas * (0.5 + rng.normal(0, 0.045)), canvas * (0.46 + rng.normal(0, 0.035)))
    face = _Face(*centre, half_width, half_height)

    layer = Image.new("RGBA", (canvas, layer_height * _SUPERSAMPLE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _draw_head(draw, face, person, rng)
    if stem != "normal":
        pulled_down = stem == "incorrect_mask"
        # Worn: from the bridge of the nose down. Pulled down: below the nose, over part of the
        # mouth, or onto the chin, with the mouth in view.
        top = rng.uniform(0.0, 0.08) if not pulled_down else rng.choice((0.38, 0.7)) + rng.uniform(-0.03, 0.03)
        _draw_mask(layer, face, face.y + top * face.ry, person.masks[person.pulled_down_mask if pulled_down else stem])
    if person.glasses:
        _draw_glasses(draw, face)
    # Shrinking before turning keeps the costly rotation to a quarter of the pixels.
    layer = layer.resize((size, layer_height), Image.BOX)
    layer = layer.rotate(
        rng.normal(0, 5), resample=Image.BILINEAR, center=(centre[0] / _SUPERSAMPLE, centre[1] / _SUPERSAMPLE)
    ).crop((0, 0, size, size))
    photo = person.background.copy()
    photo.alpha_composite(layer)
    photo = photo.convert("RGB")
    blur = rng.uniform(0, 0.7) * size / 96
    if blur > 0.2:
        photo = photo.filter(ImageFilter.GaussianBlur(blur))
    return _relight(photo, rng)


@dataclass(frozen=True)
class _Face:
    """Centre and half-axes of the face ellipse; features sit at fixed fractions of them."""

    x: float
    y: float
    rx: float
    ry: float

    def at(self, dx: float, dy: float) -> tuple[float, float]:
        """The point ``dx`` half-widths right and ``dy`` half-heights below the centre."""
        return self.x + dx * self.rx, self.y + dy * self.ry

    def box(self, dx0: float, dy0: float, dx1: float, dy1: float) -> tuple[float, float, float, float]:
        return (*self.at(dx0, dy0), *self.at(dx1, dy1))


def _draw_head(draw: ImageDraw.ImageDraw, face: _Face, person: _Person, rng: np.random.Generator) -> None:
    """Shoulders, hair, face and features, back to front."""
    skin, hair = person.skin, person.hair
    width = max(1, round(face.rx * 0.06))
    draw.ellipse(face.box(-2.4, 1.35, 2.4, 3.6), fill=person.clothes)
    draw.ellipse(face.box(-1.12, -1.25, 1.12, 0.1), fill=hair)
    if person.hair_length > 0.25:
        spread = 1.12 + 0.3 * person.hair_length
        draw.rounded_rectangle(
            face.box(-spread, -0.9, spread, -0.2 + 2.0 * person.hair_length), radius=face.rx * 0.6, fill=hair
        )
    draw.rectangle(face.box(-0.38, 0.5, 0.38, 1.5), fill=_shade(skin, 0.9))
    for side in (-1, 1):
        draw.ellipse(face.box(side * 1.08 - 0.12, -0.2, side * 1.08 + 0.12, 0.15), fill=_shade(skin, 0.95))
    draw.ellipse(face.box(-1, -1, 1, 1), fill=skin)
    draw.chord(face.box(-1.03, -1.1, 1.03, -1.1 + 2 * person.fringe_depth), 180, 360, fill=hair)

    wrinkle = _mix(skin, (70, 40, 30), 0.6 * person.wrinkles)
    if person.wrinkles > 0.1:
        for dy in (-0.42, -0.5)[: 1 + (person.wrinkles > 0.5)]:
            if dy > -1.1 + person.fringe_depth:
                draw.arc(face.box(-0.45, dy, 0.45, dy + 0.2), 200, 340, fill=wrinkle, width=width)
        for side in (-1, 1):
            draw.line([face.at(side * 0.2, 0.2), face.at(side * 0.36, 0.5)], fill=wrinkle, width=width)
    for side in (-1, 1):
        draw.ellipse(face.box(side * 0.4 - 0.17, -0.2, side * 0.4 + 0.17, -0.04), fill=(245, 245, 240))
        draw.ellipse(face.box(side * 0.4 - 0.07, -0.17, side * 0.4 + 0.07, -0.07), fill=(45, 30, 25))
        brow = 2 * width if person.gender == "male" else width
        draw.line([face.at(side * 0.2, -0.28), face.at(side * 0.62, -0.3)], fill=_shade(hair, 0.9), width=brow)
    draw.polygon([face.at(0, -0.05), face.at(-0.13, 0.24), face.at(0.13, 0.24)], fill=_shade(skin, 0.86))
    lips = person.lipstick or _mix(skin, (150, 60, 60), 0.45)
    expression = rng.integers(3)
    if expression == 0:  # neutral
        draw.ellipse(face.box(-0.28, 0.46, 0.28, 0.56), fill=lips)
    elif expression == 1:  # smile
        draw.chord(face.box(-0.3, 0.3, 0.3, 0.6), 10, 170, fill=lips)
    else:  # open
        draw.ellipse(face.box(-0.22, 0.42, 0.22, 0.62), fill=lips)
        draw.ellipse(face.box(-0.14, 0.47, 0.14, 0.57), fill=(70, 20, 25))


def _draw_mask(layer: Image.Image, face: _Face, top: float, cloth: _Cloth) -> None:
    """A mask made of ``cloth`` whose upper edge runs at height ``top``, with ear loops."""
    dy = (top - face.y) / face.ry
    outline = [
        face.at(-1.0, dy + 0.15), face.at(-0.45, dy + 0.02), face.at(0, dy - 0.04), face.at(0.45, dy + 0.02),
        face.at(1.0, dy + 0.15), face.at(0.92, dy + 0.6), face.at(0.55, dy + 0.87), face.at(0, dy + 0.95),
        face.at(-0.55, dy + 0.87), face.at(-0.92, dy + 0.6),
    ]
    fabric = Image.new("RGBA", layer.size, cloth.base)
    _draw_pattern(ImageDraw.Draw(fabric), face, dy, cloth)
    shape = Image.new("L", layer.size, 0)
    ImageDraw.Draw(shape).polygon(outline, fill=255)
    layer.paste(fabric, (0, 0), shape)
    draw = ImageDraw.Draw(layer)
    loop = _shade(cloth.base, 0.8)
    for side in (-1, 1):
        draw.line([face.at(side, dy + 0.2), face.at(side * 1.08, -0.1)], fill=loop, width=max(1, round(face.rx * 0.05)))


def _draw_pattern(draw: ImageDraw.ImageDraw, face: _Face, dy: float, cloth: _Cloth) -> None:
    """Pleats, a seam, stripes, dots or checks in the mask's frame, so they move with the mask."""
    base, second = cloth.base, cloth.second
    x0, y0 = face.at(-1.1, dy - 0.1)
    x1, y1 = face.at(1.1, dy + 1.0)
    step = face.rx * 0.28
    if cloth.pattern == "pleated":
        for fraction in (0.3, 0.5, 0.7):
            draw.line([face.at(-1, dy + fraction), face.at(1, dy + fraction)], fill=_shade(base, 0.8),
                      width=max(1, round(face.rx * 0.04)))
    elif cloth.pattern == "plain":
        draw.line([face.at(0, dy - 0.04), face.at(0, dy + 0.95)], fill=_shade(base, 0.75), width=1)
    elif cloth.pattern == "stripes":
        for offset in np.arange(x0 - (y1 - y0), x1, step):
            draw.line([(offset, y1), (offset + (y1 - y0), y0)], fill=second, width=max(1, round(step * 0.45)))
    elif cloth.pattern == "dots":
        radius = step * 0.16
        for row, y in enumerate(np.arange(y0, y1, step * 0.7)):
            for x in np.arange(x0 + (row % 2) * step / 2, x1, step):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=second)
    else:  # checks
        for row, y in enumerate(np.arange(y0, y1, step)):
            for column, x in enumerate(np.arange(x0, x1, step)):
                if (row + column) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=second)


def _draw_glasses(draw: ImageDraw.ImageDraw, face: _Face) -> None:
    frame, width = (35, 30, 30), max(1, round(face.rx * 0.05))
    for side in (-1, 1):
        draw.ellipse(face.box(side * 0.4 - 0.25, -0.3, side * 0.4 + 0.25, 0.06), outline=frame, width=width)
    draw.line([face.at(-0.15, -0.14), face.at(0.15, -0.14)], fill=frame, width=width)


def _relight(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, a colour cast, light from one side, and sensor noise."""
    pixels = np.asarray(photo, dtype=np.float32)
    size = pixels.shape[0]
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.75, 1.2) + mean * rng.uniform(0.75, 1.2)
    pixels *= rng.normal(1, 0.04, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    side_light = 1 + rng.uniform(0, 0.15) * (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle))
    pixels *= side_light[..., None]
    # Uniform noise looks the same as Gaussian here and is several times cheaper to draw.
    pixels += rng.uniform(0, 10) * (rng.random(pixels.shape, dtype=np.float32) - 0.5)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
