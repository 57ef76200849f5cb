"""``maskopt label-issues``."""

from __future__ import annotations

import json

import click

from maskopt.commands.options import artifacts_option, storage_option
from maskopt.files import printable


@click.command("label-issues")
@storage_option
@click.option("--study", help="Study name (may be omitted when the storage holds one study).")
@click.option("--data", type=click.Path(), help="Dataset (default: the path the study was run on).")
@artifacts_option("Folder where the search stored out-of-fold predictions.")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Average the out-of-fold predictions of the N best complete trials.")
@click.option("--limit", type=click.IntRange(min=0), metavar="N", help="List at most N images  [default: all]")
@click.option("--write-corrections", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write a DRAFT corrections CSV (id,fix) with the suggested fixes, for review.")
@click.option("--force", is_flag=True, help="Replace an existing --write-corrections file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def label_issues(storage, study, data, artifacts, top, limit, write_corrections, force, as_json):
    """List training images whose labels the study's out-of-fold predictions doubt.

    Ranks images by confident learning (cleanlab) on the out-of-fold probabilities every complete
    trial of a search stores, most suspect first. For the competition layout it also suggests
    per-person fixes: a gender that most images contradict (male/female), and incorrect_mask /
    normal images that look swapped (swap_incorrect_normal). Age and other mask confusions are
    listed, not drafted: the corrections format has no fix for them.

    \b
    Example:
      maskopt label-issues --study demo --top 3 --limit 20
      maskopt label-issues --study demo --write-corrections corrections/draft.csv
    """
    from pathlib import Path

    from maskopt.search.report.label_issues import label_issues as find

    report = find(storage=storage, study=study, data=data, artifacts=artifacts, top=top, limit=limit,
                  write_corrections=write_corrections, force=force)
    written = Path(write_corrections) if write_corrections else None
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "written": str(written) if written else None}))
        return
    click.echo(echo_report(report, written))


def echo_report(report, written) -> str:
    """The report as lines; names from the data (images, persons, classes) with control characters escaped."""
    trials = ", ".join(str(t) for t in report.trials)
    lines = [f"study {report.study_name!r}: {report.total_issues} of {report.images} training images look "
             f"mislabelled (out-of-fold predictions of trial{'s' if len(report.trials) > 1 else ''} {trials}, "
             f"macro F1 {report.oof_macro_f1:.4f})"]
    if report.issues:
        header = ("rank", "image", "person", "given", "predicted", "confidence")
        rows = [(str(i.rank), *map(printable, (i.image_id, i.person, i.given_name, i.predicted_name)),
                 f"{i.self_confidence:.3f}") for i in report.issues]
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
        lines += ["", "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
                  "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if len(report.issues) < report.total_issues:
            lines.append(f"... and {report.total_issues - len(report.issues)} more (--limit)")
        lines.append("confidence: the out-of-fold probability of the given label (lower is more suspect)")
    if report.layout == "competition":
        drafted = [s for s in report.suggestions if s.fix is not None]
        listed = [s for s in report.suggestions if s.fix is None]
        lines += ["", f"{len(drafted)} correction(s) drafted, {len(listed)} other suspect person(s) listed:"]
        lines += [f"  {printable(s.person):<12} {s.fix or '(' + s.kind + ', no fix)':<24} {printable(s.evidence)}"
                  for s in drafted + listed]
        if written is not None:
            lines += ["", f"wrote a DRAFT corrections file: {printable(written)} ({len(drafted)} drafted fix(es)"
                          + (f" on top of the study's {len(report.existing_corrections)} correction(s)"
                             if report.existing_corrections else "") + ")",
                      "  Review every row (look at the images) before using it as study.corrections in the space."]
        elif drafted:
            lines.append("Pass --write-corrections FILE to draft a corrections CSV for review.")
    return "\n".join(lines)
