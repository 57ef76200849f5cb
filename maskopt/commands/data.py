"""Commands that make or inspect a dataset before a search."""

from __future__ import annotations

import click


@click.command("make-demo-data")
@click.argument("out", type=click.Path(file_okay=False, writable=True))
@click.option("--persons", type=click.IntRange(min=2), default=200, show_default=True, help="Train persons.")
@click.option("--eval-persons", type=click.IntRange(min=1), default=60, show_default=True, help="Eval persons.")
@click.option("--size", type=click.IntRange(min=16), default=96, show_default=True, help="Photo side in pixels.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same files.")
def make_demo_data(out: str, persons: int, eval_persons: int, size: int, seed: int) -> None:
    """Write a synthetic dataset in the competition's layout to OUT.

    OUT must not exist or be empty. It gets train/train.csv, train/images/<person>/ with seven
    photos each (mask1..mask5, incorrect_mask, normal), eval/info.csv, eval/images/ and
    eval/solution.csv (the true classes, for `maskopt score`). The data keeps the real set's
    quirks: string ids such as 000600-1, mixed .jpg/.png/.jpeg files, macOS ._ files, and a
    tiny band of 60-year-olds.

    \b
    Example:
      maskopt make-demo-data demo-data --persons 200 --size 96
    """
    import shlex

    from maskopt.search.demo_data import make_demo_data as make

    summary = make(out, persons=persons, eval_persons=eval_persons, size=size, seed=seed, progress=True)
    counts = summary.class_counts
    click.echo(f"Wrote {summary.out}/ ({size}x{size} px, seed {seed}):")
    click.echo(f"  train: {summary.persons} persons, {summary.train_images} images in train/images/, train/train.csv")
    click.echo(
        f"  eval:  {summary.eval_persons} persons, {summary.eval_images} images in eval/images/, "
        "eval/info.csv, eval/solution.csv"
    )
    click.echo(f"  train images per class 0..17: {' '.join(str(c) for c in counts)} (smallest {min(counts)})")
    click.echo("Next:")
    click.echo(f"  maskopt search --space spaces/demo.yaml --data {shlex.quote(str(summary.out))}")
