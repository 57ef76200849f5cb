"""A study as one self-contained HTML page: numbers, Optuna's plots, the best trial's errors.

``report`` reads a study and writes a single file that opens anywhere, with no network:
plotly.js is inlined once in the page head and every figure draws with it. Sections:

- at a glance: trials by state, best macro F1 with its per-fold spread, time spent, compute
  saved by pruning (epochs trained against ``folds * epochs`` for every finished trial);
- Optuna's plots: optimisation history, parameter importances, parallel coordinates, slices,
  intermediate values (each skipped, with a sentence saying why, when the study cannot have it);
- the top 10 trials with their parameters and per-fold scores;
- the best trial's out-of-fold confusion matrix (18x18, plus mask / gender / age matrices and
  F1 for the competition's classes);
- the suspect labels: thumbnails of the training images whose given label the stored
  out-of-fold predictions doubt most (``maskopt label-issues``), embedded as base64 JPEGs;
- the exported model, if any, and its score on a solution file when one is given.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import plotly.io
from optuna.trial import FrozenTrial, TrialState
from PIL import Image
from plotly.offline import get_plotlyjs

from maskopt.errors import ExportError, MaskoptError
from maskopt.files import write_atomically
from maskopt.search.data import labels as L
from maskopt.search.export.config import read_export_config
from maskopt.search.export.predict import SUBMISSION_FILE
from maskopt.search.export.score import score_submission
from maskopt.search.report.label_issues import study_label_issues
from maskopt.search.space import SearchSpace
from maskopt.search.study.describe import format_value
from maskopt.search.study.record import OBJECTIVE_NAME, StudyRecord, TrialRecord
from maskopt.storage import DEFAULT_ARTIFACT_DIR, redact, resolve_url

TOP_N = 10
SUSPECTS_SHOWN = 24
"""Suspect images shown as thumbnails in the "Suspect labels" section."""
THUMBNAIL_PX = 96
PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
TASKS = (("mask", L.MASK_NAMES, lambda c: c // 6), ("gender", L.GENDER_NAMES, lambda c: (c // 3) % 2),
         ("age", L.AGE_NAMES, lambda c: c % 3))


def report(*, storage: str | None = None, study: str | None = None, out: str | Path = "report.html",
           solution: str | Path | None = None, artifacts: str | Path | None = None) -> Path:
    """Write the HTML report of a study.

    Args:
        storage: The study storage (None: ``maskopt.db`` here). Opened read-only in spirit:
            a missing SQLite file is an error, not a new empty database.
        study: The study's name; may be omitted when the storage holds one study.
        out: The HTML file to write (its folder is created). Written to a temporary file that
            is renamed into place, so a failed report never leaves half a page; a symlink, a
            device or a folder there is refused and left as it is.
        solution: A competition solution file (``ImageID,ans``); the study's exported
            ``submission.csv`` is scored against it.
        artifacts: The folder the search stored out-of-fold predictions in (None:
            ``maskopt-artifacts``), for the suspect labels.

    Returns:
        The path written.

    Raises:
        StorageError: No such storage or study.
        MaskoptError: ``out`` cannot be written.
        ExportError: ``solution`` is missing or malformed, or the export's submission does not
            match it.

    Example:
        >>> report(storage="sqlite:///maskopt.db", study="demo", out="demo.html")
        PosixPath('demo.html')
    """

    if solution is not None and not Path(solution).is_file():
        raise ExportError(f"solution file {solution} does not exist; give the competition's solution.csv "
                          f"(ImageID,ans) with `solution`, or leave it out")
    url = resolve_url(storage)
    record = StudyRecord.open(url, study)
    facts = _Facts.of(record)
    export = _export_section(record, solution)  # scores first: a bad solution file fails before writing
    suspects = _suspects_section(record, artifacts)
    page = _page(record, facts, redact(url), export, suspects)
    return write_atomically(out, page)


# --- facts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Facts:
    """What the page says about the study, computed once."""

    trials: list[FrozenTrial]
    by_state: dict[str, int]
    stopped_early: int  # COMPLETE trials a per-fold pruner stopped before their last fold
    continued: int  # trials that continue a paused one from its checkpoint (the asha pruner)
    space: SearchSpace | None  # None: the study stores none (or none maskopt can read)
    folds: int | None
    epochs: int | None
    top: list[TrialRecord]
    params: list[str]  # searched parameters, in the order they were suggested
    compute_seconds: float
    wall_seconds: float | None
    epochs_trained: int | None
    epochs_full: int | None
    counted_trials: int

    @property
    def best(self) -> TrialRecord | None:
        return self.top[0] if self.top else None

    @property
    def complete(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    @property
    def finished_records(self) -> list[TrialRecord]:
        """Complete trials that ran every fold, as records."""
        return [r for r in map(TrialRecord.of, self.complete) if r.ran_every_fold]

    @classmethod
    def of(cls, record: StudyRecord) -> _Facts:

        trials = record.study.get_trials(deepcopy=False)
        records = [TrialRecord.of(t) for t in trials]
        by_state = {s.name: sum(t.state == s for t in trials) for s in _STATES}
        space = None
        if record.has_space:
            try:
                space = record.space
            except MaskoptError:  # a stored space this version cannot read: reported as none
                space = None
        folds, epochs = (space.study.folds, space.study.epochs) if space is not None else (None, None)
        params: list[str] = []
        for t in trials:
            params += [p for p in t.params if p not in params]
        starts = [t.datetime_start for t in trials if t.datetime_start]
        ends = [t.datetime_complete for t in trials if t.datetime_complete]
        # Compute saved by pruning: finished trials only (a failed trial stopped for another reason).
        trained = full = counted = 0
        for r in records:
            if r.state in (TrialState.COMPLETE, TrialState.PRUNED) and r.epochs_trained is not None:
                # A promoted trial's inherited epochs are counted with the paused trial that trained
                # them, and the two are one configuration's budget.
                here = r.epochs_trained_here if r.continues is not None else None
                trained += int(r.epochs_trained if here is None else here)
                counted += r.continues is None
        if folds and epochs and counted:
            full = counted * folds * epochs
        return cls(
            trials=trials, by_state=by_state,
            stopped_early=sum(r.state == TrialState.COMPLETE and not r.ran_every_fold for r in records),
            continued=sum(r.continues is not None for r in records),
            space=space, folds=folds, epochs=epochs, top=record.top(TOP_N), params=params,
            compute_seconds=float(sum(r.seconds or 0.0 for r in records)),
            wall_seconds=(max(ends) - min(starts)).total_seconds() if starts and ends else None,
            epochs_trained=trained if full else None, epochs_full=full or None, counted_trials=counted,
        )


# --- the page -----------------------------------------------------------------------------------


def _page(record: StudyRecord, facts: _Facts, url: str, export: str, suspects: str = "") -> str:
    study = record.study
    sections = [
        ("history", "Optimisation history", _plot_section(_history_figure, study, facts)),
        ("importance", "Parameter importances", _plot_section(_importance_figure, study, facts)),
        ("parallel", "Parallel coordinates", _plot_section(_parallel_figure, study, facts)),
        ("slice", "Slice plots", _slice_section(study, facts)),
        ("intermediate", "Intermediate values", _plot_section(_intermediate_figure, study, facts)),
        ("top", f"Top {TOP_N} trials", _top_table(facts)),
        ("pareto", "Accuracy against latency", _plot_section(_pareto_figure, study, facts)),
        ("best", "Best trial: out-of-fold errors", _best_section(record, facts)),
        ("suspects", "Suspect labels", suspects or _skipped("Not computed.")),
        ("export", "Exported model", export),
    ]
    nav = "".join(f'<a href="#{key}">{html.escape(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for key, title, content in sections)
    generated = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(study.study_name)} · maskopt report</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<header class="top">
  <div class="wrap">
    <div class="brand">maskopt report</div>
    <h1>{_e(study.study_name)}</h1>
    <div class="sub">{_e(url)} · {_settings_line(facts)} · generated {_e(generated)}</div>
    <nav>{nav}</nav>
  </div>
</header>
<main class="wrap">
{_glance(facts, study)}
{body}
</main>
<footer class="wrap">maskopt · optuna {_e(optuna.__version__)} · one self-contained file, no network needed</footer>
</body>
</html>
"""


