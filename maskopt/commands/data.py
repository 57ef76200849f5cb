"""Commands that make or inspect a dataset before a search."""

from __future__ import annotations

import click


# Copies of maskopt.search.data.demo.ARGUMENT_RANGES: importing it here would load numpy and PIL for
# every `maskopt --help`. tests/search/data/test_demo_data.py checks that they match.
PERSONS, EVAL_PERSONS, SIZE, SEED = (2, 100_000), (1, 100_000), (16, 1024), (0, 2**32 - 1)


@click.command("make-demo-data")
@click.argument("out", type=click.Path(file_okay=False, writable=True))
@click.option("--persons", type=click.IntRange(*PERSONS), default=400, show_default=True, help="Train persons.")
@click.option("--eval-persons", type=click.IntRange(*EVAL_PERSONS), default=60, show_default=True,
              help="Eval persons.")
@click.option("--size", type=click.IntRange(*SIZE), default=96, show_default=True, help="Photo side in pixels.")
@click.option("--seed", type=click.IntRange(*SEED), default=0, show_default=True, help="Same seed, same files.")
@click.option("--label-noise", type=float, default=0.0, show_default=True, metavar="P",
              help="Share of train persons (0 <= P < 1) given a wrong label, listed in label_noise.csv.")
def make_demo_data(out: str, persons: int, eval_persons: int, size: int, seed: int, label_noise: float) -> None:
    """Write a synthetic dataset in the competition's layout to OUT.

    OUT must not exist or be empty. It gets train/train.csv, train/images/<person>/ with seven
    photos each (mask1..mask5, incorrect_mask, normal), eval/info.csv, eval/images/ and
    eval/solution.csv (the true classes, for `maskopt score`). The data keeps the real set's
    quirks: string ids such as 000600-1, mixed .jpg/.png/.jpeg files, macOS ._ files, and a
    tiny band of 60-year-olds.

    With --label-noise P, a share P of the train persons get one wrong label each (the other
    gender, an age in another band, or two photos of different mask states swapped by file
    name) while their photos show the truth; OUT/label_noise.csv lists every flip
    (person,field,true,given), to score a label-issue finder against. The eval set stays clean.

    \b
    Example:
      maskopt make-demo-data small-data --persons 100 --size 64
      maskopt make-demo-data noisy-data --label-noise 0.05
    """
    import shlex

    from maskopt.search.data.demo import make_demo_data as make

    summary = make(out, persons=persons, eval_persons=eval_persons, size=size, seed=seed,
                   label_noise=label_noise)
    counts = summary.class_counts
    click.echo(f"Wrote {summary.out}/ ({size}x{size} px, seed {seed}):")
    click.echo(f"  train: {summary.persons} persons, {summary.train_images} images in train/images/, train/train.csv")
    click.echo(
        f"  eval:  {summary.eval_persons} persons, {summary.eval_images} images in eval/images/, "
        "eval/info.csv, eval/solution.csv"
    )
    click.echo(f"  train images per class 0..17: {' '.join(str(c) for c in counts)} (smallest {min(counts)})")
    if label_noise > 0:
        click.echo(f"  label noise: {summary.noisy_persons} of {summary.persons} train persons have a wrong label, "
                   "listed in label_noise.csv (eval is clean)")
    click.echo("Next:")
    click.echo(f"  maskopt search --space spaces/demo.yaml --data {shlex.quote(str(summary.out))}")


@click.command("eda")
@click.argument("data", type=click.Path())
@click.option("--layout", type=click.Choice(["auto", "competition", "csv", "folders"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--corrections", type=click.Path(dir_okay=False), metavar="FILE",
              help="Label-corrections CSV (id,fix; competition only).")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write summary.json and PNG plots (class counts, ages, sample images) here.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
def eda(data: str, layout: str, corrections: str | None, out: str | None, as_json: bool) -> None:
    """Summarise the dataset DATA before tuning on it.

    Shows groups (persons) and images, images per class, mask/gender/age counts, the class
    imbalance, an age histogram, image sizes and extensions, and what reading the data skipped,
    corrected or excluded. Persons with problems are left out and listed, not fatal, so one run
    shows every problem.

    \b
    Example:
      maskopt eda demo-data --out eda/
      maskopt eda DATA --corrections corrections/mask-competition.csv --json
    """
    import json

    from maskopt.search.data.eda import eda as run_eda

    result = run_eda(data, layout=layout, corrections=corrections, out=out)
    summary, written = result.summary, result.files
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    for line in _eda_lines(summary):
        click.echo(line)
    if written:
        click.echo(f"\nWrote {', '.join(p.name for p in written)} to {out}")


def _eda_lines(summary) -> list[str]:
    """The summary as text lines that fit 80 columns (paths in notes may run longer)."""
    import textwrap

    unit = "persons" if summary.layout == "competition" else "groups"
    lines = [f"Dataset {summary.root} ({summary.layout} layout)",
             f"  {summary.groups} {unit}, {summary.images} images, {len(summary.class_names)} classes", ""]

    counts = summary.class_counts
    name_width = min(24, max(len(n) for n in summary.class_names))
    cells = [f"{i:>3} {name[:name_width]:<{name_width}} {count:>6}"
             for i, (name, count) in enumerate(zip(summary.class_names, counts))]
    # Two columns when they fit in 80, so the 18 competition classes take nine lines.
    columns = 2 if 2 * len(cells[0]) + 4 <= 80 else 1
    per_column = -(-len(cells) // columns)
    lines.append("Images per class:")
    for row in range(per_column):
        lines.append("  " + "    ".join(cells[row + c * per_column] for c in range(columns)
                                        if row + c * per_column < len(cells)).rstrip())
    nonzero = [c for c in counts if c]
    lines.append(f"Imbalance ratio (largest / smallest non-empty class): {summary.imbalance_ratio}"
                 + (f"  ({max(nonzero)} / {min(nonzero)})" if nonzero else ""))
    empty = [i for i, c in enumerate(counts) if not c]
    if empty:
        lines.append(f"Empty classes: {', '.join(str(i) for i in empty)}")

    if summary.task_counts:
        lines += ["", "Per task (images):"]
        for task, task_counts in summary.task_counts.items():
            lines.append(f"  {task:<7}" + ", ".join(f"{name} {count}" for name, count in task_counts.items()))

    if summary.age_histogram:
        lines += ["", f"Age ({unit}):"]
        top = max(summary.age_histogram.values()) or 1
        for label, count in summary.age_histogram.items():
            lines.append(f"  {label:>6} {count:>5} {'#' * round(40 * count / top)}".rstrip())

    lines += ["", "Image sizes: " + ", ".join(f"{size} ({n})" for size, n in summary.image_sizes.items()),
              "Extensions:  " + ", ".join(f"{ext or '(none)'} ({n})" for ext, n in summary.extensions.items())]
    if summary.notes:
        lines += ["", "Notes:"]
        for note in summary.notes:
            lines += textwrap.wrap(note, width=78, initial_indent="- ", subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False)
    return lines
