"""``maskopt export-best``, ``maskopt predict`` and ``maskopt score``."""

from __future__ import annotations

import json

import click

from maskopt.commands.options import (
    artifacts_option,
    cache_option,
    device_option,
    storage_option,
    threads_option,
)


@click.command("export-best")
@storage_option
@click.option("--study", help="Study name (may be omitted when the storage holds one study).")
@click.option("--data", type=click.Path(), help="Dataset (default: the path the study was run on).")
@click.option("--out", type=click.Path(file_okay=False), help="Export folder  [default: exports/<study>]")
@click.option("--tta", is_flag=True, help="Average predictions with the horizontally flipped image.")
@click.option("--ensemble-folds", is_flag=True, help="Export the k fold models and average them, instead of retraining.")
@click.option("--ensemble", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Greedy ensemble selection (with replacement, up to K picks) among the best trials on their "
                   "out-of-fold predictions; every member is retrained and exported.")
@click.option("--calibrate", is_flag=True,
              help="Fit per-class offsets that raise out-of-fold macro F1; predict applies them.")
@artifacts_option("Folder where the search stored out-of-fold predictions (for --ensemble, --calibrate).")
@click.option("--force", is_flag=True, help="Replace an existing export folder.")
@device_option
@threads_option
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export_best(storage, study, data, out, tta, ensemble_folds, ensemble, calibrate, artifacts, force, device,
                threads, cache_dir, quiet):
    """Retrain the best trial on all data and export weights, config and submission.

    \b
    Example:
      maskopt export-best --study demo --tta
      maskopt export-best --study demo --ensemble 5 --calibrate --out exports/demo-ensemble
    """
    from maskopt.search.export import export_best as run_export

    result = run_export(storage=storage, study=study, data=data, out=out, tta=tta, ensemble_folds=ensemble_folds,
                        ensemble=ensemble, calibrate=calibrate, artifacts=artifacts, force=force, device=device,
                        threads=threads, cache_dir=cache_dir, quiet=quiet)
    click.echo(echo_export(result))


def echo_export(result) -> str:
    lines = [f"exported trial {result.trial_number} of study {result.study_name!r} "
             f"(cross-validated macro F1 {result.cv_score:.4f}) to {result.out}/",
             f"  models: {', '.join(result.models)}"]
    if result.ensemble is not None:
        e = result.ensemble
        members = ", ".join(f"{t} ({w:.2f})" for t, w in zip(e.trials, e.weights))
        lines.append(f"  ensemble of trials (weights): {members}")
        lines.append(f"  out-of-fold macro F1: {e.oof_macro_f1:.4f} ensemble vs {e.best_single_oof_macro_f1:.4f} "
                     f"best trial alone ({e.oof_macro_f1 - e.best_single_oof_macro_f1:+.4f}, measured on the rows it "
                     "was selected on)")
    if result.calibration is not None:
        c = result.calibration
        lines.append(f"  class offsets: out-of-fold macro F1 {c.oof_macro_f1:.4f} -> {c.nested_oof_macro_f1:.4f} "
                     f"({c.nested_oof_macro_f1 - c.oof_macro_f1:+.4f}, offsets fitted on the other folds)")
    if result.submission is not None:
        lines.append(f"  submission: {result.submission}")
    return "\n".join(lines)


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="An export folder (from export-best).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Competition data folder (predicts eval/), or a class-folder / CSV dataset.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output CSV  [default: MODEL/predictions.csv]")
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation  [default: as exported]")
@device_option
@threads_option
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(model, data, out, tta, device, threads, cache_dir, quiet):
    """Write predictions of a saved export for a dataset.

    \b
    Example:
      maskopt predict --model exports/demo --data demo-data --out submission.csv
    """
    from maskopt.search.export import predict as run_predict

    path = run_predict(model=model, data=data, out=out, tta=tta, device=device, threads=threads, cache_dir=cache_dir,
                       quiet=quiet)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("submission", type=click.Path(dir_okay=False))
@click.argument("solution", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def score(submission, solution, as_json):
    """Score a submission (ImageID,ans) against a solution file.

    Prints macro F1 (the competition metric), accuracy, per-task F1 and the confusion matrix.

    \b
    Example:
      maskopt score exports/demo/submission.csv demo-data/eval/solution.csv
    """
    from maskopt.search.export import score as run_score

    result = run_score(submission, solution)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    tasks = "  ".join(f"{k} {v:.4f}" for k, v in result.task_f1.items())
    click.echo(f"macro F1 {result.macro_f1:.4f}   accuracy {result.accuracy:.4f}   ({result.count} images)")
    click.echo(f"per-task F1: {tasks}")
    click.echo("confusion matrix (rows: true class 0..17, columns: predicted):")
    click.echo("     " + "".join(f"{j:>4}" for j in range(len(result.confusion))))
    for i, row in enumerate(result.confusion):
        click.echo(f"{i:>4} " + "".join(f"{v:>4}" if v else "   ." for v in row))
