"""Several worker processes on one machine, cooperating on one study through the storage.

The parent checks the space and data, decodes the images into the shared cache and creates the
study before any worker starts: workers that start at the same instant on an empty database
would otherwise race on creating the schema and the study. Each worker then runs ``run_search``
with its share of the CPU threads (or one GPU each, through ``CUDA_VISIBLE_DEVICES``) until the
study's total is reached. Workers on other machines join by running ``maskopt search`` with the
same ``--storage`` and ``--study``.

This module imports nothing heavy at the top: a spawned worker must set ``CUDA_VISIBLE_DEVICES``
before torch is imported.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys

from maskopt.errors import MaskoptError

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
# Two workers (the demo on a 2-core laptop) write a few rows a minute: SQLite keeps up. Beyond
# that, or across machines, PostgreSQL is the storage to use, and the runner says so.
SQLITE_WORKERS = 2


def run_workers(space, *, workers: int, trials: int, storage: str | None = None, device: str = "auto",
                threads: int | None = None, worker_index: int = 0, **search_kwargs):
    """Run ``workers`` processes of ``run_search`` on one study and return its summary.

    Each worker's lines (per-trial lines, warnings) are logged by this module's logger, prefixed
    with ``[worker N]``.

    Args:
        space: The ``SearchSpace``.
        workers: Worker processes to start.
        trials: The study's total across all workers.
        storage: The storage; SQLite works for a few local workers, PostgreSQL scales.
        device: ``auto``, ``cpu`` or ``cuda``; with GPUs each worker sees one (round robin).
        threads: CPU threads per worker (default: the free cores divided among the workers).
        worker_index: Index of the first worker; workers get consecutive indices. On several
            machines, give each machine's first index past the previous machine's workers.
        **search_kwargs: Other ``run_search`` arguments (data, study, seed, exclude_broken,
            timeout, cache_dir, artifacts, heartbeat_interval, checkpoints).

    Raises:
        SearchInterrupted: Ctrl-C or SIGTERM; each worker marked its running trial FAIL.
        MaskoptError: A worker failed.
    """
    from maskopt.errors import SearchInterrupted
    from maskopt.search.study.runner import open_search, summary_of
    from maskopt.search.train.resources import threads_per_worker
    from maskopt.storage import redact, resolve_url

    url = resolve_url(storage)
    if url.startswith("sqlite") and workers > SQLITE_WORKERS:
        logger.warning("SQLite serialises writes, so several workers wait on each other and may see "
                       "'database is locked'. For many workers, or workers on several machines, use PostgreSQL: "
                       "`storage` postgresql://USER:PASSWORD@HOST/DB (see README, 'Many workers').")
    open_keys = ("data", "study", "seed", "exclude_broken", "cache_dir", "heartbeat_interval", "quiet")
    open_kwargs = {k: v for k, v in search_kwargs.items() if k in open_keys}
    opened = open_search(space, storage=url, **open_kwargs)

    gpus = _gpu_count(device)
    per_worker_threads = threads or threads_per_worker(workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        env = {"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus else {}
        kwargs = dict(search_kwargs, trials=trials, storage=url, device=device, threads=per_worker_threads,
                      worker_index=worker_index + index, quiet=True)
        process = context.Process(target=_worker_main, args=(index, space, kwargs, env), name=f"maskopt-worker-{index}")
        process.start()
        processes.append(process)
    where = f"{gpus} GPU(s)" if gpus else f"{per_worker_threads} CPU thread(s) each"
    logger.info("started %d workers on study %r in %s (%s)", workers, opened.study.study_name, redact(url), where)

    def forward(signum, frame):
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        for process in processes:
            _join(process, forward)
    finally:
        signal.signal(signal.SIGTERM, previous)

    codes = [p.exitcode for p in processes]
    if any(code in (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGINT) for code in codes):
        raise SearchInterrupted(f"workers interrupted (exit codes {codes}); their running trials were marked FAIL. "
                                f"Run the same command to continue to {trials} trials.")
    if any(code != 0 for code in codes):
        raise MaskoptError(f"{sum(c != 0 for c in codes)} of {workers} workers failed (exit codes {codes}); "
                           f"their messages are above. The study is intact: run the same command to continue.")
    return summary_of(opened.study, url, trials, opened.notes)


def _join(process, forward) -> None:
    """Wait for a worker; on Ctrl-C keep waiting, since the workers got the same SIGINT."""
    while True:
        try:
            process.join()
            return
        except KeyboardInterrupt:
            forward(signal.SIGINT, None)


def _gpu_count(device: str) -> int:
    if device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def _worker_main(index: int, space, kwargs: dict, env: dict) -> None:
    os.environ.update(env)  # before torch is imported in this process
    import optuna

    from maskopt.errors import SearchInterrupted
    from maskopt.search.study.runner import run_search

    # This process is the program here: its lines go to stdout with the worker's number. The
    # dataset's notes are left out (the parent printed them once), and so are Optuna's own lines,
    # which only repeat the per-trial lines.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[worker {index}] %(message)s"))
    handler.addFilter(_warnings_marked)
    root = logging.getLogger("maskopt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("maskopt.search.notes").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        run_search(space, **kwargs)
    except SearchInterrupted:
        logger.info("interrupted; its running trial was marked FAIL")
        sys.exit(EXIT_INTERRUPTED)
    except MaskoptError as e:
        logger.info("Error: %s", e)
        sys.exit(1)


def _warnings_marked(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING and not str(record.msg).startswith("warning: "):
        record.msg, record.args = f"warning: {record.getMessage()}", None
    return True
