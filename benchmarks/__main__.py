"""``python -m benchmarks [NAME ...] [--quick] [--threads N]``: run benchmarks, print, save JSON.

Names: loop, data, pruning, search, storage, memory (the default set, in that order); gpu (see
benchmarks/gpu.sh), labels, resume, pretrained, channels_last, onnx, curves, replay, live and warm_start run only when named. Results go to
benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import benchmarks as B

MODULES = {
    "loop": "loop_overhead",
    "data": "data_path",
    "pruning": "pruning",
    "search": "search_efficiency",
    "storage": "storage",
    "memory": "memory",
    "gpu": "gpu",
    "labels": "label_noise",
    "resume": "resume",
    "pretrained": "pretrained",
    "channels_last": "memory_format",
    "onnx": "onnx_latency",
    "curves": "curves",
    "replay": "replay",
    "latency": "latency_budget",
    "live": "live_search",
    "warm_start": "warm_start",
}
DEFAULT = ("loop", "data", "pruning", "search", "storage", "memory")
ALIASES = {module: name for name, module in MODULES.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(MODULES)} (default: {' '.join(DEFAULT)})")
    parser.add_argument("--quick", action="store_true", help="small sizes: all six in under 10 minutes on 2 cores")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default 1: safe beside other work on a shared machine)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="device of the gpu benchmark; with cuda the search benchmark runs on the GPU at demo size")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="search benchmark: wall-clock budget of each side (default 25 quick, 480 full, 100 on cuda)")
    parser.add_argument("--dry-run", action="store_true", help="gpu benchmark: a tiny CPU smoke run of its code path")
    parser.add_argument("--dataset", choices=("fashion", "demo"),
                        help="curves and replay benchmarks: this dataset only (default: both)")
    parser.add_argument("--seeds", type=int, metavar="N", help="replay benchmark: seeds per combination (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=B.RESULTS_DIR, metavar="DIR",
                        help="where the JSON results go (default: benchmarks/results)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (demo data, storages)")
    parser.add_argument("--markdown", action="store_true", help="also print each table as Markdown")
    parser.add_argument("-v", "--verbose", action="store_true", help="per-repetition and per-trial lines")
    args = parser.parse_args(argv)

    names = []
    for name in args.names or DEFAULT:
        name = ALIASES.get(name, name)
        if name not in MODULES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(MODULES)}")
        names.append(name)
    if args.threads < 1:
        parser.error("--threads must be at least 1")

    B.setup_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="maskopt-bench-"))
    cfg = B.Config(quick=args.quick, threads=args.threads, workdir=workdir, seed=args.seed, verbose=args.verbose,
                   device=args.device, dry_run=args.dry_run, budget=args.budget, dataset=args.dataset, seeds=args.seeds)
    B.show_search_lines(args.verbose)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    cfg.command = command
    info = B.machine_info()
    print(f"maskopt benchmarks ({'quick' if args.quick else 'full'}): {', '.join(names)}")
    print(f"machine: {info.get('usable_cores')} cores, {info.get('cpu_model', '?')}, {info.get('memory_gib', '?')} GiB, "
          f"GPU: {info.get('gpu') or 'none'}; torch {info.get('torch')}, {args.threads} torch thread(s) per process")
    load = B.load_average()
    print(f"load average at start: {load}" + ("  (above 1.5: other work is running; ratios still hold, "
                                              "absolute times are pessimistic)" if load > 1.5 else ""))
    started = time.perf_counter()
    reports = []
    try:
        for name in names:
            module = importlib.import_module(f"benchmarks.{MODULES[name]}")
            print(f"\n== {name}: {module.TITLE}", flush=True)
            before = B.load_average()
            t0 = time.perf_counter()
            try:
                report = module.run(cfg)
            except Exception as e:  # a broken benchmark must not hide the others' results
                if type(e).__name__ == "SearchInterrupted":  # Ctrl-C or SIGTERM inside a search: stop everything
                    raise KeyboardInterrupt from e
                traceback.print_exc()
                report = B.Report(name, module.TITLE, skipped=f"error: {type(e).__name__}: {e}")
            report.seconds = time.perf_counter() - t0
            cfg.results[name] = report
            reports.append(report)
            if report.skipped:
                print(f"  skipped: {report.skipped}")
            for line in B.table_lines(report) if report.rows or report.table else []:
                print("  " + line)
            for note in report.notes:
                print(f"  note: {note}")
            if args.markdown and (report.rows or report.table):
                print()
                print("\n".join(B.table_lines(report, markdown=True)))
            after = B.load_average()
            path = B.write_json(report, cfg=cfg, command=command, load_before=before, load_after=after,
                                results_dir=args.results)
            shown = path.relative_to(B.ROOT) if path.is_relative_to(B.ROOT) else path
            print(f"  ({report.seconds:.0f} s; load {before} -> {after}; wrote {shown})", flush=True)
    finally:
        if args.keep:
            print(f"\nscratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n== summary ({time.perf_counter() - started:.0f} s, load average now {B.load_average()})")
    for report in reports:
        judged = [r for r in report.rows if r.met is not None]
        status = report.skipped or (f"{sum(r.met for r in judged)}/{len(judged)} targets met" if judged
                                    else "figures only (no target)")
        print(f"  {report.name:<8} {status}")
        for r in judged:
            print(f"    {B.mark(r.met)} {r.metric}: ratio {B.fmt_ratio(r.ratio)} (target {r.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
