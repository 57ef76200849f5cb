"""The ``maskopt`` command line.

Each command lives in ``maskopt/commands/<area>.py`` and is imported only when it is run, so
``maskopt --help`` answers at once; torch and timm load inside the commands that need them.
Library errors (``MaskoptError``) become ``Error: <message>`` and exit status 1 here, with no
traceback, and nowhere else; the library's logs are printed here too (``commands/output.py``).
Every option's parameter has the name of the library argument it sets, so a message that names a
`parameter` is shown with its option (--parameter) and no table of names is needed.
"""

from __future__ import annotations

import functools
import importlib
import re

import click

# command name -> (module under maskopt.commands, function name, one-line help)
COMMANDS = {
    "make-demo-data": ("data", "make_demo_data", "Write a synthetic dataset in the competition's layout."),
    "eda": ("data", "eda", "Summarise a dataset before tuning: classes, ages, images, problems."),
    "search": ("search", "search", "Run (or resume) a pruned k-fold Optuna study from a YAML space."),
    "export-best": ("export", "export_best", "Retrain the best trial on all data and export it."),
    "export-onnx": ("export", "export_onnx", "Add an ONNX graph, verified against PyTorch, to an export."),
    "predict": ("export", "predict", "Write a submission from a saved export."),
    "score": ("export", "score", "Score a submission against a solution file."),
    "studies": ("storage", "studies", "List the studies in a storage."),
    "dashboard": ("storage", "dashboard", "Open optuna-dashboard on a storage."),
    "report": ("report", "report", "Write a self-contained HTML report of a study."),
    "label-issues": ("labels", "label_issues", "List training images whose labels the study's predictions doubt."),
    "weights": ("weights", "weights", "Import pretrained weights from another library's checkpoint."),
    "replay": ("replay", "replay", "Replay a finished study with another sampler or pruner, in simulated time."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"maskopt.commands.{module}"), attr)

    def invoke(self, ctx):
        from maskopt.commands.output import command_output, shown
        from maskopt.errors import MaskoptError

        try:
            with command_output(self.with_flags):
                return super().invoke(ctx)
        except MaskoptError as e:
            raise click.ClickException(self.with_flags(shown(str(e)))) from e

    def with_flags(self, message: str) -> str:
        """A library message with each `parameter` it names shown as this CLI's option (--flag).

        The library names what the user can change by its Python argument, in backticks (see
        maskopt/errors.py); a name without a matching option stays as it is.
        """
        flags = self._flags()
        return re.sub(r"`(\w+)`", lambda m: flags.get(m.group(1), m.group(0)), message)

    @functools.cache
    def _flags(self) -> dict[str, str]:
        """Python parameter name -> the CLI option showing it, over every command (built once)."""
        flags = {}
        for name in COMMANDS:
            command = self.get_command(None, name)
            for sub in [command, *getattr(command, "commands", {}).values()]:
                for param in sub.params:
                    if isinstance(param, click.Option) and param.opts[0].startswith("--"):
                        flags.setdefault(param.name, param.opts[0])
        return flags

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.version_option(package_name="maskopt")
def cli():
    """maskopt: hyperparameter search for image classifiers.

    \b
    Typical session:
      maskopt make-demo-data demo-data
      maskopt search --space spaces/demo.yaml --trials 12
      maskopt dashboard
      maskopt export-best
    """


def main():
    cli(prog_name="maskopt")
