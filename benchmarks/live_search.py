"""Live search check: the repo's default against random search and TPE + median, equal wall time.

The replay (``python -m benchmarks replay``, BENCHMARKS.md section 12) compares strategies on
recorded learning curves; this runs them for real on the CPU, on the same data and space:
``make-demo-data`` with 40 persons at 64 px (the data the recorded demo table was trained on),
tf_efficientnet_lite0 from the ImageNet weights ``make demo`` imports (``weights/``), 2 folds x 4
epochs, and spaces/demo.yaml's constants at 64 px with the recorded grid's dimensions as ranges:
lr log-uniform 1e-4..3e-2, aug_strength uniform 0..0.5, loss a choice of ce and label_smoothing.

Three strategies, each given the same wall-clock budget (``run_search(timeout=...)``, one worker,
one torch thread):

- default: spaces/demo.yaml's study settings as read when the benchmark runs: its sampler, its
  pruner and every other setting it gives, so a change to the repo's default is measured as it
  stands;
- random: ``RandomSampler``, no pruner;
- TPE + median: Optuna's stock ``TPESampler`` and ``MedianPruner`` at Optuna's own defaults. maskopt
  gives the median pruner defaults of its own (3 start-up trials, 1 warm-up step; the replay's
  "TPE + median" uses them), so Optuna's (``n_startup_trials=5, n_warmup_steps=0``) are passed
  explicitly.

The two stock strategies share demo.yaml's training settings (folds, epochs, weights, warm-up, ...)
but not any other search setting it adds: they run with maskopt's defaults for those. Every run
keeps checkpoints in the scratch folder, as ``maskopt search`` does: a scheduler of the default
may need them, and all three pay the same for writing them. No artifacts, no export.

Each seed (``--seeds`` of them from ``--seed``; else 3, or 1 with ``--quick``, which also cuts the
budget to 30 s) seeds the sampler, the folds and training alike for its three runs. The runs interleave with a rotating order
(seed 0: default, random, TPE + median; seed 1: random, TPE + median, default; ...), so drifts in
the machine's load hit all three alike. One unrecorded 1-epoch trial first pays the one-time
costs (image cache, first model build).

Counted per run, from its first trial's start: the trials finished within the budget (the one
running at the deadline finishes, uncounted). Reported per strategy: the final best CV macro F1
(complete trials that ran every fold) per seed and its median; the time its best so far first
reached random search's final best of the same seed, over random search's own time to it (median
over seeds; a seed that never reached it counts as infinitely slow, "never"); trials complete and
pruned (a trial a pausing pruner paused counts as pruned, and its continuation as a trial of its
own); epochs trained, each trial's own (a continuation's inherited epochs are not counted twice).
Default budget 200 s per run (9 runs, about 35 minutes with the data); ``--budget`` sets it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import benchmarks as B

NAME = "live"
TITLE = "live search on the demo data: the default vs random search vs TPE + median, equal wall time"

LITE0 = B.LITE0
PERSONS, IMAGE_SIZE, FOLDS, EPOCHS = 40, 64, 2, 4  # the recorded demo table's (benchmarks/curves.py)
DEFAULT, RANDOM, TPE_MEDIAN = "default", "random", "TPE + median"
OPTUNA_MEDIAN = (("n_startup_trials", 5), ("n_warmup_steps", 0))  # MedianPruner()'s own defaults
# Study settings that shape the data, the folds or training: the stock strategies keep demo.yaml's.
SHARED = {"name", "data", "layout", "folds", "epochs", "seed", "corrections", "exclude_broken", "workers_per_gpu",
          "objectives", "max_latency_ms"}


def demo_space(weights):
    """spaces/demo.yaml at the recorded table's size, with the recorded grid's dimensions as ranges."""
    from maskopt.search.space import Choice, Constant, Range, load_space

    space = load_space(B.ROOT / "spaces" / "demo.yaml", check_names=False)
    study = dataclasses.replace(space.study, folds=FOLDS, epochs=EPOCHS, data=None, pretrained=True,
                                weights=str(weights))
    dims = dict(space.dims, backbone=Constant(LITE0), image_size=Constant(IMAGE_SIZE),
                lr=Range(1e-4, 3e-2, log=True), aug_strength=Range(0.0, 0.5),
                loss=Choice(("ce", "label_smoothing")))
    return dataclasses.replace(space, study=study, dims=dims)


def search_only_fields() -> list[str]:
    """StudySettings fields that steer the search rather than the data or training (sampler, pruner, ...)."""
    from maskopt.search.space import StudySettings
    from maskopt.search.train.params import TrainConfig

    trained = {f.name for f in dataclasses.fields(TrainConfig)}
    return [f.name for f in dataclasses.fields(StudySettings) if f.name not in trained | SHARED]


def strategies(space) -> dict:
    """Label -> space: demo.yaml's own search settings, then the two stock ones on its training settings."""
    from maskopt.search.space import Component, StudySettings

    stock = {name: getattr(StudySettings(), name) for name in search_only_fields()}

    def with_search(sampler, pruner):
        study = dataclasses.replace(space.study, **{**stock, "sampler": sampler, "pruner": pruner})
        return dataclasses.replace(space, study=study)

    return {DEFAULT: space,
            RANDOM: with_search(Component("random"), Component("none")),
            TPE_MEDIAN: with_search(Component("tpe"), Component("median", OPTUNA_MEDIAN))}


