"""Latency budget: what ``study.max_latency_ms`` costs in macro F1 (issue 25, item 5).

The same seeded search, run twice through ``run_search`` on the demo data: once without a budget,
then with ``max_latency_ms`` set to the median of the first run's recorded latencies (every trial
records its architecture's CPU latency at its image size, ms per image at batch 1 on one thread,
before it trains: the ``latency`` attribute). A trial over the budget is PRUNED before training,
so it costs the latency measurement only.

Space: backbone in [mobilenetv3_small_050, resnet10t, tf_efficientnet_lite0], image_size in
[48, 64], lr log-uniform 3e-4..3e-2, everything else constant (batch 32, AdamW, weight decay 0.05,
cross-entropy, no augmentation, single head); 2 folds x 2 epochs; TPE (seeded, 4 random start-up
trials), maskopt's median pruner (3 start-up trials, 1 warm-up step). All backbones train from
scratch (``pretrained: false``): only Lite0 has local weights (``weights/``), and a pretrained
Lite0 against scratch tiny nets would measure the weights, not the budget.

Reported side by side: best macro F1 (mean over folds, complete trials) and its latency, trials
complete / pruned by the median pruner / pruned by the budget before training, epochs trained,
compute (sum of the trials' recorded seconds), study wall time, and the F1 the budget cost.

The second run needs the first's median, so the runs cannot alternate: the budgeted run always
goes second. Latency is re-measured in the second run, on the same (shared, busy) machine: the
budget splits the architectures by their measured speed that day, and a configuration near the
median can fall on either side. No study is exported. Sizes: quick 80 persons, 10 trials per run;
full 160 persons, 12 trials per run; 64 px demo images.
"""

from __future__ import annotations

import dataclasses
import statistics

import benchmarks as B

NAME = "latency"
TITLE = "latency budget: the same search without and with max_latency_ms = the first run's median latency"

BACKBONES = ("mobilenetv3_small_050", "resnet10t", "tf_efficientnet_lite0")
IMAGE_SIZES = (48, 64)


def make_space(*, folds: int, epochs: int, seed: int, max_latency_ms: float | None):
    """tiny.yaml's space with three backbones and two image sizes searched, lr searched, the rest constant."""
    from maskopt.search.space import Choice, Component, Constant, Range, load_space

    tiny = load_space(B.ROOT / "spaces" / "tiny.yaml", check_names=False)
    constants = {"weight_decay": 0.05, "batch_size": 32, "freeze_depth": 0, "sampler": "uniform", "aug_strength": 0.0,
                 "loss": "ce", "optimizer": "adamw", "age_old": 60, "head": "single"}
    dims = dict(tiny.dims)
    dims.update({name: Constant(value) for name, value in constants.items()})
    dims.update(backbone=Choice(BACKBONES), image_size=Choice(IMAGE_SIZES), lr=Range(3e-4, 3e-2, log=True))
    study = dataclasses.replace(
        tiny.study, folds=folds, epochs=epochs, seed=seed, data=None, pretrained=False, weights=None,
        sampler=Component("tpe", (("n_startup_trials", 4),)), pruner=Component("median"),
        max_latency_ms=max_latency_ms)
    return dataclasses.replace(tiny, study=study, dims=dims)


def run_study(cfg: B.Config, space, data, *, name: str, trials: int) -> dict:
    import optuna

    from maskopt.search.study.record import TrialRecord
    from maskopt.search.study.runner import run_search

    url = f"sqlite:///{cfg.workdir / (name + '.db')}"
    with B.Timer() as t:
        run_search(space, trials=trials, storage=url, data=data, study=name, seed=cfg.seed, device="cpu",
                   cache_dir=cfg.workdir / "cache", threads=cfg.threads, checkpoints=False, quiet=True)
    study = optuna.load_study(study_name=name, storage=url)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        r = TrialRecord.of(trial)
        reason = r.prune_reason or ""
        rows.append({
            "number": r.number, "state": r.state.name, "value": r.value,
            "backbone": r.params.get("backbone"), "image_size": r.params.get("image_size"), "lr": r.params.get("lr"),
            "latency_ms": r.latency.ms_per_image.get(1) if r.latency else None,
            "latency_ms_b32": r.latency.ms_per_image.get(32) if r.latency else None,
            "seconds": r.seconds, "epochs_trained": r.epochs_trained or 0,
            "over_budget": r.state.name == "PRUNED" and "max_latency_ms" in reason,
            "prune_reason": r.prune_reason,
        })
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    over = sum(r["over_budget"] for r in rows)
    return {
        "wall_seconds": t.seconds,
        "compute_seconds": sum(r["seconds"] or 0.0 for r in rows),
        "epochs": sum(r["epochs_trained"] for r in rows),
        "complete": len(complete),
        "pruned_by_budget": over,
        "pruned_by_pruner": sum(r["state"] == "PRUNED" for r in rows) - over,
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "best": best,
        "trials": rows,
    }


def _config(row: dict | None) -> str:
    return f"{row['backbone']} {row['image_size']} px" if row else "—"


