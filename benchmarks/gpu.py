"""GPU path: training images per second and peak GPU memory per backbone of spaces/full.yaml.

For each backbone of spaces/full.yaml, at 224 px and each batch size given, maskopt's own
``train_fold`` trains one epoch on random uint8 images held on the GPU, with full.yaml's GPU
settings (bf16 autocast, channels-last, no torch.compile) and random initial weights (no
download; HF_HUB_OFFLINE=1). A short call first warms up cuDNN's autotuner, then the timed call
reports ``images_per_second`` (training steps only, synchronised) and
``torch.cuda.max_memory_allocated``. Inference (``predict_rows``, bf16) is timed too.

Run on a GPU machine with ``benchmarks/gpu.sh`` (or ``python -m benchmarks gpu --device cuda``);
about 4 minutes on an H200. Without a GPU it says so and stops, unless ``--dry-run``: then it runs
the same code on the CPU with 2 images per batch and 1 step, to check the path end to end.
"""

from __future__ import annotations

import benchmarks as B

NAME = "gpu"
TITLE = "GPU: images/s and peak GPU memory per backbone of spaces/full.yaml at 224 px"
IMAGE_SIZE = 224


def full_space_backbones() -> list[str]:
    from maskopt.search.space import discrete_values, load_space

    return list(discrete_values(load_space(B.ROOT / "spaces" / "full.yaml", check_names=False).dims["backbone"]))


def measure(backbone: str, *, device, batch: int, steps: int, warmup_steps: int, seed: int = 0, amp: bool = True,
            channels_last: bool = True) -> dict:
    import numpy as np
    import torch

    from maskopt.search.space import StudySettings
    from maskopt.search.train.loop import (
        TrainingData,
        autocast_dtype,
        fast_path,
        normalisation,
        predict_rows,
        train_fold,
    )
    from maskopt.search.train.models import count_parameters
    from maskopt.search.train.params import TrialParams

    on_cuda = device.type == "cuda"
    config = StudySettings(epochs=1, warmup_epochs=0.0, amp=amp, channels_last=channels_last,
                           compile=False).train_config()
    params = TrialParams(backbone=backbone, lr=1e-4, weight_decay=0.05, batch_size=batch, freeze_depth=0,
                         sampler="uniform", aug_strength=0.0, loss="ce", optimizer="adamw", image_size=IMAGE_SIZE,
                         age_old=60, head="single")
    n = batch * steps
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device, generator=generator)
    labels = np.random.default_rng(seed).integers(0, 18, n)
    rows = np.arange(n)

    def data(count):
        return TrainingData(images, rows[:count], labels[:count], rows[:0], labels[:0])

    kwargs = dict(config=config, num_classes=18, device=device, seed=seed)
    train_fold(params, data(batch * warmup_steps), **kwargs)  # cuDNN autotuning, allocator warm-up
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with B.Timer() as t:
        result, model = train_fold(params, data(n), **kwargs)
    peak_train = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if on_cuda else None
    images_gib = images.numel() * images.element_size() / 2**30

    mean, std = normalisation(model, device)
    autocast = autocast_dtype(device, config)
    channels_last = on_cuda and config.channels_last
    predict_rows(model, images, rows[:batch * 2], device, mean, std, batch_size=batch * 2, amp_dtype=autocast,
                 channels_last=channels_last)
    if on_cuda:
        torch.cuda.synchronize()
    with B.Timer() as ti:
        predict_rows(model, images, rows, device, mean, std, batch_size=batch * 2, amp_dtype=autocast,
                     channels_last=channels_last)
        if on_cuda:
            torch.cuda.synchronize()
    params_m = count_parameters(model)[0] / 1e6
    del model, images
    if on_cuda:
        torch.cuda.empty_cache()
    return {"backbone": backbone, "batch": batch, "images": n, "train_images_per_second": result.images_per_second,
            "train_call_seconds": t.seconds, "peak_train_gib": peak_train, "peak_reserved_gib": reserved,
            "images_on_gpu_gib": images_gib,
            "peak_without_images_gib": None if peak_train is None else peak_train - images_gib,
            "infer_images_per_second": n / ti.seconds, "params_millions": round(params_m, 1),
            **fast_path(device, config)}


