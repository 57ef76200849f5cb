"""Search strategies replayed on recorded learning curves: time to a target and regret, over seeds.

Reads the tables ``python -m benchmarks curves`` recorded (``benchmarks/curves/<dataset>.json.gz``:
64 pretrained configurations on a grid, each trained on every fold for every epoch) and replays
each strategy on them with ``maskopt.search.study.replay.replay`` (nothing is trained; a run takes
a fraction of a second):

- stock Optuna, through maskopt's catalogue and defaults: random search; TPE; TPE + median;
  TPE + hyperband; random + hyperband;
- maskopt's checkpoint scheduler, the ``asha`` pruner (pausing and promoting trials, see
  search/study/scheduler.py), with random search and with TPE;
- the repo's current default: spaces/demo.yaml's sampler and pruner.

At 1, 4 and 16 workers, each run gets the same compute: the simulated wall time of
``BUDGET_TRIALS`` full trials of the table's mean length, divided by the workers. Over the seeds
(20 unless ``--seeds``; 5 with ``--quick``), per dataset and worker count:

- time to random search's final best: per seed, the time a strategy's best so far first reaches
  what random search ended with in the same seed, as a ratio to random search's own time to it;
- time to the best stock combination's final best: the same against the stock combination with
  the highest median final best, as a ratio to that combination's own time;
- final regret: the table's best configuration's score minus the final best.

A strategy that never reaches a target counts as infinitely slow in the medians and quartiles
("never"), and the table says in how many seeds it got there.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

import benchmarks as B
from benchmarks.curves import CURVES_DIR

NAME = "replay"
TITLE = "search strategies replayed on recorded learning curves: time to target, regret, over seeds"

WORKERS = (1, 4, 16)
BUDGET_TRIALS = 32  # compute per run: this many full trials of the table's mean length, shared by the workers
RANDOM = "random"


def strategies() -> dict[str, tuple]:
    """Label -> (sampler, pruner): the stock combinations first, then spaces/demo.yaml's."""
    from maskopt.search.space import Component, load_space

    demo = load_space(B.ROOT / "spaces" / "demo.yaml", check_names=False).study
    none, tpe, random = Component("none"), Component("tpe"), Component("random")
    return {RANDOM: (random, none), "TPE": (tpe, none), "TPE + median": (tpe, Component("median")),
            "TPE + hyperband": (tpe, Component("hyperband")), "random + hyperband": (random, Component("hyperband")),
            "random + asha": (random, Component("asha")),
            "random + asha(reduction_factor=4)": (random, Component("asha", (("reduction_factor", 4),))),
            "TPE + asha": (tpe, Component("asha")),
            f"demo.yaml: {_label(demo.sampler)} + {_label(demo.pruner)}": (demo.sampler, demo.pruner)}


STOCK = 5  # the first five strategies are stock Optuna


def quartiles(values) -> tuple[float, float, float]:
    """First quartile, median and third quartile, interpolated linearly (as numpy's default); a
    quartile that falls on or next to an infinite value (never reached) is infinite."""
    ordered = sorted(float(v) for v in values)
    out = []
    for q in (0.25, 0.5, 0.75):
        position = q * (len(ordered) - 1)
        low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
        out.append(math.inf if math.isinf(high) else low + (high - low) * (position - math.floor(position)))
    return tuple(out)


def spread(values, fmt: str = "{:.2f}") -> str:
    """``median [q1, q3]`` with infinity shown as ``never``."""
    q1, q2, q3 = (("never" if math.isinf(v) else fmt.format(v)) for v in quartiles(values))
    return f"{q2} [{q1}, {q3}]"


def time_or_inf(run, target: float) -> float:
    t = run.time_to(target)
    return math.inf if t is None else t


def ratio(a: float, b: float) -> float:
    """``a / b`` of two times that may be infinite (never reached); nan when neither was reached."""
    if math.isinf(a) and math.isinf(b):
        return math.nan
    return math.inf if math.isinf(a) else (0.0 if math.isinf(b) else a / max(b, 1e-12))