def _settings_line(facts: _Facts) -> str:
    if facts.space is None:
        return "no maskopt search space stored with this study"
    settings = facts.space.study
    parts = [f"{_count(settings.folds, 'fold')} × {_count(settings.epochs, 'epoch')}"]
    for key, component in (("sampler", settings.sampler), ("pruner", settings.pruner)):
        if component.name:
            parts.append(f"{key} {component.name}")
    return _e(" · ".join(parts))


def _glance(facts: _Facts, study: optuna.Study) -> str:
    total = len(facts.trials)
    chips = "".join(f'<span class="chip {s.lower()}">{n} {s.lower()}</span>'
                    for s, n in facts.by_state.items() if n)
    if facts.stopped_early:
        chips += (f'<span class="chip pruned" title="complete trials that the per-fold pruner stopped before their '
                  f'last fold; they are left out of the ranking">{facts.stopped_early} stopped early</span>')
    if facts.continued:
        chips += (f'<span class="chip complete" title="trials that continue a paused trial from its checkpoint (the '
                  f'asha pruner promoted it); the paused trial shows as pruned">{facts.continued} promoted</span>')
    tiles = [_tile("Trials", str(total), chips or _e("none yet"), detail_is_html=True)]

    best = facts.best
    if best is not None:
        fold_f1 = [float(v) for v in best.fold_f1]
        if fold_f1:
            spread = (f"± {np.std(fold_f1):.4f} over {len(fold_f1)} folds "
                      f"(min {min(fold_f1):.4f}, max {max(fold_f1):.4f})")
        else:
            spread = "no per-fold scores recorded"
        tiles.append(_tile("Best macro F1", f"{best.value:.4f}", f"trial {best.number} · {spread}", accent=True))
    else:
        tiles.append(_tile("Best macro F1", "–", "no trial has finished every fold yet"))

    wall = (f"{_duration(facts.wall_seconds)} from first start to last finish" if facts.wall_seconds
            else "no trial finished yet")
    tiles.append(_tile("Time spent", _duration(facts.compute_seconds), f"training time of all trials · {wall}"))

    if facts.epochs_full:
        saved = 1 - facts.epochs_trained / facts.epochs_full
        detail = (f"{facts.epochs_trained:,} epochs trained, of the {facts.epochs_full:,} that running all "
                  f"{facts.counted_trials} finished trials to the end would take "
                  f"({_count(facts.folds, 'fold')} × {_count(facts.epochs, 'epoch')} each)")
        if facts.space is not None and facts.space.study.pruner.name == "none":
            detail += "; this study has no pruner"
        tiles.append(_tile("Compute saved by pruning", f"{saved:.0%}", detail))
    else:
        why = "no stored search space" if facts.space is None else "no finished trial yet"
        tiles.append(_tile("Compute saved by pruning", "–", why))
    return f'<section class="glance">{"".join(tiles)}</section>'


