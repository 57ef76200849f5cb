"""The decode-once image cache: hits, misses, staleness, concurrent builders, the centre crop."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskopt.search.data.cache import cache_key, decode_image, load_images


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_first_call_builds_second_call_hits(tmp_path, images):
    cache_dir = tmp_path / "cache"
    first = load_images(images, image_size=12, cache_dir=cache_dir, threads=1)
    second = load_images(images, image_size=12, cache_dir=cache_dir, threads=1)
    assert first.built and not second.built
    assert first.key == second.key and first.bad == second.bad == {}
    assert first.images.dtype == np.uint8 and first.images.shape == (6, 3, 12, 12)
    np.testing.assert_array_equal(first.images, second.images)
    for i, path in enumerate(images):
        np.testing.assert_array_equal(first.images[i], decode_image(path, 12))
    assert sorted(p.name for p in cache_dir.glob("*.npy")) == [f"{first.key}.npy"]
    assert not list(cache_dir.glob("*.tmp*")), "no temporary files left behind"


def test_rewritten_image_makes_the_cache_stale(tmp_path, images):
    cache_dir = tmp_path / "cache"
    old = load_images(images, image_size=8, cache_dir=cache_dir, threads=1)
    old_pixels = np.array(old.images)

    Image.new("RGB", (20, 16), (255, 0, 0)).save(images[2])  # new content (and size on disk)
    new = load_images(images, image_size=8, cache_dir=cache_dir, threads=1)
    assert new.built and new.key != old.key
    assert (new.images[2] == np.array([255, 0, 0], dtype=np.uint8)[:, None, None]).all()
    np.testing.assert_array_equal(new.images[:2], old_pixels[:2])
    assert not (new.images[2] == old_pixels[2]).all()


def test_touched_image_gets_a_new_key_and_a_rebuild(tmp_path, images):
    before = load_images(images, image_size=8, cache_dir=tmp_path / "cache", threads=1)
    stat = os.stat(images[0])
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same bytes, newer
    assert cache_key(images, 8) != before.key
    after = load_images(images, image_size=8, cache_dir=tmp_path / "cache", threads=1)
    assert after.built and after.key != before.key
    np.testing.assert_array_equal(after.images, before.images)


def test_key_depends_on_size_and_file_list(images):
    assert cache_key(images, 8) == cache_key([str(p) for p in images], 8)
    assert cache_key(images, 8) != cache_key(images, 16)
    assert cache_key(images, 8) != cache_key(images[:-1], 8)
    assert cache_key(images, 8) != cache_key(images[::-1], 8)


def test_sizes_are_cached_side_by_side(tmp_path, images):
    cache_dir = tmp_path / "cache"
    small = load_images(images, image_size=8, cache_dir=cache_dir, threads=1)
    large = load_images(images, image_size=16, cache_dir=cache_dir, threads=1)
    assert large.built and small.key != large.key
    assert large.images.shape == (6, 3, 16, 16)
    assert not load_images(images, image_size=8, cache_dir=cache_dir, threads=1).built
    assert len(list(cache_dir.glob("*.npy"))) == 2


def test_unreadable_files_are_reported_not_raised(tmp_path, images):
    (tmp_path / "img" / "bad.jpg").write_bytes(b"not a picture")
    cache = load_images([*images, tmp_path / "img" / "bad.jpg"], image_size=8, cache_dir=tmp_path / "c", threads=1)
    assert list(cache.bad) == [6] and "UnidentifiedImageError" in cache.bad[6]
    assert not cache.images[6].any(), "a broken file's row is zero"
    # The report survives a cache hit.
    assert load_images([*images, tmp_path / "img" / "bad.jpg"], image_size=8, cache_dir=tmp_path / "c").bad == cache.bad


def test_portrait_is_centre_cropped_to_a_square(tmp_path):
    # 384 wide x 512 high, like the competition's photos: 64 rows at the top and bottom are cut.
    pixels = np.zeros((512, 384, 3), dtype=np.uint8)
    pixels[:64] = (255, 0, 0)
    pixels[64:448] = (0, 255, 0)
    pixels[448:] = (0, 0, 255)
    path = tmp_path / "portrait.png"
    Image.fromarray(pixels).save(path)
    out = decode_image(path, 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 1:-1], np.broadcast_to(np.array([0, 255, 0])[:, None, None], (3, 30, 32)))
    # The same through a JPEG (decoded at reduced scale) and the cache.
    Image.fromarray(pixels).save(tmp_path / "portrait.jpg", quality=95)
    cached = load_images([tmp_path / "portrait.jpg"], image_size=32, cache_dir=tmp_path / "c", threads=1).images[0]
    assert np.abs(cached[:, 2:-2].astype(int) - np.array([0, 255, 0])[:, None, None]).max() < 20


def test_grey_and_transparent_images_become_rgb(tmp_path):
    Image.new("L", (10, 10), 200).save(tmp_path / "grey.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert decode_image(tmp_path / "grey.png", 4).shape == (3, 4, 4)
    assert (decode_image(tmp_path / "grey.png", 4) == 200).all()
    assert (decode_image(tmp_path / "rgba.png", 4)[:, 0, 0] == (10, 20, 30)).all()


def test_two_processes_building_at_once_build_once(tmp_path, images):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = cache_key(images, 10)
    kwargs = dict(image_size=10, cache_dir=str(cache_dir), threads=1)
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(2) as pool:
        # Hold the builders' lock while both workers start, so that both wait on it at once.
        with open(cache_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pending = [pool.apply_async(load_images, ([str(p) for p in images],), kwargs) for _ in range(2)]
            waiters = _wait_for_lock_waiters(cache_dir / f"{key}.lock", 2)
            fcntl.flock(lock, fcntl.LOCK_UN)
        results = [p.get(timeout=120) for p in pending]

    if Path("/proc/locks").exists():
        assert waiters == 2, "both processes waited on the lock at the same time"
    assert sorted(r.built for r in results) == [False, True], "exactly one process decoded the images"
    assert results[0].key == results[1].key == key
    np.testing.assert_array_equal(np.asarray(results[0].images), np.asarray(results[1].images))
    assert [p.name for p in cache_dir.glob("*.npy")] == [f"{key}.npy"]
    assert not list(cache_dir.glob("*.tmp*"))
    np.testing.assert_array_equal(np.load(cache_dir / f"{key}.npy"), np.asarray(results[0].images))


def _wait_for_lock_waiters(lock_path: Path, count: int, timeout: float = 20.0) -> int:
    """Blocked flock waiters on ``lock_path`` (from Linux's /proc/locks), once ``count`` wait or on timeout."""
    inode = os.stat(lock_path).st_ino
    deadline = time.monotonic() + timeout
    waiting = 0
    while time.monotonic() < deadline:
        try:
            lines = Path("/proc/locks").read_text().splitlines()
        except OSError:
            time.sleep(1.0)  # not Linux: give the workers time to start instead
            return 0
        waiting = sum(1 for line in lines if "->" in line and line.split()[-3].endswith(f":{inode}"))
        if waiting >= count:
            break
        time.sleep(0.05)
    return waiting
