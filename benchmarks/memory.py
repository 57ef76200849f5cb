"""6. Memory across trials: peak resident memory after trial 1 versus after trial 30 of one study.

One ``run_search`` of 30 trials runs in a fresh worker process (so no other benchmark's memory
counts). After every trial (when ``run_search`` logs the trial's line to the
``maskopt.search.study.runner`` logger) the worker reads its own ``/proc/self/status``: VmHWM,
the peak resident set so far, and VmRSS, the resident set now.
Target: the peak after trial 30 under 1.10 times the peak after trial 1.

The study searches spaces/tiny.yaml's parameters (both backbones, batch 32/64, one or three
heads...) at CPU size, so later trials may legitimately need more than the first; the full mode
adds a study of one fixed configuration, where any growth is a leak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import benchmarks as B

NAME = "memory"
TITLE = "memory across trials: peak RSS after trial 1 vs after trial 30"
TRIALS = 30
TARGET = 1.10


def worker_main(args_json: str) -> None:
    """Run the study, writing one JSON line per finished trial to the output file."""
    args = json.loads(args_json)
    B.setup_threads(args["threads"])
    import logging
    from pathlib import Path

    from maskopt.search.space import Constant, discrete_values
    from maskopt.search.study import runner
    from maskopt.search.study.runner import run_search

    space = B.benchmark_space(folds=args["folds"], epochs=args["epochs"], image_size=args["image_size"])
    if args["fixed"]:
        import dataclasses

        # The first choice of each dimension, the low end of each range.
        fixed = {name: Constant((discrete_values(dim) or (dim.low,))[0]) for name, dim in space.dims.items()}
        space = dataclasses.replace(space, dims=fixed)
    out = open(args["out"], "w")
    count = [0]

    class AfterTrial(logging.Handler):
        """Measures on each per-trial line the runner logs (INFO, starting with "trial ")."""

        def emit(self, log_record: logging.LogRecord) -> None:
            line = log_record.getMessage()
            if log_record.levelno != logging.INFO or not line.startswith("trial "):
                return
            count[0] += 1
            record = {"trial": count[0], "hwm_kib": B.proc_status_kib("VmHWM"),
                      "rss_kib": B.proc_status_kib("VmRSS"), "line": line}
            out.write(json.dumps(record) + "\n")
            out.flush()

    handler = AfterTrial()
    runner.logger.addHandler(handler)
    runner.logger.setLevel(logging.INFO)
    try:
        run_search(space, trials=args["trials"], storage=f"sqlite:///{args['db']}", data=args["data"],
                   study="memory", seed=args["seed"], device="cpu", cache_dir=Path(args["cache"]),
                   threads=args["threads"], quiet=True)
    finally:
        runner.logger.removeHandler(handler)
        out.close()


def run_worker(cfg: B.Config, *, label: str, fixed: bool, data, folds: int, epochs: int, image_size: int) -> list[dict]:
    out = cfg.workdir / f"memory-{label}.jsonl"
    args = {"threads": cfg.threads, "folds": folds, "epochs": epochs, "image_size": image_size, "fixed": fixed,
            "out": str(out), "trials": TRIALS, "db": str(cfg.workdir / f"memory-{label}.db"), "data": str(data),
            "seed": cfg.seed, "cache": str(cfg.workdir / "cache")}
    env = dict(os.environ, PYTHONPATH=str(B.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", "import sys; from benchmarks.memory import worker_main; worker_main(sys.argv[1])",
                    json.dumps(args)], check=True, env=env, cwd=B.ROOT)
    return [json.loads(line) for line in out.read_text().splitlines()]


def run(cfg: B.Config) -> B.Report:
    persons = 20 if cfg.quick else 60
    folds, epochs, image_size = 2, 1 if cfg.quick else 2, 32 if cfg.quick else 48
    data = B.demo_data(cfg, persons=persons)
    report = B.Report(NAME, TITLE, settings={"trials": TRIALS, "persons": persons, "images": persons * 7, "folds": folds,
                                             "epochs": epochs, "image_size": image_size, "threads": cfg.threads,
                                             "measured": "/proc/self/status VmHWM and VmRSS in the worker, after each trial"})
    variants = [("demo space", False)] + ([] if cfg.quick else [("fixed configuration", True)])
    for label, fixed in variants:
        records = run_worker(cfg, label=label.replace(" ", "-"), fixed=fixed, data=data, folds=folds, epochs=epochs,
                             image_size=image_size)
        if len(records) < TRIALS:
            report.notes.append(f"{label}: only {len(records)} trials finished")
        first, last = records[0], records[-1]
        growth = B.ratio(last["hwm_kib"], first["hwm_kib"])
        report.add(f"{label}: peak RSS (VmHWM) after trial {last['trial']} vs 1", last["hwm_kib"] / 1024,
                   first["hwm_kib"] / 1024, "after trial 1", unit="MiB", ratio=growth, ratio_label="last/first",
                   target=f"< {TARGET}", met=growth is not None and growth < TARGET)
        report.add(f"{label}: RSS now (VmRSS) after trial {last['trial']} vs 1", last["rss_kib"] / 1024,
                   first["rss_kib"] / 1024, "after trial 1", unit="MiB",
                   ratio=B.ratio(last["rss_kib"], first["rss_kib"]), ratio_label="last/first")
        report.details[label] = records
        cfg.log(f"{label}: VmHWM {first['hwm_kib'] / 1024:.0f} -> {last['hwm_kib'] / 1024:.0f} MiB, "
                f"VmRSS {first['rss_kib'] / 1024:.0f} -> {last['rss_kib'] / 1024:.0f} MiB over {len(records)} trials")
    return report
