"""Latency budget: what ``study.max_latency_ms`` costs in macro F1 (issue 25, item 5).

The same seeded search, run twice through ``run_search`` on the demo data: once without a budget,
then with ``max_latency_ms`` set between the space's fast and slow architectures. Every trial
records its architecture's CPU latency at its image size (ms per image at batch 1 on one thread,
the least thread CPU time of 15 calls: ``search/train/latency.py``) before it trains: the
``latency`` attribute. A trial over the budget is PRUNED before training, so it costs the latency
measurement only.

Space: backbone in [lcnet_050, mobilenetv3_small_050, resnet18], image_size in [48, 64], lr
log-uniform 3e-4..3e-2, everything else constant (batch 32, AdamW, weight decay 0.05,
cross-entropy, no augmentation, single head); 2 folds x 2 epochs; TPE (seeded, 4 random start-up
trials), maskopt's median pruner (3 start-up trials, 1 warm-up step). The backbones have clearly
different costs, so that a budget can split them robustly: lcnet_050 and mobilenetv3_small_050
measured 1.7-3.1 ms per image and resnet18 6.7-8.5 ms on the busy 2-core machine, idle or under
heavy load, a 2.2x gap (the latency estimator varies up to 1.4x with load). All train from scratch
(``pretrained: false``): only Lite0 has local weights, and pretrained weights against scratch nets
would measure the weights, not the budget.

The budget: before either run, each of the space's 6 configurations is measured 3 times with
``measure_latency`` (the least counts); the budget is the geometric middle of the widest gap,
by ratio, between neighbouring configurations, so it is as far as possible (in ratio) from both.
A budget set from the first run's recorded latencies (their median, as first tried) depends on
which configurations TPE happened to pick, and can fall inside a cluster.

Reported side by side: best macro F1 (mean over folds, complete trials) and its latency, trials
complete / pruned by the median pruner / pruned by the budget before training, epochs trained,
compute (sum of the trials' recorded seconds), study wall time, and the F1 the budget cost. The
notes list each configuration's calibration figure and the latencies both runs recorded, and count
the trials that landed on the other side of the budget than their configuration's calibration
(the split's robustness). No study is exported. Sizes: quick 80 persons, 10 trials per run; full
160 persons, 12 trials per run; 64 px demo images.
"""

from __future__ import annotations

import dataclasses
import itertools

import benchmarks as B

NAME = "latency"
TITLE = "latency budget: the same search without and with max_latency_ms in the widest gap between configurations"

BACKBONES = ("lcnet_050", "mobilenetv3_small_050", "resnet18")
IMAGE_SIZES = (48, 64)
CALIBRATION_ROUNDS = 3


def calibrate(num_classes: int = 18) -> dict[tuple[str, int], float]:
    """Each configuration's batch-1 latency as a trial measures it (one thread, same model), least of
    ``CALIBRATION_ROUNDS`` measurements taken in turn, so that a burst of load hits one round only."""
    from maskopt.search.train.latency import measure_latency
    from maskopt.search.train.models import build_model

    figures: dict[tuple[str, int], float] = {}
    for _ in range(CALIBRATION_ROUNDS):
        for backbone in BACKBONES:
            model = build_model(backbone, num_classes=num_classes, head="single")
            for size in IMAGE_SIZES:
                ms = measure_latency(model, image_size=size, batch_sizes=(1,), threads=1).ms_per_image[1]
                figures[(backbone, size)] = min(ms, figures.get((backbone, size), ms))
    return figures


def budget_in_widest_gap(figures: dict) -> tuple[float, float, float]:
    """(budget, fastest figure above it, slowest below it): the geometric middle of the widest ratio
    between neighbouring figures, rounded to 3 significant digits."""
    ordered = sorted(figures.values())
    below, above = max(itertools.pairwise(ordered), key=lambda pair: pair[1] / pair[0])
    return float(f"{(below * above) ** 0.5:.3g}"), above, below


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

    with B.Timer() as t:
        figures = calibrate()
    budget, above, below = budget_in_widest_gap(figures)
    slow = sorted(f"{b} {s}" for (b, s), ms in figures.items() if ms > budget)
    cfg.log(f"calibration ({t.seconds:.0f} s): " + ", ".join(f"{b} {s} px {ms:.2f}" for (b, s), ms in
                                                         sorted(figures.items(), key=lambda kv: kv[1]))
            + f" ms; budget {budget} ms in the gap {below:.2f}-{above:.2f} ms (x{above / below:.2f}), over it: "
            + ", ".join(slow))

    free = run_study(cfg, make_space(folds=folds, epochs=epochs, seed=cfg.seed, max_latency_ms=None), data,
                     name="latency-free", trials=trials)
    cfg.log(f"no budget: best F1 {free['best']['value'] if free['best'] else float('nan'):.4f}, "
            f"{free['complete']} complete, {free['wall_seconds']:.0f} s")
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
        "pretrained": False, "seed": cfg.seed, "threads": cfg.threads, "max_latency_ms": budget,
        "budget_rule": f"geometric middle of the widest gap between the configurations' latencies, each the least "
                       f"of {CALIBRATION_ROUNDS} measurements before the runs"})
    report.table = (header, rows)

    # Each configuration's calibration figure and what the trials of both runs recorded: a trial on the
    # other side of the budget than its configuration's calibration is one the budget split by load, not cost.
    seen: dict[tuple[str, int], dict[str, list[float]]] = {key: {"free": [], "budget": []} for key in figures}
    for label, side in (("free", free), ("budget", capped)):
        for r in side["trials"]:
            if r["latency_ms"] is not None:
                seen[(r["backbone"], r["image_size"])][label].append(r["latency_ms"])
    crossed = sum((ms > budget) != (figures[key] > budget) for key, runs in seen.items()
                  for ms in runs["free"] + runs["budget"])
    recorded = sum(len(runs["free"]) + len(runs["budget"]) for runs in seen.values())
    arch_lines = []
    for key in sorted(figures, key=figures.get):
        shown = "; ".join(f"{label} {', '.join(f'{v:.2f}' for v in seen[key][label])}" for label in ("free", "budget")
                          if seen[key][label])
        arch_lines.append(f"{key[0]} {key[1]} px: calibration {figures[key]:.2f}" + (f"; {shown}" if shown else ""))
    report.notes.append(f"budget = {budget:g} ms per image, the geometric middle of the widest gap between the "
                        f"configurations' calibration latencies ({below:.2f} -> {above:.2f} ms, x{above / below:.2f}); "
                        f"over it: {', '.join(slow)}")
    report.notes.append(f"latencies recorded on the other side of the budget than their configuration's calibration: "
                        f"{crossed} of {recorded}")
    report.notes.append("latencies (ms per image, batch 1, least thread CPU time; calibration, then each trial's by "
                        "run): " + " | ".join(arch_lines))
    report.details = {"no_budget": free, "budget": capped, "max_latency_ms": budget,
                      "calibration": {f"{b} {s}": ms for (b, s), ms in figures.items()},
                      "crossed_budget": crossed,
                      "latencies_by_configuration": {f"{b} {s}": v for (b, s), v in seen.items()}}
    return report
