"""GPU: a real trial against a timm-style loop, trials per hour with K workers per GPU, the shared cache.

One run of ``benchmarks/gpu.sh OUT`` on one GPU machine, time-boxed part by part to stay under 8
minutes on an H200 (what does not fit is left out with a note); random initial weights, nothing
downloaded (HF_HUB_OFFLINE=1).

A. Training throughput, for two backbones of spaces/full.yaml at 224 px and batch 64 and 128.
   maskopt: a real trial (``run_search`` of a study of one configuration, 2 folds) on real files:
   demo persons in the competition layout whose photos are re-encoded at 384x512 (JPEG, quality 90,
   mild noise so they compress like photographs), decoded once into the cache, held on the GPU,
   batches gathered and augmented there (aug_strength 0.3), bf16 autocast, channels-last. The
   study runs the configuration twice (same seeds): the first pays cuDNN's autotuning, the second
   is compared. Its figure is ``train_fold``'s training images per second, validation left out.
   The other side is timm-style: the train loop of timm's ``benchmark.py --bench train --amp
   --channels-last``, written out here (that script ships in timm's repository, not its wheel,
   and nothing is fetched or vendored): one random batch made once on the GPU, forward,
   cross-entropy, backward, optimiser step, no data path at all; AdamW and bf16 as in maskopt's
   trials (benchmark.py defaults to SGD and fp16). Target: maskopt >= 0.90 x the loop. Then the
   worth of bf16 and of channels-last: the same trials with each off.
B. Study throughput: the same enqueued configurations run by ``run_workers`` with K = 1, 2, 4
   workers per GPU (K x GPUs workers), at demo size (spaces/demo.yaml, from scratch, on 400 demo
   persons at 80 px) and at full.yaml size (its space from scratch at 224 px on the files of A,
   2 folds x 1 epoch). Trials per hour from the first trial's start to the last one's end, and the
   wall time with the workers' start-up. Target at demo size: K = 2 >= 1.4 x K = 1, with the same
   score for each configuration (its seeds come from the configuration, not the trial number).
C. Host memory of two worker processes holding 2,800 decoded images at 224 px on the CPU
   (``PreparedData.images``, the cache file's memory map) against the private copy each made
   before: resident (RSS) and proportional (PSS) set sizes they add.

``--dry-run`` runs A and B on the CPU with a few tiny images, K = 1 and 2 (without a GPU,
``workers_per_gpu`` is ignored), to check the code end to end; C is the same as on the GPU
machine (it measures the host), so the dry run's C is a real figure.
"""

from __future__ import annotations

import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import benchmarks as B

NAME = "gpu"
TITLE = "GPU: a maskopt trial vs a timm-style loop, trials per hour with K workers per GPU, shared image cache"
BACKBONES = ("resnet50", "efficientnet_b3")  # two of spaces/full.yaml: a plain CNN and a depthwise one
LOOP_LR = 3e-4


@dataclass(frozen=True)
class Sizes:
    persons: int  # persons of 384x512 photos (7 each) for A and B at full size
    image_size: int  # A and B at full size
    batches: tuple[int, ...]
    epochs: int  # A's trials: epochs per fold (2 folds)
    loop_steps: int  # timm-style loop: timed steps, after the warm-up steps
    loop_warmup: int
    demo_persons: int  # B at demo size
    demo_trials: int
    full_trials: int
    ks: tuple[int, ...]  # workers per GPU
    budgets: tuple[tuple[str, float], ...]  # seconds per part


GPU = Sizes(persons=400, image_size=224, batches=(64, 128), epochs=2, loop_steps=30, loop_warmup=5, demo_persons=400,
            demo_trials=8, full_trials=4, ks=(1, 2, 4),
            budgets=(("A", 150.0), ("B demo", 110.0), ("B full", 100.0), ("C", 40.0)))
DRY = Sizes(persons=10, image_size=32, batches=(4, 8), epochs=1, loop_steps=2, loop_warmup=1, demo_persons=10,
            demo_trials=2, full_trials=2, ks=(1, 2),
            budgets=(("A", 240.0), ("B demo", 240.0), ("B full", 240.0), ("C", 120.0)))


