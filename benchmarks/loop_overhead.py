"""1. Loop overhead: one fold of maskopt's ``train_fold`` versus a plain hand-written PyTorch loop.

Both sides get the same cached uint8 tensor (demo images decoded by maskopt's cache), the same
timm model with an 18-class head, batch size, AdamW (same lr and weight decay), epochs, seed and
image order generator. The plain loop is what one writes by hand: gather the batch, scale and
normalise, forward, cross-entropy, backward, step. maskopt's loop adds what it needs for a search:
the ``Classifier`` wrapper, timm's optimiser factory (no weight decay on norms and biases), a
warm-up + cosine learning-rate schedule stepped every update, the (disabled on CPU) autocast and
grad scaler, the augmentation hook, a non-finite-loss check.

Two pairs: training alone (no validation rows), and a fold as the search runs it (validation
every epoch, with macro F1) against the plain loop with the same validation. Images per second
are training images over the wall time of the whole call, model construction included, the same
on both sides. Target: maskopt at least 0.95 of the plain loop. The img/s columns are medians;
the ratio is the median of the repetitions' ratios (each repetition runs both sides back to back).
"""

from __future__ import annotations

import numpy as np

import benchmarks as B

NAME = "loop"
TITLE = "loop overhead: maskopt's train_fold vs a plain PyTorch loop"
TARGET = 0.95


def _params(backbone: str, image_size: int, batch_size: int):
    from maskopt.search.train.params import TrialParams

    return TrialParams(backbone=backbone, lr=1e-3, weight_decay=0.05, batch_size=batch_size, freeze_depth=0,
                       sampler="uniform", aug_strength=0.0, loss="ce", optimizer="adamw", image_size=image_size,
                       age_old=60, head="single")


def maskopt_fold(params, data, *, epochs: int, seed: int) -> float:
    """Seconds for one ``train_fold`` call."""
    import torch

    from maskopt.search.space import StudySettings
    from maskopt.search.train.loop import train_fold

    config = StudySettings(epochs=epochs, warmup_epochs=0.5).train_config()
    with B.Timer() as t:
        train_fold(params, data, config=config, num_classes=18, device=torch.device("cpu"), seed=seed)
    return t.seconds


def plain_fold(params, data, *, epochs: int, seed: int) -> float:
    """Seconds for the same fold, written as a plain PyTorch loop."""
    import timm
    import timm.data
    import torch
    import torch.nn.functional as F

    from maskopt.search.train.metrics import macro_f1

    with B.Timer() as t:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = timm.create_model(params.backbone, num_classes=18)
        config = timm.data.resolve_model_data_config(model)
        mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(config["std"]).view(1, 3, 1, 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        images = data.images
        train_rows = torch.as_tensor(data.train_rows)
        train_labels = torch.as_tensor(data.train_labels)
        batch = params.batch_size
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(train_rows), generator=generator)
            for start in range(0, len(order), batch):
                pos = order[start:start + batch]
                x = (images[train_rows[pos]].float().div_(255) - mean) / std
                loss = F.cross_entropy(model(x), train_labels[pos])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if len(data.val_rows):
                model.eval()
                predictions = []
                with torch.inference_mode():
                    val_rows = torch.as_tensor(data.val_rows)
                    for start in range(0, len(val_rows), max(2 * batch, 32)):
                        x = (images[val_rows[start:start + 2 * batch]].float().div_(255) - mean) / std
                        predictions.append(model(x).argmax(1))
                macro_f1(data.val_labels, torch.cat(predictions).numpy(), n_classes=18)
    return t.seconds


def run(cfg: B.Config) -> B.Report:
    import torch

    from maskopt.search.data.cache import load_images
    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.train.loop import TrainingData

    quick = cfg.quick
    backbones = ["mobilenetv3_small_050"] if quick else ["mobilenetv3_small_050", "resnet10t"]
    image_size, batch_size = 48, 32
    n_train, n_val = (256, 128) if quick else (768, 256)
    epochs = 2 if quick else 3
    reps = 5 if quick else 7

    root = B.demo_data(cfg, persons=(n_train + n_val) // 7 + 1)
    dataset = load_dataset(root)
    cache = load_images(dataset.paths, image_size=image_size, cache_dir=cfg.workdir / "cache", threads=cfg.threads)
    images = torch.from_numpy(np.array(cache.images))  # a writable copy in memory, as PreparedData makes
    order = np.random.default_rng(cfg.seed).permutation(len(dataset))
    train_rows, val_rows = np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val])
    labels = dataset.labels
    with_val = TrainingData(images, train_rows, labels[train_rows], val_rows, labels[val_rows])
    no_val = TrainingData(images, train_rows, labels[train_rows], val_rows[:0], labels[val_rows[:0]])

    report = B.Report(NAME, TITLE, settings={
        "backbones": backbones, "image_size": image_size, "batch_size": batch_size, "train_images": n_train,
        "val_images": n_val, "epochs": epochs, "optimizer": "adamw lr 1e-3 wd 0.05", "repetitions": reps,
        "warmup_repetitions": 1, "threads": cfg.threads})
    for backbone in backbones:
        params = _params(backbone, image_size, batch_size)
        for label, data in (("training only", no_val), ("fold with per-epoch validation", with_val)):
            times = B.alternate({
                "maskopt": lambda: maskopt_fold(params, data, epochs=epochs, seed=cfg.seed),
                "plain": lambda: plain_fold(params, data, epochs=epochs, seed=cfg.seed),
            }, reps=reps, warmup=1, debug=cfg.debug)
            images_seen = n_train * epochs
            ours, plain = images_seen / B.median(times["maskopt"]), images_seen / B.median(times["plain"])
            r = B.paired_ratio(times["plain"], times["maskopt"])  # images/s ratio = inverse time ratio
            report.add(f"{backbone} {image_size}px, {label}", ours, plain, "plain loop", unit="img/s", ratio=r,
                       ratio_label="maskopt/plain", target=f">= {TARGET}", met=r is not None and r >= TARGET)
            report.details[f"{backbone}/{label}"] = {"seconds": times}
            cfg.log(f"{backbone}, {label}: maskopt {ours:.0f} img/s, plain {plain:.0f} img/s, ratio {r:.3f}")
    return report
