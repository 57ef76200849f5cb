"""``maskopt replay``."""

from __future__ import annotations

import click

from maskopt.commands.options import storage_option
from maskopt.files import printable


@click.command()
@storage_option
@click.option("--study", help="Study name (may be omitted when the storage holds one study).")
@click.option("--sampler", metavar="NAME", help="Another sampler: tpe, random, ... (default: the study's own).")
@click.option("--pruner", metavar="NAME", help="Another pruner: median, hyperband, ... (default: the study's own).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel workers of the replayed searches.")
@click.option("--seeds", type=click.IntRange(min=1), default=20, show_default=True,
              help="Seeds each sampler is replayed with.")
def replay(storage, study, sampler, pruner, workers, seeds):
    """Replay a finished study with another sampler or pruner, in simulated time.

    The study's trials that ran every fold become a table of learning curves (their reports after
    every epoch, their recorded time); nothing is trained. On it, the command replays your trials
    in their recorded order with each pruner (how much time it saves, whether it would have
    stopped the best trial), then whole searches over several seeds: the study's sampler and
    pruner, the ones you name, and random search without pruning, each given as long as your
    trials take without pruning.

    \b
    Example:
      maskopt replay --study demo --pruner hyperband --workers 4
    """
    from maskopt.api import replay as replay_study

    result = replay_study(study=study, storage=storage, sampler=sampler, pruner=pruner, workers=workers, seeds=seeds)
    for line in lines(result):
        click.echo(line)


def lines(result) -> list[str]:
    """What the command prints for a :class:`~maskopt.search.study.replay.StudyReplay`."""
    table, curves = result.table, result.table.curves
    n = len(curves.configs)
    out = [(f"study {printable(table.study)!r}: {n} trials ran every fold, the best trial {result.best_trial} "
            f"(macro F1 {result.best:.4f})")]
    if not curves.is_grid:
        out.append("  not a grid: each proposal maps to the nearest of these trials in normalised parameter space")
    if table.per_fold:
        out.append("  its pruner reported once per fold: there are no epoch curves, every pruner judges whole folds")
    out.append("  an epoch's time is its trial's recorded time shared evenly over its epochs")
    if table.left_out:
        out.append("left out (so the replayed pruners see less history than the study's own did):")
        out += [f"  {printable(line)}" for line in table.left_out]

    plain = result.in_order[0]
    out += ["", f"your {n} trials in their recorded order, {_workers(result.workers)}:"]
    rows = [("pruner", "time", "saved", "pruned", "the best trial")]
    for run in result.in_order:
        kept = run.best is not None and run.best >= result.best - 1e-12
        rows.append((_label(run.pruner) + (" (the study's)" if run.pruner == table.pruner else ""),
                     f"{run.seconds:,.0f} s", "—" if run is plain else f"{1 - run.seconds / plain.seconds:.0%}",
                     f"{run.pruned}/{len(run.trials)}", "kept" if kept else f"lost: the best left {_f1(run.best)}"))
    out += _table(rows)

    out += ["", (f"searches over {len(result.searches[0].runs)} seeds, {_workers(result.workers)}, "
                 f"{result.budget_seconds:,.0f} s each (as long as the trials above without pruning):")]
    rows = [("sampler + pruner", "found the best", "median time to it", "median final F1")]
    for strategy in result.searches:
        own = (strategy.sampler, strategy.pruner) == (table.sampler, table.pruner)
        time_to = strategy.median_time_to(result.best)
        rows.append((f"{_label(strategy.sampler)} + {_label(strategy.pruner)}" + (" (the study's)" if own else ""),
                     f"{strategy.found(result.best)}/{len(strategy.runs)}",
                     "not reached" if time_to is None else f"{time_to:,.0f} s", _f1(strategy.median_best())))
    return out + _table(rows)


def _label(component) -> str:
    options = ", ".join(f"{k}={v}" for k, v in component.options)
    return f"{component.name}({options})" if options else component.name


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


def _f1(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _table(rows) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