class Clock:
    """A part's time box."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run(cfg: B.Config) -> B.Report:
    import logging

    import torch

    logging.getLogger("timm.scheduler").setLevel(logging.ERROR)  # "no effect since t_initial = 1" on tiny runs
    report = B.Report(NAME, TITLE)
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        device = "cuda"
    elif cfg.dry_run:
        device = "cpu"
    else:
        report.skipped = ("no CUDA GPU visible (torch.cuda.is_available() is False); run benchmarks/gpu.sh OUT on a "
                          "GPU machine, or add --dry-run for a tiny CPU run of the same code")
        return report
    sizes = DRY if device == "cpu" else GPU
    report.settings = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
                       "gpus": torch.cuda.device_count() if device == "cuda" else 0, "sizes": sizes.__dict__,
                       "backbones": BACKBONES, "weights": "random init", "torch_threads_per_process": cfg.threads}
    budgets = dict(sizes.budgets)
    cache = cfg.workdir / "cache"
    photos = part_a(report, cfg, sizes, device, cache, Clock(budgets["A"]))
    if device == "cuda":
        torch.cuda.empty_cache()  # the workers of B share the GPU with this process
    part_b_demo(report, cfg, sizes, device, cache, Clock(budgets["B demo"]))
    part_b_full(report, cfg, sizes, device, cache, photos, Clock(budgets["B full"]))
    part_c(report, cfg, cache, Clock(budgets["C"]))
    return report


# --- data ------------------------------------------------------------------------------------------


def competition_photos(cfg: B.Config, persons: int) -> Path:
    """Demo data in the competition layout whose training photos are 384x512, like the real ones.

    Each photo is the demo picture scaled up with mild sensor noise (so that it compresses like a
    photograph) and written back in its own format (JPEG quality 90; the demo's few PNGs stay PNG).
    """
    import numpy as np
    from PIL import Image

    from maskopt.search.data.demo import make_demo_data

    root = cfg.workdir / f"photos-{persons}p"
    if (root / "train" / "train.csv").exists():
        return root
    make_demo_data(root, persons=persons, eval_persons=2, size=96, seed=cfg.seed, quiet=True)
    files = [p for p in sorted((root / "train" / "images").rglob("*")) if p.is_file() and not p.name.startswith(".")]
    noise = np.random.default_rng(cfg.seed).normal(0, 4, (1024, 768, 3)).astype(np.int16)

    def enlarge(numbered) -> None:
        i, path = numbered
        with Image.open(path) as img:
            big = np.asarray(img.convert("RGB").resize((384, 512), Image.BICUBIC), dtype=np.int16)
        y, x = (i * 37) % 512, (i * 53) % 384
        Image.fromarray((big + noise[y:y + 512, x:x + 384]).clip(0, 255).astype(np.uint8)).save(path, quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(enlarge, enumerate(files)))
    return root


# --- A: a maskopt trial against a timm-style loop ------------------------------------------------------


def trial_space(cfg: B.Config, *, backbone: str, batch: int, image_size: int, epochs: int, amp: bool = True,
                channels_last: bool = True):
    """One configuration of full.yaml's kind, as a space of constants, trained from scratch."""
    from maskopt.search.space import parse_space

    study = {"folds": 2, "epochs": epochs, "seed": cfg.seed, "sampler": "random", "pruner": "none",
             "warmup_epochs": 0.5, "amp": amp, "channels_last": channels_last, "compile": False}
    params = {"backbone": backbone, "lr": LOOP_LR, "weight_decay": 0.05, "batch_size": batch, "freeze_depth": 0,
              "sampler": "uniform", "aug_strength": 0.3, "loss": "ce", "optimizer": "adamw",
              "image_size": image_size, "age_old": 60, "head": "single"}
    return parse_space({"study": study, "params": params}, source="benchmarks/gpu.py", check_names=False)


def maskopt_trial(cfg: B.Config, space, *, name: str, data: Path, device: str, cache: Path) -> dict:
    """The configuration trained twice by ``run_search``: training img/s of each run, peak GPU memory."""
    from optuna.trial import TrialState

    from maskopt.search.study import record
    from maskopt.search.study.record import StudyRecord
    from maskopt.search.study.runner import run_search

    url = f"sqlite:///{cfg.workdir / 'a.db'}"
    with B.Timer() as t:
        run_search(space, trials=2, storage=url, data=data, study=name, device=device, cache_dir=cache,
                   threads=cfg.threads, heartbeat_interval=None, checkpoints=False, artifacts=None, quiet=True)
    study = StudyRecord.open(url, name)
    first, second = study.trials()
    failed = next((t.fail_reason or t.state.name for t in (first, second) if t.state != TrialState.COMPLETE), None)
    if failed is not None:
        return {"error": failed[:300]}
    peak = study.study.trials[second.number].user_attrs.get(record.PEAK_MEMORY_MB)
    return {"first_images_per_second": first.images_per_second, "images_per_second": second.images_per_second,
            "peak_gpu_mib": peak if device == "cuda" else None, "seconds": t.seconds, "score": second.value,
            "same_score_twice": first.value == second.value}


def timm_style_loop(backbone: str, *, batch: int, image_size: int, steps: int, warmup: int, device: str,
                    seed: int) -> float:
    """Training images per second of timm's ``benchmark.py --bench train --amp --channels-last`` loop."""
    import timm
    import timm.optim
    import torch

    on_cuda = device == "cuda"
    torch.manual_seed(seed)
    model = timm.create_model(backbone, num_classes=18).to(device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=LOOP_LR, weight_decay=0.05)
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,), device=device)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=on_cuda):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as benchmark.py and maskopt's trials
    try:
        for _ in range(warmup):
            step()
        if on_cuda:
            torch.cuda.synchronize()
        with B.Timer() as t:
            for _ in range(steps):
                step()
            if on_cuda:
                torch.cuda.synchronize()
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return batch * steps / t.seconds


