"""``maskopt eda``: what a person reads about a dataset before tuning on it."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import ExifTags, Image, ImageDraw, ImageOps

from maskopt.errors import shorten
from maskopt.files import printable
from maskopt.search.data import labels as L
from maskopt.search.data.cache import upright_rgb
from maskopt.search.data.dataset import ImageDataset, load_dataset
from maskopt.search.data.regular import open_regular

AGE_BINS = (18, 20, 25, 30, 35, 40, 45, 50, 55, 58, 60, 61)
SIDEWAYS_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees


@dataclass(frozen=True)
class DatasetSummary:
    root: str
    layout: str
    groups: int
    images: int
    class_names: list[str]
    class_counts: list[int]
    task_counts: dict[str, dict[str, int]]  # competition: mask / gender / age counts
    imbalance_ratio: float  # largest class / smallest non-empty class
    age_histogram: dict[str, int]  # persons per age bin (competition)
    image_sizes: dict[str, int]  # "WxH" -> images
    extensions: dict[str, int]
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EdaResult:
    """What ``eda`` found, and the files it wrote."""

    summary: DatasetSummary
    files: tuple[Path, ...] = ()


def eda(data: str | Path, *, layout: str = "auto", corrections: str | Path | None = None,
        out: str | Path | None = None) -> EdaResult:
    """Summarise the dataset ``data`` before tuning on it; with ``out``, also write ``summary.json``
    and PNG plots (class counts, ages, sample images) there.

    Persons with problems are left out and listed in the summary's notes, not fatal, so one run
    shows every problem.
    """
    dataset = load_dataset(data, layout=layout, corrections=corrections, exclude_broken=True)
    summary = summarise_dataset(dataset)
    files = write_eda_files(summary, dataset, out) if out is not None else []
    return EdaResult(summary, tuple(files))


def summarise_dataset(dataset: ImageDataset) -> DatasetSummary:
    """Counts, imbalance, ages, image sizes and extensions of a dataset, with its reading notes.

    Load it with ``exclude_broken=True`` so that problems show up in the notes instead of failing.
    Names and paths are made printable (a class folder's name may hold terminal escape sequences).
    """
    counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
    nonzero = counts[counts > 0]
    sizes: Counter = Counter()
    unreadable = []  # "path: reason", so the user learns which files to fix
    for path in dataset.paths:
        size, reason = _probe(path)
        if reason is None:
            sizes[f"{size[0]}x{size[1]}"] += 1
        else:
            sizes["unreadable"] += 1
            unreadable.append(f"unreadable image {path}: {reason}")
    return DatasetSummary(
        root=printable(dataset.root),
        layout=dataset.layout,
        groups=len(set(dataset.groups)),
        images=len(dataset),
        class_names=[printable(name) for name in dataset.class_names],
        class_counts=counts.tolist(),
        task_counts=_task_counts(dataset),
        imbalance_ratio=round(float(nonzero.max() / nonzero.min()), 2) if len(nonzero) else 0.0,
        age_histogram=_age_histogram(dataset),
        image_sizes=dict(sizes.most_common()),
        extensions=dict(Counter(printable(p.suffix.lower()) for p in dataset.paths).most_common()),
        notes=[printable(note) for note in dataset.notes]
        + ([(f"{sizes['unreadable']} image(s) cannot be opened as images; a search fails on them unless "
             "study.exclude_broken leaves their groups out")] if sizes["unreadable"] else [])
        + [printable(line) for line in unreadable],
    )


def _too_many_pixels(width: int, height: int) -> bool:

    return Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS


def _probe(path) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` of an image as shown upright, from its header, or
    ``(None, why it is unreadable)``.

    Pillow raises DecompressionBombError (not an OSError) above twice its pixel limit and only
    warns between one and two times it; both count as unreadable here, since decoding such a
    file (a tiny PNG can claim 20000x20000 pixels) would take gigabytes.
    """

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # reported below instead
            with open_regular(path) as f, Image.open(f) as img:  # reads the header only
                width, height = img.size
                if _too_many_pixels(width, height):
                    return None, (f"{width}x{height} is more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
                                  "(a decompression bomb?)")
                # After the pixel check: a PNG's EXIF may follow its pixels, so reading it decodes them.
                if img.getexif().get(ExifTags.Base.Orientation) in SIDEWAYS_ORIENTATIONS:
                    width, height = height, width
    except Image.DecompressionBombError:
        return None, f"more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS} (a decompression bomb?)"
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's plugins raise all three on bad headers
        return None, f"not an image Pillow can open ({shorten(str(e) or type(e).__name__)})"
    return (width, height), None



def _task_counts(dataset: ImageDataset) -> dict[str, dict[str, int]]:
    if not dataset.is_competition:
        return {}
    parts = L.decode(dataset.labels)
    return {task: {name: int(np.sum(part == i)) for i, name in enumerate(names)}
            for task, part, names in zip(("mask", "gender", "age"), parts, (L.MASK_NAMES, L.GENDER_NAMES, L.AGE_NAMES))}


def _person_ages(dataset: ImageDataset) -> np.ndarray:
    _, first = np.unique(dataset.groups, return_index=True)
    return dataset.ages[first]


def _age_histogram(dataset: ImageDataset) -> dict[str, int]:
    if not dataset.is_competition:
        return {}
    ages = _person_ages(dataset)
    counts, _ = np.histogram(ages, bins=AGE_BINS)
    histogram = {f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo): int(c)
                 for lo, hi, c in zip(AGE_BINS[:-1], AGE_BINS[1:], counts)}
    # np.histogram drops values outside the bins; a user's own data may hold such ages.
    below, above = int(np.sum(ages < AGE_BINS[0])), int(np.sum(ages >= AGE_BINS[-1]))
    if below:
        histogram = {f"<{AGE_BINS[0]}": below, **histogram}
    if above:
        histogram[f">={AGE_BINS[-1]}"] = above
    return histogram