def run(cfg: B.Config) -> B.Report:
    quick = cfg.quick
    persons = 80 if quick else 160
    trials = 10 if quick else 12
    folds, epochs = 2, 2
    data = B.demo_data(cfg, persons=persons, size=64)
    B.warm_up(cfg, data, IMAGE_SIZES[0], backbones=BACKBONES)
    B.warm_up(cfg, data, IMAGE_SIZES[1], backbones=())

    free = run_study(cfg, make_space(folds=folds, epochs=epochs, seed=cfg.seed, max_latency_ms=None), data,
                     name="latency-free", trials=trials)
    latencies = [r["latency_ms"] for r in free["trials"] if r["latency_ms"] is not None]
    budget = round(statistics.median(latencies), 3)
    cfg.log(f"no budget: best F1 {free['best']['value'] if free['best'] else float('nan'):.4f}, "
            f"{free['complete']} complete, {free['wall_seconds']:.0f} s; median latency {budget} ms per image")
    capped = run_study(cfg, make_space(folds=folds, epochs=epochs, seed=cfg.seed, max_latency_ms=budget), data,
                       name="latency-budget", trials=trials)
    cfg.log(f"budget {budget} ms: best F1 {capped['best']['value'] if capped['best'] else float('nan'):.4f}, "
            f"{capped['pruned_by_budget']} over budget, {capped['wall_seconds']:.0f} s")
    for side in (free, capped):
        for r in side["trials"]:
            cfg.debug(f"#{r['number']} {r['state']:<8} {r['backbone']:<22} {r['image_size']} px "
                      f"lr {r['lr']:.2e} latency {r['latency_ms'] or float('nan'):.2f} ms "
                      f"F1 {r['value'] if r['value'] is not None else float('nan'):.4f} {r['seconds'] or 0:.1f} s")

    def cell(value, unit="", digits=None):
        if value is None:
            return "—"
        return (f"{value:.{digits}f}" if digits is not None else B.fmt(value)) + (f" {unit}" if unit else "")

    def diff(a, b, unit="", digits=4):
        return "—" if a is None or b is None else f"{b - a:+.{digits}f}" + (f" {unit}" if unit else "")

    fb, cb = free["best"], capped["best"]
    f1_free, f1_capped = (fb["value"] if fb else None), (cb["value"] if cb else None)
    lat_free, lat_capped = (fb["latency_ms"] if fb else None), (cb["latency_ms"] if cb else None)
    header = ["figure", "no budget", f"max_latency_ms {budget:g}", "budget - none"]
    rows = [
        ["best macro F1", cell(f1_free, digits=4), cell(f1_capped, digits=4), diff(f1_free, f1_capped)],
        ["its latency (batch 1, 1 thread)", cell(lat_free, "ms", 2), cell(lat_capped, "ms", 2),
         diff(lat_free, lat_capped, "ms", 2)],
        ["its configuration", _config(fb), _config(cb), ""],
        ["trials complete", str(free["complete"]), str(capped["complete"]), ""],
        ["pruned by the budget before training", str(free["pruned_by_budget"]), str(capped["pruned_by_budget"]), ""],
        ["pruned by the median pruner", str(free["pruned_by_pruner"]), str(capped["pruned_by_pruner"]), ""],
        ["epochs trained (sum)", str(free["epochs"]), str(capped["epochs"]), ""],
        ["compute (sum of trial seconds)", cell(free["compute_seconds"], "s", 0), cell(capped["compute_seconds"], "s", 0),
         f"{capped['compute_seconds'] / free['compute_seconds']:.2f} x" if free["compute_seconds"] else "—"],
        ["study wall time", cell(free["wall_seconds"], "s", 0), cell(capped["wall_seconds"], "s", 0),
         f"{capped['wall_seconds'] / free['wall_seconds']:.2f} x" if free["wall_seconds"] else "—"],
    ]
    report = B.Report(NAME, TITLE, settings={
        "persons": persons, "images": persons * 7, "demo_image_px": 64, "folds": folds, "epochs": epochs,
        "trials_per_run": trials, "backbones": list(BACKBONES), "image_sizes": list(IMAGE_SIZES),
        "lr": "log 3e-4..3e-2", "sampler": "tpe (4 start-up trials)", "pruner": "median (3 start-up, 1 warm-up step)",
        "pretrained": False, "seed": cfg.seed, "threads": cfg.threads, "max_latency_ms": budget})
    report.table = (header, rows)

    # Each architecture's measured latency in both runs: the budget splits them by that day's speed.
    per_arch = {}
    for label, side in (("free", free), ("budget", capped)):
        for r in side["trials"]:
            if r["latency_ms"] is not None:
                per_arch.setdefault((r["backbone"], r["image_size"]), {"free": [], "budget": []})[label].append(
                    r["latency_ms"])
    arch_lines = []
    for (backbone, size), seen in sorted(per_arch.items(), key=lambda kv: statistics.median(kv[1]["free"] + kv[1]["budget"])):
        shown = ", ".join(f"{label} {'/'.join(f'{v:.2f}' for v in seen[label])}" for label in ("free", "budget")
                          if seen[label])
        arch_lines.append(f"{backbone} {size} px: {shown} ms")
    report.notes.append(f"budget = median of the first run's {len(latencies)} latencies = {budget:g} ms per image")
    report.notes.append("measured latencies (ms per image, batch 1; each trial's, by run): " + "; ".join(arch_lines))
    report.details = {"no_budget": free, "budget": capped, "max_latency_ms": budget,
                      "latencies_by_architecture": {f"{b} {s}": v for (b, s), v in per_arch.items()}}
    return report
