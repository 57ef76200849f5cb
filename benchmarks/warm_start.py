"""Warm start replayed on the recorded learning curves: one dataset's best configurations first on the other.

``maskopt search --warm-start STUDY`` queues the top configurations of an earlier study before the
sampler proposes anything. In the replay simulator that is ``replay(..., order=rows)``: the rows
are enqueued first. The two tables ``python -m benchmarks curves`` recorded
(``benchmarks/curves/{fashion,demo}.json.gz``) share one 64-point grid (lr 8 x aug_strength 4 x
loss 2), so a configuration of one maps to the same row of the other.

For each table (the target), each sampler (TPE, random; no pruner) and 1 and 4 workers, over the
seeds (20 unless ``--seeds``; 5 with ``--quick``), a cold search and warm-started ones replay with
the same seed and compute (``benchmarks/replay.py``'s budget: 32 mean trials, divided by the
workers). The warm starts enqueue the top ``TOP`` configurations of:

- the other table: the measurement (another dataset's study);
- the target itself: the ideal source (the same data before a change that did not matter);
- the other table's worst ``TOP``: a source whose ranking says nothing about the target.

Per seed: the time the warm search takes to reach the cold search's final best, as cold's time over
warm's (above 1: warm is faster; 0: warm never got there), each search's regret (the table's best
score minus the best so far) at a quarter of the budget, and its final regret. How well the tables agree (Spearman's rank correlation
over the 64 configurations, and where each one's top configurations rank in the other) says when
a warm start should help.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

import benchmarks as B
from benchmarks.curves import CURVES_DIR
from benchmarks.replay import BUDGET_TRIALS, ratio, spread, time_or_inf

NAME = "warm_start"
TITLE = "warm start replayed: another dataset's top configurations first, time to target and regret"

WORKERS = (1, 4)
TOP = 5  # maskopt search's default --warm-start-top
EARLY = 0.25  # the share of the budget at which the early regret is read
DATASETS = ("fashion", "demo")


def row_of(curves) -> dict[tuple, int]:
    """Each configuration of a table (its values in the table's dims order) -> its row."""
    return {tuple(config[name] for name in curves.dims): row for row, config in enumerate(curves.configs)}


def mapped(source, target, rows) -> list[int]:
    """The target's rows of the source's ``rows``, in order (the grids are the same)."""
    target_rows = row_of(target)
    return [target_rows[tuple(source.configs[row][name] for name in target.dims)] for row in rows]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def sources(tables: dict, name: str) -> dict[str, list[int]]:
    """The warm starts of target ``name``: label -> the target's rows enqueued first."""
    target = tables[name]
    other_name = next(n for n in tables if n != name)
    other = tables[other_name]
    ranked = list(np.argsort(-other.values, kind="stable"))
    return {f"{other_name} top {TOP}": mapped(other, target, ranked[:TOP]),
            f"{name} top {TOP} (itself)": list(np.argsort(-target.values, kind="stable")[:TOP]),
            f"{other_name} worst {TOP}": mapped(other, target, ranked[-TOP:])}


def best_at(run, seconds: float) -> float:
    """The best score a run had reached ``seconds`` into it (0 before its first finished trial)."""
    return max((value for t, value in run.curve if t <= seconds), default=0.0)


def compare(curves, orders: dict[str, list[int]], *, sampler, workers: int, seeds: int) -> dict:
    """Cold and warm-started replays of one sampler over ``seeds`` seeds: figures per warm start."""
    from maskopt.search.space import Component
    from maskopt.search.study.replay import replay

    budget = BUDGET_TRIALS * float(curves.seconds.sum(axis=(1, 2)).mean()) / workers
    none = Component("none")
    best = float(curves.values.max())

    def runs(order):
        return [replay(curves, sampler=sampler, pruner=none, workers=workers, seed=seed, budget_seconds=budget,
                       order=order) for seed in range(seeds)]

    cold = runs(())
    targets = [run.best if run.best is not None else 0.0 for run in cold]
    cold_times = [time_or_inf(run, target) for run, target in zip(cold, targets)]
    early = EARLY * budget
    out = {"budget": budget, "cold_regret": [best - t for t in targets],
           "cold_early": [best - best_at(run, early) for run in cold], "warm": {}}
    for label, order in orders.items():
        warm = runs(order)
        finals = [run.best if run.best is not None else 0.0 for run in warm]
        warm_times = [time_or_inf(run, target) for run, target in zip(warm, targets)]
        out["warm"][label] = {
            "order": [int(r) for r in order],
            "speedup": [r for r in map(ratio, cold_times, warm_times) if not math.isnan(r)],
            "reached": sum(not math.isinf(t) for t in warm_times),
            "regret": [best - f for f in finals],
            "early": [best - best_at(run, early) for run in warm],
            "better": sum(f > t + 1e-12 for f, t in zip(finals, targets)),
            "worse": sum(f < t - 1e-12 for f, t in zip(finals, targets)),
            "after_warm_start": best - float(max(curves.values[order])),
        }
    return out


def run(cfg: B.Config) -> B.Report:
    from maskopt.search.space import Component
    from maskopt.search.study.replay import Curves

    report = B.Report(NAME, TITLE)
    paths = {name: CURVES_DIR / f"{name}.json.gz" for name in DATASETS}
    missing = [str(p.relative_to(B.ROOT)) for p in paths.values() if not p.is_file()]
    if missing:
        report.skipped = f"no recorded curves ({', '.join(missing)}): run `python -m benchmarks curves` first"
        return report
    tables = {name: Curves.read(path) for name, path in paths.items()}
    fashion, demo = tables["fashion"], tables["demo"]
    rho = spearman(fashion.values, [demo.values[r] for r in mapped(fashion, demo, range(len(fashion.configs)))])
    cfg.log(f"Spearman rank correlation of the two tables over their {len(fashion.configs)} configurations: {rho:.3f}")
    for name, target in tables.items():
        for label, order in sources(tables, name).items():
            ranks = (-target.values).argsort().argsort() + 1
            cfg.log(f"{name}: {label} rank {', '.join(str(ranks[r]) for r in order)} here (F1 "
                    f"{', '.join(f'{target.values[r]:.3f}' for r in order)}; best here {target.values.max():.3f})")
    seeds = cfg.seeds or (5 if cfg.quick else 20)
    samplers = {"TPE": Component("tpe"), "random": Component("random")}
    header = ["target", "workers", "sampler", "warm start", "time to cold's final best: cold / warm (seeds reaching it)",
              "regret at 1/4 budget: cold", "warm", "final regret: cold", "warm",
              "warm final better / worse (seeds)", "regret of the warm-start trials alone"]
    table, details = [], {}
    for name, target in tables.items():
        orders = sources(tables, name)
        for workers in WORKERS:
            for label, sampler in samplers.items():
                result = compare(target, orders, sampler=sampler, workers=workers, seeds=seeds)
                details[f"{name}/{workers}/{label}"] = result
                for source, r in result["warm"].items():
                    table.append([name, str(workers), label, source, f"{spread(r['speedup'])} ({r['reached']}/{seeds})",
                                  spread(result["cold_early"], "{:.4f}"), spread(r["early"], "{:.4f}"),
                                  spread(result["cold_regret"], "{:.4f}"), spread(r["regret"], "{:.4f}"),
                                  f"{r['better']} / {r['worse']}", f"{r['after_warm_start']:.4f}"])
                cfg.log(f"{name}, {workers} worker(s), {label}: done (median cold regret "
                        f"{statistics.median(result['cold_regret']):.4f})")
    report.table = (header, table)
    report.settings = {"seeds": seeds, "workers": list(WORKERS), "top": TOP, "budget_trials": BUDGET_TRIALS,
                       "samplers": list(samplers), "pruner": "none", "spearman": rho,
                       "curves": {name: str(p.relative_to(B.ROOT)) for name, p in paths.items()}}
    report.notes.append("medians [quartiles] over seeds; a time ratio above 1: the warm start reached the cold "
                        "search's final best sooner; 'never' or 0: it never did within the budget")
    report.details = details
    return report
