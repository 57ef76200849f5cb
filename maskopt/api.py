"""maskopt's Python face: what the command line does, as functions for scripts and notebooks.

    >>> import maskopt
    >>> space = maskopt.load_space("spaces/demo.yaml")
    >>> result = maskopt.search(space, n_trials=12, data="demo-data")   # doctest: +SKIP
    >>> result.best.value, result.export.out                          # doctest: +SKIP

Every function raises ``maskopt.MaskoptError`` (or a subclass) for anything wrong with the
user's input, with a message that says what, where and what to do.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from maskopt.search.data.demo import make_demo_data
from maskopt.search.export import ExportResult, export_best
from maskopt.search.space import SearchSpace, load_space
from maskopt.search.study.runner import SearchResult, run_search, threads_per_worker
from maskopt.search.study.workers import run_workers
from maskopt.storage import DEFAULT_ARTIFACT_DIR


def search(
    space: SearchSpace | str | Path,
    *,
    n_trials: int,
    data: str | Path | None = None,
    storage_url: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    device: str = "auto",
    workers: int = 1,
    worker_index: int = 0,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    artifact_dir: str | Path | None = DEFAULT_ARTIFACT_DIR,
    heartbeat_interval: int | None = 30,
    checkpoints: str | Path | bool = True,
    exclude_broken: bool | None = None,
    export: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Run (or resume) a study until it holds ``n_trials`` trials, then export its best trial.

    Args:
        space: A ``SearchSpace`` or the path of a YAML space.
        n_trials: The study's total across all runs and workers; a rerun continues to it.
        data: Dataset path, overriding the space's ``study.data``.
        storage_url: SQLAlchemy URL (None: the SQLite file ``maskopt.db`` here).
        study_name: Study name, overriding the space's ``study.name``.
        seed: Overrides the space's ``study.seed``.
        timeout: Stop starting trials after this many seconds.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: Worker processes on this machine (one per GPU where there are GPUs).
        worker_index: This process's index among the workers sharing the study.
        threads: CPU threads for torch per worker (default: the free cores); the retrain gets
            all the workers' threads.
        cache_dir: Decoded-image cache folder.
        artifact_dir: Trial artifacts (confusion matrices, out-of-fold predictions); None: none.
        heartbeat_interval: Seconds between heartbeats; a silent worker's trial is re-run.
        checkpoints: Per-epoch checkpoint folder, True for the default place, False for none.
        exclude_broken: Leave out persons with unreadable images instead of failing.
        export: When the study reaches its total with a complete trial, retrain the best on
            all data and export it to ``exports/<study>/`` (replacing an earlier export there).
        progress: Progress bars (otherwise one line per finished trial through ``log``).
        log: Where per-trial lines, notes and warnings go.

    Returns:
        The study's summary; ``result.export`` is the export, or None when none was made.
    """
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    # The retrain gets all the workers' threads, counted before they start: they are this
    # search's own cores, whatever else starts on the machine meanwhile.
    threads = threads or threads_per_worker(workers)
    export_threads = min(os.cpu_count() or 1, threads * workers)
    common = dict(n_trials=n_trials, storage_url=storage_url, data=data, study_name=study_name, seed=seed,
                  timeout=timeout,
                  exclude_broken=exclude_broken, device=device, cache_dir=cache_dir, threads=threads,
                  artifact_dir=artifact_dir, heartbeat_interval=heartbeat_interval, checkpoints=checkpoints,
                  worker_index=worker_index, log=log)
    if workers > 1:
        result = run_workers(space, n_workers=workers, **common)
    else:
        result = run_search(space, progress=progress, **common)
    if not (export and result.reached_total and result.best is not None):
        return result
    log(f"retraining trial {result.best.number} on all data and exporting it")
    exported = export_best(storage_url=storage_url, study_name=result.study_name, data=data, force=True, device=device,
                           threads=export_threads, cache_dir=cache_dir, progress=progress)
    return dataclasses.replace(result, export=exported)


__all__ = ["search", "export_best", "load_space", "make_demo_data", "SearchSpace", "SearchResult", "ExportResult"]
