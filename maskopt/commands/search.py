"""``maskopt search``."""

from __future__ import annotations

import sys

import click

from maskopt.commands.options import (
    artifacts_option,
    cache_option,
    device_option,
    storage_option,
    threads_option,
)
from maskopt.commands.output import shown
from maskopt.files import printable

# Copies of maskopt.search.space.schema.MAX_SEED and maskopt.search.study.runner.MAX_WORKER_INDEX:
# importing them here would load torch for every `maskopt --help`. tests/search/space/test_space_checks.py
# checks that they match.
MAX_SEED = 2**32 - 1
MAX_WORKER_INDEX = 4_294_966
MAX_WORKERS_PER_GPU = 16  # maskopt.search.space.schema.MAX_WORKERS_PER_GPU (tests/search/study/test_gpu_sharing.py)


@click.command()
@click.option("--space", required=True, type=click.Path(dir_okay=False),
              help="Search-space YAML file (see spaces/).")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="The study's total number of trials, across all runs and workers.")
@click.option("--data", type=click.Path(), help="Dataset folder or CSV file (default: the space's study.data).")
@storage_option
@click.option("--study", help="Study name (default: the space's study.name).")
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop starting new trials after SECONDS.")
@device_option
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), help="Seed (default: the space's study.seed).")
@cache_option
@threads_option
@artifacts_option("Folder for trial artifacts (confusion matrices) shown by the dashboard.")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), default=30, show_default=True,
              help="Seconds between worker heartbeats; a silent worker's trial is re-run.")
@click.option("--checkpoints", type=click.Path(file_okay=False),
              help="Folder where running trials save every epoch, so a killed or preempted trial resumes from "
                   "its last epoch when re-run (default: beside a SQLite file, else ./maskopt-checkpoints; "
                   "on several machines, a folder they share).")
@click.option("--no-checkpoints", is_flag=True, help="Save no per-epoch checkpoints; a re-run trial starts from zero.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine, all of them: with G GPUs, --workers-per-gpu K and "
                   "--workers K x G give every GPU K.")
@click.option("--workers-per-gpu", type=click.IntRange(min=1, max=MAX_WORKERS_PER_GPU),
              help="Workers sharing each GPU, each seeing only its own (default: the space's "
                   "study.workers_per_gpu, 1); ignored without a GPU.")
@click.option("--worker-index", type=click.IntRange(min=0, max=MAX_WORKER_INDEX), default=0, show_default=True,
              help="This process's index among workers sharing the study (on several machines, give each "
                   "a different one): it offsets the sampler's seed so workers do not repeat start-up trials.")
@click.option("--exclude-broken", is_flag=True, default=None,
              help="Leave out persons with missing or unreadable images (with a note) instead of failing.")
@click.option("--warm-start", metavar="STUDY",
              help="Run the best configurations of this earlier study first (another dataset, or the same data "
                   "before a change); values this space no longer allows are dropped, with a note. Once per study.")
@click.option("--warm-start-storage", metavar="URL",
              help="Storage of the --warm-start study (default: this search's --storage).")
@click.option("--warm-start-top", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many of the --warm-start study's best trials that ran every fold run first.")
@click.option("--no-export", is_flag=True,
              help="Do not retrain and export the best trial when the total is reached.")
@click.option("--quiet", is_flag=True, help="Print only the summary.")
def search(space, trials, data, storage, study, timeout, device, seed, cache_dir, threads,
           artifacts, heartbeat_interval, checkpoints, no_checkpoints, workers, workers_per_gpu, worker_index,
           exclude_broken, warm_start, warm_start_storage, warm_start_top, no_export, quiet):
    """Run (or resume) a pruned, person-grouped k-fold study from a YAML space.

    The study lives in the storage (a SQLite file maskopt.db here by default); running the
    same command again continues it up to --trials in total. When the total is reached, the
    best trial is retrained on all data and exported to exports/<study>/ (replacing an older
    export there), unless --no-export.

    \b
    Examples:
      maskopt search --space spaces/demo.yaml --data demo-data --trials 12
      maskopt search --space spaces/demo.yaml --data other-data --study other --warm-start demo
    """
    from maskopt.api import search as run
    from maskopt.commands.output import be_quiet
    from maskopt.errors import SearchInterrupted

    if quiet:
        be_quiet()
    try:
        result = run(space, trials=trials, storage=storage, data=data, study=study, seed=seed,
                     timeout=timeout, exclude_broken=exclude_broken, device=device, cache_dir=cache_dir,
                     threads=threads, artifacts=artifacts, heartbeat_interval=heartbeat_interval,
                     workers=workers, workers_per_gpu=workers_per_gpu, worker_index=worker_index,
                     checkpoints=False if no_checkpoints else checkpoints or True, warm_start=warm_start,
                     warm_start_storage=warm_start_storage, warm_start_top=warm_start_top,
                     export=not no_export, quiet=quiet)
    except SearchInterrupted as e:
        click.echo(f"\n{shown(str(e))}", err=True)
        sys.exit(130)
    click.echo(summarise(result))
    if result.best is None and result.failures:
        # Every trial failed (unreadable weights, a bug): a zero exit would hide it, above all under --quiet.
        reasons = "\n".join(f"  {printable(line)}" for line in result.failures)
        raise click.ClickException(f"no trial of study {result.study_name!r} completed; they failed with:\n{reasons}")
    if result.export is not None:
        from maskopt.commands.export import echo_export

        click.echo(echo_export(result.export))


def summarise(result) -> str:
    """The end-of-search summary: top trials and where the study lives, at 80 columns; parameter
    names and values (the storage may hold any) with control characters escaped."""
    from maskopt.search.study.describe import format_params

    url = printable(result.storage_url)
    lines = [f"\nstudy {result.study_name!r}: {result.counted_trials}/{result.total} trials in {url}"]
    if not result.top:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    lines.append(f"{'rank':>4} {'trial':>5} {'macro F1':>8}  folds")
    for rank, t in enumerate(result.top, 1):
        folds = " ".join(f"{f:.3f}" for f in t.fold_f1)
        lines.append(f"{rank:>4} {t.number:>5} {t.value:>8.4f}  {folds}")
        lines.append(shown(format_params(t.params, indent=" " * 6)))  # wrapping turned newlines into spaces
    lines.append(f"open the dashboard: maskopt dashboard --storage '{url}'")
    return "\n".join(lines)