def describe(study) -> str:
    """The search settings of a study: sampler + pruner, and any other search setting not at maskopt's default."""
    from maskopt.search.space import StudySettings

    def label(component) -> str:
        options = ", ".join(f"{k}={v}" for k, v in component.options)
        return f"{component.name}({options})" if options else component.name

    default = StudySettings()
    others = [f"{name}={getattr(study, name)!r}" for name in search_only_fields()
              if name not in ("sampler", "pruner") and getattr(study, name) != getattr(default, name)]
    return f"{label(study.sampler)} + {label(study.pruner)}" + (f"; {', '.join(others)}" if others else "")


def warm_up_trial(cfg: B.Config, space, data) -> None:
    """One unrecorded 1-epoch trial: the image cache, the first model build and imports, paid before any run."""
    from maskopt.search.space import Component
    from maskopt.search.study.runner import run_search

    study = dataclasses.replace(space.study, epochs=1, sampler=Component("random"), pruner=Component("none"))
    run_search(dataclasses.replace(space, study=study), trials=1, storage=f"sqlite:///{cfg.workdir / 'warm-up.db'}",
               data=data, study="warm-up", seed=cfg.seed, device="cpu", cache_dir=cfg.workdir / "cache",
               threads=cfg.threads, checkpoints=False, quiet=True)


def run_one(cfg: B.Config, space, data, *, name: str, budget: float, seed: int) -> dict:
    """One search of ``budget`` seconds; its trials within the budget and its best-so-far curve."""
    import optuna

    from maskopt.search.study.record import TrialRecord
    from maskopt.search.study.runner import run_search

    url = f"sqlite:///{cfg.workdir / (name + '.db')}"
    with B.Timer() as t:
        run_search(space, trials=100_000, storage=url, data=data, study=name, seed=seed, device="cpu",
                   timeout=budget, cache_dir=cfg.workdir / "cache", threads=cfg.threads,
                   checkpoints=cfg.workdir / "checkpoints", quiet=True)
    trials = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
              if t.datetime_start is not None and t.datetime_complete is not None]
    t0 = min((t.datetime_start.timestamp() for t in trials), default=0.0)
    rows = []
    for trial in trials:
        r = TrialRecord.of(trial)
        rows.append({"number": r.number, "state": r.state.name, "value": r.value,
                     "complete_s": round(trial.datetime_complete.timestamp() - t0, 2),
                     "ran_every_fold": r.ran_every_fold,
                     "epochs": r.epochs_trained_here if r.epochs_trained_here is not None else (r.epochs_trained or 0),
                     "params": r.params})
    counted = sorted((r for r in rows if r["complete_s"] <= budget), key=lambda r: r["complete_s"])
    curve, best = [], None  # (seconds, best so far) at each improvement
    for r in counted:
        if r["ran_every_fold"] and r["value"] is not None and (best is None or r["value"] > best):
            best = r["value"]
            curve.append((r["complete_s"], best))
    return {"best": best, "curve": curve, "wall_seconds": round(t.seconds, 1),
            "complete": sum(r["state"] == "COMPLETE" for r in counted),
            "pruned": sum(r["state"] == "PRUNED" for r in counted),
            "failed": sum(r["state"] == "FAIL" for r in counted),
            "after_budget": len(rows) - len(counted),
            "epochs": sum(r["epochs"] for r in counted), "trials": rows}


def time_to_reach(curve, score: float | None) -> float:
    """Seconds until the best so far first reached ``score``; infinite if it never did."""
    if score is None:
        return math.inf
    return next((t for t, value in curve if value >= score - 1e-12), math.inf)


def seconds_ratio(a: float, b: float) -> float:
    """``a / b`` of two times to the same score; ``b`` is random search's own, never zero in practice."""
    return a / b if b else 1.0


