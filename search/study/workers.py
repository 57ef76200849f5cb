"""Several worker processes on one machine, cooperating on one study through the storage.

The parent checks the space and data, decodes the images into the shared cache and creates the
study before any worker starts: workers that start at the same instant on an empty database
would otherwise race on creating the schema and the study. Each worker then runs ``run_search``
with its share of the CPU threads until the study's total is reached. On a machine with GPUs each
worker sees one GPU only, through ``CUDA_VISIBLE_DEVICES``; ``workers_per_gpu`` consecutive
workers share each GPU (``worker_environments``), so that small models, which leave a GPU idle
between their kernels, fill it. Workers on other machines join by running ``maskopt search`` with
the same ``--storage`` and ``--study``.

This module imports nothing heavy at the top: a spawned worker must set ``CUDA_VISIBLE_DEVICES``
before CUDA starts in it (torch reads it on first use, not on import).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter

from maskopt.errors import MaskoptError

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
# Two workers (the demo on a 2-core laptop) write a few rows a minute: SQLite keeps up. Beyond
# that, or across machines, PostgreSQL is the storage to use, and the runner says so.
SQLITE_WORKERS = 2
VISIBLE = "CUDA_VISIBLE_DEVICES"


def gpu_of_worker(index: int, *, workers_per_gpu: int, gpus: int) -> int:
    """The GPU (0 to ``gpus - 1``) worker ``index`` trains on.

    Workers ``0 .. workers_per_gpu - 1`` share the first GPU, the next ``workers_per_gpu`` the
    second, and so on; past ``workers_per_gpu x gpus`` workers it starts again at the first GPU,
    so then some GPUs hold more than ``workers_per_gpu``.
    """
    return (index // workers_per_gpu) % gpus


def worker_environments(workers: int, *, workers_per_gpu: int, gpus: int,
                        visible: str | None = None) -> list[dict[str, str]]:
    """What each worker process adds to its environment: the one GPU it may see, if any.

    Args:
        workers: Worker processes.
        workers_per_gpu: Consecutive workers sharing each GPU (see ``gpu_of_worker``).
        gpus: GPUs this process sees (0: every worker trains on the CPU, with nothing added).
        visible: This process's own ``CUDA_VISIBLE_DEVICES``: when set, a worker's GPU is named
            as it names it, so ``CUDA_VISIBLE_DEVICES=2,3`` gives workers GPU 2 or 3, not 0 or 1.
    """
    if not gpus:
        return [{} for _ in range(workers)]
    names = [name.strip() for name in visible.split(",")] if visible else [str(i) for i in range(gpus)]
    return [{VISIBLE: names[gpu_of_worker(i, workers_per_gpu=workers_per_gpu, gpus=gpus)]} for i in range(workers)]


def run_workers(space, *, workers: int, trials: int, storage: str | None = None, device: str = "auto",
                threads: int | None = None, worker_index: int = 0, workers_per_gpu: int | None = None,
                warm_start: str | None = None, warm_start_storage: str | None = None, warm_start_top: int = 5,
                **search_kwargs):
    """Run ``workers`` processes of ``run_search`` on one study and return its summary.

    Each worker's lines (per-trial lines, warnings) are logged by this module's logger, prefixed
    with ``[worker N]``.

    Args:
        space: The ``SearchSpace``.
        workers: Worker processes to start.
        trials: The study's total across all workers.
        storage: The storage; SQLite works for a few local workers, PostgreSQL scales.
        device: ``auto``, ``cpu`` or ``cuda``; with GPUs each worker sees one.
        threads: CPU threads per worker (default: the free cores divided among the workers).
        worker_index: Index of the first worker; workers get consecutive indices. On several
            machines, give each machine's first index past the previous machine's workers.
        workers_per_gpu: Workers sharing each GPU (default: the space's ``study.workers_per_gpu``);
            ``workers`` counts them all, so ``workers_per_gpu`` x GPUs fills every GPU. Ignored,
            with a note, when no GPU is used.
        warm_start, warm_start_storage, warm_start_top: An earlier study whose best configurations
            are queued to run first (see ``run_search``): queued here, once, before any worker
            starts, so that workers never race to queue them twice.
        **search_kwargs: Other ``run_search`` arguments (data, study, seed, exclude_broken,
            timeout, cache_dir, artifacts, heartbeat_interval, checkpoints).

    Raises:
        SearchInterrupted: Ctrl-C or SIGTERM; each worker marked its running trial FAIL.
        MaskoptError: A worker failed.
    """
    from maskopt.errors import SearchInterrupted
    from maskopt.search.space.schema import check_workers_per_gpu
    from maskopt.search.study.record import DeviceShare, StudyRecord
    from maskopt.search.study.runner import open_search, summary_of
    from maskopt.search.study.warm_start import enqueue_warm_start
    from maskopt.search.train.resources import threads_per_worker
    from maskopt.storage import redact, resolve_url

    per_gpu = check_workers_per_gpu(space.study.workers_per_gpu if workers_per_gpu is None else workers_per_gpu)
    url = resolve_url(storage)
    if url.startswith("sqlite") and workers > SQLITE_WORKERS:
        logger.warning("SQLite serialises writes, so several workers wait on each other and may see "
                       "'database is locked'. For many workers, or workers on several machines, use PostgreSQL: "
                       "`storage` postgresql://USER:PASSWORD@HOST/DB (see README, 'Many workers').")
    open_keys = ("data", "study", "seed", "exclude_broken", "cache_dir", "heartbeat_interval", "quiet")
    open_kwargs = {k: v for k, v in search_kwargs.items() if k in open_keys}
    opened = open_search(space, storage=url, **open_kwargs)
    notes = opened.notes
    if warm_start is not None:
        room = trials - StudyRecord.of(opened.study).counted
        notes += enqueue_warm_start(opened.study, opened.space, storage=url, source_study=warm_start,
                                    source_storage=warm_start_storage, top=warm_start_top, room=room).notes

    gpus = _gpu_count(device)
    if per_gpu > 1 and not gpus:
        logger.info("`workers_per_gpu` %d is ignored: no GPU is used, and the %d workers share the CPU's cores",
                    per_gpu, workers)
    per_worker_threads = threads or threads_per_worker(workers)
    envs = worker_environments(workers, workers_per_gpu=per_gpu, gpus=gpus, visible=os.environ.get(VISIBLE))
    on_gpu = Counter(env[VISIBLE] for env in envs if env)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index, env in enumerate(envs):
        share = DeviceShare(env[VISIBLE], on_gpu[env[VISIBLE]]) if env else None
        kwargs = dict(search_kwargs, trials=trials, storage=url, device=device, threads=per_worker_threads,
                      worker_index=worker_index + index, device_share=share, quiet=True)
        process = context.Process(target=_worker_main, args=(index, space, kwargs, env), name=f"maskopt-worker-{index}")
        process.start()
        processes.append(process)
    where = (", ".join(f"GPU {gpu}: {n} worker{'s' if n > 1 else ''}" for gpu, n in on_gpu.items()) if gpus
             else f"{per_worker_threads} CPU thread(s) each")
    logger.info("started %d workers on study %r in %s (%s)", workers, opened.study.study_name, redact(url), where)
    if 0 < len(on_gpu) < gpus:
        logger.info("%d of the %d GPUs got no worker: `workers` %d (%d per GPU) would use them all",
                    gpus - len(on_gpu), gpus, per_gpu * gpus, per_gpu)

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
    return summary_of(opened.study, url, trials, notes)


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
    os.environ.update(env)  # before CUDA starts in this process (unpickling the space imported torch already)
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
