"""10. CPU memory format: ``train_fold`` with channels-last tensors against the default layout.

``channels_last`` (on by default) stores activations as NHWC, which oneDNN's CPU convolutions
(depthwise ones above all) run faster than NCHW. Both sides run the same fold: the demo's
configuration (EfficientNet-Lite0 at 80 px, the first 2 stages frozen, batch 32, multi-task head,
per-epoch validation) and the from-scratch backbones of spaces/tiny.yaml at 48 px. Weights are
random (speed does not depend on their values), so no weights need installing. Images per
second are training images over the wall time of the call; the ratio is the median of the
repetitions' ratios. Target: channels-last at least as fast (>= 1.0) on every backbone.
"""

from __future__ import annotations

import numpy as np

import benchmarks as B

NAME = "channels_last"
TITLE = "CPU memory format: channels-last vs contiguous tensors in train_fold"
TARGET = 1.0


def fold_seconds(params, data, *, channels_last: bool, seed: int) -> float:
    import torch

    from maskopt.search.space import StudySettings
    from maskopt.search.train.loop import train_fold

    config = StudySettings(epochs=1, warmup_epochs=0.5).train_config(channels_last=channels_last)
    with B.Timer() as t:
        train_fold(params, data, config=config, num_classes=18, device=torch.device("cpu"), seed=seed)
    return t.seconds


def run(cfg: B.Config) -> B.Report:
    import torch

    from maskopt.search.data.cache import load_images
    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.train.loop import TrainingData
    from maskopt.search.train.params import TrialParams

    n_train, n_val = (224, 112) if cfg.quick else (700, 350)
    reps = 3 if cfg.quick else 5
    cases = [("tf_efficientnet_lite0", 80, 2, "multi"), ("mobilenetv3_small_050", 48, 0, "single"),
             ("resnet10t", 48, 0, "single")]
    root = B.demo_data(cfg, persons=(n_train + n_val) // 7 + 1, size=96)
    dataset = load_dataset(root)
    order = np.random.default_rng(cfg.seed).permutation(len(dataset))
    train_rows, val_rows = np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val])
    labels = dataset.labels

    report = B.Report(NAME, TITLE, settings={
        "cases": [list(c) for c in cases], "batch_size": 32, "train_images": n_train, "val_images": n_val,
        "epochs": 1, "repetitions": reps, "warmup_repetitions": 1, "threads": cfg.threads})
    for backbone, image_size, freeze_depth, head in cases:
        cache = load_images(dataset.paths, image_size=image_size, cache_dir=cfg.workdir / "cache", threads=cfg.threads)
        images = torch.from_numpy(np.array(cache.images))
        data = TrainingData(images, train_rows, labels[train_rows], val_rows, labels[val_rows])
        params = TrialParams(backbone=backbone, lr=3e-3, weight_decay=0.01, batch_size=32, freeze_depth=freeze_depth,
                             sampler="balanced", aug_strength=0.1, loss="ce", optimizer="adamw",
                             image_size=image_size, age_old=60, head=head)
        times = B.alternate({
            "channels-last": lambda: fold_seconds(params, data, channels_last=True, seed=cfg.seed),
            "contiguous": lambda: fold_seconds(params, data, channels_last=False, seed=cfg.seed),
        }, reps=reps, warmup=1, debug=cfg.debug)
        fast, slow = n_train / B.median(times["channels-last"]), n_train / B.median(times["contiguous"])
        r = B.paired_ratio(times["contiguous"], times["channels-last"])
        report.add(f"{backbone} {image_size}px, freeze {freeze_depth}, fold with validation", fast, slow,
                   "contiguous", unit="img/s", ratio=r, ratio_label="channels-last/contiguous", target=f">= {TARGET}",
                   met=r is not None and r >= TARGET)
        report.details[backbone] = {"seconds": times}
        cfg.log(f"{backbone}: channels-last {fast:.0f} img/s, contiguous {slow:.0f} img/s, ratio {r:.2f}")
    return report
