"""Real photographs offline: Fashion-MNIST written as a class-folder dataset maskopt reads.

Debian's ``dataset-fashion-mnist`` package (``scripts/install-test-data`` installs it) ships the
original IDX files (Xiao, Rasul and Vollgraf 2017: 70,000 28x28 grayscale product photos of
Zalando articles, 10 classes, MIT licence) in :data:`FASHION_DIR`. :func:`write_fashion` picks
``per_class`` images of each class from the train split, and a separate held-out set from the
t10k split, and writes each as ``ROOT/<class>/<image>.png``.

The PNGs are the original 28x28 grayscale (mode ``L``) pixels, not upscaled: maskopt's loader
converts to RGB and resizes to the trial's ``image_size`` itself (``search/cache.py``), so
upscaling here would only store the same information in bigger files, and the raw-pixel
baselines then read exactly the pixels the networks start from.

Class folders are named ``<label>-<name>`` (``0-tshirt-top`` ... ``9-ankle-boot``), so the
natural sort maskopt orders classes by gives class index == Fashion-MNIST label. A class-folder
dataset makes each image its own group, which is right here: every Fashion-MNIST image is a
different article, so any split of images is a valid fold.

Plain Python (numpy, Pillow, gzip) so that tests and benchmarks can both use it::

    >>> from benchmarks.fashion import available, write_fashion
    >>> if available():
    ...     data = write_fashion(tmp / "fashion", per_class=10, holdout_per_class=20)
    ...     data.train, data.holdout   # two class-folder trees
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLITS = ("train", "t10k")
CLASS_NAMES = ("tshirt-top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FOLDERS = tuple(f"{i}-{name}" for i, name in enumerate(CLASS_NAMES))

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _files(split: str, directory: Path) -> tuple[Path, Path]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return (directory / f"{split}-images-idx3-ubyte.gz", directory / f"{split}-labels-idx1-ubyte.gz")


def available(directory: Path = FASHION_DIR) -> bool:
    """Whether all four Fashion-MNIST files are there."""
    return all(p.is_file() for split in SPLITS for p in _files(split, Path(directory)))


def load_split(split: str, directory: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a split: uint8 ``(n, 28, 28)`` and uint8 ``(n,)``.

    Raises:
        FileNotFoundError: The files are missing (see :func:`available`).
        ValueError: A file is not an IDX file of the expected kind, or the counts differ.
    """
    images_path, labels_path = _files(split, Path(directory))
    with gzip.open(images_path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != _IMAGES_MAGIC or len(raw) != 16 + n * rows * cols:
        raise ValueError(f"{images_path} is not an IDX image file (magic {magic}, {len(raw)} bytes)")
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)
    with gzip.open(labels_path, "rb") as f:
        raw = f.read()
    magic, m = struct.unpack(">II", raw[:8])
    if magic != _LABELS_MAGIC or len(raw) != 8 + m:
        raise ValueError(f"{labels_path} is not an IDX label file (magic {magic}, {len(raw)} bytes)")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if m != n:
        raise ValueError(f"{images_path} holds {n} images but {labels_path} {m} labels")
    return images, labels


def pick(labels: np.ndarray, per_class: int, *, seed: int = 0, classes=None) -> np.ndarray:
    """Indices of ``per_class`` images of each class (all ten unless ``classes``), drawn at random."""
    rng = np.random.default_rng(seed)
    classes = range(len(CLASS_NAMES)) if classes is None else classes
    chosen = []
    for c in classes:
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise ValueError(f"class {c} has {len(where)} images, fewer than {per_class}")
        chosen.append(np.sort(rng.choice(where, per_class, replace=False)))
    return np.concatenate(chosen)


@dataclass(frozen=True)
class Split:
    """One written class-folder tree and the arrays it was written from (same order)."""

    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray  # Fashion-MNIST label == maskopt's class index
    pixels: np.ndarray  # uint8 (n, 28, 28)
    source_indices: np.ndarray  # indices into the split's files


@dataclass(frozen=True)
class FashionData:
    train: Split  # from the train split
    holdout: Split  # from the t10k split: never seen by a search

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(FOLDERS[c] for c in sorted(set(self.train.labels.tolist())))


def write_split(root: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, *, prefix: str) -> Split:
    """Write ``images[indices]`` as ``root/<label>-<name>/<prefix>-<index>.png`` (28x28, mode L)."""
    root = Path(root)
    paths = []
    for i in indices:
        folder = root / FOLDERS[int(labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{prefix}-{int(i):05d}.png"
        if not path.exists():
            Image.fromarray(images[i]).save(path)
        paths.append(path)
    return Split(root, tuple(paths), labels[indices].astype(np.int64), images[indices].copy(), np.asarray(indices))


def write_fashion(out: str | Path, *, per_class: int, holdout_per_class: int = 0, seed: int = 0, classes=None,
                  directory: Path = FASHION_DIR) -> FashionData:
    """Write ``out/train`` (``per_class`` train-split images per class) and ``out/holdout`` (t10k).

    Both are class-folder datasets (``maskopt search --data out/train``). The same arguments
    always write the same images; a folder already written is reused (files are not rewritten).

    Args:
        out: The folder to write into (created).
        per_class: Training images per class.
        holdout_per_class: Held-out images per class, from the t10k split (0: an empty holdout).
        seed: Seeds which images are drawn.
        classes: Labels to include (default all ten), e.g. ``range(5)``.
        directory: Where the IDX files are.
    """
    out = Path(out)
    images, labels = load_split("train", directory)
    train = write_split(out / "train", images, labels, pick(labels, per_class, seed=seed, classes=classes),
                        prefix="train")
    images, labels = load_split("t10k", directory)
    indices = (pick(labels, holdout_per_class, seed=seed + 1, classes=classes) if holdout_per_class
               else np.zeros(0, dtype=np.int64))
    holdout = write_split(out / "holdout", images, labels, indices, prefix="t10k")
    return FashionData(train, holdout)