def run(cfg: B.Config) -> B.Report:
    report = B.Report(NAME, TITLE)
    weights = B.WEIGHTS
    report.skipped = B.missing_lite0_weights()
    if report.skipped:
        return report
    budget = cfg.budget or (30.0 if cfg.quick else 200.0)
    seeds = [cfg.seed + i for i in range(cfg.seeds or (1 if cfg.quick else 3))]
    data = B.demo_data(cfg, persons=PERSONS, size=IMAGE_SIZE)
    space = demo_space(weights)
    spaces = strategies(space)
    with B.Timer() as warm:
        warm_up_trial(cfg, space, data)
    cfg.log(f"warm-up trial (unrecorded, 1 epoch per fold): {warm.seconds:.0f} s")

    names = list(spaces)
    per_seed = []
    for i, seed in enumerate(seeds):
        order = names[i % len(names):] + names[:i % len(names)]
        result = {}
        for label in order:
            slug = label.replace(" + ", "-").replace(" ", "-")
            r = result[label] = run_one(cfg, spaces[label], data, name=f"live-{slug}-s{seed}", budget=budget, seed=seed)
            best = "—" if r["best"] is None else f"{r['best']:.4f}"
            cfg.log(f"seed {seed}, {label}: best F1 {best}; "
                    f"{r['complete']} complete, {r['pruned']} pruned, {r['failed']} failed, {r['epochs']} epochs "
                    f"in {budget:.0f} s ({r['after_budget']} finished after it; {r['wall_seconds']:.0f} s in all); "
                    "improvements at " + (", ".join(f"{t:.0f}s:{v:.3f}" for t, v in r["curve"]) or "none"))
            for trial in r["trials"]:
                cfg.debug(f"#{trial['number']} {trial['state']:<8} at {trial['complete_s']:.0f} s "
                          f"F1 {trial['value'] if trial['value'] is not None else float('nan'):.4f} "
                          f"{trial['epochs']} epochs {trial['params']}")
        target = result[RANDOM]["best"]
        own = time_to_reach(result[RANDOM]["curve"], target)
        for r in result.values():  # None in the results where never reached (JSON has no infinity)
            reached = time_to_reach(r["curve"], target)
            r["reached_random_final"] = target is not None and not math.isinf(reached)
            r["time_to_random_final"] = reached if r["reached_random_final"] else None
            r["ratio_to_random"] = seconds_ratio(reached, own) if r["reached_random_final"] else None
        per_seed.append({"seed": seed, "order": order, "random_final": target, "runs": result})

    def f1(value) -> str:
        return "—" if value is None else f"{value:.4f}"

    def time_ratio(value) -> str:
        return "never" if value is not None and math.isinf(value) else B.fmt_ratio(value)

    rows = []
    for label in names:
        runs = [s["runs"][label] for s in per_seed]
        bests = [r["best"] for r in runs]
        # Seeds where random search finished a trial; a strategy that never reached its best is infinitely slow.
        judged = [r for s, r in zip(per_seed, runs) if s["random_final"] is not None]
        ratios = [r["ratio_to_random"] if r["reached_random_final"] else math.inf for r in judged]
        reached = sum(r["reached_random_final"] for r in judged)
        rows.append([
            f"{label}: {describe(spaces[label].study)}",
            ", ".join(f1(v) for v in bests),
            f1(B.median(bests)),
            f"{time_ratio(statistics.median(ratios)) if ratios else '—'} ({reached}/{len(ratios)})",
            ", ".join(time_ratio(v) for v in ratios),
            ", ".join(f"{r['complete']}/{r['pruned']}" for r in runs),
            ", ".join(str(r["epochs"]) for r in runs),
        ])
    report.table = (["strategy", "final best CV F1 per seed", "median",
                     "time to random's final best / random's (seeds reaching it)", "per seed",
                     "trials complete/pruned per seed", "epochs trained per seed"], rows)
    report.settings = {
        "budget_seconds": budget, "seeds": seeds, "persons": PERSONS, "images": PERSONS * 7, "image_size": IMAGE_SIZE,
        "folds": FOLDS, "epochs": EPOCHS, "threads": cfg.threads, "workers": 1, "backbone": LITE0,
        "pretrained": str(weights), "lr": "log 1e-4..3e-2", "aug_strength": "0..0.5", "loss": ["ce", "label_smoothing"],
        "strategies": {label: describe(s.study) for label, s in spaces.items()},
        "order": "rotating per seed", "checkpoints": True, "warm_up_seconds": round(warm.seconds, 1)}
    report.notes.append(f"{budget:.0f} s per run, {len(seeds)} seed(s), {len(names) * len(seeds)} runs; counted from "
                        "each run's first trial start; TPE + median is Optuna's stock MedianPruner "
                        "(n_startup_trials=5, n_warmup_steps=0), not maskopt's median defaults")
    report.details = {"per_seed": per_seed}
    return report
