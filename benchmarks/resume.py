"""Resuming killed trials: the same study, killed at the same points, with checkpoints and without.

Each side runs real ``maskopt search`` worker processes on one SQLite study. A seeded schedule
says when to SIGKILL the worker: after its running trial has trained ``k`` more epochs in that
process (``k`` drawn once per kill, never the trial's last epoch). After each kill the same
command is run again, as a user would, until the study reaches its total. One side keeps the
default per-epoch checkpoints, the other runs with ``--no-checkpoints`` (a retried trial starts
from zero, which is what every HPO tool without checkpoints does).

Both studies get the same trials, enqueued in the same order (parameters drawn once from the
space), so the kills hit the same trials. Counted: epochs trained in all processes (killed ones
included), epochs trained again after a kill (work lost), trials lost (killed more often than
Optuna's retry limit allows, which happens to a trial that restarts from zero every time),
wall time, and whether a trial that completed on both sides has the same score (a resumed trial
trains with its original's seeds, so on the CPU it must score exactly as one retrained from zero).
Targets: no epoch trained twice with checkpoints; equal scores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

import benchmarks as B

NAME = "resume"
TITLE = "resume: a study with random SIGKILLs, per-epoch checkpoints on and off"
POLL_SECONDS = 0.2


def run(cfg: B.Config) -> B.Report:
    quick = cfg.quick
    persons, folds, epochs, trials = (30, 2, 4, 6) if quick else (60, 3, 6, 10)
    kills = trials // 2 + 1
    data = B.demo_data(cfg, persons=persons, size=32)
    space = B.benchmark_space(folds=folds, epochs=epochs, image_size=32, pruner=_no_pruner(),
                              sampler=_random_sampler())
    space_path = cfg.workdir / "resume.yaml"
    space_path.write_text(yaml.safe_dump(space.to_dict(), sort_keys=False))
    B.warm_up(cfg, data, 32)
    rng = np.random.default_rng(cfg.seed)
    schedule = [int(k) for k in rng.integers(1, folds * epochs, size=kills)]  # epochs to train before each kill

    planned = _draw_params(space, trials, cfg.seed)

    sides = {"checkpoints": (), "restart from zero": ("--no-checkpoints",)}
    results = {}
    for label, extra in (sides.items() if cfg.seed % 2 == 0 else reversed(sides.items())):
        results[label] = run_side(cfg, space_path, data, label=label, planned=planned, schedule=schedule,
                                  total_epochs=folds * epochs, extra=extra)
        r = results[label]
        cfg.log(f"{label}: {r['epochs']} epochs ({r['retrained']} trained again after a kill), "
                f"{r['kills']} kills, {r['lost']} trials lost, {r['seconds']:.0f} s")

    on, off = results["checkpoints"], results["restart from zero"]
    both = set(on["values"]) & set(off["values"])
    equal = bool(both) and all(on["values"][key] == off["values"][key] for key in both)
    report = B.Report(NAME, TITLE, settings={
        "persons": persons, "folds": folds, "epochs": epochs, "trials": trials, "kill_schedule_epochs": schedule,
        "image_size": 32, "threads": cfg.threads})
    report.add("epochs trained (all processes)", on["epochs"], off["epochs"], "no checkpoints", unit="ep",
               ratio=B.ratio(on["epochs"], off["epochs"]), ratio_label="on/off", target="< 1",
               met=on["epochs"] < off["epochs"])
    report.add("epochs trained again after a kill", on["retrained"], off["retrained"], "no checkpoints", unit="ep",
               target="0 with checkpoints", met=on["retrained"] == 0)
    report.add("planned trials lost (retries used up)", on["lost"], off["lost"], "no checkpoints",
               target="0 with checkpoints", met=on["lost"] == 0)
    report.add("wall time", on["seconds"], off["seconds"], "no checkpoints", unit="s",
               ratio=B.ratio(on["seconds"], off["seconds"]), ratio_label="on/off")
    report.add(f"same score on both sides ({len(both)} trials complete on both)", float(equal), None, "",
               target="yes", met=equal, note="same seeds: a resumed trial scores as one retrained from zero")
    report.details = results
    return report


def _draw_params(space, trials: int, seed: int) -> list[dict]:
    """``trials`` parameter sets drawn at random from the space, the same for both sides."""
    import optuna

    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    planned = []
    for _ in range(trials):
        trial = draw.ask()
        space.suggest(trial)
        planned.append(trial.params)
    return planned


def _key(params: dict) -> str:
    return repr(sorted(params.items()))


def run_side(cfg: B.Config, space_path, data, *, label: str, planned: list[dict], schedule: list[int],
             total_epochs: int, extra: tuple[str, ...]) -> dict:
    import optuna
    from optuna.trial import TrialState

    from maskopt.search.study.record import TrialRecord
    from maskopt.storage import create_or_load_study, open_storage

    slug = label.replace(" ", "-")
    url = f"sqlite:///{cfg.workdir / f'resume-{slug}.db'}"
    name = f"resume-{slug}"
    trials = len(planned)
    study = create_or_load_study(storage=open_storage(url, heartbeat_interval=None), study_name=name)
    for params in planned:
        study.enqueue_trial(params)
    cmd = [sys.executable, "-m", "maskopt", "search", "--space", str(space_path), "--data", str(data),
           "--storage", url, "--study", name, "--trials", str(trials), "--cache-dir", str(cfg.workdir / "cache"),
           "--no-export", "--quiet", "--device", "cpu", *extra]
    env = dict(os.environ, MASKOPT_THREADS=str(cfg.threads), HF_HUB_OFFLINE="1")
    kills = 0
    with B.Timer() as timer:
        for k in [*schedule, None]:
            worker = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      cwd=cfg.workdir)
            if k is not None and _kill_after(worker, url, name, k, total_epochs):
                kills += 1
                continue
            out, _ = worker.communicate()
            if worker.returncode != 0:
                raise RuntimeError(f"{label}: worker exited {worker.returncode}:\n{out}")
            if k is None or worker.returncode == 0:
                break
    study = optuna.load_study(study_name=name, storage=url)
    trials_done = study.get_trials()
    epochs = retrained = 0
    for t in trials_done:
        record = TrialRecord.of(t)
        resumed = record.resumed or {}
        here = len(t.intermediate_values) - resumed.get("epochs_inherited", 0)
        trained_here = record.epochs_trained_here if record.epochs_trained_here is not None else here
        epochs += here if record.state != TrialState.COMPLETE else trained_here
        if record.origin != record.number:  # a retry of a killed trial
            # What its killed predecessors had trained and this one trained again.
            done_before = max(len(p.intermediate_values) for p in trials_done if p.number in record.retry_history)
            retrained += max(0, done_before - resumed.get("epochs_inherited", 0))
    complete = {_key(t.params): t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    lost = sum(_key(p) not in complete for p in planned)
    return {"epochs": epochs, "retrained": retrained, "kills": kills, "lost": lost, "seconds": timer.seconds,
            "values": complete}


def _kill_after(worker, url: str, name: str, k: int, total_epochs: int) -> bool:
    """SIGKILL ``worker`` once its running trial trained ``k`` epochs here; False if it finished first."""
    import optuna
    from optuna.trial import TrialState

    from maskopt.search.study.record import TrialRecord

    while worker.poll() is None:
        try:
            running = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.RUNNING,))
                       if (TrialRecord.of(t).worker or "").endswith(f":{worker.pid}")]
        except KeyError:  # the study does not exist yet
            running = []
        for t in running:
            inherited = (TrialRecord.of(t).resumed or {}).get("epochs_inherited", 0)
            target = min(inherited + k, total_epochs - 1)  # never the last epoch: the trial would finish
            if len(t.intermediate_values) >= target and inherited < total_epochs - 1:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                return True
        time.sleep(POLL_SECONDS)
    return False


def _no_pruner():
    from maskopt.search.space import Component

    return Component("none")


def _random_sampler():
    from maskopt.search.space import Component

    return Component("random")
