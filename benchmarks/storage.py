"""5. Storage: per-trial storage overhead and finished trials per second, SQLite and PostgreSQL.

The objective is trivial (no training) but talks to the storage exactly as maskopt's objective
does for one trial of spaces/tiny.yaml with 3 folds x 4 epochs: it suggests the space's
parameters, sets the device attribute, reports a running F1 after every epoch and asks
tiny.yaml's pruner whether to stop, sets the per-fold attributes, and at the end
the trial's summary attributes. Storages are opened with ``maskopt.storage.open_storage``
(heartbeats on, as ``maskopt search`` runs them); parameters come from a seeded random sampler so
that the sampler's own cost does not hide the storage's.

Workers are separate processes that import everything, open the storage and load the study
first, then start together (a barrier on stdin); throughput counts from that start to the last
trial's end. The study is created before the workers start (no schema race). Each
configuration gets a fresh SQLite file or a fresh PostgreSQL database, dropped afterwards.

Per-trial overhead is the 1-worker time per trial minus the same objective's time with Optuna's
in-memory storage, and is set against the length of a training trial (the median complete trial
of the pruning benchmark when it ran before this one, else a fixed 10 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import benchmarks as B

NAME = "storage"
TITLE = "storage: per-trial overhead and trials/s with 1, 2, 4 workers, SQLite and PostgreSQL"

POSTGRES_ADMIN_URL = os.environ.get(
    "MASKOPT_TEST_POSTGRES_URL", "postgresql://maskopt:maskopt-test-pw@127.0.0.1:5432/maskopt_test")
FOLDS, EPOCHS = 3, 4
WORKERS = (1, 2, 4)
FALLBACK_TRIAL_SECONDS = 10.0


def objective_for(space):
    """A trivial objective making maskopt's storage calls for one trial."""
    import math

    import optuna

    from maskopt.search.study import record

    def objective(trial):
        params = space.suggest(trial)
        trial.set_user_attr(record.DEVICE, "cpu")
        # A made-up learning curve that depends on the parameters, so the pruner has work to do.
        quality = 0.5 + 0.1 * math.sin(params.lr * 1e3) + 0.05 * (params.backbone == "resnet10t")
        fold_f1 = []
        for fold in range(FOLDS):
            best = 0.0
            for epoch in range(EPOCHS):
                best = max(best, quality * (1 - 0.5 ** (epoch + 1)))
                trial.report(float(sum(fold_f1) + best) / (len(fold_f1) + 1), fold * EPOCHS + epoch)
                if trial.should_prune():
                    trial.set_user_attr(record.PRUNE_REASON, f"pruned at fold {fold + 1} epoch {epoch + 1}")
                    raise optuna.TrialPruned()
            fold_f1.append(best)
            for key, value in ((record.PARAM_COUNT, 123456), (record.TRAINABLE_PARAM_COUNT, 123456),
                               (record.FREEZE_DEPTH_EFFECTIVE, 0)):
                trial.set_user_attr(key, value)
        attrs = {record.FOLD_F1: fold_f1, record.FOLD_ACCURACY: fold_f1, record.BEST_EPOCH: [EPOCHS] * FOLDS,
                 record.EPOCHS_TRAINED: FOLDS * EPOCHS, record.SECONDS: 0.0, record.IMAGES_PER_SECOND: 0.0,
                 record.PEAK_MEMORY_MB: 0.0, record.CONFUSION: [[0] * 18 for _ in range(18)]}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return float(sum(fold_f1) / FOLDS)

    return objective


def _space():
    from maskopt.search.space import load_space

    return load_space(B.ROOT / "spaces" / "tiny.yaml", check_names=False)


def _pruner(space):
    import dataclasses

    from maskopt.search.space import build_pruner

    return build_pruner(dataclasses.replace(space.study, folds=FOLDS, epochs=EPOCHS))


def worker_main(url: str, study_name: str, trials: int, seed: int) -> None:
    """One worker process: get ready, wait for the start line on stdin, run, print times as JSON."""
    import optuna

    from maskopt.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = _space()
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=seed), pruner=_pruner(space))
    objective = objective_for(space)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    study.optimize(objective, n_trials=trials, catch=(Exception,))
    print(json.dumps({"start": started, "end": time.time()}), flush=True)


def run_config(url: str, workers: int, total_trials: int, seed: int) -> dict:
    """Trials per second of ``workers`` processes sharing ``total_trials`` on the storage at ``url``."""
    import optuna

    from maskopt.storage import create_or_load_study, open_storage

    study_name = f"bench-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, heartbeat_interval=None)
    create_or_load_study(storage=storage, study_name=study_name, direction="maximize")
    storage.engine.dispose()
    env = dict(os.environ, PYTHONPATH=str(B.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; from benchmarks.storage import worker_main; "
                               "worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))",
                               url, study_name, str(total_trials // workers), str(seed * 100 + i)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=B.ROOT)
             for i in range(workers)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"storage worker failed to start: {line!r} {p.communicate()[0]!r}")
        go = time.time()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        ends = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"storage worker exited {p.returncode}")
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = max(ends) - go
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    storage.engine.dispose()
    finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
    return {"wall": wall, "finished": finished, "failed": states.count("FAIL"), "per_second": finished / wall}


def in_memory_seconds_per_trial(trials: int) -> float:
    import optuna

    space = _space()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), pruner=_pruner(space))
    with B.Timer() as t:
        study.optimize(objective_for(space), n_trials=trials)
    return t.seconds / trials


