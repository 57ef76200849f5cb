"""A dataset made ready for training: decoded once, checked, split into folds.

This is the one place that turns an ``ImageDataset`` into tensors. Search, retraining and export
all go through it, so they see the same images, the same exclusions and the same folds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskopt.errors import DataError
from maskopt.search.data.cache import load_images
from maskopt.search.data.dataset import (
    EXCLUDE_BROKEN_HINT,
    ImageDataset,
    format_problems,
)
from maskopt.search.data.folds import person_folds


@dataclass
class PreparedData:
    """Decoded images of a dataset, per image size, aligned with ``dataset`` order.

    Attributes:
        dataset: The dataset, without groups excluded for unreadable images.
        cache_dir: Where decoded images are cached.
        rows: For each image of ``dataset``, its row in the cache (built over ``source_paths``).
        source_paths: The file list the cache is keyed on (before exclusions).
    """

    dataset: ImageDataset
    cache_dir: Path | None
    rows: np.ndarray
    source_paths: tuple[Path, ...]
    progress: bool = False
    _tensors: dict = field(default_factory=dict, repr=False)

    def images(self, image_size: int, device=None):
        """``uint8 [N, 3, S, S]`` tensor of every image at ``image_size``, memoised.

        On CUDA the tensor lives on the GPU, so batches are gathered and augmented there: each
        worker process holds its own copy there. On the host, when no person is excluded, the
        tensor is the cache file's memory map itself, so all workers on the machine share one
        copy of the pixels (the kernel's page cache) instead of one each. The map is
        copy-on-write: nothing writes to it, and a write would stay in this process.
        """

        key = (image_size, str(device))
        if key not in self._tensors:
            cache = load_images(self.source_paths, image_size=image_size, cache_dir=self.cache_dir, progress=self.progress)
            if np.array_equal(self.rows, np.arange(len(cache.images))):
                array = np.load(cache.images.filename, mmap_mode="c")
            else:  # persons excluded: gather the rows kept, in this process's own memory
                array = np.ascontiguousarray(cache.images[self.rows])
            tensor = torch.from_numpy(array)
            if device is not None and torch.device(device).type == "cuda":
                tensor = tensor.to(device)
            self._tensors[key] = tensor
        return self._tensors[key]

    def folds(self, *, n_folds: int, seed: int):
        return person_folds(self.dataset.labels, self.dataset.groups, n_folds=n_folds, seed=seed)


def prepare_data(dataset: ImageDataset, *, image_sizes, cache_dir: str | Path | None = None,
                 exclude_broken: bool = False, progress: bool = False) -> PreparedData:
    """Decode (or find cached) images at each size and check that every image decoded.

    Args:
        dataset: The dataset.
        image_sizes: Sizes to build now; others are built when first asked for.
        cache_dir: Cache folder (default ``~/.cache/maskopt``).
        exclude_broken: Leave out the groups (persons) of unreadable images instead of failing.
        progress: Show progress bars while decoding.

    Raises:
        DataError: Some images cannot be decoded (every one is listed), unless
            ``exclude_broken``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    sizes = list(image_sizes)
    bad: dict[int, str] = {}
    for size in sizes:
        bad = load_images(dataset.paths, image_size=size, cache_dir=cache_dir, progress=progress).bad
    rows = np.arange(len(dataset))
    prepared_dataset = dataset
    if bad:
        listed = [f"{dataset.paths[i]}: {reason}" for i, reason in sorted(bad.items())]
        if not exclude_broken:
            raise DataError(format_problems(f"{len(bad)} image(s) cannot be read", listed)
                            + f"\nReplace or delete them, or {EXCLUDE_BROKEN_HINT} to leave their persons out.")
        broken_groups = {dataset.groups[i] for i in bad}
        keep = ~np.isin(dataset.groups, list(broken_groups))
        rows = rows[keep]
        prepared_dataset = dataset.without_groups(broken_groups, f"unreadable images: {', '.join(listed[:5])}")
        if len(prepared_dataset) == 0:
            raise DataError("every image was excluded as unreadable; nothing is left to train on")
    return PreparedData(prepared_dataset, cache_dir, rows, tuple(dataset.paths), progress)