def compare(curves, *, workers: int, seeds: int) -> dict:
    """Every strategy at ``workers`` workers over ``seeds`` seeds: rows of figures and the raw runs."""
    from maskopt.search.study.replay import replay

    mean_trial = float(curves.seconds.sum(axis=(1, 2)).mean())
    budget = BUDGET_TRIALS * mean_trial / workers
    runs = {label: [replay(curves, sampler=sampler, pruner=pruner, workers=workers, seed=seed, budget_seconds=budget)
                    for seed in range(seeds)]
            for label, (sampler, pruner) in strategies().items()}
    best = float(curves.values.max())
    finals = {label: [run.best if run.best is not None else 0.0 for run in rs] for label, rs in runs.items()}
    stock = max(list(runs)[:STOCK], key=lambda label: (statistics.median(finals[label]), np.mean(finals[label])))
    random_target = finals[RANDOM]
    stock_target = finals[stock]
    random_time = [time_or_inf(run, target) for run, target in zip(runs[RANDOM], random_target)]
    stock_time = [time_or_inf(run, target) for run, target in zip(runs[stock], stock_target)]
    rows = {}
    for label, rs in runs.items():
        to_random = [time_or_inf(run, target) for run, target in zip(rs, random_target)]
        to_stock = [time_or_inf(run, target) for run, target in zip(rs, stock_target)]
        rows[label] = {
            "to_random_ratio": [r for r in map(ratio, to_random, random_time) if not math.isnan(r)],
            "reached_random": sum(not math.isinf(t) for t in to_random),
            "to_stock_ratio": [r for r in map(ratio, to_stock, stock_time) if not math.isnan(r)],
            "reached_stock": sum(not math.isinf(t) for t in to_stock),
            "regret": [best - f for f in finals[label]],
            "trials": statistics.median(len(run.trials) for run in rs),
            "pruned": statistics.median(run.pruned for run in rs),
            "finals": finals[label],
        }
    return {"budget": budget, "mean_trial": mean_trial, "stock": stock, "rows": rows}


def run(cfg: B.Config) -> B.Report:
    from maskopt.search.study.replay import Curves

    report = B.Report(NAME, TITLE)
    names = [cfg.dataset] if cfg.dataset else ["fashion", "demo"]
    paths = {name: CURVES_DIR / f"{name}.json.gz" for name in names}
    missing = [str(p.relative_to(B.ROOT)) for p in paths.values() if not p.is_file()]
    if missing:
        report.skipped = f"no recorded curves ({', '.join(missing)}): run `python -m benchmarks curves` first"
        return report
    seeds = cfg.seeds or (5 if cfg.quick else 20)
    header = ["dataset", "workers", "sampler + pruner", "time to random's final best / random's (seeds reaching it)",
              "time to the best stock final / its own (seeds reaching it)", "final regret", "trials (pruned)"]
    table, details = [], {}
    for name, path in paths.items():
        curves = Curves.read(path)
        about = curves.about
        values = curves.values
        cfg.log(f"{name}: {len(curves.configs)} configurations, {curves.folds} folds x {curves.epochs} epochs; final "
                f"CV F1 {values.min():.3f}-{values.max():.3f} (median {np.median(values):.3f}); recorded in "
                f"{about.get('recording_seconds', '?')} s by `{about.get('command', '?')}`")
        for workers in WORKERS:
            result = compare(curves, workers=workers, seeds=seeds)
            details[f"{name}/{workers}"] = result
            cfg.log(f"{name}, {workers} worker(s): budget {result['budget']:.0f} simulated s "
                    f"({BUDGET_TRIALS} mean trials of {result['mean_trial']:.1f} s / {workers}); best stock: "
                    f"{result['stock']}")
            for label, r in result["rows"].items():
                table.append([name, str(workers), label + (" (best stock)" if label == result["stock"] else ""),
                              f"{spread(r['to_random_ratio'])} ({r['reached_random']}/{seeds})",
                              f"{spread(r['to_stock_ratio'])} ({r['reached_stock']}/{seeds})",
                              spread(r["regret"], "{:.4f}"), f"{r['trials']:g} ({r['pruned']:g})"])
    report.table = (header, table)
    report.settings = {"seeds": seeds, "workers": list(WORKERS), "budget_trials": BUDGET_TRIALS,
                       "strategies": {label: [_label(s), _label(p)] for label, (s, p) in strategies().items()},
                       "curves": {name: str(Path(p).relative_to(B.ROOT)) for name, p in paths.items()}}
    report.notes.append("medians [quartiles] over seeds; ratios below 1 are faster than the reference; 'never': "
                        "not reached within the budget in that quartile")
    report.details = details
    return report


def _label(component) -> str:
    options = ", ".join(f"{k}={v}" for k, v in component.options)
    return f"{component.name}({options})" if options else component.name
