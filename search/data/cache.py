"""Decode-once image cache: every image decoded and resized once, then read from a uint8 array.

A search trains hundreds of models on the same pictures; decoding JPEGs every epoch would cost
more than the training on small images. The cache is one ``.npy`` array of shape
``[N, 3, size, size]`` per (file list, image size), memory-mapped by every fold, trial and worker
process on the machine.

The key hashes each file's path, byte size and modification time with the image size, so a
changed dataset gets a new cache and a stale one is never reused. Builders take an exclusive file
lock and publish with an atomic rename, so two processes building the same cache at once neither
corrupt it nor build it twice. A published cache is read without the lock, so a read-only cache
folder serves the caches it holds; one that cannot be written, or a full disk, is a ``DataError``
naming the folder, with the temporary files removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from maskopt.errors import DataError
from maskopt.files import printable, write_failed
from maskopt.search.data.regular import open_regular

CACHE_FORMAT = 2  # bump when the stored pixels change meaning (2: EXIF orientation applied, 16-bit grey scaled)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "maskopt"
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # Pillow's modes of 16-bit grey PNGs


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
    """Hash of the files' paths, sizes and modification times and the image size.

    Raises:
        DataError: A file cannot be found (it went away after the dataset was read).
    """
    h = hashlib.sha256(f"maskopt-cache-v{CACHE_FORMAT}:{image_size}".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise DataError(f"{printable(p)} cannot be read ({e.strerror}); was it moved or deleted "
                            "while maskopt ran?") from None
        # fsencode: a file name may hold bytes that are not UTF-8, which str.encode() refuses.
        h.update(b"\n" + os.fsencode(os.path.abspath(p)) + f"\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def load_images(paths, *, image_size: int, cache_dir: str | Path | None = None, progress: bool = False,
                threads: int | None = None) -> ImageCache:
    """The decoded images of ``paths``, from the cache or decoded now and cached.

    Images are turned upright as their EXIF orientation says, resized so the shorter side is
    ``image_size``, then centre-cropped to a square (competition photos are 384x512 portraits
    with the face centred).

    Args:
        paths: Image files, in the order of the rows wanted.
        image_size: Side of the square stored images.
        cache_dir: Folder of cache files (default ``~/.cache/maskopt``).
        progress: Show a progress bar while decoding.
        threads: Decoding threads (Pillow releases the GIL while decoding); default: CPU count.

    Raises:
        DataError: The cache cannot be written (a full disk, a read-only folder): the message
            names the folder and what to do; no temporary file is left behind.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    key = cache_key(paths, image_size)
    array_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"

    built = False
    if not array_path.exists():  # a published cache needs no lock, so a read-only cache folder serves too
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            with open(cache_dir / f"{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the cache
                built = not array_path.exists()
                if built:
                    _build(paths, image_size, array_path, meta_path, progress=progress, threads=threads)
        except OSError as e:
            needed = len(paths) * 3 * image_size ** 2 / 2 ** 20
            raise DataError(f"{write_failed(array_path, e, option='cache_dir')} (this cache of {len(paths)} images "
                            f"at {image_size}px needs {needed:.1f} MiB)") from None
    meta = json.loads(meta_path.read_text())
    images = np.load(array_path, mmap_mode="r")
    return ImageCache(images=images, bad={int(k): v for k, v in meta["bad"].items()}, key=key, built=built)


def _build(paths, image_size, array_path: Path, meta_path: Path, *, progress: bool, threads) -> None:
    """Decode every image into a temporary ``.npy`` file, then publish it with a rename.

    Rows are written with ``pwrite``, not through a memory map: a write to a memory map on a full
    disk kills the process with SIGBUS, a ``pwrite`` raises ENOSPC. Any failure removes the
    temporary files.
    """
    shape = (len(paths), 3, image_size, image_size)
    row_bytes = 3 * image_size * image_size
    fd, tmp_array = _create_temporary(array_path)
    tmp_meta = None
    try:
        with os.fdopen(fd, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            f.flush()
            offset = f.tell()
            if hasattr(os, "posix_fallocate"):  # Linux: a disk too full fails now, not after the decoding
                os.posix_fallocate(f.fileno(), 0, offset + len(paths) * row_bytes)
            bad = _decode_into(f.fileno(), offset, paths, image_size, progress=progress, threads=threads)
        fd_meta, tmp_meta = _create_temporary(meta_path)
        with os.fdopen(fd_meta, "w") as f:
            json.dump({"image_size": image_size, "count": len(paths), "bad": bad}, f)
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_array, array_path)  # the array's appearance publishes the cache
    except BaseException:
        for tmp in (tmp_array, tmp_meta):
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new file beside ``target``, to be renamed over it: its descriptor and path.

    Like ``tempfile.mkstemp``, its name cannot be guessed and ``O_EXCL`` refuses a file or link
    planted there; unlike it, its permissions follow the umask (mkstemp's are 0600), so other
    users of a shared cache folder can read the cache as before.
    """
    path = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), path


def _decode_into(fd: int, offset: int, paths, image_size: int, *, progress: bool, threads) -> dict[int, str]:
    """Decode ``paths`` on threads, writing row ``i`` at ``offset + i * row size`` of ``fd``.

    Returns:
        Index -> reason, for the files that could not be decoded (their rows stay zero).
    """
    row_bytes = 3 * image_size * image_size
    bad: dict[int, str] = {}

    def decode_into(i: int) -> None:
        try:
            pixels = decode_image(paths[i], image_size)
        except Exception as e:  # noqa: BLE001 -- any decoder failure means a broken file, reported with the others
            bad[i] = f"{type(e).__name__}: {e}"
            return
        _write_at(fd, pixels.tobytes(), offset + i * row_bytes)  # a write failure (disk full) ends the build

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        try:
            for _ in tqdm(pool.map(decode_into, range(len(paths))), total=len(paths),
                          desc=f"caching images at {image_size}px", unit="img", disable=not progress, leave=False):
                pass
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed write or Ctrl-C: decode no more
            raise
    return bad


def _write_at(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:  # pwrite may write less than asked (a disk filling up); the next call raises ENOSPC
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """One image as ``uint8 [3, size, size]``: upright, shorter side resized to ``size``, centre crop."""
    with open_regular(path) as f, Image.open(f) as img:
        img.draft("RGB", (image_size, image_size))  # JPEG: decode at reduced scale, much faster
        img = ImageOps.fit(upright_rgb(img), (image_size, image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, turned as its EXIF orientation says.

    Phones store photos sideways with an orientation tag; without it a model trains on faces
    lying on their side. 16-bit grey is scaled to 8 bits: ``convert("RGB")`` would clip every
    value above 255 to white.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(img.convert("I"), dtype=np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) / 257).round().astype(np.uint8))
    return img.convert("RGB")