def _tile(label: str, value: str, detail: str, *, accent: bool = False, detail_is_html: bool = False) -> str:
    return (f'<div class="tile{" accent" if accent else ""}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div>'
            f'<div class="detail">{detail if detail_is_html else _e(detail)}</div></div>')


# --- plots --------------------------------------------------------------------------------------


class _Skip(Exception):
    """A plot the study cannot have yet; the message says why, in a sentence."""


def _plot_section(make_figure, study: optuna.Study, facts: _Facts) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = make_figure(study, facts)
    except _Skip as e:
        return _skipped(str(e))
    return _figure_html(figure, make_figure.__name__.strip("_").replace("_figure", ""))


def _figure_html(figure, key: str, height: int | None = None, css: str = "plot", modebar: bool = True) -> str:
    height = height or figure.layout.height or 420
    # The look of plotly_white, set directly: assigning a whole template costs more than the plot.
    figure.update_layout(title=None, height=height, width=None, autosize=True, plot_bgcolor="#fff",
                         paper_bgcolor="#fff", margin=dict(l=70, r=30, t=30 if modebar else 12, b=50),
                         font=dict(family=_FONT, size=12, color="#2a3f5f"))
    grid = dict(gridcolor="#ebf0f8", zerolinecolor="#ebf0f8", linecolor="#ebf0f8")
    figure.update_xaxes(**grid)
    figure.update_yaxes(**grid)
    config = {**PLOT_CONFIG, "displayModeBar": "hover" if modebar else False}
    # Plotly draws titles, ticks, names and hover text as HTML, and Optuna puts the stored parameter
    # names and values there: every string is escaped.
    div = plotly.io.to_html(_escaped(figure.to_plotly_json()), full_html=False, include_plotlyjs=False,
                            div_id=_element_id(key), config=config, validate=False)
    return f'<div class="{css}" data-plot="{_e(key)}">{div}</div>'


