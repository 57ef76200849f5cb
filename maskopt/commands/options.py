"""Options shared by several commands."""

import click

storage_option = click.option(
    "--storage", envvar="MASKOPT_STORAGE", metavar="URL",
    help="SQLAlchemy URL of the study storage  [env: MASKOPT_STORAGE; default: sqlite:///maskopt.db]")
