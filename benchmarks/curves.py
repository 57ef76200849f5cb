"""Recorded learning curves: a grid of pretrained configurations, each trained to the full budget.

Every configuration of a grid (lr x aug_strength x loss, 8 x 4 x 2 = 64) trains every fold for
every epoch, no pruning, through maskopt's own ``train_fold`` on the folds of
``PreparedData.folds`` and with the seeds a search would give it (``fold_seed``), starting from
the EfficientNet-Lite0 ImageNet weights that ``make demo`` imports (``weights/``). Each epoch's
validation macro F1 and its seconds (the first epoch of a fold includes building the model) are
recorded per fold.

Two datasets of real photographs and the demo data:

- ``fashion``: Fashion-MNIST (``benchmarks/fashion.py``, the photos the tests use), 28x28
  grayscale products trained at 32 px;
- ``demo``: ``maskopt make-demo-data`` at 64 px, a subset of persons sized to fit the time.

The tables go to ``benchmarks/curves/<dataset>.json.gz`` (``search/study/replay.py``'s
``Curves`` format, with the command, the date, the machine and how long it took), which the
replay benchmark (``python -m benchmarks replay``) and its tests read. ``--dataset fashion`` (or
``demo``) records one; ``--quick`` records 4 configurations of 1 epoch into the scratch folder,
leaving the stored tables alone.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import time
from pathlib import Path

import numpy as np

import benchmarks as B
from benchmarks import fashion

NAME = "curves"
TITLE = "recorded learning curves: a grid of pretrained configurations trained to the full budget"
CURVES_DIR = Path(__file__).resolve().parent / "curves"
LITE0 = B.LITE0

GRID = {
    "lr": tuple(float(f"{v:.3g}") for v in np.geomspace(1e-4, 3e-2, 8)),
    "aug_strength": (0.0, 0.1, 0.25, 0.5),
    "loss": ("ce", "label_smoothing"),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One dataset's recording: its data, sizes and the parameters every configuration shares."""

    dataset: str
    folds: int
    epochs: int
    constants: dict  # the TrialParams fields the grid does not set

    @property
    def image_size(self) -> int:
        return self.constants["image_size"]


def settings(dataset: str, *, quick: bool) -> Setting:
    epochs = 1 if quick else 4
    shared = {"backbone": LITE0, "weight_decay": 0.01, "batch_size": 32, "freeze_depth": 2, "optimizer": "adamw",
              "age_old": 60}
    if dataset == "fashion":
        return Setting("fashion", 2, epochs, {**shared, "sampler": "uniform", "image_size": 32, "head": "single"})
    # the demo's own choices (spaces/demo.yaml) at 64 px
    return Setting("demo", 2, epochs, {**shared, "sampler": "balanced", "image_size": 64, "head": "multi"})


SIZES = {  # (quick, full): Fashion-MNIST images per class, demo persons
    "fashion": (10, 60),
    "demo": (12, 40),
}


def space_of(setting: Setting, *, weights: Path):
    """The grid as a maskopt space: each searched parameter a choice of its grid values."""
    from maskopt.search.space import (
        Choice,
        Component,
        Constant,
        SearchSpace,
        StudySettings,
    )

    study = StudySettings(name=f"curves-{setting.dataset}", folds=setting.folds, epochs=setting.epochs,
                          sampler=Component("random"), pruner=Component("none"), pretrained=True,
                          weights=str(weights), warmup_epochs=0.5, amp=False,
                          layout="folders" if setting.dataset == "fashion" else "competition")
    dims = {name: Constant(value) for name, value in setting.constants.items()}
    dims.update({name: Choice(values) for name, values in GRID.items()})
    return SearchSpace(study=study, dims=dims, source=f"benchmarks/curves.py ({setting.dataset})")


def write_data(cfg: B.Config, dataset: str) -> Path:
    size = SIZES[dataset][0 if cfg.quick else 1]
    if dataset == "fashion":
        return fashion.write_fashion(cfg.workdir / "fashion", per_class=size, seed=cfg.seed).train.root
    return B.demo_data(cfg, persons=size, size=64)


