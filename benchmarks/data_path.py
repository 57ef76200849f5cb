"""2. Data path: maskopt's decode-once cache versus PIL decoding in a DataLoader every epoch.

The inputs are real 384x512 JPEG portraits (the competition's size), made from demo pictures
scaled up with a little sensor noise so that they compress like photographs (about 30 KB each,
not the 5 KB of a flat drawing), and every epoch delivers the same thing on both sides: shuffled
batches of 64 normalised float tensors ``[64, 3, 128, 128]``.

- maskopt: epoch 1 builds the cache (``load_images``: Pillow with ``draft``, shorter side resized
  to 128, centre crop, written to a ``.npy`` file), loads it as a tensor like ``PreparedData``
  does, then every epoch gathers batches with ``prepare_batch`` into reused ``BatchBuffers``, as
  the training loop does.
- baseline: how the competition baseline reads data: a ``Dataset`` whose ``__getitem__`` opens
  the JPEG with PIL, converts to RGB and applies torchvision ``Resize(128)``, ``CenterCrop(128)``,
  ``ToTensor()`` and ``Normalize``, in a ``DataLoader`` that does it again every epoch.

Both sides get the same CPU: ``--threads`` decode threads for the cache build, and as many
DataLoader workers (0, the main process, for one thread). Every repetition builds the cache
anew in a fresh folder. Targets: at least 10 times faster over the 3 epochs including the cache
build, and the epochs after the first at least 50 times cheaper. Times are medians; the two
targeted ratios are medians of the repetitions' ratios.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np

import benchmarks as B

NAME = "data"
TITLE = "data path: decode-once cache vs PIL DataLoader every epoch (384x512 JPEG -> 128 px)"
EPOCHS = 3
IMAGE_SIZE = 128
BATCH = 64
MEAN, STD = (0.548, 0.504, 0.479), (0.237, 0.247, 0.246)  # the competition baseline's normalisation


def make_photos(cfg: B.Config, count: int) -> list:
    """``count`` 384x512 JPEGs (quality 90) from demo pictures, upscaled, with mild noise."""
    from PIL import Image

    out = cfg.workdir / f"photos-{count}"
    paths = [out / f"{i:05d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    root = B.demo_data(cfg, persons=count // 7 + 1, size=96)
    sources = sorted(p for p in (root / "train" / "images").rglob("*") if p.is_file() and not p.name.startswith("._"))
    rng = np.random.default_rng(cfg.seed)
    for i, path in enumerate(paths):
        with Image.open(sources[i % len(sources)]) as img:
            big = img.convert("RGB").resize((384, 512), Image.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.normal(0, 4, (512, 384, 3)).astype(np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return paths


def cache_side(paths, *, threads: int, seed: int, workdir) -> dict:
    """Seconds of each epoch through maskopt's cache; the first includes building it.

    Batches are gathered as ``train_fold`` gathers them: ``prepare_batch`` into ``BatchBuffers``
    reused by every batch. After the timed epochs come rounds that show what the buffers are
    worth: in each, one replay epoch with fresh memory per batch and one with the buffers, in
    alternating order, so the two are compared like for like.
    """
    import time

    import torch

    from maskopt.search.data.cache import load_images
    from maskopt.search.train.loop import BatchBuffers, prepare_batch

    cache_dir = tempfile.mkdtemp(dir=workdir, prefix="cache-")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    buffers = BatchBuffers()
    times = []
    try:
        images = None
        for _ in range(EPOCHS):
            started = time.perf_counter()
            if images is None:
                cache = load_images(paths, image_size=IMAGE_SIZE, cache_dir=cache_dir, threads=threads)
                # As PreparedData.images: the rows of the dataset, copied into one tensor.
                images = torch.from_numpy(np.ascontiguousarray(cache.images[np.arange(len(paths))]))
            order = torch.randperm(len(paths), generator=generator)
            for start in range(0, len(order), BATCH):
                prepare_batch(images, order[start:start + BATCH], cpu, mean, std, buffers=buffers)
            times.append(time.perf_counter() - started)
        variants = {"fresh": None, "buffers": buffers}
        later = {name: [] for name in variants}
        for round_ in range(4):
            for name in list(variants) if round_ % 2 == 0 else list(variants)[::-1]:
                started = time.perf_counter()
                order = torch.randperm(len(paths), generator=generator)
                for start in range(0, len(order), BATCH):
                    prepare_batch(images, order[start:start + BATCH], cpu, mean, std, buffers=variants[name])
                later[name].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"epochs": times, **{f"{name}_later": t for name, t in later.items()}}


class PhotoDataset:
    """The baseline's way: open, decode, resize and convert one image per ``__getitem__``."""

    def __init__(self, paths):
        import torchvision.transforms as T

        self.paths = list(paths)
        self.transform = T.Compose([T.Resize(IMAGE_SIZE), T.CenterCrop(IMAGE_SIZE), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), 0


def pil_side(paths, *, threads: int, seed: int) -> list[float]:
    """Seconds of each epoch through a PIL DataLoader."""
    import time

    import torch
    from torch.utils.data import DataLoader

    workers = 0 if threads == 1 else threads
    loader = DataLoader(PhotoDataset(paths), batch_size=BATCH, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    times = []
    for _ in range(EPOCHS):
        started = time.perf_counter()
        for _batch in loader:
            pass
        times.append(time.perf_counter() - started)
    return times


def run(cfg: B.Config) -> B.Report:
    count = 420 if cfg.quick else 1050
    reps = 3 if cfg.quick else 5
    cfg.log(f"writing {count} JPEGs of 384x512 ...")
    paths = make_photos(cfg, count)
    size_kb = float(np.mean([p.stat().st_size for p in paths]) / 1024)
    runs = B.alternate({
        "cache": lambda: cache_side(paths, threads=cfg.threads, seed=cfg.seed, workdir=cfg.workdir),
        "pil": lambda: pil_side(paths, threads=cfg.threads, seed=cfg.seed),
    }, reps=reps, warmup=1, debug=cfg.debug)

    def total(times):
        return sum(times)

    def later(times):
        return float(np.mean(times[1:]))

    cache_runs = [r["epochs"] for r in runs["cache"]]
    cache_total, pil_total = B.median(map(total, cache_runs)), B.median(map(total, runs["pil"]))
    cache_first, pil_first = B.median(t[0] for t in cache_runs), B.median(t[0] for t in runs["pil"])
    cache_later, pil_later = B.median(map(later, cache_runs)), B.median(map(later, runs["pil"]))
    fresh_later = B.median(float(np.mean(r["fresh_later"])) for r in runs["cache"])
    buffer_later = B.median(float(np.mean(r["buffers_later"])) for r in runs["cache"])

    report = B.Report(NAME, TITLE, settings={
        "images": count, "source": "384x512 JPEG, quality 90", "mean_file_kb": round(size_kb, 1),
        "image_size": IMAGE_SIZE, "batch": BATCH, "epochs": EPOCHS, "repetitions": reps, "warmup_repetitions": 1,
        "decode_threads_and_loader_workers": cfg.threads if cfg.threads > 1 else "1 thread / num_workers=0"})
    speedup_total = B.paired_ratio(map(total, runs["pil"]), map(total, cache_runs))
    speedup_later = B.paired_ratio(map(later, runs["pil"]), map(later, cache_runs))
    report.add(f"{EPOCHS} epochs incl. cache build", cache_total, pil_total, "PIL DataLoader", unit="s",
               ratio=speedup_total, ratio_label="PIL/cache", target=">= 10", met=speedup_total is not None and speedup_total >= 10)
    report.add("each epoch after the first", cache_later, pil_later, "PIL DataLoader", unit="s",
               ratio=speedup_later, ratio_label="PIL/cache", target=">= 50", met=speedup_later is not None and speedup_later >= 50)
    report.add("first epoch (cache build)", cache_first, pil_first, "PIL DataLoader", unit="s",
               ratio=B.ratio(pil_first, cache_first), ratio_label="PIL/cache")
    report.add("throughput after the first epoch", count / cache_later, count / pil_later, "PIL DataLoader",
               unit="img/s", ratio=speedup_later, ratio_label="cache/PIL")
    report.add("replay rounds: a later epoch, reused batch buffers (as training)", buffer_later, pil_later,
               "PIL DataLoader", unit="s", ratio=B.ratio(pil_later, buffer_later), ratio_label="PIL/cache")
    report.add("replay rounds: a later epoch, fresh memory per batch", fresh_later, pil_later, "PIL DataLoader",
               unit="s", ratio=B.ratio(pil_later, fresh_later), ratio_label="PIL/cache")
    # What 3 epochs cannot show: a search reads the same cache for hundreds of epochs.
    for epochs in (12, 100):
        ours, theirs = cache_first + (epochs - 1) * cache_later, epochs * pil_later
        report.add(f"projected {epochs} epochs (from the medians above)", ours, theirs, "PIL DataLoader", unit="s",
                   ratio=B.ratio(theirs, ours), ratio_label="PIL/cache")
    report.details = {"epoch_seconds": runs}
    report.notes.append(f"{count} photos, mean {size_kb:.0f} KB; the cache's first epoch decodes each JPEG once with "
                        "Pillow's draft mode (DCT scaling to 1/2), the baseline decodes it in full every epoch")
    return report
