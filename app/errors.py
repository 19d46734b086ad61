"""How a command ends, in one place: its exit codes and the one error type that carries them.

    0  done
    1  some inputs failed: each one is named on stderr as it fails, the others were processed
    2  usage or setup error: nothing (more) could be done (bad options, a file that is not what it
       should be, no model, no interpreter, a camera that does not open, TensorFlow not installed)

A command raises CliError(message, exit_code); click's main loop, which runs every command of the
group, prints it as one line, `error: MESSAGE`, on stderr and exits with the code (no traceback).
click's own usage errors exit 2 as well. The group (edge_bloodcls.cli) turns a missing [train]
extra, wherever it is first imported, into the same one line (missing_extra below).
"""

from __future__ import annotations

import importlib.util
from typing import IO, Any

import click

EXIT_OK = 0
EXIT_INPUTS_FAILED = 1
EXIT_USAGE = 2

# The [train] extra's modules: an edge install (a Raspberry Pi) has none of them.
TRAIN_EXTRA = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "matplotlib", "tqdm")
INSTALL_TRAIN = "pip install 'edge-bloodcls[train]'"


class CliError(click.ClickException):
    """A command cannot go on (EXIT_USAGE), or went on and some inputs failed (EXIT_INPUTS_FAILED)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        # click declares exit_code per class; click's main loop reads it from the instance.
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: IO[Any] | None = None) -> None:
        if self.message:  # InputsFailed: the inputs were named as they failed
            click.echo(f"error: {self.message}", file=file, err=file is None)


class InputsFailed(CliError):
    """The run went through; the inputs that failed were each named on stderr already."""

    def __init__(self, message: str = ""):
        super().__init__(message, EXIT_INPUTS_FAILED)


def needs_train_extra(command: str | None, module: str | None = None) -> CliError:
    what = f" ({module} is not installed)" if module else ""
    return CliError(
        f"{command or 'this command'} needs TensorFlow, which the edge install does not have{what}: "
        f"install the full toolkit ({INSTALL_TRAIN}, or `make setup`); the edge install runs bundles"
    )


def require_train_extra(command: str, modules: tuple[str, ...] = ("tensorflow", "tf_keras")) -> None:
    """Before a command reads anything: CliError (exit 2) where a module it needs is not installed.
    find_spec looks for the module without importing it (TensorFlow takes seconds to import)."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise needs_train_extra(command, name)


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The [train] module an import failed on, or None when it is something else (a bug to see)."""
    root = (e.name or "").split(".")[0]
    return root if root in TRAIN_EXTRA else None
