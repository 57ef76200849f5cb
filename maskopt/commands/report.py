"""``maskopt report``."""

from __future__ import annotations

import click

from maskopt.commands.options import artifacts_option, storage_option
from maskopt.files import printable


@click.command()
@storage_option
@click.option("--study", help="Study name (may be omitted when the storage holds one study).")
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write.")
@click.option("--solution", type=click.Path(dir_okay=False),
              help="A solution file (ImageID,ans): score the exported submission.csv against it.")
@artifacts_option("Folder where the search stored out-of-fold predictions (for the suspect labels).")
def report(storage, study, out, solution, artifacts):
    """Write a self-contained HTML report of a study.

    One file, no network needed to open it: trials by state, best macro F1 and its per-fold
    spread, time and compute saved by pruning, Optuna's plots, the top 10 trials, the best
    trial's confusion matrices, thumbnails of the training images whose labels look wrong
    (from the stored out-of-fold predictions), and the exported model.

    \b
    Example:
      maskopt report --study demo --out demo-report.html --solution demo-data/eval/solution.csv
    """
    from maskopt.search.report.html import report as write_report

    path = write_report(storage=storage, study=study, out=out, solution=solution, artifacts=artifacts)
    click.echo(f"wrote {printable(path)}")