def record(cfg: B.Config, dataset: str, *, weights: Path, configurations: int | None = None):
    """Train every configuration of the grid on ``dataset``; the curves table and the seconds it took."""
    import torch

    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.data.prepared import prepare_data
    from maskopt.search.study.replay import Curves
    from maskopt.search.study.seeds import fold_seed
    from maskopt.search.train.loop import TrainingData, train_fold

    setting = settings(dataset, quick=cfg.quick)
    space = space_of(setting, weights=weights)
    data = prepare_data(load_dataset(write_data(cfg, dataset), layout=space.study.layout),
                        image_sizes=[setting.image_size], cache_dir=cfg.workdir / "cache")
    images = data.images(setting.image_size)
    folds = data.folds(n_folds=setting.folds, seed=space.study.seed)
    config = space.study.train_config()
    combos = list(itertools.product(*GRID.values()))[:configurations]
    f1 = np.zeros((len(combos), setting.folds, setting.epochs))
    seconds = np.zeros_like(f1)
    started = time.perf_counter()
    for c, values in enumerate(combos):
        params = space.params_from(dict(zip(GRID, values)))
        labels = data.dataset.training_labels(params.age_old)
        for fold, (train_idx, val_idx) in enumerate(folds):
            fold_data = TrainingData(images, train_idx, labels[train_idx], val_idx, data.dataset.labels[val_idx])
            last = [time.perf_counter()]

            def on_epoch(epoch: int, score: float, _accuracy: float, c=c, fold=fold, last=last) -> None:
                now = time.perf_counter()
                f1[c, fold, epoch], seconds[c, fold, epoch] = score, now - last[0]
                last[0] = now

            train_fold(params, fold_data, config=config, num_classes=data.dataset.num_classes,
                       device=torch.device("cpu"), seed=fold_seed(space.study.seed, params, fold), on_epoch=on_epoch)
        cfg.debug(f"{c + 1}/{len(combos)} {dict(zip(GRID, values))}: fold F1 "
                  f"{[round(float(v), 3) for v in f1[c].max(1)]}, {seconds[c].sum():.1f} s")
    searched = {name: space.dims[name] for name in GRID}
    configs = tuple(dict(zip(GRID, values)) for values in combos)
    curves = Curves(dims=searched, configs=configs, f1=f1, seconds=seconds)
    return curves, setting, len(data.dataset), time.perf_counter() - started


def run(cfg: B.Config) -> B.Report:
    report = B.Report(NAME, TITLE)
    weights = B.WEIGHTS
    report.skipped = B.missing_lite0_weights()
    if report.skipped:
        return report
    datasets = [cfg.dataset] if cfg.dataset else ["fashion", "demo"]
    if "fashion" in datasets and not fashion.available():
        report.skipped = f"Fashion-MNIST is not installed in {fashion.FASHION_DIR}; run scripts/install-test-data"
        return report
    out_dir = cfg.workdir / "curves" if cfg.quick else CURVES_DIR
    rows = []
    for dataset in datasets:
        curves, setting, n_images, took = record(cfg, dataset, weights=weights, configurations=4 if cfg.quick else None)
        path = out_dir / f"{dataset}.json.gz"
        curves.write(path, about={
            "dataset": dataset, "images": n_images, "image_size": setting.image_size, "constants": setting.constants,
            "command": cfg.command, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "recording_seconds": round(took, 1), "threads": cfg.threads, "machine": B.machine_info(),
            "load_average_after": B.load_average()})
        full = curves.f1.max(axis=2).mean(axis=1)
        cfg.log(f"{dataset}: {len(curves.configs)} configurations, {n_images} images, {took:.0f} s -> {path}")
        rows.append([dataset, str(n_images), f"{setting.image_size} px", str(len(curves.configs)),
                     f"{setting.folds} x {setting.epochs}",
                     f"{full.min():.3f} / {np.median(full):.3f} / {full.max():.3f}",
                     f"{curves.seconds.sum(axis=(1, 2)).mean():.1f} s", f"{took:.0f} s",
                     f"{path.stat().st_size / 1024:.0f} KB"])
    report.table = (["dataset", "images", "size", "configurations", "folds x epochs",
                     "final CV F1 min / median / max", "mean trial", "recording", "file"], rows)
    report.settings = {"grid": {k: list(v) for k, v in GRID.items()}, "threads": cfg.threads}
    return report
