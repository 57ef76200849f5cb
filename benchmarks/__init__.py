"""maskopt's benchmarks: each pits maskopt against the way it replaces, in one run.

Run ``python -m benchmarks [NAME ...] [--quick]`` (see ``__main__.py``). Every benchmark module
has ``NAME``, ``TITLE`` and ``run(cfg) -> Report``. A ``Report`` holds rows of "maskopt side,
other side, ratio, target, met?"; ``__main__`` prints them as a table and writes them to
``benchmarks/results/<name>.json``.

Timing rules (these machines are noisy, so ratios count and single times do not): both sides of a
pair are measured in the same run, alternating which goes first, after a warm-up, over several
repetitions, and compared by their medians (:func:`alternate`).

Nothing here asserts on times: a benchmark reports, it does not fail.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"  # git-ignored


# --- configuration ------------------------------------------------------------------------------


@dataclass
class Config:
    """What every benchmark is given.

    Attributes:
        quick: Small sizes, so that all benchmarks together run in a few minutes.
        threads: torch threads (and decode threads / DataLoader workers) for each side.
        workdir: A scratch folder for demo data, caches and storages (deleted afterwards).
        seed: Base seed.
        verbose: Print per-trial lines (maskopt's log, see :func:`show_search_lines`) and
            per-repetition times.
        device: ``cpu``, ``cuda`` or ``auto``: the GPU benchmark's device; ``cuda`` also moves the
            search benchmark to the GPU (the others always run on the CPU).
        dry_run: The GPU benchmark's tiny CPU smoke run.
        budget: The search benchmark's seconds per side, instead of its default for the mode.
        results: The reports of the benchmarks already run in this invocation, by name.
        dataset: The curves and replay benchmarks' dataset (``fashion`` or ``demo``); None: both.
        seeds: The replay benchmark's seeds per combination; None: its default.
        command: The command line of this invocation, for results that record it.
    """

    quick: bool = False
    threads: int = 1
    workdir: Path = Path("/tmp")
    seed: int = 0
    verbose: bool = False
    device: str = "auto"
    dry_run: bool = False
    budget: float | None = None
    results: dict = field(default_factory=dict)
    dataset: str | None = None
    seeds: int | None = None
    command: str = ""

    def log(self, text: str) -> None:
        print(f"  {text}", flush=True)

    def debug(self, text: str) -> None:
        if self.verbose:
            print(f"    {text}", flush=True)


def setup_threads(threads: int) -> None:
    """Pin torch (and any OpenMP code) to ``threads`` threads, here and in child processes.

    Oversubscribed torch threads spin-wait and run 10-50 times slower, so on a shared 2-core
    machine the benchmarks run with one thread per process unless told otherwise.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MASKOPT_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:  # the GPU benchmark runs without optuna
        pass
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran
        pass


def show_search_lines(verbose: bool) -> None:
    """With ``verbose``, print maskopt's per-trial lines, dataset notes and warnings as debug lines.

    The library logs them with Python's ``logging`` under the ``maskopt`` logger; without a
    handler only its warnings reach stderr (Python's last-resort handler), which is what the
    benchmarks want when not verbose.
    """
    if not verbose:
        return
    import logging
    import sys

    logger = logging.getLogger("maskopt")
    if any(getattr(h, "benchmarks_handler", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    %(message)s"))
    handler.benchmarks_handler = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# --- measuring ----------------------------------------------------------------------------------


def alternate(sides: dict[str, Callable[[], object]], *, reps: int, warmup: int = 1,
              debug: Callable[[str], None] | None = None) -> dict[str, list]:
    """Call each side ``warmup + reps`` times, alternating which goes first; keep the last ``reps``.

    Repetition ``i`` runs the sides in their given order when ``i`` is even and reversed when it
    is odd, so drift in the machine's load hits both sides alike.
    """
    names = list(sides)
    out: dict[str, list] = {name: [] for name in names}
    for i in range(warmup + reps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            value = sides[name]()
            if i >= warmup:
                out[name].append(value)
            if debug is not None:
                tag = "warm-up" if i < warmup else f"rep {i - warmup + 1}"
                debug(f"{tag} {name}: {_brief(value)}")
    return out


def _brief(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_brief(v)}" for k, v in value.items() if not isinstance(v, (list, dict)))
    return str(value)


def paired_ratio(numerators, denominators) -> float | None:
    """Median over repetitions of each repetition's ratio (the two sides ran back to back)."""
    pairs = [a / b for a, b in zip(numerators, denominators) if a is not None and b]
    return median(pairs)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        return False


def proc_status_kib(field_name: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS: resident now; VmHWM: peak resident)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# --- reports ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One compared figure.

    ``ratio`` is defined per row (``ratio_label`` says how, e.g. ``maskopt/plain``) and
    ``target`` says what it must reach; ``met`` is None for figures shown for context only.
    """

    metric: str
    maskopt: float | None
    other: float | None
    other_name: str
    unit: str = ""
    ratio: float | None = None
    ratio_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0
    table: tuple[list[str], list[list[str]]] | None = None  # (header, rows): shown instead of ``rows``

    def add(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


def ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def mark(met: bool | None) -> str:
    return "" if met is None else ("✓" if met else "✗")


def fmt(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = f"{value:.4f}" if value else "0"
    return f"{text} {unit}".rstrip()


def fmt_ratio(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def table_lines(report: Report, *, markdown: bool = False) -> list[str]:
    """The report's own table (if any), then its rows, as text (or Markdown) tables."""
    lines = []
    if report.table is not None:
        header, rows = report.table
        lines += _layout(header, rows, markdown=markdown)
    if report.rows:
        header = ["metric", "maskopt", "other side", "ratio", "target", "met"]
        rows = [[r.metric, fmt(r.maskopt, r.unit),
                 f"{fmt(r.other, r.unit)} ({r.other_name})" if r.other_name else fmt(r.other, r.unit),
                 f"{fmt_ratio(r.ratio)}" + (f" ({r.ratio_label})" if r.ratio_label and r.ratio is not None else ""),
                 r.target or "—", mark(r.met) or "info"] for r in report.rows]
        lines += ([""] if lines else []) + _layout(header, rows, markdown=markdown)
    return lines


def _layout(header: list[str], rows: list[list[str]], *, markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return lines
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]


def machine_info() -> dict:
    """Cores, CPU model, memory, GPU (if any), software versions."""
    info: dict = {"nproc": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                  "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        import optuna
        import timm
        import torch

        info.update(torch=torch.__version__, timm=timm.__version__, optuna=optuna.__version__)
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 -- informational only
        pass
    return info


def write_json(report: Report, *, cfg: Config, command: str, load_before: float, load_after: float,
               results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{report.name}.json"
    data = {
        "name": report.name,
        "title": report.title,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "quick": cfg.quick,
        "threads": cfg.threads,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "seconds": round(report.seconds, 1),
        "machine": machine_info(),
        "skipped": report.skipped,
        "settings": report.settings,
        "rows": [asdict(r) for r in report.rows],
        "table": report.table,
        "notes": report.notes,
        "details": report.details,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


# --- shared inputs ------------------------------------------------------------------------------


LITE0 = "tf_efficientnet_lite0"  # the demo's backbone, whose ImageNet weights `make demo` imports
WEIGHTS = ROOT / "weights"


def missing_lite0_weights() -> str | None:
    """Why a benchmark that trains the pretrained Lite0 cannot run here, or None when it can."""
    if (WEIGHTS / f"{LITE0}.safetensors").is_file():
        return None
    return f"no {WEIGHTS}/{LITE0}.safetensors: run `make demo` (or its `maskopt weights import` step)"


def demo_data(cfg: Config, *, persons: int, size: int = 64, eval_persons: int = 2) -> Path:
    """A demo dataset in the competition layout, made once per run and size in the work folder."""
    from maskopt.search.data.demo import make_demo_data

    out = cfg.workdir / f"demo-{persons}p-{size}px"
    if not (out / "train" / "train.csv").exists():
        make_demo_data(out, persons=persons, eval_persons=eval_persons, size=size, seed=cfg.seed, quiet=True)
    return out


def warm_up(cfg: Config, data: Path, image_size: int, backbones=("mobilenetv3_small_050", "resnet10t"),
            device: str = "cpu") -> None:
    """Pay the one-time costs (image cache, timm imports, first model build) before any side runs."""
    import torch

    from maskopt.search.data.dataset import load_dataset
    from maskopt.search.data.prepared import prepare_data
    from maskopt.search.train.models import build_model

    prepare_data(load_dataset(data), image_sizes=[image_size], cache_dir=cfg.workdir / "cache")
    for backbone in backbones:
        model = build_model(backbone, num_classes=18).to(device)
        model(torch.zeros(2, 3, image_size, image_size, device=device)).sum().backward()


def benchmark_space(*, folds: int, epochs: int, image_size: int, **study):
    """spaces/tiny.yaml (sampler, pruner, searched params) with the study shrunk for a benchmark."""
    import dataclasses

    from maskopt.search.space import Constant, load_space

    space = load_space(ROOT / "spaces" / "tiny.yaml", check_names=False)
    settings = dataclasses.replace(space.study, folds=folds, epochs=epochs, **study)
    dims = dict(space.dims, image_size=Constant(image_size))
    return dataclasses.replace(space, study=settings, dims=dims)


def trial_table(study) -> list[dict]:
    """Finished trials of a study as plain dicts (state, value, times, epochs trained)."""
    from maskopt.search.study.record import TrialRecord

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.datetime_start is None or t.datetime_complete is None:
            continue
        record = TrialRecord.of(t)
        rows.append({
            "number": record.number, "state": record.state.name, "value": record.value,
            "start": t.datetime_start.timestamp(), "complete": t.datetime_complete.timestamp(),
            "epochs_trained": record.epochs_trained, "seconds": record.seconds,
            "pruned_after_folds": record.pruned_after_folds,
            "params": record.params,
        })
    return rows
