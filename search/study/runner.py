"""Running a study: from a validated space to finished trials in the storage.

Flow: space -> dataset (checked, decoded once) -> storage and study -> trials until the study's
total is reached -> summary. Everything that can be wrong with the space or the data is found
before the storage is touched, so an invalid run writes nothing. Crash recovery lives in
``recovery.py``, the records it reads and writes in ``record.py``, the machine in
``train/resources.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from maskopt.errors import MaskoptError, SearchInterrupted, SpaceError
from maskopt.search.data.dataset import load_dataset
from maskopt.search.data.prepared import PreparedData, prepare_data
from maskopt.search.space import (
    SearchSpace,
    build_pruner,
    build_sampler,
    check_seed,
    check_study_name,
    discrete_values,
)
from maskopt.search.study.checkpoints import CheckpointStore, default_checkpoint_dir
from maskopt.search.study.describe import describe_trial
from maskopt.search.study.interrupts import interrupts_stop_the_search, raise_if_interrupted
from maskopt.search.study.objective import Objective
from maskopt.search.study.record import FINISHED, OBJECTIVE_DIRECTIONS, DeviceShare, StudyRecord, TrialRecord
from maskopt.search.study.recovery import (
    heartbeat_on,
    live_origins,
    my_lost_trial,
    queue_interrupted_trial,
    recover_dead_trials,
)
from maskopt.search.study.scheduler import keep_paused_within, promote
from maskopt.search.study.warm_start import DEFAULT_TOP, enqueue_warm_start
from maskopt.search.train.resources import torch_session
from maskopt.storage import create_or_load_study, open_storage, redact, resolve_url

logger = logging.getLogger(__name__)
# The dataset's notes (what was skipped, corrected or excluded) go through their own logger, so
# that workers, whose parent printed them once already, can leave them out.
notes_logger = logging.getLogger("maskopt.search.notes")

SAMPLER_SEED_STRIDE = 1_000
MAX_WORKER_INDEX = 2**32 // SAMPLER_SEED_STRIDE - 1  # beyond it, sampler seeds would wrap onto other workers'
# Trials that fail before training, one after another, mean the space cannot work (a sampler option
# its sampler cannot use): the search stops with the reason instead of running them to the total.
MAX_FAILURES_BEFORE_TRAINING = 3
WAIT_POLL_SECONDS = 2.0  # how often a worker that reached the total looks at others' running trials


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage_url: str  # with the password redacted
    counted_trials: int
    total: int
    top: tuple[TrialRecord, ...]  # best complete trials, best first
    notes: tuple[str, ...]
    failures: tuple[str, ...] = ()  # each distinct reason a trial failed for, with its count
    export: object = None  # the ExportResult when maskopt.search exported the best trial

    @property
    def best(self) -> TrialRecord | None:
        return self.top[0] if self.top else None

    @property
    def reached_total(self) -> bool:
        return self.counted_trials >= self.total


def _trials_left(record: StudyRecord, trials: int) -> bool:
    # Waiting trials (enqueued, re-queued after a dead worker, promoted) count towards the total
    # already or continue a trial that did, so they must run even when the count has reached it.
    return record.counted < trials or bool(record.trials((TrialState.WAITING,)))


def sampler_seed(seed: int, worker_index: int, study: optuna.Study) -> int:
    """The sampler's seed for one run of one worker: reproducible, but never the same twice.

    Workers seeded alike would draw the same random points, and so would every rerun of a
    resumed study; the worker's index and the number of trials already finished tell them
    apart. The same seed, space and history still give the same proposals. Finished, not all:
    workers started together on a fresh study would otherwise be seeded by which of them
    happened to create its first trial before the others opened the study.

    The sum wraps around at 2**32, numpy's limit for seeds; worker indices up to
    ``MAX_WORKER_INDEX`` keep apart every two workers whose runs found fewer than
    ``SAMPLER_SEED_STRIDE`` finished trials.
    """
    finished = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
    return (seed + SAMPLER_SEED_STRIDE * worker_index + len(finished)) % 2**32


@dataclass(frozen=True)
class OpenedSearch:
    """A search made ready: space fitted to the dataset, data decoded, study in the storage."""

    space: SearchSpace
    data: PreparedData
    study: optuna.Study
    storage_url: str
    notes: tuple[str, ...]


def open_search(
    space: SearchSpace,
    *,
    storage: str | None = None,
    data: str | Path | None = None,
    study: str | None = None,
    seed: int | None = None,
    exclude_broken: bool | None = None,
    cache_dir: str | Path | None = None,
    heartbeat_interval: int | None = 30,
    worker_index: int = 0,
    quiet: bool = False,
) -> OpenedSearch:
    """Check the space and the data, decode the images once, then create or load the study.

    Everything that can be wrong with the space or the data is found before the storage is
    touched. Arguments are those of ``run_search``.
    """
    overrides = {"data": str(data) if data else None, "name": study, "seed": seed, "exclude_broken": exclude_broken}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    space = dataclasses.replace(space, study=dataclasses.replace(space.study, **overrides))
    settings = space.study
    check_study_name(settings.name)
    check_seed(settings.seed)
    if settings.data is None:
        raise SpaceError(f"{space.source}: no dataset: set study.data in the space or pass `data`")

    dataset = load_dataset(settings.data, layout=settings.layout, corrections=settings.corrections,
                           exclude_broken=settings.exclude_broken)
    space, layout_notes = space.for_layout(dataset.layout)
    sizes = list(discrete_values(space.dims["image_size"]))
    data_ready = prepare_data(dataset, image_sizes=sizes, cache_dir=cache_dir, exclude_broken=settings.exclude_broken,
                              progress=not quiet)
    notes = tuple(layout_notes) + data_ready.dataset.notes
    for note in notes:
        notes_logger.info(note)
    data_ready.folds(n_folds=settings.folds, seed=settings.seed)  # fails now if there are too few persons

    url = resolve_url(storage)
    opened = open_storage(url, heartbeat_interval=heartbeat_interval)
    directions = tuple(OBJECTIVE_DIRECTIONS[name] for name in settings.objectives)
    optuna_study = create_or_load_study(storage=opened, study_name=settings.name, direction=directions,
                                        pruner=build_pruner(settings))
    record = StudyRecord.of(optuna_study)
    record.bind_space(space)
    record.set_dataset_facts(data_ready.dataset.layout, data_ready.dataset.class_names)
    # A trial left RUNNING by a killed worker is failed (and queued again) before the sampler is
    # seeded: seeded while it still ran, the sampler would draw its parameters once more.
    recover_dead_trials(optuna_study)
    optuna_study.sampler = build_sampler(settings.sampler, seed=sampler_seed(settings.seed, worker_index, optuna_study))
    return OpenedSearch(space, data_ready, optuna_study, url, notes)


def run_search(
    space: SearchSpace,
    *,
    trials: int,
    storage: str | None = None,
    data: str | Path | None = None,
    study: str | None = None,
    seed: int | None = None,
    exclude_broken: bool | None = None,
    timeout: float | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    artifacts: str | Path | None = None,
    heartbeat_interval: int | None = 30,
    checkpoints: str | Path | bool = True,
    worker_index: int = 0,
    device_share: DeviceShare | None = None,
    warm_start: str | None = None,
    warm_start_storage: str | None = None,
    warm_start_top: int = DEFAULT_TOP,
    quiet: bool = False,
) -> SearchResult:
    """Create or resume the study of ``space`` and run trials until it holds ``trials``.

    Per-trial lines go to this module's logger (INFO), warnings to WARNING, the dataset's notes
    to ``maskopt.search.notes``.

    Args:
        space: A ``SearchSpace`` (see ``load_space``).
        trials: The study's total across all runs and workers; a rerun continues to it.
        storage: SQLAlchemy URL; None means the SQLite file ``maskopt.db`` here.
        data: Dataset path, overriding the space's ``study.data``.
        study: The study's name, overriding the space's ``study.name``.
        seed: Overrides the space's ``study.seed``.
        exclude_broken: Overrides the space's ``study.exclude_broken``.
        timeout: Stop starting trials after this many seconds.
        device: ``auto``, ``cpu`` or ``cuda``.
        cache_dir: Decoded-image cache folder.
        threads: CPU threads for torch (default: the free cores; see ``torch_session``).
        artifacts: Folder for trial artifacts (confusion-matrix images shown by
            optuna-dashboard, out-of-fold predictions); None: notes only.
        heartbeat_interval: Seconds between worker heartbeats (None: off); a trial whose worker
            stops beating is marked FAIL and re-run by another worker.
        checkpoints: Folder where running trials save their state after every epoch, so a
            re-run trial (its worker was killed, or interrupted) resumes from its last epoch;
            True: beside a SQLite file, else ``maskopt-checkpoints`` (``default_checkpoint_dir``);
            False: none.
        worker_index: This worker's number among those sharing the study (0 alone); it offsets
            the sampler's seed so that workers do not propose the same start-up trials. Folds
            and training seeds do not depend on it.
        device_share: The GPU this worker trains on and how many workers share it, recorded on
            every trial (``run_workers`` sets it); None: not one of several workers on GPUs.
        warm_start: An earlier study whose best configurations are queued to run first (see
            ``warm_start.py``); once per study: a rerun queues nothing again.
        warm_start_storage: Its storage (None: ``storage``).
        warm_start_top: How many of its best trials that ran every fold are queued.
        quiet: No progress bars.

    Raises:
        MaskoptError: Invalid data or space, unreachable storage, a study created from a
            different space.
        SearchInterrupted: Ctrl-C or SIGTERM; the running trial is marked FAIL.
    """
    if trials < 1:
        raise MaskoptError(f"the number of trials must be at least 1, got {trials}")
    if not 0 <= worker_index <= MAX_WORKER_INDEX:
        raise MaskoptError(f"`worker_index` must be from 0 to {MAX_WORKER_INDEX}, got {worker_index}")
    opened = open_search(space, storage=storage, data=data, study=study, seed=seed, exclude_broken=exclude_broken,
                         cache_dir=cache_dir, heartbeat_interval=heartbeat_interval, worker_index=worker_index,
                         quiet=quiet)
    space, optuna_study = opened.space, opened.study
    record = StudyRecord.of(optuna_study)
    warm = None if warm_start is None else enqueue_warm_start(
        optuna_study, space, storage=opened.storage_url, source_study=warm_start, source_storage=warm_start_storage,
        top=warm_start_top, room=trials - record.counted)
    if checkpoints is False:
        store = None
    else:
        root = default_checkpoint_dir(opened.storage_url) if checkpoints is True else checkpoints
        store = CheckpointStore(root, optuna_study.study_name)
    with torch_session(device, threads) as torch_device:
        _run_trials(opened, record, trials, timeout, torch_device, store, artifacts, quiet, device_share)
    if store is not None:
        store.sweep(keep=live_origins(optuna_study))
    return summary_of(optuna_study, opened.storage_url, trials, opened.notes + (warm.notes if warm else ()))


def _run_trials(opened: OpenedSearch, record: StudyRecord, trials: int, timeout: float | None, torch_device,
                store: CheckpointStore | None, artifacts, quiet: bool, device_share: DeviceShare | None) -> None:
    """Run trials until the study holds ``trials``, or the timeout passes."""
    optuna_study = record.study
    recover_dead_trials(optuna_study)
    if store is None and opened.space.study.pruner.name == "asha":
        logger.warning("the asha pruner pauses trials in their checkpoints, and this search keeps none "
                       "(`checkpoints` is off): a trial stopped at a rung stops for good")
    if _trials_left(record, trials):  # a rerun to a larger total first continues what earlier runs paused
        promote(optuna_study, store)
    trial_bar = tqdm(total=trials, initial=min(record.counted, trials), desc="trials", unit="trial",
                     disable=quiet, position=0, dynamic_ncols=True)

    def epoch_bar(total: int, number: int):
        return tqdm(total=total, desc=f"trial {number} epochs", unit="ep", leave=False, position=1,
                    dynamic_ncols=True)

    failed_before_training: list[TrialRecord] = []

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = TrialRecord.of(trial)
        failed_before_training[:] = [*failed_before_training, finished] if finished.failed_before_training else []
        recover_dead_trials(study)
        if store is not None:
            keep_paused_within(study, store)
            store.sweep(keep=live_origins(study))
        counted = record.counted
        trial_bar.n = min(counted, trials)
        trial_bar.refresh()
        logger.info(describe_trial(finished))
        promote(study, store)  # before the total is checked: a queued promotion runs even after it
        raise_if_interrupted()
        # Past the total, every worker goes on while trials wait; one that finds the queue emptied
        # by another meanwhile samples a trial that the objective refuses (beyond_total).
        if ((counted >= trials and not _trials_left(record, trials))
                or len(failed_before_training) >= MAX_FAILURES_BEFORE_TRAINING):
            study.stop()

    objective = Objective(space=opened.space, data=opened.data, device=torch_device,
                          epoch_bar=None if quiet else epoch_bar, artifact_dir=artifacts, checkpoints=store,
                          device_share=device_share, total=trials)
    interrupts = interrupts_stop_the_search()
    try:
        with interrupts:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if _trials_left(record, trials):
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        optuna_study.optimize(objective, timeout=left, callbacks=[after_trial], catch=(Exception,),
                                              gc_after_trial=True)
                    except ValueError:
                        lost = my_lost_trial(optuna_study)
                        if lost is not None:
                            logger.warning("trial %d was failed by another worker while this one could not reach "
                                           "the storage (its heartbeat stopped); it is re-run there, and nothing of "
                                           "it was written", lost.number)
                            continue
                        if _finished_elsewhere(optuna_study, objective.last_trial):
                            # SQLite has no row locks: two workers can both take one queued trial
                            # (Optuna checks its state, then sets it); the first to finish records it.
                            logger.warning("trial %d was also taken from the queue by another worker, which "
                                           "recorded it first; its result there stands", objective.last_trial)
                            continue
                        raise
                if len(failed_before_training) >= MAX_FAILURES_BEFORE_TRAINING:
                    last = failed_before_training[-1]
                    raise MaskoptError(
                        f"the search stopped: trials {', '.join(str(t.number) for t in failed_before_training)} "
                        f"failed before training, with: {last.fail_reason}. Fix the space (its sampler's options?) "
                        f"and run it as a new study (another `study` name).")
                if not _wait_for_running_trials(record, trials, deadline):
                    break
    except Exception as e:
        if not interrupts.stopped:
            raise
        # A stop signal whose interruption surfaced as another error (the storage refused a write
        # while the trial was being recorded): still an interruption.
        raise SearchInterrupted(
            f"search interrupted; the running trial may still be marked RUNNING, and the next run finds it "
            f"dead. Run the same command to continue study {record.name!r} to {trials} trials.") from e
    except KeyboardInterrupt as e:
        resumes = ""
        try:
            interrupted = my_lost_trial(optuna_study)
            # Preemption sends SIGTERM: queue the trial again, so the next run resumes it from its
            # checkpoint instead of sampling a new one.
            if interrupted is not None and queue_interrupted_trial(optuna_study, interrupted):
                if store is not None and store.path(TrialRecord.of(interrupted).origin).exists():
                    resumes = f"; trial {interrupted.number} resumes from its last epoch"
        except Exception:  # the storage may be what failed; the interruption is what to report
            pass
        raise SearchInterrupted(
            f"search interrupted; the running trial was marked FAIL. Run the same command to continue "
            f"study {record.name!r} to {trials} trials{resumes}.") from e
    finally:
        trial_bar.close()


def _finished_elsewhere(study: optuna.Study, number: int | None) -> bool:
    """True when trial ``number``, which this worker ran and could not record, is recorded finished
    (by another worker: both stamp it as theirs, so its ``worker`` attribute cannot tell)."""
    if number is None:
        return False
    trial = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    return trial.state.is_finished()


def _wait_for_running_trials(record: StudyRecord, trials: int, deadline: float | None) -> bool:
    """Wait while other workers' trials run; True when one of them died and left work here.

    A running trial counts towards the total, so a worker that stopped at once would leave the
    study short whenever that trial's worker dies. Only the heartbeat can tell that it died, so
    without one the worker stops.
    """
    study = record.study
    if not heartbeat_on(study):
        return False
    told = False
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if not told:
            logger.info("waiting for other workers' running trials: one whose worker dies is re-run here")
            told = True
        time.sleep(WAIT_POLL_SECONDS)
        raise_if_interrupted()
        recover_dead_trials(study)
        if _trials_left(record, trials):
            return True
    return False


def summary_of(study: optuna.Study, storage_url: str, trials: int, notes: tuple[str, ...] = ()) -> SearchResult:
    """The ``SearchResult`` of a study as it stands in the storage."""
    record = StudyRecord.of(study)
    failures = tuple(f"{n} trial{'s' if n > 1 else ''}: {reason}" for reason, n in record.failure_reasons().items())
    return SearchResult(record.name, redact(storage_url), record.counted, trials, tuple(record.top(5)), notes,
                        failures)
