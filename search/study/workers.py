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

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable

from maskopt.errors import MaskoptError

EXIT_INTERRUPTED = 130
# Two workers (the demo on a 2-core laptop) write a few rows a minute: SQLite keeps up. Beyond
# that, or across machines, PostgreSQL is the storage to use, and the runner says so.
SQLITE_WORKERS = 2


def run_workers(space, *, n_workers: int, n_trials: int, storage_url: str | None = None, device: str = "auto",
                threads: int | None = None, worker_index: int = 0, log: Callable[[str], None] = print,
                **search_kwargs):
    """Run ``n_workers`` processes of ``run_search`` on one study and return its summary.

    Args:
        space: The ``SearchSpace``.
        n_workers: Worker processes to start.
        n_trials: The study's total across all workers.
        storage_url: The storage; SQLite works for a few local workers, PostgreSQL scales.
        device: ``auto``, ``cpu`` or ``cuda``; with GPUs each worker sees one (round robin).
        threads: CPU threads per worker (default: the free cores divided among the workers).
        worker_index: Index of the first worker; workers get consecutive indices. On several
            machines, give each machine's first index past the previous machine's workers.
        log: Where the parent's and workers' lines go (workers' lines are prefixed).
        **search_kwargs: Other ``run_search`` arguments (data, study_name, seed, exclude_broken,
            timeout, cache_dir, artifact_dir, heartbeat_interval).

    Raises:
        SearchInterrupted: Ctrl-C or SIGTERM; each worker marked its running trial FAIL.
        MaskoptError: A worker failed.
    """
    from maskopt.search.study.runner import (
        SearchInterrupted,
        open_search,
        summary_of,
        threads_per_worker,
    )
    from maskopt.storage import redact, resolve_url

    url = resolve_url(storage_url)
    if url.startswith("sqlite") and n_workers > SQLITE_WORKERS:
        log("warning: SQLite serialises writes, so several workers wait on each other and may see "
            "'database is locked'. For many workers, or workers on several machines, use PostgreSQL: "
            "`storage_url` postgresql://USER:PASSWORD@HOST/DB (see README, 'Many workers').")
    open_keys = ("data", "study_name", "seed", "exclude_broken", "cache_dir", "heartbeat_interval")
    open_kwargs = {k: v for k, v in search_kwargs.items() if k in open_keys}
    opened = open_search(space, storage_url=url, log=log, **open_kwargs)

    gpus = _gpu_count(device)
    per_worker_threads = threads or threads_per_worker(n_workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(n_workers):
        env = {"CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus else {}
        kwargs = dict(search_kwargs, n_trials=n_trials, storage_url=url, device=device, threads=per_worker_threads,
                      worker_index=worker_index + index)
        process = context.Process(target=_worker_main, args=(index, space, kwargs, env), name=f"maskopt-worker-{index}")
        process.start()
        processes.append(process)
    where = f"{gpus} GPU(s)" if gpus else f"{per_worker_threads} CPU thread(s) each"
    log(f"started {n_workers} workers on study {opened.study.study_name!r} in {redact(url)} ({where})")

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
                                f"Run the same command to continue to {n_trials} trials.")
    if any(code != 0 for code in codes):
        raise MaskoptError(f"{sum(c != 0 for c in codes)} of {n_workers} workers failed (exit codes {codes}); "
                           f"their messages are above. The study is intact: run the same command to continue.")
    return summary_of(opened.study, url, n_trials, opened.notes)


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
    from maskopt.search.study.runner import SearchInterrupted, run_search

    def log(line: str) -> None:
        if line.startswith("note: "):  # the data's notes: the parent printed them once already
            return
        print(f"[worker {index}] {line}", flush=True)

    try:
        run_search(space, progress=False, log=log, **kwargs)
    except SearchInterrupted:
        log("interrupted; its running trial was marked FAIL")
        sys.exit(EXIT_INTERRUPTED)
    except MaskoptError as e:
        log(f"Error: {e}")
        sys.exit(1)