def part_a(report: B.Report, cfg: B.Config, sizes: Sizes, device: str, cache: Path, clock: Clock) -> Path:
    """A maskopt trial against the timm-style loop, then bf16 and channels-last off; returns the photos."""
    cfg.log("A. training throughput: a maskopt trial vs a timm-style loop")
    photos = competition_photos(cfg, sizes.persons)
    header = ["backbone", "batch", "maskopt trial img/s", "its first run (cuDNN autotuning)", "timm-style loop img/s",
              "maskopt / loop", "peak GPU memory of the trial"]
    rows, details, left_out = [], [], []
    for backbone in BACKBONES:
        for batch in sizes.batches:
            if clock.left() <= 0:
                left_out.append(f"{backbone} b{batch}")
                continue
            space = trial_space(cfg, backbone=backbone, batch=batch, image_size=sizes.image_size, epochs=sizes.epochs)
            trial = maskopt_trial(cfg, space, name=f"{backbone}-b{batch}", data=photos, device=device, cache=cache)
            try:
                loop = timm_style_loop(backbone, batch=batch, image_size=sizes.image_size, steps=sizes.loop_steps,
                                       warmup=sizes.loop_warmup, device=device, seed=cfg.seed)
            except Exception as e:  # out of memory, a missing kernel: the other rows still count
                loop = None
                trial.setdefault("error", f"timm-style loop: {type(e).__name__}: {e}"[:300])
            details.append({"backbone": backbone, "batch": batch, "timm_style_images_per_second": loop, **trial})
            if "error" in trial:
                cfg.log(f"{backbone} b{batch}: {trial['error']}")
                rows.append([backbone, str(batch), trial["error"][:60], "", "", "", ""])
                continue
            ratio = B.ratio(trial["images_per_second"], loop)
            peak = f"{trial['peak_gpu_mib'] / 1024:.2f} GiB" if trial["peak_gpu_mib"] else "—"
            cfg.log(f"{backbone:<16} b{batch:<4} maskopt {trial['images_per_second']:8.0f} img/s (first run "
                    f"{trial['first_images_per_second']:.0f}), loop {loop:8.0f} img/s, ratio {B.fmt_ratio(ratio)}, {peak}")
            rows.append([backbone, str(batch), f"{trial['images_per_second']:,.0f}",
                         f"{trial['first_images_per_second']:,.0f}", f"{loop:,.0f}", B.fmt_ratio(ratio), peak])
            report.add(f"A. {backbone} b{batch}: training img/s, maskopt trial vs timm-style loop",
                       trial["images_per_second"], loop, "timm-style loop", unit="img/s", ratio=ratio,
                       ratio_label="maskopt/loop", target=">= 0.90",
                       met=None if device == "cpu" or ratio is None else ratio >= 0.90)
    report.table = (header, rows)
    report.details["A"] = details
    for backbone in BACKBONES:
        default = next((d for d in details if d["backbone"] == backbone and d["batch"] == sizes.batches[-1]
                        and "error" not in d), None)
        if default is None:
            continue
        for label, options in (("bf16 off (fp32)", {"amp": False}), ("channels-last off", {"channels_last": False})):
            if clock.left() <= 0:
                left_out.append(f"{backbone} b{default['batch']} with {label}")
                continue
            space = trial_space(cfg, backbone=backbone, batch=default["batch"], image_size=sizes.image_size,
                                epochs=sizes.epochs, **options)
            name = f"{backbone}-b{default['batch']}-{'-'.join(options)}-off"
            off = maskopt_trial(cfg, space, name=name, data=photos, device=device, cache=cache)
            report.details.setdefault("A_settings_off", []).append({"backbone": backbone, "label": label, **off})
            if "error" in off:
                cfg.log(f"{backbone} b{default['batch']}, {label}: {off['error']}")
                continue
            cfg.log(f"{backbone} b{default['batch']}, {label}: {off['images_per_second']:.0f} img/s")
            report.add(f"A. {backbone} b{default['batch']} trial: maskopt's settings vs {label}",
                       default["images_per_second"], off["images_per_second"], label, unit="img/s",
                       ratio=B.ratio(default["images_per_second"], off["images_per_second"]), ratio_label="speed-up")
    if left_out:
        report.notes.append(f"A: left out by its {dict(sizes.budgets)['A']:.0f} s time box: {', '.join(left_out)}")
    return photos


