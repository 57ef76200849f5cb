"""Options shared by several commands."""

import click

# Copies of maskopt.storage's DEFAULT_STORAGE_URL and DEFAULT_ARTIFACT_DIR: importing it here
# would load optuna for every `maskopt --help`. tests/storage/test_storage_commands.py checks
# that the commands' help shows the library's values.
DEFAULT_STORAGE_URL = "sqlite:///maskopt.db"
DEFAULT_ARTIFACT_DIR = "maskopt-artifacts"

storage_option = click.option(
    "--storage", envvar="MASKOPT_STORAGE", metavar="URL",
    help=f"SQLAlchemy URL of the study storage  [env: MASKOPT_STORAGE; default: {DEFAULT_STORAGE_URL}]")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
threads_option = click.option("--threads", type=click.IntRange(min=1), envvar="MASKOPT_THREADS",
                              help="CPU threads  [env: MASKOPT_THREADS; default: the free cores]")
cache_option = click.option("--cache-dir", type=click.Path(file_okay=False), envvar="MASKOPT_CACHE_DIR",
                            help="Decoded-image cache  [env: MASKOPT_CACHE_DIR; default: ~/.cache/maskopt]")


def artifacts_option(help: str):
    """``--artifacts DIR``: where trial artifacts live (written by a search, served by the dashboard)."""
    return click.option("--artifacts", type=click.Path(file_okay=False), default=DEFAULT_ARTIFACT_DIR,
                        show_default=True, help=help)
