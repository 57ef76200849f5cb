"""Decode-once image cache: every image decoded and resized once, then read from a uint8 array.

A search trains hundreds of models on the same pictures; decoding JPEGs every epoch would cost
more than the training on small images. The cache is one ``.npy`` array of shape
``[N, 3, size, size]`` per (file list, image size), memory-mapped by every fold, trial and worker
process on the machine.

The key hashes each file's path, byte size and modification time with the image size, so a
changed dataset gets a new cache and a stale one is never reused. Builders take an exclusive file
lock and publish with an atomic rename, so two processes building the same cache at once neither
corrupt it nor build it twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

CACHE_FORMAT = 1  # bump when the stored pixels change meaning
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "maskopt"


@dataclass(frozen=True)
class ImageCache:
    """Decoded images, aligned with the path list they were built from.

    Attributes:
        images: ``uint8`` array ``[N, 3, size, size]`` (a read-only memory map).
        bad: Index -> reason, for files that could not be decoded (their rows are zero).
        key: The cache key (also the file name).
        built: True when this call decoded the images, False on a cache hit.
    """

    images: np.ndarray
    bad: dict[int, str]
    key: str
    built: bool


def cache_key(paths, image_size: int) -> str:
    """Hash of the files' paths, sizes and modification times and the image size."""
    h = hashlib.sha256(f"maskopt-cache-v{CACHE_FORMAT}:{image_size}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\n{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def load_images(paths, *, image_size: int, cache_dir: str | Path | None = None, progress: bool = False,
                threads: int | None = None) -> ImageCache:
    """The decoded images of ``paths``, from the cache or decoded now and cached.

    Images are resized so the shorter side is ``image_size``, then centre-cropped to a square
    (competition photos are 384x512 portraits with the face centred).

    Args:
        paths: Image files, in the order of the rows wanted.
        image_size: Side of the square stored images.
        cache_dir: Folder of cache files (default ``~/.cache/maskopt``).
        progress: Show a progress bar while decoding.
        threads: Decoding threads (Pillow releases the GIL while decoding); default: CPU count.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, image_size)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"

    with open(cache_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the cache
        built = not array_path.exists()
        if built:
            _build(paths, image_size, array_path, meta_path, progress=progress, threads=threads)
    meta = json.loads(meta_path.read_text())
    images = np.load(array_path, mmap_mode="r")
    return ImageCache(images=images, bad={int(k): v for k, v in meta["bad"].items()}, key=key, built=built)


def _build(paths, image_size, array_path: Path, meta_path: Path, *, progress: bool, threads) -> None:

    tmp_array = array_path.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=(len(paths), 3, image_size, image_size))
    bad: dict[int, str] = {}

    def decode_into(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], image_size)
        except Exception as e:  # any decoder failure means a broken file, reported with the others
            bad[i] = f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        results = pool.map(decode_into, range(len(paths)))
        for _ in tqdm(results, total=len(paths), desc=f"caching images at {image_size}px", unit="img",
                      disable=not progress, leave=False):
            pass
    out.flush()
    del out
    meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps({"image_size": image_size, "count": len(paths), "bad": bad}))
    os.replace(meta_tmp, meta_path)
    os.replace(tmp_array, array_path)  # the array's appearance publishes the cache


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """One image as ``uint8 [3, size, size]``: shorter side resized to ``size``, centre crop."""
    with Image.open(path) as img:
        img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale, much faster
        img = ImageOps.fit(img.convert("RGB"), (image_size, image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