# --- B: trials per hour with K workers per GPU -------------------------------------------------------

STARTUP_S = 20.0  # about what K workers take to start (imports, CUDA, the images onto the GPU)


def part_b_demo(report: B.Report, cfg: B.Config, sizes: Sizes, device: str, cache: Path, clock: Clock) -> None:
    """spaces/demo.yaml from scratch, no pruner, on demo data."""
    from maskopt.search.space import Component, load_space

    cfg.log("B. trials per hour at demo size, K workers per GPU")
    space = load_space(B.ROOT / "spaces" / "demo.yaml", check_names=False)
    space = replace(space, study=replace(space.study, pretrained=False, weights=None, sampler=Component("random"),
                                         pruner=Component("none")))
    data = B.demo_data(cfg, persons=sizes.demo_persons, size=96)
    study_throughput(report, cfg, label="demo", space=space, data=data, device=device, cache=cache,
                     trials=sizes.demo_trials, ks=sizes.ks, clock=clock, target=1.4)


def part_b_full(report: B.Report, cfg: B.Config, sizes: Sizes, device: str, cache: Path, photos: Path,
                clock: Clock) -> None:
    """spaces/full.yaml from scratch, no pruner, 2 folds x 1 epoch, on the photos of A."""
    from maskopt.search.space import Choice, Component, Constant, load_space

    cfg.log("B. trials per hour at full.yaml size, K workers per GPU")
    space = load_space(B.ROOT / "spaces" / "full.yaml", check_names=False)
    study = replace(space.study, folds=2, epochs=1, warmup_epochs=0.5, pretrained=False, weights=None,
                    corrections=None, sampler=Component("random"), pruner=Component("none"))
    dims = dict(space.dims, image_size=Constant(sizes.image_size))
    if device == "cpu":  # the dry run's tiny images: vit_small_patch16_224 takes 224 px only
        dims["backbone"] = Choice(BACKBONES)
    study_throughput(report, cfg, label="full.yaml", space=replace(space, study=study, dims=dims), data=photos,
                     device=device, cache=cache, trials=sizes.full_trials, ks=sizes.ks, clock=clock, target=None)