def _element_id(key: str) -> str:
    """``plot-<key>`` with every character but ASCII letters, digits and ``-`` written as ``_<hex>_``:
    plotly puts the id unescaped in an attribute and in the page's script, and each key keeps its own."""
    return "plot-" + re.sub(r"[^A-Za-z0-9-]", lambda m: f"_{ord(m.group()):x}_", key)


_PLOTLY_TAGS = ("<br>", "<extra>", "</extra>")
"""Plotly's own markup in the hover templates Optuna writes, kept as markup."""


def _escaped(value, key: str = ""):
    """A figure's JSON with every string HTML-escaped (``key``: the property it belongs to)."""
    if isinstance(value, str):
        text = html.escape(value, quote=False)
        if key == "hovertemplate":
            for tag in _PLOTLY_TAGS:
                text = text.replace(html.escape(tag), tag)
        return text
    if isinstance(value, dict):
        return {k: _escaped(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind in "OUS"):
        return [_escaped(v, key) for v in value]
    return value


def _skipped(sentence: str) -> str:
    return f'<p class="skipped">{_e(sentence)}</p>'


def _need_complete(facts: _Facts, n: int = 1) -> None:
    if len(facts.complete) < n:
        have = len(facts.complete)
        raise _Skip(f"This needs at least {n} complete trial{'s' if n > 1 else ''}; the study has {have}"
                    f"{' (every finished trial was pruned)' if not have and facts.by_state['PRUNED'] else ''}.")


# Macro F1 is every maskopt study's first value, with one objective or several (then Optuna's plots
# need to be told which value to draw).
_F1 = {"target": lambda trial: trial.values[0], "target_name": OBJECTIVE_NAME}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the ``(macro F1, latency)`` points no other point beats: at least as accurate and
    at least as fast, and better in one of the two. Sorted fastest first."""
    front = [i for i, (f1, ms) in enumerate(points)
             if not any(g >= f1 and m <= ms and (g > f1 or m < ms) for g, m in points)]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def _pareto_figure(study, facts):
    import plotly.graph_objects as go

    timed = [t for t in facts.finished_records if t.value is not None and t.latency and 1 in t.latency.ms_per_image]
    if len(timed) < 2:
        raise _Skip("This needs at least 2 complete trials with a recorded CPU latency (maskopt records it for "
                    "every trial since the latency objective came).")
    points = [(t.value, t.latency.ms_per_image[1]) for t in timed]
    front = pareto_front(points)
    labels = [f"trial {t.number}<br>" + "<br>".join(f"{k}={format_value(v)}" for k, v in t.params.items())
              for t in timed]
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[p[1] for p in points], y=[p[0] for p in points], mode="markers", name="trials",
                                text=labels, hovertemplate="%{text}<br>%{y:.4f} macro F1, %{x:.3g} ms<extra></extra>",
                                marker=dict(color="#a5b4fc", size=8)))
    figure.add_trace(go.Scatter(x=[points[i][1] for i in front], y=[points[i][0] for i in front],
                                mode="lines+markers", name="Pareto front", text=[labels[i] for i in front],
                                hovertemplate="%{text}<br>%{y:.4f} macro F1, %{x:.3g} ms<extra></extra>",
                                marker=dict(color="#4f46e5", size=10), line=dict(shape="hv")))
    figure.update_layout(xaxis_title="CPU latency, ms per image (batch 1, one thread)", yaxis_title=OBJECTIVE_NAME,
                         height=420)
    return figure


def _history_figure(study, facts):

    _need_complete(facts)
    figure = optuna.visualization.plot_optimization_history(study, **_F1)
    if len(facts.trials) <= 15:
        figure.update_xaxes(dtick=1)  # no half trials on the axis
    return figure


def _importance_figure(study, facts):

    _need_complete(facts, 2)
    varying = [p for p in facts.params
               if len({json.dumps(t.params.get(p), default=str) for t in facts.complete}) > 1]
    if not varying:
        raise _Skip("Importances need complete trials whose parameters differ; every complete trial has the same ones.")
    try:
        figure = optuna.visualization.plot_param_importances(study, params=varying, **_F1)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        raise _Skip(f"Optuna could not estimate importances from {len(facts.complete)} complete trials ({e}); "
                    f"run more trials.") from e
    figure.update_layout(height=max(200, 90 + 34 * len(varying)))  # bars of one height, however many
    return figure


def _parallel_figure(study, facts):

    _need_complete(facts)
    if not facts.params:
        raise _Skip("The study searches no parameter.")
    return optuna.visualization.plot_parallel_coordinate(study, **_F1)


def _intermediate_figure(study, facts):
    if not any(t.intermediate_values for t in facts.trials):
        raise _Skip("No trial has reported an intermediate value yet.")
    figure = optuna.visualization.plot_intermediate_values(study)
    figure.update_layout(yaxis_title="running mean macro F1", xaxis_title="step (fold × epochs + epoch, or fold)")
    return figure


def _slice_section(study: optuna.Study, facts: _Facts) -> str:

    try:
        _need_complete(facts)
    except _Skip as e:
        return _skipped(str(e))
    if not facts.params:
        return _skipped("The study searches no parameter.")
    cells = []
    for name in facts.params:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            figure = optuna.visualization.plot_slice(study, params=[name], **_F1)
        figure.update_traces(marker=dict(showscale=False))
        figure.update_layout(xaxis_title=name, yaxis_title=None)
        cells.append(_figure_html(figure, f"slice-{name}", height=280, css="plot small", modebar=False))
    return (f'<p class="hint">{_e(OBJECTIVE_NAME)} of each complete trial against one parameter; '
            f'darker points are later trials.</p><div class="grid">{"".join(cells)}</div>')


# --- top trials ---------------------------------------------------------------------------------


def _top_table(facts: _Facts) -> str:

    if not facts.top:
        return _skipped("No trial has finished every fold yet, so there is nothing to rank.")
    n_folds = max([facts.folds or 0] + [len(t.fold_f1) for t in facts.top])
    head = (["#", "trial", "macro F1"] + [f"fold {k + 1}" for k in range(n_folds)]
            + ["± std", "time", "img/s", "CPU ms/img (1 · 32)", "params"] + facts.params)
    rows = []
    for rank, t in enumerate(facts.top, start=1):
        folds = [float(v) for v in t.fold_f1]
        cells = [str(rank), str(t.number), f'<b>{t.value:.4f}</b>']
        cells += [f"{folds[k]:.4f}" if k < len(folds) else "" for k in range(n_folds)]
        latency = t.latency
        cells += [f"{np.std(folds):.4f}" if folds else "", _duration(t.seconds),
                  f"{t.images_per_second or 0:,.0f}{_gpu_share(t)}",
                  " · ".join(f"{latency.ms_per_image[b]:.2f}" if b in latency.ms_per_image else "–" for b in (1, 32))
                  if latency else "–",
                  f"{latency.params / 1e6:.2f} M" if latency else "–"]
        row = "".join(f"<td>{c}</td>" for c in cells)
        row += "".join(f'<td class="param">{_e(format_value(t.params.get(p, "")))}</td>' for p in facts.params)
        rows.append(f"<tr>{row}</tr>")
    header = "".join(f'<th class="{"param" if i >= len(head) - len(facts.params) else ""}">{_e(h)}</th>'
                     for i, h in enumerate(head))
    return (f'<div class="scroll"><table class="data top"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            f'<p class="hint">Complete trials that ran every fold, best first; macro F1 is the mean over folds. '
            f'CPU ms/img: inference latency of the architecture at its image size on one CPU thread, per image at '
            f'batch 1 and 32 (the median of repeated runs on the machine that trained it).</p>')


def _gpu_share(t: TrialRecord) -> str:
    """`` · GPU g ×k`` when a worker trained the trial on GPU g, given to k workers of its machine (itself
    included), else nothing."""
    share = t.device_share
    if share is None:
        return ""
    title = f"trained on GPU {share.gpu}, given to {_count(share.workers, 'worker')} of its machine"
    return f' · <span title="{_e(title)}">GPU {_e(share.gpu)} ×{share.workers}</span>'


# --- best trial: confusion matrices -------------------------------------------------------------


def _best_section(record: StudyRecord, facts: _Facts) -> str:
    best = facts.best
    if best is None:
        return _skipped("No complete trial yet.")
    confusion = best.confusion
    if not confusion:
        return _skipped(f"Trial {best.number} has no out-of-fold predictions recorded (its `confusion` attribute is "
                        f"missing, or is not a square matrix of counts).")
    matrix = np.asarray(confusion, dtype=np.int64)
    n = len(matrix)
    competition = n == L.NUM_CLASSES and _is_competition(record, facts)
    names = list(L.class_names()) if competition else _class_names(record, n)
    f1 = _per_class_f1(matrix)
    present = matrix.sum(0) + matrix.sum(1) > 0
    summary = (f"Trial {best.number}: every training image predicted by the fold model that did not train on it "
               f"({int(matrix.sum()):,} images). Out-of-fold macro F1 {np.mean(f1[present]):.4f}, "
               f"accuracy {np.trace(matrix) / max(1, matrix.sum()):.4f}.")
    parts = [f'<p class="hint">{_e(summary)}</p>',
             '<h3>All classes</h3>', _matrix_table(matrix, names, f1=f1, compact=n > 6)]
    if competition:
        tasks = []
        for task, task_names, of in TASKS:
            block = np.zeros((len(task_names), len(task_names)), dtype=np.int64)
            for i in range(n):
                for j in range(n):
                    block[of(i), of(j)] += matrix[i, j]
            task_f1 = _per_class_f1(block)
            keep = block.sum(0) + block.sum(1) > 0
            score = f'<span class="score">F1 {np.mean(task_f1[keep]):.4f}</span>'
            tasks.append(f'<div class="task"><h4>{_e(task)} {score}</h4>'
                         f'{_matrix_table(block, list(task_names), f1=task_f1, compact=False)}</div>')
        parts[1:1] = ["<h3>Per task: mask, gender, age (blocks of the matrix below, summed)</h3>",
                      f'<div class="tasks">{"".join(tasks)}</div>']
    parts.append('<p class="hint">Rows: true class; columns: predicted class. Shade: share of the row '
                 '(the recall of the diagonal). F1 per class on the right.</p>')
    return "".join(parts)


def _is_competition(record: StudyRecord, facts: _Facts) -> bool:

    layout = record.layout  # stored by the search
    if layout is None:  # a study from before maskopt stored it: the export's config, or the space
        config = _export_config(record)
        layout = config.layout if config is not None else None
    if layout is None:
        layout = facts.space.study.layout if facts.space is not None else "auto"
    return layout in ("competition", "auto")  # auto: 18 classes and nothing says otherwise


def _class_names(record: StudyRecord, n: int) -> list[str]:
    """Class names as the search stored them (or an older study's export config), else ``class <i>``."""

    names = record.class_names
    if len(names or ()) != n:
        config = _export_config(record)
        names = config.class_names if config is not None else None
    return list(names) if len(names or ()) == n else [f"class {i}" for i in range(n)]


def _export_config(record: StudyRecord):
    """The config of the study's last export, where it is on this machine and reads as one, else None."""

    export = record.export
    if export is None:
        return None
    try:
        return read_export_config(export.path)
    except MaskoptError:
        return None


def _per_class_f1(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    denominator = matrix.sum(0) + matrix.sum(1)
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _matrix_table(matrix: np.ndarray, names: list[str], *, f1: np.ndarray, compact: bool) -> str:
    rows_total = matrix.sum(1)
    head = "".join(f'<th class="col" title="predicted: {_e(name)}">{i if compact else _e(name)}</th>'
                   for i, name in enumerate(names))
    body = []
    for i, name in enumerate(names):
        cells = []
        for j, count in enumerate(matrix[i]):
            share = count / rows_total[i] if rows_total[i] else 0.0
            colour = "22, 163, 74" if i == j else "220, 38, 38"
            style = f"background: rgba({colour}, {0.08 + 0.8 * share:.2f});" if count else ""
            if count and share > 0.55:
                style += " color: #fff;"
            title = f"true {name} → predicted {names[j]}: {count} ({share:.0%} of the row)"
            cells.append(f'<td style="{style}" title="{_e(title)}">{count if count else "·"}</td>')
        label = f"{i} · {name}" if compact else name
        body.append(f'<tr><th class="row">{_e(label)}</th>{"".join(cells)}'
                    f'<td class="f1">{f1[i]:.2f}</td><td class="n">{rows_total[i]}</td></tr>')
    return (f'<div class="scroll"><table class="matrix{" compact" if compact else ""}"><thead><tr>'
            f'<th class="corner">true ↓ · predicted →</th>{head}<th class="f1">F1</th><th class="n">n</th></tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


# --- suspect labels -----------------------------------------------------------------------------


def _suspects_section(record: StudyRecord, artifacts) -> str:

    folder = artifacts if artifacts is not None else DEFAULT_ARTIFACT_DIR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = study_label_issues(record, artifacts=folder, limit=SUSPECTS_SHOWN)
    except MaskoptError as e:
        return _skipped(f"No suspect labels to show: {e}")
    if not found.issues:
        return _skipped(f"Confident learning flags none of the {found.images:,} training images, on the out-of-fold "
                        f"predictions of trial {', '.join(map(str, found.trials))}.")
    cards = []
    for issue in found.issues:
        thumb = _thumbnail(issue.path)
        image = (f'<img src="data:image/jpeg;base64,{thumb}" alt="{_e(issue.image_id)}" width="{THUMBNAIL_PX}" '
                 f'height="{THUMBNAIL_PX}">' if thumb else '<div class="nothumb">image not found</div>')
        cards.append(
            f'<figure class="suspect" title="{_e(issue.image_id)}">{image}<figcaption>'
            f'<span class="rank">#{issue.rank}</span> person {_e(issue.person)}<br>'
            f'<span class="given">{_e(issue.given_name)}</span> → <b>{_e(issue.predicted_name)}</b><br>'
            f'<span class="muted">p(given) {issue.self_confidence:.3f}</span></figcaption></figure>')
    drafted = len(found.corrections)
    summary = (f"{found.total_issues:,} of {found.images:,} training images look mislabelled to confident learning "
               f"(cleanlab) on the out-of-fold predictions of trial {', '.join(map(str, found.trials))}; the "
               f"{len(found.issues)} most suspect are shown, given label → predicted.")
    if found.layout == "competition":
        summary += (f" {drafted} person-level correction{'s' if drafted != 1 else ''} can be drafted with "
                    f"maskopt label-issues --write-corrections FILE (review them before use).")
    return f'<p class="hint">{_e(summary)}</p><div class="suspects">{"".join(cards)}</div>'


def _thumbnail(path: Path) -> str | None:
    """A small JPEG of an image as base64, or None when it cannot be read."""


    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            if image.size != (THUMBNAIL_PX, THUMBNAIL_PX):  # small images: scaled up to the card
                image = image.resize((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- export -------------------------------------------------------------------------------------


def _export_section(record: StudyRecord, solution: str | Path | None) -> str:

    export = record.export
    if export is None:
        text = "No model has been exported from this study yet (maskopt export-best)."
        if solution is not None:
            text += f" The solution file {solution} was not used: there is no submission to score."
        return _skipped(text)
    path = export.path
    rows = [("folder", f"<code>{_e(str(path))}</code>" + ("" if path.is_dir() else
                                                           ' <span class="warn">not found on this machine</span>')),
            ("trial", _e(str(export.trial))),
            ("cross-validated macro F1", _e(f"{export.cv_macro_f1:.4f}") if export.cv_macro_f1 is not None else "–"),
            ("models", _e(", ".join(export.models))),
            ("test-time augmentation", "flip" if export.tta else "none")]
    submission = path / SUBMISSION_FILE
    if submission.is_file():
        rows.append(("submission", f"<code>{_e(str(submission))}</code>"))
    extra = ""
    if solution is not None:
        if not submission.is_file():
            extra = _skipped(f"The solution file {solution} was not used: the export has no {SUBMISSION_FILE} "
                             f"at {submission}.")
        else:
            score = score_submission(submission, solution)
            tasks = " · ".join(f"{k} {v:.4f}" for k, v in score.task_f1.items())
            rows += [("score on solution", f'<b>macro F1 {score.macro_f1:.4f}</b> · accuracy {score.accuracy:.4f} · '
                                           f'{score.count:,} images <span class="muted">({_e(str(solution))})</span>'),
                     ("per-task F1", _e(tasks))]
    table = "".join(f'<tr><th>{_e(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<table class="data kv"><tbody>{table}</tbody></table>{extra}'


# --- small helpers ------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _count(n, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


_FONT = "Inter, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
_CSS = """
:root { --ink: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7fb; --card: #fff;
        --accent: #4f46e5; --good: #16a34a; --bad: #dc2626; --warn: #b45309; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.5 """ + _FONT + """; }
.wrap { max-width: 1200px; margin: 0 auto; padding: 0 24px; }
header.top { background: linear-gradient(120deg, #312e81, #4f46e5 60%, #6366f1); color: #fff;
             padding: 28px 0 0; margin-bottom: 24px; }
header .brand { text-transform: uppercase; letter-spacing: .12em; font-size: 11px; opacity: .75; }
header h1 { margin: 4px 0 6px; font-size: 28px; font-weight: 650; }
header .sub { opacity: .85; font-size: 13px; }
header nav { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 18px; }
header nav a { color: #fff; text-decoration: none; padding: 8px 12px; border-radius: 8px 8px 0 0;
               font-size: 13px; opacity: .85; }
header nav a:hover { background: rgba(255,255,255,.15); opacity: 1; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
          padding: 20px 24px; margin-bottom: 20px; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
section h2 { margin: 0 0 14px; font-size: 18px; font-weight: 650; }
section h3 { margin: 18px 0 8px; font-size: 14px; font-weight: 600; }
section.glance { display: grid; grid-template-columns: repeat(auto-fit, minmax(240px, 1fr)); gap: 16px;
                 background: none; border: 0; box-shadow: none; padding: 0; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 16px 18px; }
.tile.accent { border-color: #c7d2fe; background: linear-gradient(180deg, #eef2ff, #fff); }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; }
.tile .value { font-size: 30px; font-weight: 700; margin: 4px 0; font-variant-numeric: tabular-nums; }
.tile.accent .value { color: var(--accent); }
.tile .detail { color: var(--muted); font-size: 12.5px; }
.chip { display: inline-block; padding: 1px 8px; margin: 2px 4px 0 0; border-radius: 999px; font-size: 12px;
        background: #f3f4f6; color: var(--ink); }
.chip.complete { background: #dcfce7; color: #166534; } .chip.pruned { background: #fef3c7; color: #92400e; }
.chip.fail { background: #fee2e2; color: #991b1b; } .chip.running { background: #dbeafe; color: #1e40af; }
.plot { width: 100%; min-height: 120px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 12px; }
.grid .plot { border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
.skipped { color: var(--muted); font-style: italic; background: #f9fafb; border-left: 3px solid #d1d5db;
           padding: 10px 14px; margin: 0; border-radius: 0 6px 6px 0; }
.hint { color: var(--muted); font-size: 12.5px; margin: 6px 0 10px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
table.data { width: 100%; font-size: 13px; }
table.data th, table.data td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: right;
                               white-space: nowrap; }
table.data thead th { color: var(--muted); font-weight: 600; font-size: 12px; background: #f9fafb;
                      position: sticky; top: 0; }
table.data th.param, table.data td.param { text-align: left; }
table.data tbody tr:nth-child(even) { background: #fafafa; }
table.data tbody tr:hover { background: #eef2ff; }
table.kv { width: auto; }
table.kv th { text-align: left; color: var(--muted); font-weight: 500; padding-right: 24px; }
table.kv td { text-align: left; white-space: normal; }
code { background: #f3f4f6; padding: 1px 6px; border-radius: 4px; font-size: 12.5px; }
.warn { color: var(--warn); font-size: 12px; margin-left: 6px; }
.muted { color: var(--muted); }
.tasks { display: flex; flex-wrap: wrap; gap: 28px; }
.task h4 { margin: 4px 0 8px; font-size: 13px; text-transform: capitalize; }
.task h4 .score { color: var(--accent); font-weight: 700; margin-left: 6px; }
table.matrix { font-size: 12px; }
table.matrix th, table.matrix td { border: 1px solid #eef0f3; padding: 4px 7px; text-align: center; min-width: 30px; }
table.matrix.compact td { padding: 3px 4px; min-width: 26px; }
table.matrix th.row { text-align: left; font-weight: 500; white-space: nowrap; background: #f9fafb; }
table.matrix th.col { background: #f9fafb; font-weight: 600; }
table.matrix th.corner { font-weight: 500; color: var(--muted); font-size: 11px; background: #fff;
                         white-space: nowrap; }
table.matrix td.f1 { font-weight: 600; color: var(--accent); border-left: 2px solid var(--line); }
table.matrix td.n, table.matrix th.n { color: var(--muted); }
.suspects { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
figure.suspect { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; text-align: center;
                 font-size: 11.5px; }
figure.suspect img { image-rendering: auto; border-radius: 4px; display: block; margin: 0 auto 6px; }
figure.suspect .rank { color: var(--accent); font-weight: 700; }
figure.suspect .given { color: var(--bad); text-decoration: line-through; }
.nothumb { width: 96px; height: 96px; margin: 0 auto 6px; background: #f3f4f6; color: var(--muted);
           display: flex; align-items: center; justify-content: center; font-size: 11px; }
footer { color: var(--muted); font-size: 12px; padding: 8px 24px 32px; text-align: center; }
"""
