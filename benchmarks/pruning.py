"""3. Pruning: the same study (seed, space, trial count) with the pruner on and off.

Both studies run ``run_search`` on the same demo data with spaces/tiny.yaml's parameters and
sampler (TPE, seeded), shrunk to CPU size (folds, epochs, image size; see ``settings`` in the
result). The only difference is the pruner: tiny.yaml's (percentile 25: a trial below the top
quarter at a step stops; 3 start-up trials, 2 warm-up steps) against none. Counted: epochs actually trained (the trials' ``epochs_trained``
attribute, pruned trials included) and the best macro F1 found (mean over folds, complete trials
only). Targets: at least 40% fewer epochs, best F1 within 0.01 of the unpruned study's.

The code takes several seeds (studies then alternate which goes first, and the figures are
medians over seeds); both modes run one seed, for time. The image cache and the first model
builds are paid before either study starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import benchmarks as B

NAME = "pruning"
TITLE = "pruning: the same study with tiny.yaml's pruner on and off"


def run_study(cfg: B.Config, space, data, *, name: str, trials: int, seed: int) -> dict:
    import optuna

    from maskopt.search.study.record import StudyRecord
    from maskopt.search.study.runner import run_search

    url = f"sqlite:///{cfg.workdir / (name + '.db')}"
    with B.Timer() as t:
        run_search(space, trials=trials, storage=url, data=data, study=name, seed=seed, device="cpu",
                   cache_dir=cfg.workdir / "cache", threads=cfg.threads, quiet=True)
    study = optuna.load_study(study_name=name, storage=url)
    rows = B.trial_table(study)
    top = StudyRecord.of(study).top(1)
    return {
        "seconds": t.seconds,
        "epochs": int(sum(r["epochs_trained"] or 0 for r in rows)),
        "best_f1": top[0].value if top else None,
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "complete": sum(r["state"] == "COMPLETE" for r in rows),
        "trial_seconds": [r["seconds"] for r in rows if r["state"] == "COMPLETE"],
        "trials": rows,
        "pruner": space.study.pruner.name,
    }


def run(cfg: B.Config) -> B.Report:
    from maskopt.search.space import Component

    quick = cfg.quick
    persons = 30 if quick else 120
    folds, epochs, image_size = 3, 3 if quick else 4, 32
    trials = 10 if quick else 20
    seeds = [cfg.seed]
    data = B.demo_data(cfg, persons=persons)
    pruned_space = B.benchmark_space(folds=folds, epochs=epochs, image_size=image_size)
    unpruned_space = dataclasses.replace(pruned_space, study=dataclasses.replace(pruned_space.study, pruner=Component("none")))
    B.warm_up(cfg, data, image_size)

    per_seed = []
    for i, seed in enumerate(seeds):
        sides = [("on", pruned_space), ("off", unpruned_space)]
        if i % 2:
            sides.reverse()
        result = {}
        for label, space in sides:
            result[label] = run_study(cfg, space, data, name=f"pruning-{label}-s{seed}", trials=trials, seed=seed)
            r = result[label]
            cfg.log(f"seed {seed}, pruner {label}: {r['epochs']} epochs, best F1 {r['best_f1']:.4f}, "
                    f"{r['pruned']} pruned / {r['complete']} complete, {r['seconds']:.0f} s")
        per_seed.append(result)

    epochs_on = B.median(r["on"]["epochs"] for r in per_seed)
    epochs_off = B.median(r["off"]["epochs"] for r in per_seed)
    epoch_ratio = B.median(r["on"]["epochs"] / r["off"]["epochs"] for r in per_seed)
    f1_on = B.median(r["on"]["best_f1"] for r in per_seed)
    f1_off = B.median(r["off"]["best_f1"] for r in per_seed)
    f1_diff = B.median(r["on"]["best_f1"] - r["off"]["best_f1"] for r in per_seed)
    seconds_on = B.median(r["on"]["seconds"] for r in per_seed)
    seconds_off = B.median(r["off"]["seconds"] for r in per_seed)

    report = B.Report(NAME, TITLE, settings={
        "space": f"spaces/tiny.yaml: sampler {pruned_space.study.sampler}, pruner {pruned_space.study.pruner}",
        "persons": persons, "images": persons * 7, "folds": folds, "epochs": epochs, "image_size": image_size,
        "trials": trials, "seeds": seeds, "threads": cfg.threads})
    report.add("epochs trained (sum over trials)", epochs_on, epochs_off, "pruner off", unit="ep", ratio=epoch_ratio,
               ratio_label="on/off", target="<= 0.60", met=epoch_ratio is not None and epoch_ratio <= 0.60)
    report.add("best macro F1", f1_on, f1_off, "pruner off", ratio=f1_diff, ratio_label="on - off",
               target=">= -0.01", met=f1_diff is not None and f1_diff >= -0.01)
    report.add("study wall time", seconds_on, seconds_off, "pruner off", unit="s",
               ratio=B.ratio(seconds_on, seconds_off), ratio_label="on/off")
    report.add("trials pruned", B.median(r["on"]["pruned"] for r in per_seed), B.median(r["off"]["pruned"] for r in per_seed),
               "pruner off")
    report.details = {"per_seed": per_seed}
    complete_seconds = [s for r in per_seed for side in r.values() for s in side["trial_seconds"] if s]
    report.details["median_complete_trial_seconds"] = float(np.median(complete_seconds)) if complete_seconds else None
    return report