def _postgres_admin():
    """(engine, None) on the admin database, or (None, reason)."""
    import sqlalchemy

    def connect():
        engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, poolclass=sqlalchemy.pool.NullPool,
                                          isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        return engine

    try:
        return connect(), None
    except Exception:  # noqa: BLE001 -- try starting the server once, as the tests do
        script = B.ROOT / "scripts" / "start-postgres"
        if script.exists():
            subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
        try:
            return connect(), None
        except Exception as e:  # noqa: BLE001
            from maskopt.storage import redact

            return None, redact(" ".join(str(getattr(e, "orig", None) or e).split()))


class _Backends:
    """Fresh SQLite files and fresh PostgreSQL databases, dropped at the end."""

    def __init__(self, cfg: B.Config):
        self.cfg = cfg
        self.admin, self.postgres_error = _postgres_admin()
        self.databases: list[str] = []

    def url(self, backend: str) -> str:
        name = f"maskopt_bench_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{self.cfg.workdir / (name + '.db')}"
        import sqlalchemy

        with self.admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        self.databases.append(name)
        return self.admin.url.set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.admin is None:
            return
        import sqlalchemy

        with self.admin.connect() as connection:
            for name in self.databases:
                connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


def storage_table(rate: dict, names: list[str], memory: float, trial_seconds: float):
    """(header, rows): one row per backend, trials/s per worker count, overhead against a trial."""
    header = ["storage", "overhead per trial (1 worker)", *(f"trials/s, {w} worker{'s' if w > 1 else ''}" for w in WORKERS),
              "4 workers / 1", f"overhead / {trial_seconds:.1f} s training trial"]
    rows = [["in-memory (reference)", f"({memory * 1000:.1f} ms whole trial)", f"{1 / memory:,.0f}", "", "", "", ""]]
    for backend in names:
        overhead = 1 / rate[(backend, 1)] - memory
        rows.append([{"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend], f"{overhead * 1000:.0f} ms",
                     *(f"{rate[(backend, w)]:.1f}" for w in WORKERS), f"{rate[(backend, 4)] / rate[(backend, 1)]:.2f}",
                     f"{overhead / trial_seconds:.1%}"])
    return header, rows


def run(cfg: B.Config) -> B.Report:
    total = 20 if cfg.quick else 100
    reps = 1 if cfg.quick else 3
    backends = _Backends(cfg)
    names = ["sqlite"] + (["postgresql"] if backends.admin is not None else [])
    report = B.Report(NAME, TITLE, settings={
        "trials_per_configuration": total, "repetitions": reps, "warmup_repetitions": 0, "workers": list(WORKERS),
        "objective": f"trivial; maskopt's storage calls for {FOLDS} folds x {EPOCHS} epochs (suggest 9 params, "
                     f"{FOLDS * EPOCHS} report + should_prune, ~15 user attrs)",
        "sampler": "RandomSampler", "pruner": f"tiny.yaml's: {_space().study.pruner}", "heartbeat_interval": 30,
        "postgresql": POSTGRES_ADMIN_URL.split("@")[-1]})
    if backends.admin is None:
        report.notes.append(f"PostgreSQL rows skipped: no server ({backends.postgres_error})")
        cfg.log(f"PostgreSQL skipped: {backends.postgres_error}")
    try:
        memory = B.median(in_memory_seconds_per_trial(total) for _ in range(3))
        results: dict = {(b, w): [] for b in names for w in WORKERS}
        for rep in range(reps):
            for workers in WORKERS:
                order = names if rep % 2 == 0 else names[::-1]
                for backend in order:
                    r = run_config(backends.url(backend), workers, total, cfg.seed + rep)
                    results[(backend, workers)].append(r)
                    cfg.debug(f"rep {rep + 1} {backend} x{workers}: {r['per_second']:.1f} trials/s, "
                              f"{r['finished']} finished, {r['failed']} failed")
    finally:
        backends.close()

    trial_seconds = FALLBACK_TRIAL_SECONDS
    source = f"a fixed {FALLBACK_TRIAL_SECONDS:.0f} s"
    pruning = cfg.results.get("pruning")
    if pruning is not None and pruning.details.get("median_complete_trial_seconds"):
        trial_seconds = pruning.details["median_complete_trial_seconds"]
        source = "the median complete trial of the pruning benchmark"

    rate = {key: B.median(r["per_second"] for r in runs) for key, runs in results.items()}
    for backend in names:
        per_trial = 1 / rate[(backend, 1)]
        overhead = per_trial - memory
        report.add(f"{backend}: storage overhead per trial (1 worker)", overhead * 1000, memory * 1000,
                   "in-memory storage, whole trial", unit="ms", ratio=overhead / trial_seconds,
                   ratio_label=f"overhead / {trial_seconds:.1f} s training trial")
    for workers in WORKERS:
        sqlite_rate = rate[("sqlite", workers)]
        pg_rate = rate.get(("postgresql", workers))
        report.add(f"trials/s, {workers} worker{'s' if workers > 1 else ''}", pg_rate, sqlite_rate, "SQLite",
                   unit="trials/s", ratio=B.ratio(pg_rate, sqlite_rate), ratio_label="PostgreSQL/SQLite")
    for backend in names:
        report.add(f"{backend}: scaling 1 -> 4 workers", rate[(backend, 4)], rate[(backend, 1)], "1 worker",
                   unit="trials/s", ratio=B.ratio(rate[(backend, 4)], rate[(backend, 1)]), ratio_label="4w/1w")
    failed = sum(r["failed"] for runs in results.values() for r in runs)
    report.notes.append(f"training trial length for comparison: {trial_seconds:.1f} s ({source}); "
                        f"in-memory storage: {memory * 1000:.1f} ms per trivial trial; failed trials: {failed}")
    report.table = storage_table(rate, names, memory, trial_seconds)
    report.details = {"in_memory_seconds_per_trial": memory,
                      "runs": {f"{b} x{w}": runs for (b, w), runs in results.items()}}
    return report
