"""Running a study: from a validated space to finished trials in the storage.

Flow: space -> dataset (checked, decoded once) -> storage and study -> trials until the study's
total is reached -> summary. Everything that can be wrong with the space or the data is found
before the storage is touched, so an invalid run writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from maskopt.errors import MaskoptError, SpaceError
from maskopt.search.data.dataset import load_dataset
from maskopt.search.data.prepared import prepare_data
from maskopt.search.space import discrete_values
from maskopt.search.study import record
from maskopt.search.study.checkpoints import CheckpointStore, default_checkpoint_dir
from maskopt.search.study.components import build_pruner, build_sampler
from maskopt.search.study.interrupts import interrupts_stop_the_search, raise_if_interrupted
from maskopt.search.study.objective import Objective
from maskopt.search.study.record import TrialRecord
from maskopt.storage import create_or_load_study, open_storage, redact, resolve_url

SPACE_ATTR = record.SPACE  # kept as the runner's name for it: tests and benchmarks use it
OBJECTIVE_NAME = "macro F1"
SAMPLER_SEED_STRIDE = 1_000
# A study's name is also its export folder's (exports/<name>): no separators, no "..", no hidden names.
STUDY_NAME_PATTERN = re.compile(r"[^\W][\w.-]{0,99}")
WAIT_POLL_SECONDS = 2.0  # how often a worker that reached the total looks at others' running trials
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SearchInterrupted(MaskoptError):
    """Ctrl-C or SIGTERM stopped the search; the running trial was marked FAIL."""


@dataclass(frozen=True)
class TopTrial:
    number: int
    value: float
    fold_f1: tuple[float, ...]
    params: dict


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage_url: str  # with the password redacted
    counted_trials: int
    total: int
    top: tuple[TopTrial, ...]  # best complete trials, best first
    notes: tuple[str, ...]
    failures: tuple[str, ...] = ()  # each distinct reason a trial failed for, with its count
    export: object = None  # the ExportResult when maskopt.search exported the best trial

    @property
    def best(self) -> TopTrial | None:
        return self.top[0] if self.top else None

    @property
    def reached_total(self) -> bool:
        return self.counted_trials >= self.total


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards the study's total.

    Finished, running and waiting trials count, and so do trials that failed on their own
    (out of memory twice, a bug: ``fail_reason`` is set). A trial left FAIL by a killed or
    interrupted worker does not: it is re-run (by the heartbeat retry, or by the next run).
    """
    counted = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.state in counted or TrialRecord.of(t).failed_on_its_own for t in study.get_trials(deepcopy=False))


def _has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _trials_left(study: optuna.Study, n_trials: int) -> bool:
    # Waiting trials (enqueued, or re-queued after a dead worker) count towards the total
    # already, so they must run even when the count has reached it.
    return counted_trials(study) < n_trials or _has_waiting(study)