def draw_configurations(space, n: int, seed: int) -> list[dict]:
    """``n`` configurations of ``space`` drawn at random (seeded): every run of B gets the same."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configurations = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        configurations.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configurations


def study_throughput(report: B.Report, cfg: B.Config, *, label: str, space, data: Path, device: str, cache: Path,
                     trials: int, ks: tuple[int, ...], clock: Clock, target: float | None) -> None:
    """The same configurations, enqueued in a fresh study per K, run by K workers per GPU."""
    import torch

    from maskopt.errors import MaskoptError
    from maskopt.search.study.runner import open_search
    from maskopt.search.study.workers import run_workers

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    configurations = draw_configurations(space, trials, cfg.seed)
    runs: dict[int, dict] = {}
    for n, k in enumerate(ks):
        share = clock.left() / (len(ks) - n)
        if share < STARTUP_S / 2:
            report.notes.append(f"B {label}: K={k} left out by the part's time box")
            continue
        name = f"{label.replace('.', '-')}-k{k}"
        url = f"sqlite:///{cfg.workdir / f'{name}.db'}"  # a database per run: its SQLite locks are its own
        opened = open_search(space, storage=url, data=data, study=name, cache_dir=cache, heartbeat_interval=None,
                             quiet=True)
        for params in configurations:
            opened.study.enqueue_trial(params)
        workers = k * max(gpus, 1)
        error = None
        with B.Timer() as wall:
            try:
                run_workers(space, workers=workers, workers_per_gpu=k, trials=trials, storage=url, data=data,
                            study=name, device=device, threads=cfg.threads, cache_dir=cache,
                            timeout=max(1.0, share - STARTUP_S), heartbeat_interval=None, checkpoints=False,
                            artifacts=None)
            except MaskoptError as e:  # a worker failed: count what the others finished
                error = str(e)[:300]
        done = [t for t in B.trial_table(opened.study) if t["state"] == "COMPLETE"]
        span = max(t["complete"] for t in done) - min(t["start"] for t in done) if done else None
        runs[k] = {"workers": workers, "finished": len(done), "span_s": span, "wall_s": wall.seconds,
                   "trials_per_hour": len(done) * 3600 / span if span else None,
                   "mean_trial_s": B.median([t["complete"] - t["start"] for t in done]), "error": error,
                   "scores": {json.dumps(t["params"], sort_keys=True): t["value"] for t in done}}
        r = runs[k]
        cfg.log(f"{label} K={k} ({workers} worker{'s' if workers > 1 else ''}): {r['finished']}/{trials} trials in {B.fmt(span, 's')} "
                f"(wall {wall.seconds:.0f} s with start-up), {B.fmt(r['trials_per_hour'], 'trials/h')}"
                + (f"; {error}" if error else ""))
    report.details[f"B {label}"] = {"configurations": configurations, "runs": runs}
    base = runs.get(1, {}).get("trials_per_hour")
    for k in ks[1:]:
        if k not in runs:
            continue
        ratio = B.ratio(runs[k]["trials_per_hour"], base)
        goal = target if k == 2 else None
        report.add(f"B. {label}: trials per hour, K={k} vs K=1 workers per GPU", runs[k]["trials_per_hour"], base,
                   "K=1", unit="trials/h", ratio=ratio, ratio_label=f"K={k}/K=1",
                   target=f">= {goal}" if goal else "",
                   met=None if goal is None or device == "cpu" or ratio is None else ratio >= goal)
    common = set.intersection(*(set(r["scores"]) for r in runs.values())) if runs else set()
    if len(runs) > 1 and common:
        spread = max(max(r["scores"][c] for r in runs.values()) - min(r["scores"][c] for r in runs.values())
                     for c in common)
        report.add(f"B. {label}: score spread per configuration across K ({len(common)} configurations)", spread,
                   None, "", target="0 (the same scores)", met=spread == 0)


# --- C: host memory of two workers ------------------------------------------------------------------

MEMORY_PERSONS, MEMORY_IMAGE_SIZE = 400, 224  # C's images, the same on the GPU machine and in the dry run


def part_c(report: B.Report, cfg: B.Config, cache: Path, clock: Clock) -> None:
    """400 demo persons at 224 px (2,800 images, 402 MiB), on the CPU even in the dry run."""
    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.data.prepared import prepare_data

    cfg.log(f"C. host memory of two workers holding {MEMORY_PERSONS} persons' decoded images at {MEMORY_IMAGE_SIZE} px")
    data = B.demo_data(cfg, persons=MEMORY_PERSONS, size=96)
    prepare_data(load_dataset(data), image_sizes=[MEMORY_IMAGE_SIZE], cache_dir=cache)  # the cache, built once
    try:
        held = host_memory(data, image_size=MEMORY_IMAGE_SIZE, cache_dir=cache, timeout=max(clock.left(), 60))
    except RuntimeError as e:
        report.notes.append(f"C: {e}")
        return
    report.details["C"] = held
    for mode, workers in held.items():
        cfg.log(f"{mode}: each worker +" + ", +".join(f"{w['rss_mib']:.0f} MiB RSS / {w['pss_mib']:.0f} MiB PSS / "
                                                        f"{w['private_mib']:.0f} MiB private"
                                                        for w in workers) + f" (images {held_mib(held):.0f} MiB)")

    def total(mode: str, key: str) -> float:
        return sum(w[key] for w in held[mode])

    report.add("C. host memory 2 workers add to hold the images: sum of PSS", total("shared", "pss_mib"),
               total("private copy", "pss_mib"), "a private copy each (before)", unit="MiB",
               ratio=B.ratio(total("shared", "pss_mib"), total("private copy", "pss_mib")), ratio_label="shared/copy")
    report.add("C. private memory each worker adds (its own pages)", total("shared", "private_mib") / 2,
               total("private copy", "private_mib") / 2, "a private copy each (before)", unit="MiB")
    report.add("C. resident memory each worker adds (RSS, shared pages counted in each)", total("shared", "rss_mib") / 2,
               total("private copy", "rss_mib") / 2, "a private copy each (before)", unit="MiB")


def held_mib(held: dict) -> float:
    return held["shared"][0]["images_mib"]


def host_memory(data: Path, *, image_size: int, cache_dir: Path, timeout: float, workers: int = 2) -> dict:
    """What ``workers`` processes, each holding every decoded image on the CPU at once, add to their memory.

    ``shared``: ``PreparedData.images``, the cache file's memory map. ``private copy``: the rows
    gathered into each process's own memory, as ``PreparedData.images`` did before issue 26.
    PSS (proportional set size) splits each shared page among the processes mapping it, so the
    workers' PSS adds up to what they cost the machine; RSS counts a shared page in every one.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    held = {}
    for mode in ("private copy", "shared"):
        barrier, results = context.Barrier(workers), context.Queue()
        processes = [context.Process(target=_hold_images, args=(str(data), image_size, str(cache_dir),
                                                                mode == "shared", barrier, results))
                     for _ in range(workers)]
        for process in processes:
            process.start()
        held[mode] = []
        deadline = time.monotonic() + timeout
        while len(held[mode]) < workers:
            try:
                held[mode].append(results.get(timeout=1))
            except queue.Empty:
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in processes):
                    for process in processes:
                        process.kill()
                    raise RuntimeError(f"a worker holding the images failed or took over {timeout:.0f} s "
                                       f"(exit codes {[p.exitcode for p in processes]})") from None
        for process in processes:
            process.join()
    return held


