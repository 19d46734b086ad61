"""The `edge-bloodcls` command. Each part of the toolkit contributes its own commands; they are
imported when the group is built, and the TensorFlow-heavy ones import TensorFlow only when run.

Every command module is part of every install (the package ships them all), so each is imported
plainly: a failure to import one is a bug to see, not an optional part to skip. Optional
dependencies (TensorFlow, matplotlib, tqdm: the [train] extra) are imported inside the commands
that need them, so the edge install (numpy, Pillow, click, the interpreter) lists and runs every
runtime command; tests/test_cli_edge_install.py checks that with those packages blocked.
"""

from __future__ import annotations

import importlib

import click

from . import __version__, logs
from .errors import missing_extra, needs_train_extra
from .tfenv import configure

configure()  # before any command can import TensorFlow

COMMAND_MODULES = (
    "edge_bloodcls.train.commands",
    "edge_bloodcls.convert.commands",
    "edge_bloodcls.adapt.run",
    "edge_bloodcls.edge_runtime.cli",
    "edge_bloodcls.benchmarks.commands",
)


class App(click.Group):
    """The group. Errors become exit codes in click's main loop (errors.CliError); here, a [train]
    module missing where a command imports it becomes the same one line and exit 2, so that no
    command that needs TensorFlow ends in a traceback on an edge install."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            module = missing_extra(e)
            if module is None:
                raise
            raise needs_train_extra(ctx.invoked_subcommand, module) from None


@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-bloodcls")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Also debug detail and the libraries' own notices on stderr (TensorFlow's logs, the TFLite "
    "runtime's INFO lines, OpenCV's).",
)
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr (results still on stdout).")
def main(verbose, quiet):
    """Blood-cell classification from training to the microscope.

    Results go to stdout, messages to stderr."""
    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other")
    # Before a command imports TensorFlow or OpenCV or builds an interpreter (all inside commands).
    logs.configure(logs.VERBOSE if verbose else logs.QUIET if quiet else logs.NORMAL)


for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(_name).COMMANDS:
        main.add_command(_cmd)


if __name__ == "__main__":
    main()
