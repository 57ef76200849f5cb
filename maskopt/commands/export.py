"""``maskopt export-best``, ``maskopt export-onnx``, ``maskopt predict`` and ``maskopt score``."""

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
from maskopt.files import printable


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
@click.option("--onnx", is_flag=True,
              help="Also write model.onnx (models, flip and offsets in one graph from uint8 pixels), verified "
                   "against PyTorch on 100 training images.")
@click.option("--onnx-opset", type=int, metavar="N", help="ONNX opset of --onnx, 13..20  [default: 17]")
@click.option("--max-latency-ms", type=click.FloatRange(min=0, min_open=True), metavar="MS",
              help="Export the most accurate trial whose CPU latency (ms per image, batch 1) is within MS.")
@artifacts_option("Folder where the search stored out-of-fold predictions (for --ensemble, --calibrate).")
@click.option("--force", is_flag=True, help="Replace an existing export folder.")
@device_option
@threads_option
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export_best(storage, study, data, out, tta, ensemble_folds, ensemble, calibrate, onnx, onnx_opset, max_latency_ms,
                artifacts, force, device, threads, cache_dir, quiet):
    """Retrain the best trial on all data and export weights, config and submission.

    \b
    Example:
      maskopt export-best --study demo --tta
      maskopt export-best --study demo --ensemble 5 --calibrate --out exports/demo-ensemble
      maskopt export-best --study demo --onnx --out exports/demo-onnx
    """
    from maskopt.search.export import export_best as run_export

    result = run_export(storage=storage, study=study, data=data, out=out, tta=tta, ensemble_folds=ensemble_folds,
                        ensemble=ensemble, calibrate=calibrate, onnx=onnx, onnx_opset=onnx_opset,
                        max_latency_ms=max_latency_ms, artifacts=artifacts, force=force, device=device,
                        threads=threads, cache_dir=cache_dir, quiet=quiet)
    click.echo(echo_export(result))


def echo_export(result) -> str:
    lines = [f"exported trial {result.trial_number} of study {result.study_name!r} "
             f"(cross-validated macro F1 {result.cv_score:.4f}) to {printable(result.out)}/",
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
    if result.onnx is not None:
        lines.append(echo_onnx(result.onnx, f"{result.onnx.check.images} training images (labelled)"))
    if result.submission is not None:
        lines.append(f"  submission: {printable(result.submission)}")
    return "\n".join(lines)


def echo_onnx(graph, verified_on: str) -> str:
    """The ONNX graph's file and its check against PyTorch, in two lines."""
    c = graph.check
    f1 = (f", macro F1 {c.torch_macro_f1:.4f} PyTorch / {c.onnx_macro_f1:.4f} ONNX"
          if c.torch_macro_f1 is not None else "")
    return (f"  ONNX: {printable(graph.file)} (opset {graph.opset}), checked against PyTorch on {verified_on}:\n"
            f"    largest score difference {c.max_abs_score_diff:.2g} (tolerance {c.tolerance:g}), "
            f"top-1 agreement {c.top1_agreement:.1%}{f1}")


@click.command("export-onnx")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", type=click.Path(exists=True),
              help="Images to verify the graph on (needed: an export records no dataset path): a competition "
                   "folder (its eval images), or a class-folder / CSV dataset.")
@click.option("--opset", type=int, metavar="N", help="ONNX opset, 13..20  [default: 17]")
@click.option("--force", is_flag=True, help="Replace the export's ONNX graph if it has one.")
@threads_option
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export_onnx(model_dir, data, opset, force, threads, cache_dir, quiet):
    """Add model.onnx, an ONNX graph of an export's models, to the export, verified against PyTorch.

    The graph takes uint8 RGB pixels [batch, 3, S, S] (no normalisation: it is inside) and returns
    probs and scores; argmax of scores is maskopt's class. `predict --runtime onnx` runs it.

    \b
    Example:
      maskopt export-onnx exports/demo --data demo-data
      maskopt predict --model exports/demo --data demo-data --runtime onnx
    """
    from maskopt.search.export import export_onnx_folder

    result = export_onnx_folder(model_dir, data=data, opset=opset, force=force, threads=threads,
                                cache_dir=cache_dir, quiet=quiet)
    click.echo(f"added {printable(result.onnx.file)} to {printable(result.out)}/")
    click.echo(echo_onnx(result.onnx, result.verified_on))


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="An export folder (from export-best).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Competition data folder (predicts eval/), or a class-folder / CSV dataset.")
@click.option("--out", type=click.Path(dir_okay=False), help="Output CSV  [default: MODEL/predictions.csv]")
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation  [default: as exported]")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run the export's PyTorch models, or its ONNX graph on onnxruntime (CPU; see export-onnx).")
@device_option
@threads_option
@cache_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def predict(model, data, out, tta, runtime, device, threads, cache_dir, quiet):
    """Write predictions of a saved export for a dataset.

    \b
    Example:
      maskopt predict --model exports/demo --data demo-data --out submission.csv
      maskopt predict --model exports/demo --data demo-data --runtime onnx
    """
    from maskopt.search.export import predict as run_predict

    path = run_predict(model=model, data=data, out=out, tta=tta, runtime=runtime, device=device, threads=threads,
                       cache_dir=cache_dir, quiet=quiet)
    click.echo(f"wrote {printable(path)}")


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