def _hold_images(data: str, image_size: int, cache_dir: str, shared: bool, barrier, results) -> None:
    import numpy as np
    import torch

    from maskopt.search.data.cache import load_images
    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.data.prepared import prepare_data

    prepared = prepare_data(load_dataset(data), image_sizes=[image_size], cache_dir=cache_dir)
    torch.from_numpy(np.ascontiguousarray(np.ones((2, 3, 4, 4), np.uint8)[[1, 0]])).sum()  # the code below, paged in
    barrier.wait(timeout=300)  # every worker has loaded the same libraries: their shares stay as they are
    before = _memory_kib()
    if shared:
        images = prepared.images(image_size)
    else:
        cache = load_images(prepared.source_paths, image_size=image_size, cache_dir=cache_dir)
        images = torch.from_numpy(np.ascontiguousarray(cache.images[prepared.rows]))
        del cache
    checksum = int(images.sum())  # reads every page, as an epoch does
    barrier.wait(timeout=300)  # every worker holds its images now
    after = _memory_kib()
    barrier.wait(timeout=300)  # none lets go before all have measured
    private = sum(after[k] - before[k] for k in ("Private_Clean", "Private_Dirty"))
    results.put({"rss_mib": (after["Rss"] - before["Rss"]) / 1024, "pss_mib": (after["Pss"] - before["Pss"]) / 1024,
                 "private_mib": private / 1024,
                 "images_mib": images.numel() / 2**20, "checksum": checksum})


def _memory_kib() -> dict[str, int]:
    """Rss, Pss, Private_Clean, Private_Dirty, ... of this process in KiB (Linux's /proc/self/smaps_rollup)."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields
