"""maskopt's Python face: every command of the command line, as a function of the same name.

    >>> import maskopt
    >>> space = maskopt.load_space("spaces/demo.yaml")
    >>> result = maskopt.search(space, trials=12, data="demo-data")   # doctest: +SKIP
    >>> result.best.value, result.export.out                        # doctest: +SKIP

Each function takes the command's options as keyword arguments with the same names
(``--storage`` is ``storage``, ``--trials`` is ``trials``, ``--quiet`` is ``quiet``), and raises
``maskopt.MaskoptError`` (or a subclass) for anything wrong with the user's input, with the
message the command prints. Lines a long run prints (one per finished trial, warnings) go to
Python's ``logging`` under the ``maskopt`` logger, as Optuna's go to ``optuna``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import optuna

from maskopt.search.data.demo import make_demo_data
from maskopt.search.data.eda import eda
from maskopt.search.export import ExportResult, export_best, export_onnx_folder, predict, score
from maskopt.search.report import label_issues, report
from maskopt.search.space import Component, SearchSpace, load_space
from maskopt.search.space.schema import check_workers_per_gpu
from maskopt.search.study.record import StudyRecord
from maskopt.search.study.record import study_summaries as studies  # the `maskopt studies` command
from maskopt.search.study.replay import StudyReplay, replay_study
from maskopt.search.study.runner import SearchResult, run_search
from maskopt.search.study.warm_start import check_warm_start
from maskopt.search.study.workers import run_workers
from maskopt.search.train.resources import threads_per_worker
from maskopt.search.train.weights import import_weights
from maskopt.storage import DEFAULT_ARTIFACT_DIR
from maskopt.storage import serve_dashboard as dashboard

logger = logging.getLogger(__name__)


def search(
    space: SearchSpace | str | Path,
    *,
    trials: int,
    data: str | Path | None = None,
    storage: str | None = None,
    study: str | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    device: str = "auto",
    workers: int = 1,
    workers_per_gpu: int | None = None,
    worker_index: int = 0,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    artifacts: str | Path | None = DEFAULT_ARTIFACT_DIR,
    heartbeat_interval: int | None = 30,
    checkpoints: str | Path | bool = True,
    exclude_broken: bool | None = None,
    warm_start: str | None = None,
    warm_start_storage: str | None = None,
    warm_start_top: int = 5,
    export: bool = True,
    quiet: bool = False,
) -> SearchResult:
    """Run (or resume) a study until it holds ``trials`` trials, then export its best trial.

    Args:
        space: A ``SearchSpace`` or the path of a YAML space.
        trials: The study's total across all runs and workers; a rerun continues to it.
        data: Dataset path, overriding the space's ``study.data``.
        storage: SQLAlchemy URL (None: the SQLite file ``maskopt.db`` here).
        study: Study name, overriding the space's ``study.name``.
        seed: Overrides the space's ``study.seed``.
        timeout: Stop starting trials after this many seconds.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: Worker processes on this machine, all of them: with G GPUs, ``workers_per_gpu``
            x G gives every GPU its share.
        workers_per_gpu: Workers sharing each GPU, each seeing only its own (default: the space's
            ``study.workers_per_gpu``, 1). It places the ``workers`` processes and starts none
            of its own; without a GPU it is ignored, with a note.
        worker_index: This process's index among the workers sharing the study.
        threads: CPU threads for torch per worker (default: the free cores); the retrain gets
            all the workers' threads.
        cache_dir: Decoded-image cache folder.
        artifacts: Trial artifacts (confusion matrices, out-of-fold predictions); None: none.
        heartbeat_interval: Seconds between heartbeats; a silent worker's trial is re-run.
        checkpoints: Per-epoch checkpoint folder, True for the default place, False for none.
        exclude_broken: Leave out persons with unreadable images instead of failing.
        warm_start: An earlier study (another dataset, or the same data before a change) whose
            best configurations run first; values this space no longer allows are dropped, with a
            note. Once per study: rerunning the search queues nothing again.
        warm_start_storage: The earlier study's storage (default: ``storage``).
        warm_start_top: How many of its best trials that ran every fold run first.
        export: When the study reaches its total with a complete trial, retrain the best on
            all data and export it to ``exports/<study>/`` (replacing an earlier export there).
        quiet: No progress bars.

    Returns:
        The study's summary; ``result.export`` is the export, or None when none was made.
    """
    if not isinstance(space, SearchSpace):
        space = load_space(space)
    if workers_per_gpu is not None:
        check_workers_per_gpu(workers_per_gpu)
    check_warm_start(warm_start, warm_start_storage, warm_start_top, study=study or space.study.name, storage=storage)
    # The retrain gets all the workers' threads, counted before they start: they are this
    # search's own cores, whatever else starts on the machine meanwhile.
    threads = threads or threads_per_worker(workers)
    export_threads = min(os.cpu_count() or 1, threads * workers)
    common = dict(trials=trials, storage=storage, data=data, study=study, seed=seed, timeout=timeout,
                  exclude_broken=exclude_broken, device=device, cache_dir=cache_dir, threads=threads,
                  artifacts=artifacts, heartbeat_interval=heartbeat_interval, checkpoints=checkpoints,
                  worker_index=worker_index, warm_start=warm_start, warm_start_storage=warm_start_storage,
                  warm_start_top=warm_start_top)
    if workers > 1:
        result = run_workers(space, workers=workers, workers_per_gpu=workers_per_gpu, quiet=quiet, **common)
    else:
        result = run_search(space, quiet=quiet, **common)
    if not (export and result.reached_total and result.best is not None):
        return result
    logger.info("retraining trial %d on all data and exporting it", result.best.number)
    exported = export_best(storage=storage, study=result.study_name, data=data, force=True, device=device,
                           threads=export_threads, cache_dir=cache_dir, quiet=quiet)
    return dataclasses.replace(result, export=exported)


def load_study(*, storage: str | None = None, study: str | None = None) -> optuna.Study:
    """The Optuna study ``study`` of ``storage`` (it must exist; the name may be omitted when the
    storage holds one study), for Optuna's own tools: ``trials_dataframe()``, visualisation."""
    return StudyRecord.open(storage, study).study