def _worker_is_gone(worker: str | None) -> bool:
    """True when ``worker`` ("host:pid") is a process on this machine that no longer exists."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, run by another user
    return False


def _heartbeat_on(study: optuna.Study) -> bool:
    # RDBStorage has heartbeats; other storages have no get_heartbeat_interval at all.
    interval = getattr(study._storage, "get_heartbeat_interval", None)
    return interval is not None and interval() is not None


def recover_dead_trials(study: optuna.Study) -> int:
    """Fail the RUNNING trials whose worker is dead and queue their retries; returns how many.

    Optuna's heartbeat finds a dead worker anywhere once its grace period has passed. A worker
    on this machine whose process is gone is known dead at once, so a rerun right after a
    SIGKILL retries its trial instead of counting it as running forever.
    """
    storage = study._storage
    heartbeat = _heartbeat_on(study)
    with warnings.catch_warnings():  # experimental since Optuna 2.9; it is what optimize() calls too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        optuna.storages.fail_stale_trials(study)
        recovered = running - len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    retry = storage.get_heartbeat_stale_trial_callback() if heartbeat else None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _worker_is_gone(TrialRecord.of(trial).worker):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first; its retry is that worker's
        recovered += 1
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))
    return recovered


def check_study_name(name: str) -> str:
    """``name`` if it can name a folder under exports/, else a SpaceError saying what is allowed."""
    if not STUDY_NAME_PATTERN.fullmatch(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise SpaceError(
            f"study name {shown!r} cannot be used: it also names the export folder exports/<name>, so it may "
            f"hold only letters, digits, '_', '.' and '-', start with a letter or digit, and have at most 100 "
            f"characters. Give another `study_name` name or study.name in the space.")
    return name


def sampler_seed(seed: int, worker_index: int, study: optuna.Study) -> int:
    """The sampler's seed for one run of one worker: reproducible, but never the same twice.

    Workers seeded alike would draw the same random points, and so would every rerun of a
    resumed study; the worker's index and the number of trials already finished tell them
    apart. The same seed, space and history still give the same proposals. Finished, not all:
    workers started together on a fresh study would otherwise be seeded by which of them
    happened to create its first trial before the others opened the study.
    """
    finished = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
    return seed + SAMPLER_SEED_STRIDE * worker_index + len(finished)


def free_cores(window: float = 0.25) -> int:
    """Cores not already busy, at least 1: the core count minus the cores in use.

    On Linux the use is measured now, over ``window`` seconds of ``/proc/stat``; elsewhere it is
    the 1-minute load average, which lags: right after a 2-worker search it still counts both
    workers, and an ``export-best`` started then trained on one of two idle cores, 1.7x slower.
    """
    cores = os.cpu_count() or 1
    busy = _busy_cores(window)
    return max(1, int(cores - (os.getloadavg()[0] if busy is None else busy) + 0.5))


def _busy_cores(window: float) -> float | None:
    """Cores in use over the next ``window`` seconds (from ``/proc/stat``), or None off Linux."""

    def sample() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        ticks = [int(v) for v in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4], sum(line.startswith("cpu") for line in lines) - 1

    try:
        total_0, idle_0, cpus = sample()
        time.sleep(window)
        total_1, idle_1, _ = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_1 - total_0
    return cpus * (1 - (idle_1 - idle_0) / elapsed) if elapsed > 0 else None


def threads_per_worker(n_workers: int) -> int:
    """Each of ``n_workers`` worker processes' share of the free cores, at least one thread."""
    return max(1, free_cores() // n_workers)


def setup_torch(device: str, threads: int | None = None):
    """The torch device for ``auto``, ``cpu`` or ``cuda``, with threads and cuDNN set up.

    ``threads`` defaults to the cores that are free now (``free_cores``, at least one).
    Oversubscribed torch threads spin-wait: two 2-thread processes on 2 cores were measured at
    7 img/s against 370 img/s for one thread each, so a busy machine gets fewer threads.
    """

    if device == "cuda" and not torch.cuda.is_available():
        raise MaskoptError("device cuda was asked for, but no CUDA GPU is visible; use device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads or free_cores())
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick the fastest kernels
    return torch.device(device)


@dataclass(frozen=True)
class OpenedSearch:
    """A search made ready: space fitted to the dataset, data decoded, study in the storage."""

    space: object  # SearchSpace
    data: object  # PreparedData
    study: optuna.Study
    storage_url: str
    notes: tuple[str, ...]


def open_search(
    space,
    *,
    storage_url: str | None = None,
    data: str | Path | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    exclude_broken: bool | None = None,
    cache_dir: str | Path | None = None,
    heartbeat_interval: int | None = 30,
    worker_index: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> OpenedSearch:
    """Check the space and the data, decode the images once, then create or load the study.

    Everything that can be wrong with the space or the data is found before the storage is
    touched. Arguments are those of ``run_search``.
    """

    overrides = {"data": str(data) if data else None, "name": study_name, "seed": seed,
                 "exclude_broken": exclude_broken}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    space = dataclasses.replace(space, study=dataclasses.replace(space.study, **overrides))
    settings = space.study
    check_study_name(settings.name)
    if settings.data is None:
        raise SpaceError(f"{space.source}: no dataset: set study.data in the space or pass `data`")

    dataset = load_dataset(settings.data, layout=settings.layout, corrections=settings.corrections,
                           exclude_broken=settings.exclude_broken)
    space, layout_notes = space.for_layout(dataset.layout)
    sizes = list(discrete_values(space.dims["image_size"]))
    data_ready = prepare_data(dataset, image_sizes=sizes, cache_dir=cache_dir, exclude_broken=settings.exclude_broken,
                              progress=progress)
    notes = tuple(layout_notes) + data_ready.dataset.notes
    for note in notes:
        log(f"note: {note}")
    data_ready.folds(n_folds=settings.folds, seed=settings.seed)  # fails now if there are too few persons

    url = resolve_url(storage_url)
    storage = open_storage(url, heartbeat_interval=heartbeat_interval)
    # Each finished trial gets its own line from maskopt, failures with their reason; Optuna's
    # INFO lines and its tracebacks for failed trials would only repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = create_or_load_study(storage=storage, study_name=settings.name, direction="maximize",
                                 pruner=build_pruner(settings))
    _bind_space(study, space)
    for key, value in ((record.LAYOUT, data_ready.dataset.layout), (record.CLASS_NAMES, list(data_ready.dataset.class_names))):
        if study.user_attrs.get(key) != value:  # what every trial shares, for the report and the export
            study.set_user_attr(key, value)
    study.sampler = build_sampler(settings.sampler, seed=sampler_seed(settings.seed, worker_index, study))
    return OpenedSearch(space, data_ready, study, url, notes)


def run_search(
    space,
    *,
    n_trials: int,
    storage_url: str | None = None,
    data: str | Path | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    exclude_broken: bool | None = None,
    timeout: float | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    artifact_dir: str | Path | None = None,
    heartbeat_interval: int | None = 30,
    checkpoints: str | Path | bool = True,
    worker_index: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SearchResult:
    """Create or resume the study of ``space`` and run trials until it holds ``n_trials``.

    Args:
        space: A ``SearchSpace`` (see ``load_space``).
        n_trials: The study's total across all runs and workers; a rerun continues to it.
        storage_url: SQLAlchemy URL; None means the SQLite file ``maskopt.db`` here.
        data: Dataset path, overriding the space's ``study.data``.
        study_name: Overrides the space's ``study.name``.
        seed: Overrides the space's ``study.seed``.
        exclude_broken: Overrides the space's ``study.exclude_broken``.
        timeout: Stop starting trials after this many seconds.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: Decoded-image cache folder.
        threads: CPU threads for torch (default: the free cores; see ``setup_torch``).
        artifact_dir: Folder for trial artifacts (confusion-matrix images shown by
            optuna-dashboard); None: notes only.
        heartbeat_interval: Seconds between worker heartbeats (None: off); a trial whose worker
            stops beating is marked FAIL and re-run by another worker.
        checkpoints: Folder where running trials save their state after every epoch, so a
            re-run trial (its worker was killed, or interrupted) resumes from its last epoch;
            True: beside a SQLite file, else ``maskopt-checkpoints`` (``default_checkpoint_dir``);
            False: none.
        worker_index: This worker's number among those sharing the study (0 alone); it offsets
            the sampler's seed so that workers do not propose the same start-up trials. Folds
            and training seeds do not depend on it.
        progress: Progress bars for trials and epochs.
        log: Where per-trial lines and notes go.

    Raises:
        MaskoptError: Invalid data or space, unreachable storage, a study created from a
            different space.
        SearchInterrupted: Ctrl-C or SIGTERM; the running trial is marked FAIL.
    """

    if n_trials < 1:
        raise MaskoptError(f"the number of trials must be at least 1, got {n_trials}")
    opened = open_search(space, storage_url=storage_url, data=data, study_name=study_name, seed=seed,
                         exclude_broken=exclude_broken,
                         cache_dir=cache_dir, heartbeat_interval=heartbeat_interval, worker_index=worker_index,
                         progress=progress, log=log)
    space, data_ready, study, url, notes = (opened.space, opened.data, opened.study, opened.storage_url,
                                            opened.notes)
    settings = space.study
    torch_device = setup_torch(device, threads)


    if checkpoints is False:
        store = None
    else:
        store = CheckpointStore(default_checkpoint_dir(url) if checkpoints is True else checkpoints, study.study_name)
    recover_dead_trials(study)
    already = counted_trials(study)
    trial_bar = tqdm(total=n_trials, initial=min(already, n_trials), desc="trials", unit="trial",
                     disable=not progress, position=0, dynamic_ncols=True)

    def epoch_bar(total: int, number: int):
        return tqdm(total=total, desc=f"trial {number} epochs", unit="ep", leave=False, position=1,
                    disable=not progress, dynamic_ncols=True)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        recover_dead_trials(study)
        if store is not None:
            store.sweep(keep=_live_origins(study))
        counted = counted_trials(study)
        trial_bar.n = min(counted, n_trials)
        trial_bar.refresh()
        line = describe_trial(trial)
        if progress:
            tqdm.write(line)
        else:
            log(line)
        raise_if_interrupted()
        if counted >= n_trials and not _has_waiting(study):
            study.stop()

    def note(line: str) -> None:
        tqdm.write(line) if progress else log(line)

    objective = Objective(space=space, data=data_ready, device=torch_device,
                          epoch_bar=epoch_bar if progress else None, artifact_dir=artifact_dir,
                          checkpoints=store, log=note)
    try:
        with interrupts_stop_the_search():
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if _trials_left(study, n_trials):
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        study.optimize(objective, timeout=left, callbacks=[after_trial], catch=(Exception,),
                                       gc_after_trial=True)
                    except ValueError:
                        lost = _my_lost_trial(study)
                        if lost is None:
                            raise
                        log(f"warning: trial {lost.number} was failed by another worker while this one could not reach the "
                            f"storage (its heartbeat stopped); it is re-run there, and nothing of it was written")
                        continue
                if not _wait_for_running_trials(study, n_trials, deadline, log):
                    break
    except KeyboardInterrupt as e:
        resumes = ""
        try:
            interrupted = _my_lost_trial(study)
            if interrupted is not None and not _retried(study, interrupted):
                # Preemption sends SIGTERM: queue the trial again, so the next run resumes it
                # from its checkpoint instead of sampling a new one.
                _retry_callback(study)(study, interrupted)
                if store is not None and store.path(TrialRecord.of(interrupted).origin).exists():
                    resumes = f"; trial {interrupted.number} resumes from its last epoch"
        except Exception:  # the storage may be what failed; the interruption is what to report
            pass
        raise SearchInterrupted(
            f"search interrupted; the running trial was marked FAIL. Run the same command to continue "
            f"study {settings.name!r} to {n_trials} trials{resumes}.") from e
    finally:
        trial_bar.close()

    if store is not None:
        store.sweep(keep=_live_origins(study))
    return summary_of(study, url, n_trials, notes)


def _my_lost_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """This worker's last trial if it is FAIL without a reason of its own, else None.

    That is a trial interrupted here (Ctrl-C, SIGTERM), or one that another worker marked FAIL
    as dead while this one could not reach the storage (a network partition): Optuna then
    refuses to record its result (``Cannot tell a FAIL trial``), which is right.
    """
    me = f"{socket.gethostname()}:{os.getpid()}"
    mine = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).worker == me]
    if mine and mine[-1].state == TrialState.FAIL and not TrialRecord.of(mine[-1]).failed_on_its_own:
        return mine[-1]
    return None


def _retried(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """True when a retry of ``trial`` is already queued (or has run)."""
    return any(trial.number in t.system_attrs.get(record.RETRY_HISTORY, ()) for t in study.get_trials(deepcopy=False))


def _retry_callback(study: optuna.Study):
    # The storage's own callback when heartbeats are on, so its max_retry holds for both paths.
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return callback or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)


def _live_origins(study: optuna.Study) -> set[int]:
    """Origins of the trials that may still resume: running ones and queued retries."""
    return {TrialRecord.of(t).origin for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))}