def write_eda_files(summary: DatasetSummary, dataset: ImageDataset, out: str | Path, *, samples_per_class: int = 4,
                    seed: int = 0) -> list[Path]:
    """Write ``summary.json`` and PNG plots (class counts, age histogram, sample grid) to ``out``."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json"]
    written[0].write_text(json.dumps(summary.to_dict(), indent=2) + "\n")

    fig = Figure(figsize=(10, 4))  # a bare Figure: no global backend or figure registry touched
    ax = fig.subplots()
    ax.bar(range(len(summary.class_counts)), summary.class_counts, color="#4C72B0")
    ax.set_xticks(range(len(summary.class_names)), summary.class_names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("images")
    ax.set_title(f"images per class (imbalance ratio {summary.imbalance_ratio})")
    fig.tight_layout()
    written.append(out / "class_counts.png")
    fig.savefig(written[-1], dpi=100)

    if summary.age_histogram:
        fig = Figure(figsize=(7, 3.5))
        ax = fig.subplots()
        ax.bar(list(summary.age_histogram), list(summary.age_histogram.values()), color="#55A868")
        ax.set_ylabel("persons")
        ax.set_title("persons by age")
        fig.tight_layout()
        written.append(out / "age_histogram.png")
        fig.savefig(written[-1], dpi=100)

    written.append(out / "samples.png")
    _sample_grid(dataset, samples_per_class, np.random.default_rng(seed)).save(written[-1])
    return written


def _sample_grid(dataset: ImageDataset, samples_per_class: int, rng: np.random.Generator, thumb: int = 64):
    """One row per class: its name, then up to ``samples_per_class`` random images of it.

    Drawn with Pillow: matplotlib takes seconds to lay out the 72 small axes of 18 classes.
    """

    cell = thumb + 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [printable(name) for name in dataset.class_names]
    label_width = 8 + int(max(measure.textlength(name) for name in names))
    grid = Image.new("RGB", (label_width + samples_per_class * cell, dataset.num_classes * cell), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(names):
        top = c * cell + 2
        draw.text((4, top + thumb // 2 - 6), name, fill="black")
        members = np.flatnonzero(dataset.labels == c)
        picks = rng.choice(members, size=min(len(members), samples_per_class), replace=False) if len(members) else []
        for j, i in enumerate(picks):
            left = label_width + j * cell + 2
            try:
                # _probe first: decoding a decompression bomb here would take gigabytes.
                if _probe(dataset.paths[i])[1] is not None:
                    raise OSError("unreadable")
                with open_regular(dataset.paths[i]) as f, Image.open(f) as img:
                    picture = ImageOps.contain(upright_rgb(img), (thumb, thumb))  # whole photo, aspect kept
                grid.paste(picture, (left + (thumb - picture.width) // 2, top + (thumb - picture.height) // 2))
            except (OSError, ValueError, SyntaxError):  # eda describes broken data too; the summary lists it
                draw.text((left + 2, top + thumb // 2 - 6), "unreadable", fill="red")
    return grid