def replay(*, study: str | None = None, storage: str | None = None, sampler: str | None = None,
           pruner: str | None = None, workers: int = 1, seeds: int = 20) -> StudyReplay:
    """What another sampler or pruner would have done on a finished study, replayed on its own trials.

    The trials that ran every fold become a table of learning curves (see
    ``maskopt.search.study.replay``); searches are then replayed on it in simulated time: its
    trials in their recorded order with each pruner, and each sampler and pruner over ``seeds``
    seeds. Nothing is trained.

    Args:
        study: Study name (may be omitted when the storage holds one study).
        storage: SQLAlchemy URL (None: the SQLite file ``maskopt.db`` here).
        sampler: Another sampler by name (default: the study's own).
        pruner: Another pruner by name (default: the study's own).
        workers: Parallel workers of the replays.
        seeds: Seeds each sampler is replayed with.

    Raises:
        StorageError: No such storage or study.
        NotAMaskoptStudy: The study was not made by maskopt.
        MaskoptError: Fewer than two trials ran every fold, or an unknown sampler or pruner.
    """
    return replay_study(StudyRecord.open(storage, study), sampler=None if sampler is None else Component(sampler),
                        pruner=None if pruner is None else Component(pruner), workers=workers, seeds=seeds)


__all__ = ["search", "export_best", "export_onnx_folder", "predict", "score", "report", "label_issues", "studies",
           "dashboard", "import_weights", "eda", "make_demo_data", "load_space", "load_study", "replay", "SearchSpace",
           "SearchResult", "ExportResult"]
