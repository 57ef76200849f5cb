"""``maskopt studies`` and ``maskopt dashboard``: look into a study storage."""

from __future__ import annotations

import click

from maskopt.commands.options import artifacts_option, storage_option
from maskopt.files import printable

_WIDTH = 80


@click.command()
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def studies(storage, as_json):
    """List the studies in a storage, with trial counts and best values.

    \b
    Examples:
      maskopt studies
      maskopt studies --storage postgresql://me:PASSWORD@db-host/maskopt --json
    """
    import json

    from maskopt.search.study.record import study_summaries as list_studies
    from maskopt.storage import redact, resolve_url

    summaries = list_studies(storage=storage)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in summaries], indent=2))
        return
    url = printable(redact(resolve_url(storage)))
    if not summaries:
        click.echo(f"No studies in {url}. Create one with `maskopt search`.")
        return
    click.echo(f"{len(summaries)} {'study' if len(summaries) == 1 else 'studies'} in {url}")
    click.echo(_table(summaries))


def _table(summaries) -> str:
    """Rows that fit in 80 columns; names too long for the room left are cut, and names made by
    another program than maskopt have their control characters escaped (``\\x1b``)."""
    headers = ("DIR", "COMPLETE", "PRUNED", "FAIL", "RUNNING", "BEST", "MS/IMG")
    rows = [
        (
            _short_direction(s.direction),
            str(s.n_complete),
            str(s.n_pruned),
            str(s.n_fail),
            str(s.n_running),
            "-" if s.best_value is None else f"{s.best_value:.6g}",
            "-" if s.best_latency_ms is None else f"{s.best_latency_ms:.3g}",
        )
        for s in summaries
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    room = _WIDTH - sum(w + 2 for w in widths)
    full_names = [printable(s.name) for s in summaries]
    name_width = min(room, max(4, *(len(n) for n in full_names)))
    names = [_cut(n, name_width) for n in full_names]

    def line(name, cells):
        return "  ".join([name.ljust(name_width), *(c.rjust(w) for c, w in zip(cells, widths))])

    lines = [line("NAME", headers), *(line(n, r) for n, r in zip(names, rows))]
    if any(len(n) > name_width for n in full_names):
        lines.append("(long names are cut; --json shows them whole)")
    return "\n".join(lines)


def _short_direction(direction: str) -> str:
    return ",".join(d[:3] for d in direction.split(","))


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


@click.command()
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
@artifacts_option("Folder of the trials' artifacts (plots, files).")
def dashboard(storage, host, port, artifacts):
    """Serve optuna-dashboard on a storage: history, importances, trials, artifacts.

    It has no authentication, so it listens on this machine only (127.0.0.1) unless --host
    says otherwise. From another machine, forward the port instead:
    ssh -L 8080:127.0.0.1:8080 HOST. With SQLite, a dashboard reading the file while several
    workers write it slows them down; PostgreSQL suits watching a busy search.

    \b
    Examples:
      maskopt dashboard
      maskopt dashboard --storage postgresql://me:PASSWORD@db-host/maskopt --port 8081
    """
    from maskopt.storage import serve_dashboard as serve

    serve(storage=storage, host=host, port=port, artifacts=artifacts)