def _wait_for_running_trials(study: optuna.Study, n_trials: int, deadline: float | None, log) -> bool:
    """Wait while other workers' trials run; True when one of them died and left work here.

    A running trial counts towards the total, so a worker that stopped at once would leave the
    study short whenever that trial's worker dies. Only the heartbeat can tell that it died, so
    without one the worker stops.
    """
    if not _heartbeat_on(study):
        return False
    told = False
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if not told:
            log("waiting for other workers' running trials: one whose worker dies is re-run here")
            told = True
        time.sleep(WAIT_POLL_SECONDS)
        raise_if_interrupted()
        recover_dead_trials(study)
        if _trials_left(study, n_trials):
            return True
    return False


def summary_of(study: optuna.Study, storage_url: str, n_trials: int, notes: tuple[str, ...] = ()) -> SearchResult:
    """The ``SearchResult`` of a study as it stands in the storage."""

    top = tuple(TopTrial(t.number, t.value, TrialRecord.of(t).fold_f1, t.params) for t in top_trials(study, 5))
    reasons: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        reason = TrialRecord.of(t).fail_reason
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
    failures = tuple(f"{n} trial{'s' if n > 1 else ''}: {reason}" for reason, n in reasons.items())
    return SearchResult(study.study_name, redact(storage_url), counted_trials(study), n_trials, top, notes, failures)


