"""`python -m lm_billing_plugin.cli [--app IMPORT] COMMAND ...`: the `flask lm-billing` commands
without `flask`'s own start-up, which first imports every installed package's CLI plugins.

`flask` loads the `flask.commands` entry points of everything in the environment before it
looks for the app's commands (Flask-AppBuilder's `fab` alone costs ~0.7 s of CPU: it imports
marshmallow, jsonschema, its views). Cron jobs and scripts that only run billing commands can
skip that: the app is found as `flask` finds it (``--app``, ``FLASK_APP``, ``.flaskenv``/``.env``
when python-dotenv is installed, else ``wsgi.py``/``app.py``), and the commands are the same."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
from flask.cli import ScriptInfo, load_dotenv

from . import cli

PROG = "python -m lm_billing_plugin.cli"


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.option("-A", "--app", "import_path", envvar="FLASK_APP", metavar="IMPORT",
              help="The Flask application or factory, as for `flask --app`.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def launcher(import_path: str | None, args: tuple[str, ...]) -> None:
    cli.main(args=list(args), prog_name=PROG, obj=ScriptInfo(app_import_path=import_path))


def main(argv: Sequence[str] | None = None) -> None:
    # Before the options are read: a .flaskenv may say FLASK_APP, as it does for `flask`.
    load_dotenv()
    launcher.main(args=list(sys.argv[1:] if argv is None else argv), prog_name=PROG)


if __name__ == "__main__":
    main()