def run(cfg: B.Config) -> B.Report:
    import logging

    import torch

    logging.getLogger("timm.scheduler").setLevel(logging.ERROR)  # "no effect since t_initial = 1" on tiny runs
    report = B.Report(NAME, TITLE)
    want = cfg.device
    if want in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda")
    elif cfg.dry_run:
        device = torch.device("cpu")
    else:
        report.skipped = ("no CUDA GPU visible (torch.cuda.is_available() is False); run benchmarks/gpu.sh on a GPU "
                          "machine, or add --dry-run for a tiny CPU run of the same code")
        return report
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        batches, steps, warmup = ((64, 128), 30, 5) if not cfg.dry_run else ((8,), 2, 1)
    else:
        batches, steps, warmup = (2,), 1, 1
    backbones = full_space_backbones()
    report.settings = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
                       "image_size": IMAGE_SIZE, "batches": list(batches), "timed_steps": steps, "warmup_steps": warmup,
                       "backbones": backbones, "amp": "bf16 if supported", "channels_last": device.type == "cuda",
                       "compile": False, "weights": "random init"}
    results = []
    for backbone in backbones:
        for batch in batches:
            try:
                r = measure(backbone, device=device, batch=batch, steps=steps, warmup_steps=warmup, seed=cfg.seed)
            except Exception as e:  # one backbone's failure (OOM, missing op) must not stop the others
                r = {"backbone": backbone, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(r)
            if "error" in r:
                cfg.log(f"{backbone} batch {batch}: {r['error']}")
                continue
            peak = f"{r['peak_train_gib']:.2f} GiB peak" if r["peak_train_gib"] is not None else "CPU"
            cfg.log(f"{backbone:<24} batch {batch:>3}: train {r['train_images_per_second']:8.0f} img/s, "
                    f"infer {r['infer_images_per_second']:8.0f} img/s, {peak}, {r['params_millions']}M params")
    report.details = {"results": results}
    header = ["backbone", "batch", "train img/s", "inference img/s", "peak GPU memory (train)",
              "of which model + activations", "params"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["backbone"], str(r["batch"]), r["error"][:60], "", "", "", ""])
            continue
        on_gpu = r["peak_train_gib"] is not None
        peak = f"{r['peak_train_gib']:.2f} GiB" if on_gpu else "— (CPU)"
        model_only = f"{r['peak_without_images_gib']:.2f} GiB" if on_gpu else "—"
        rows.append([r["backbone"], str(r["batch"]), f"{r['train_images_per_second']:,.0f}",
                     f"{r['infer_images_per_second']:,.0f}", peak, model_only, f"{r['params_millions']}M"])
    report.table = (header, rows)
    default = next((r for r in results if r["backbone"] == backbones[0] and r["batch"] == batches[-1]
                    and "error" not in r), None)
    if default is not None:
        add_fast_path_rows(report, cfg, backbones[0], device=device, batch=batches[-1], steps=steps, warmup=warmup,
                           default=default)
    if device.type == "cuda":
        report.notes.append("peak GPU memory includes the uint8 image tensor held on the GPU (batch x steps images, as "
                            "a search holds its whole dataset there); the next column leaves it out")
    return report


def add_fast_path_rows(report: B.Report, cfg: B.Config, backbone: str, *, device, batch: int, steps: int,
                       warmup: int, default: dict) -> None:
    """What the GPU settings are worth: the first backbone with mixed precision, then channels-last, off."""
    for label, options in (("bf16 autocast off (fp32)", {"amp": False}), ("channels-last off", {"channels_last": False})):
        try:
            r = measure(backbone, device=device, batch=batch, steps=steps, warmup_steps=warmup, seed=cfg.seed,
                        **options)
        except Exception as e:
            cfg.log(f"{backbone} batch {batch}, {label}: {type(e).__name__}: {e}"[:300])
            continue
        peak = f", {r['peak_train_gib']:.2f} GiB peak" if r["peak_train_gib"] is not None else ""
        cfg.log(f"{backbone} batch {batch}, {label}: train {r['train_images_per_second']:.0f} img/s{peak}")
        report.add(f"{backbone} b{batch} training, maskopt's settings vs {label}", default["train_images_per_second"],
                   r["train_images_per_second"], label, unit="img/s",
                   ratio=B.ratio(default["train_images_per_second"], r["train_images_per_second"]),
                   ratio_label="speed-up")
        report.details.setdefault("fast_path", []).append({"label": label, **r})