def _bind_space(study: optuna.Study, space) -> None:
    """Store the space with a new study; refuse to resume a study made from another space."""
    stored = study.user_attrs.get(SPACE_ATTR)
    current = space.to_dict()
    if stored is None:
        study.set_user_attr(SPACE_ATTR, current)
        with warnings.catch_warnings():  # experimental since Optuna 3.2; optuna-dashboard reads it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    elif stored["params"] != current["params"] or _study_part(stored) != _study_part(current):
        raise SpaceError(
            f"study {study.study_name!r} was created from a different search space than {space.source}. "
            f"Use the same space to resume it, or give a new `study_name` name.")


def _study_part(space_dict) -> dict:
    # The dataset path may differ between machines of one study; what is trained may not.
    return {k: v for k, v in space_dict["study"].items() if k not in ("data", "name")}


def top_trials(study: optuna.Study, n: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The best COMPLETE trials that ran every fold, best first."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if TrialRecord.of(t).ran_every_fold]
    return sorted(complete, key=lambda t: t.value, reverse=True)[:n]


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    """A few lines per finished trial: number, state, F1, time, reason; parameters wrapped below."""
    r = TrialRecord.of(trial)
    state = trial.state.name
    if trial.value is not None:
        score = f"F1 {trial.value:.4f}"
    elif r.fold_f1:
        score = f"F1 {np.mean(r.fold_f1):.4f}*"  # mean of the folds it finished
    else:
        score = "F1   -   "
    reason = r.fail_reason or r.prune_reason or ""
    head = f"trial {trial.number:>3} {state:<8} {score}  {r.seconds or 0:6.1f}s"
    if reason and state != "COMPLETE":
        head += f"  {reason}"
    return head + "\n" + format_params(trial.params)


def format_params(params: dict, *, width: int = 80, indent: str = "    ") -> str:
    """``name=value`` pairs wrapped to ``width`` columns."""

    text = " ".join(f"{k}={format_value(v)}" for k, v in params.items())
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent)


def format_value(value) -> str:
    """A parameter value as people read it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
